"""Every public function with bad input: the exception type, and a message naming the problem
and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modgraph
from modgraph import (
    InteractionGraph,
    degeneracy_cost,
    find_modules,
    interaction_basis,
    interaction_graph,
    leiden_modules,
    modularity_score,
)
from modgraph.toy import mlp

X = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
# a wrong type is a TypeError and not a ValueError, a wrong value the reverse (ModgraphTypeError and
# ModgraphValueError each subclass one of them only)
OTHER = {TypeError: ValueError, ValueError: TypeError}
STAGES = [interaction_basis, interaction_graph, find_modules]


def small():
    return mlp([4, 6, 3], seed=0)


@pytest.fixture(params=STAGES, ids=lambda f: f.__name__)
def stage(request):
    def call(model, data, *args, **kwargs):
        return request.param(model, data, *args, progress=False, **kwargs)

    return call


# ------------------------------------------------------------------ types


def test_model_of_wrong_type(stage):
    with pytest.raises(TypeError, match=r"'model' .* must be a torch.nn.Module\. Got function"):
        stage(lambda x: x, X)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        ("abc", TypeError, "Got str"),
        (3.0, TypeError, "Got float"),
        ({"x": X}, TypeError, "Got dict"),
        (iter([X]), TypeError, "one-shot iterator"),
        ((x for x in [X]), TypeError, "one-shot iterator"),
        ([{"x": X}], TypeError, "Batch 0 of data is a dict"),
        ([[]], ValueError, "Batch 0 of data is an empty list"),  # a batch of the right type, empty
    ],
)
def test_data_of_wrong_type(stage, data, error, match):
    with pytest.raises(error, match=match) as exc:
        stage(small(), data)
    assert not isinstance(exc.value, OTHER[error]), type(exc.value).__mro__


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        ("0", TypeError, "must be a list of module names"),
        ([0], TypeError, "must hold module names"),
        (
            ["nope"],
            ValueError,
            r"layer 'nope' not found in the model; available: \['0', '1', '2'\]",
        ),
        (["0", "0"], ValueError, r"names \['0'\] more than once"),
        (["2", "0"], ValueError, "execution order"),
        (["output", "0"], ValueError, "must come last"),
    ],
)
def test_layers(stage, layers, error, match):
    with pytest.raises(error, match=match):
        stage(small(), X, layers=layers)


# ------------------------------------------------------------------ data values


@pytest.mark.parametrize("empty", [X[:0], [], torch.utils.data.TensorDataset(X[:0])])
def test_empty_data(stage, empty):
    with pytest.raises(ValueError, match="data yielded no batch"):
        stage(small(), empty)


def test_inconsistent_batches(stage):
    with pytest.raises(ValueError, match=r"shape \(10, 5\) in batch \d+.*same input shape"):
        stage(small(), [X[:10], torch.randn(10, 5, dtype=torch.float64)])


def test_integer_inputs_to_float_model(stage):
    with pytest.raises(ValueError, match=r"could not run on the first batch .*int64.*x.float\(\)"):
        stage(small(), torch.ones(8, 4, dtype=torch.long))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_name_the_layer(stage, bad):
    x = X.clone()
    x[5, 2] = bad
    with pytest.raises(
        ValueError, match=r"node layer '0' has 1 NaN/Inf activation values in batch 0"
    ):
        stage(small(), x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_in_a_later_batch_name_it(stage, bad):
    """Later batches are checked through the finiteness of the running sums."""
    x = X.clone()
    x[40, 1] = bad
    with pytest.raises(
        ValueError, match=r"node layer '0' has 1 NaN/Inf activation values in batch 2"
    ):
        stage(small(), x, batch_size=16)


def test_non_finite_activations_name_the_layer(stage):
    model = small()
    with torch.no_grad():
        model[0].weight[0, 0] = 1e308  # overflows to inf inside the network
    with pytest.raises(ValueError, match=r"node layer '2' has .* NaN/Inf"):
        stage(model, X * 10)


def test_zero_variance_layer_is_not_an_error():
    model = small()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)
    bases = interaction_basis(model, X, progress=False)
    assert bases["2"].k == 0
    with pytest.raises(ValueError, match=r"output is constant on the data.*Pass epsilon="):
        find_modules(model, X, progress=False)  # the default ε = τ · tr Cov(output) is 0
    result = find_modules(model, X, epsilon=1e-6, progress=False)
    assert result.n_modules == 0  # nothing interacts: every feature alone


def test_model_without_linear(stage):
    with pytest.raises(ValueError, match=r"no nn.Linear submodule.*Pass layers="):
        stage(nn.Sequential(nn.Tanh(), nn.ReLU()), X)


def test_layer_that_never_runs(stage):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 3, dtype=torch.float64)
            self.unused = nn.Linear(4, 3, dtype=torch.float64)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ValueError, match="layer 'unused' never runs"):
        stage(Unused(), X, layers=["used", "unused"])


def test_layer_that_runs_twice(stage):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4, dtype=torch.float64)

        def forward(self, x):
            return self.fc(F.relu(self.fc(x)))

    with pytest.raises(ValueError, match="runs more than once"):
        stage(Twice(), X)


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_models_returning_tuples_or_dicts(stage, kind):
    class Multi(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3, dtype=torch.float64)

        def forward(self, x):
            y = self.fc(x)
            return (y, x) if kind == "tuple" else {"logits": y}

    with pytest.raises(TypeError, match=r"returned a (tuple|dict).*output=lambda out: out\[0\]"):
        stage(Multi(), X)
    pick = (lambda out: out[0]) if kind == "tuple" else (lambda out: out["logits"])
    stage(Multi(), X, output=pick)  # the fix works
    with pytest.raises(TypeError, match="'output' parameter"):
        stage(Multi(), X, output="logits")


def test_sequence_activations_are_analysed(stage):
    # (issue 13 lifted the refusal this test used to pin: positions are now analysed)
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3, dtype=torch.float64)

        def forward(self, x):
            return self.fc(x).sum(1)

    x = torch.randn(32, 5, 4, dtype=torch.float64)
    result = stage(Seq(), x)
    basis = (result if isinstance(result, dict) else result.bases)["fc"]
    assert basis.d == 4 and basis.n_samples == 32 * 5  # rows: samples × positions
    np.testing.assert_allclose(basis.mean, x.reshape(-1, 4).mean(0).numpy(), rtol=1e-12)


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rtol": 0.0}, ValueError, r"'rtol' .* in \(0.0, 1.0\)\. Got 0.0"),
        ({"rtol": 1.0}, ValueError, "'rtol'"),
        ({"rtol": "small"}, TypeError, "'rtol'"),
        ({"variant": "gobal"}, ValueError, r"'variant' .* one of \['local', 'global'\]"),
        ({"batch_size": 0}, ValueError, "'batch_size'"),
        ({"batch_size": 2.5}, TypeError, "'batch_size'"),
        ({"n_random_sources": 0}, ValueError, "'n_random_sources'"),
        ({"seed": -1}, ValueError, "'seed'"),
        ({"seed": "0"}, TypeError, "'seed'"),
        ({"dtype": torch.int32}, TypeError, "'dtype'"),
        ({"output_basis": "svd"}, ValueError, "'output_basis'"),
    ],
)
def test_basis_parameters(stage, kwargs, error, match):
    with pytest.raises(error, match=match):
        stage(small(), X, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 0.0}, ValueError, "'tau'"),
        ({"tau": float("inf")}, ValueError, "'tau'"),
        ({"epsilon": 0.0}, ValueError, "'epsilon'"),
        ({"epsilon": float("nan")}, ValueError, "'epsilon'"),
        ({"epsilon": "auto"}, TypeError, "'epsilon'"),
        ({"n_alpha": 0}, ValueError, "'n_alpha'"),
    ],
)
def test_graph_parameters(kwargs, error, match):
    for fn in (interaction_graph, find_modules):
        with pytest.raises(error, match=match) as exc:
            fn(small(), X, progress=False, **kwargs)
        assert not isinstance(exc.value, OTHER[error]), (fn.__name__, type(exc.value).__mro__)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"resolution": 0}, ValueError, "'resolution' .* finite float in"),
        ({"resolution": float("inf")}, ValueError, "'resolution'"),
        ({"n_modules": 0}, ValueError, "'n_modules'"),
        ({"n_modules": 1.5}, TypeError, "'n_modules'"),
        ({"n_restarts": 0}, ValueError, "'n_restarts'"),
        ({"seed": 2**64}, ValueError, "'seed'"),
    ],
)
def test_search_parameters(kwargs, error, match):
    graph = InteractionGraph.from_matrices([np.ones((3, 3))], epsilon=0.5)
    with pytest.raises(error, match=match):
        leiden_modules(graph, **kwargs)
    with pytest.raises(error, match=match):
        find_modules(small(), X, progress=False, **kwargs)


def test_metric_functions():
    graph = InteractionGraph.from_matrices([np.ones((3, 3))], epsilon=0.5)
    with pytest.raises(ValueError, match="negative"):
        degeneracy_cost(-np.ones(2), 1.0)
    with pytest.raises(TypeError, match="'epsilon'"):
        degeneracy_cost(np.ones(2), None)
    with pytest.raises(ValueError, match=r"shape \(2,\); expected \(6,\)"):
        modularity_score(graph, [0, 1])
    with pytest.raises(TypeError, match="membership labels must be ints"):
        modularity_score(graph, np.zeros(6))
    with pytest.raises(ValueError, match="'weight'"):
        modularity_score(graph, np.zeros(6, int), weight="E")


def test_graphml_paths(tmp_path):
    graph = InteractionGraph.from_matrices([np.ones((3, 3))], epsilon=0.5)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        graph.to_graphml(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        graph.to_graphml(tmp_path / "no" / "g.graphml")
    with pytest.raises(FileNotFoundError, match="No such file"):
        modgraph.read_graphml(tmp_path / "missing.graphml")


def test_errors_are_builtin_and_modgraph():
    assert issubclass(modgraph.ModgraphValueError, ValueError)
    assert issubclass(modgraph.ModgraphTypeError, TypeError)
    with pytest.raises(modgraph.ModgraphError):
        interaction_basis(small(), X, rtol=2.0)
