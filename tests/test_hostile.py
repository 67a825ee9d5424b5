"""Issue 12, hostile inputs met by the measuring core: each class ends in a clear error or a
correct result (docs/robustness.md lists them). Every test here failed on main before the fix."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgraph import (
    ModgraphTypeError,
    ModgraphValueError,
    find_modules,
    interaction_basis,
    interaction_graph,
    leiden_modules,
)
from modgraph.toy import mlp
from tests.zoo import correlated_inputs

X = correlated_inputs(300, 6, seed=0)
f64 = torch.float64


# ------------------------------------------------------------------ names and default layers
class NamedOutput(nn.Module):
    """A model whose last Linear is called ``output``, as many models do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 7, dtype=f64)
        self.output = nn.Linear(7, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(self.fc1(x)))


def test_a_submodule_named_output_is_not_the_model_output(caplog):
    model = NamedOutput()
    with caplog.at_level(logging.WARNING, logger="modgraph"):
        default = interaction_basis(model, X, progress=False)
    assert list(default) == ["fc1", "output", "<output>"]
    assert "submodule named 'output'" in caplog.text
    assert default["output"].d == 7 and default["<output>"].d == 3  # its input; the model output
    named = interaction_basis(model, X, layers=["fc1", "output"], progress=False)
    assert list(named) == ["fc1", "output", "<output>"]
    np.testing.assert_array_equal(named["output"].mean, default["output"].mean)
    with torch.no_grad():
        hidden = torch.tanh(model.fc1(X))
    np.testing.assert_allclose(named["output"].mean, hidden.mean(0).numpy(), rtol=1e-12)
    result = find_modules(model, X, progress=False)
    assert "<output>:0" in result.module_of


def test_layers_must_be_ordered():
    with pytest.raises(ModgraphTypeError, match=r"ordered list .* not a set"):
        interaction_basis(mlp([6, 5, 2]), X, layers={"0", "2"}, progress=False)


class Attention(nn.Module):
    """An nn.MultiheadAttention (its out_proj never runs as a module), an unused head and a
    Linear that runs twice: the default node layers are the Linears that run once."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8, dtype=f64)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True, dtype=f64)
        self.shared = nn.Linear(8, 8, dtype=f64)
        self.head = nn.Linear(8, 3, dtype=f64)
        self.unused = nn.Linear(8, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)[:, None, :]
        a, _ = self.att(h, h, h)
        h = self.shared(F.relu(self.shared(a[:, 0])))
        return self.head(torch.relu(h))


def test_default_layers_are_the_linears_that_run_once(caplog):
    with caplog.at_level(logging.INFO, logger="modgraph"), pytest.warns(UserWarning, match="att"):
        bases = interaction_basis(Attention(), X, progress=False)
    assert list(bases) == ["inp", "head", "output"]
    assert "att.out_proj (never runs as a module" in caplog.text
    assert "unused (never runs as a module" in caplog.text
    assert "shared (runs more than once, 2 times" in caplog.text


def test_a_squeezed_output_gets_a_hint():
    model = nn.Sequential(nn.Linear(6, 1, dtype=f64), nn.Flatten(0))
    with pytest.raises(ModgraphValueError, match=r"output=lambda o: o\[:, None\]"):
        find_modules(model, X, progress=False)
    result = find_modules(model, X, output=lambda o: o[:, None], progress=False)
    assert result.interaction_graph.sizes[-1] == 1


# ------------------------------------------------------------------ silent wrong answers
def _offset_model(offset: float) -> tuple[nn.Sequential, torch.Tensor]:
    """The same function on inputs whose first coordinate is shifted by ``offset`` (the first
    Linear's bias compensates), and a hidden unit with a large bias that the next Linear
    compensates: only the means change, the covariances do not."""
    model = mlp([6, 8, 4, 3], nn.Tanh, seed=2, linear_at=(2,))
    x = correlated_inputs(400, 6, seed=1)
    if offset:
        with torch.no_grad():
            model[0].bias -= model[0].weight[:, 0] * offset
            model[2].bias[0] += offset  # a hidden unit of the junction, always far from zero
            model[3].bias -= model[3].weight[:, 0] * offset
        x = x.clone()
        x[:, 0] += offset
    return model, x


@pytest.mark.parametrize("offset", [1e7, 1e8])
def test_a_translation_of_the_activations_changes_no_feature(offset):
    model, x = _offset_model(0.0)
    moved, x_moved = _offset_model(offset)
    with torch.no_grad():
        torch.testing.assert_close(moved(x_moved), model(x), rtol=1e-6, atol=1e-6)
    bases = interaction_basis(model, x, progress=False)
    shifted = interaction_basis(moved, x_moved, progress=False)
    for name in bases:
        assert shifted[name].k == bases[name].k, name
        np.testing.assert_allclose(
            shifted[name].eigenvalues, bases[name].eigenvalues, rtol=1e-5, err_msg=name
        )
    result = find_modules(moved, x_moved, progress=False)
    assert result.n_modules >= 1 and result.interaction_graph.sizes == tuple(
        b.k for b in bases.values()
    )


def test_huge_activations_are_refused_before_they_overflow():
    with pytest.raises(ModgraphValueError, match="overflow"):
        interaction_basis(mlp([6, 5, 2]), X * 1e160, progress=False)
    # in a later batch, on a layer wide enough for the Gram's block rows
    x = torch.randn(48, 300, dtype=f64, generator=torch.Generator().manual_seed(1))
    x[37, 250] = 1e160
    with pytest.raises(ModgraphValueError, match=r"up to 1e\+160 in batch 2"):
        interaction_basis(mlp([300, 5, 2]), x, batch_size=16, progress=False)


class InPlaceAfter(nn.Module):
    """forward changes a node layer's input in place after its module has run."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, dtype=f64)
        self.fc2 = nn.Linear(8, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        y = self.fc2(h)
        h.mul_(0.5)  # after fc2 read h: the analysis must see h as fc2 saw it
        return y


def test_records_are_copies_not_the_live_tensors():
    model = InPlaceAfter()
    bases = interaction_basis(model, X, progress=False)
    with torch.no_grad():
        h = torch.tanh(model.fc1(X))
    np.testing.assert_allclose(bases["fc2"].mean, h.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        bases["fc2"].gram_eigenvalues.sum(), h.var(0, unbiased=False).sum().item(), rtol=1e-10
    )


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, dtype=f64)
        self.fc2 = nn.Linear(8, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)).detach())


@pytest.mark.parametrize("variant", ["local", "global"])
def test_a_forward_that_cuts_the_graph_is_named(variant):
    with pytest.warns(UserWarning, match=r"no gradient reached node layer\(s\) \['fc1'\]"):
        bases = interaction_basis(Detached(), X, variant=variant, progress=False)
    assert bases["fc1"].k == 0 and bases["fc2"].k == 3  # the layers after the cut keep theirs


# ------------------------------------------------------------------ clear errors, or correct
class InPlaceInput(nn.Module):
    """forward centres its input in place, and its node layer feeds ReLU(inplace=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, dtype=f64)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(8, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.sub_(0.3)
        return self.fc2(self.act(self.fc1(x)))


def test_in_place_forwards_are_analysed():
    model, data = InPlaceInput(), X.clone()
    bases = interaction_basis(model, data, layers=["fc1", "act", "fc2"], progress=False)
    torch.testing.assert_close(data, X)  # the caller's data are untouched
    np.testing.assert_allclose(bases["fc1"].mean, (X - 0.3).mean(0).numpy(), rtol=1e-12)
    assert bases["act"].k > 0 and bases["fc1"].k > 0
    plain = nn.Sequential(model.fc1, nn.ReLU(), model.fc2)
    reference = interaction_basis(plain, X - 0.3, layers=["0", "1", "2"], progress=False)
    for ours, theirs in zip(bases.values(), reference.values()):
        np.testing.assert_allclose(ours.eigenvalues, theirs.eigenvalues, rtol=1e-9)


def test_the_callers_autograd_modes_are_set_aside_and_restored():
    model = InPlaceAfter()
    reference = find_modules(model, X, progress=False)
    with torch.inference_mode():
        inside = find_modules(model, X.clone(), progress=False)
        assert torch.is_inference_mode_enabled()
    with torch.autograd.set_detect_anomaly(True):
        anomaly = find_modules(model, X, progress=False)
        assert torch.is_anomaly_enabled()
    with torch.no_grad():
        no_grad = find_modules(model, X, progress=False)
        assert not torch.is_grad_enabled()
    for other in (inside, anomaly, no_grad):
        assert other.score == reference.score
        np.testing.assert_array_equal(other.membership, reference.membership)
    with torch.inference_mode():
        made_inside = InPlaceAfter()
    with pytest.raises(ModgraphValueError, match="inference_mode"):
        find_modules(made_inside, X, progress=False)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)  # float32
        self.fc2 = nn.Linear(8, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)).double())


def test_dtype_none_runs_a_mixed_precision_model_as_it_is():
    model = Mixed()
    bases = interaction_basis(model, X.float(), dtype=None, progress=False)
    assert model.fc1.weight.dtype == torch.float32  # not converted
    with torch.no_grad():
        h = torch.relu(model.fc1(X.float())).double()
    np.testing.assert_allclose(bases["fc2"].mean, h.mean(0).numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("foo", ModgraphValueError, "not a device torch knows"),
        (3.5, ModgraphTypeError, "'device' parameter"),
        pytest.param(
            "cuda",
            ModgraphValueError,
            "CUDA is not available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present"),
        ),
    ],
)
def test_devices_are_checked_before_any_work(device, error, match):
    with pytest.raises(error, match=match):
        find_modules(mlp([6, 5, 2]), X, device=device, progress=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's own
@pytest.mark.parametrize("kind", ["script", "trace", "freeze"])
def test_torchscript_models_are_refused_with_what_to_do(kind):
    model = mlp([6, 5, 2]).eval()
    script = {
        "script": lambda: torch.jit.script(model),
        "trace": lambda: torch.jit.trace(model, X[:2]),
        "freeze": lambda: torch.jit.freeze(torch.jit.script(model)),
    }[kind]()
    with pytest.raises(ModgraphTypeError, match=r"TorchScript .* Python nn.Module"):
        interaction_basis(script, X, progress=False)


@pytest.mark.parametrize("name", ["a\x01b", "r&d"])
def test_layer_names_that_cannot_round_trip_are_refused_before_any_pass(name):
    model = nn.Sequential()
    model.add_module(name, nn.Linear(6, 4, dtype=f64))
    model.add_module("relu", nn.ReLU())
    model.add_module("head", nn.Linear(4, 2, dtype=f64))

    def counting():
        counting.passes += 1
        yield X

    counting.passes = 0

    class Data:
        def __iter__(self):
            return counting()

    with pytest.raises(ModgraphValueError, match="node layer name"):
        find_modules(model, Data(), progress=False)
    assert counting.passes == 1  # only the probe batch was read


def test_transform_checks_the_width_of_tensors_too():
    basis = interaction_basis(mlp([6, 5, 2]), X, progress=False)["0"]
    with pytest.raises(ModgraphValueError, match=r"shape \(\.\.\., 6\)"):
        basis.transform(torch.zeros(3, 5, dtype=f64))


def test_resolutions_beyond_reach_are_refused():
    graph = interaction_graph(mlp([6, 5, 2]), X, progress=False)
    with pytest.raises(ModgraphValueError, match="'resolution' parameter of leiden_modules"):
        leiden_modules(graph, resolution=1e308)
    assert leiden_modules(graph, resolution=1e9).modules == []


# ------------------------------------------------------------------ data
def test_numpy_views_sparse_and_empty_batches_are_read():
    reference = interaction_basis(mlp([6, 5, 2]), X, progress=False)
    reversed_view = X.numpy()[::-1]  # negative strides
    empty_first = [X[:0], X[:100], X[100:]]
    sparse = X.to_sparse()
    for data in (reversed_view, empty_first, sparse):
        bases = interaction_basis(mlp([6, 5, 2]), data, progress=False)
        for name, b in bases.items():
            np.testing.assert_allclose(b.eigenvalues, reference[name].eigenvalues, rtol=1e-10)


class Rows(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(X)  # one sample at a time


def test_an_iterable_dataset_is_batched():
    reference = interaction_basis(mlp([6, 5, 2]), X, progress=False)
    bases = interaction_basis(mlp([6, 5, 2]), Rows(), progress=False)
    np.testing.assert_allclose(bases["0"].eigenvalues, reference["0"].eigenvalues, rtol=1e-10)


def test_a_list_of_single_samples_gets_a_hint():
    with pytest.raises(ModgraphValueError, match=r"torch\.stack"):
        find_modules(mlp([6, 5, 2]), list(X[:20]), progress=False)


class Shrinking:
    """Re-iterable data that yields fewer rows on every later pass."""

    def __init__(self) -> None:
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter([X[: 300 - 50 * self.passes]])


def test_data_that_changes_between_passes_is_refused():
    with pytest.raises(ModgraphValueError, match=r"yielded .* rows in this pass"):
        find_modules(mlp([6, 5, 2]), Shrinking(), progress=False)


def test_a_dataset_leaves_the_global_rng_alone():
    dataset, model = torch.utils.data.TensorDataset(X), mlp([6, 5, 2])
    before = torch.get_rng_state()
    find_modules(model, dataset, progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_progress_shows_rows_and_a_total(capsys):
    interaction_basis(mlp([6, 5, 2]), X, progress=True)
    err = capsys.readouterr().err
    assert "/300" in err and "row" in err


# ------------------------------------------------------------------ messages
def test_a_near_constant_output_and_few_samples_are_warned():
    model = mlp([6, 5, 2])
    with torch.no_grad():
        model[2].weight *= 1e-12
        model[2].bias.fill_(1.0)
    with pytest.warns(UserWarning, match="barely varies"):
        interaction_graph(model, X, progress=False)
    with pytest.warns(UserWarning, match="only 4 data points"):
        interaction_basis(mlp([6, 5, 2]), X[:4], progress=False)


class DeepResidual(nn.Module):
    """700 residual blocks before the analysed Linear: the residual term's autograd history is
    deeper than Python's recursion limit."""

    def __init__(self, n: int = 700) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.ModuleList(nn.Linear(4, 4, dtype=f64) for _ in range(n))
        self.a = nn.Linear(4, 6, dtype=f64)
        self.b = nn.Linear(6, 4, dtype=f64)
        self.head = nn.Linear(4, 2, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.pre:
            x = x + 0.01 * torch.tanh(layer(x))
        return self.head(x + self.b(torch.relu(self.a(x))))


def test_the_constant_jacobian_check_walks_deep_graphs():
    x = torch.randn(64, 4, dtype=f64, generator=torch.Generator().manual_seed(0))
    bases = interaction_basis(DeepResidual(), x, layers=["a", "b", "head"], progress=False)
    assert bases["b"].k > 0
