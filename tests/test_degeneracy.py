"""The degeneracy report against known answers and the behavioural-loss Hessian."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from modgraph.degeneracy import degeneracy_report
from modgraph.errors import ModgraphTypeError, ModgraphValueError
from modgraph.plot import plot_spectra
from modgraph.toy import mlp, obfuscate
from tests.zoo import Custom, correlated_inputs

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _data(n: int, d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    """Gaussian inputs, or inputs confined to a random ``rank``-dimensional linear subspace."""
    gen = torch.Generator().manual_seed(seed)
    if rank is None:
        return torch.randn(n, d, generator=gen, dtype=torch.float64)
    coeff = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    return coeff @ torch.randn(rank, d, generator=gen, dtype=torch.float64)


def _with_copies(model: nn.Sequential, unit: int, copies: int) -> nn.Sequential:
    """``Linear → ReLU → Linear`` with hidden ``unit`` repeated ``copies`` more times (appended
    at the end); the outgoing weight is shared equally, so the function is unchanged."""
    lin, act, nxt = model
    W, b, C = lin.weight.detach(), lin.bias.detach(), nxt.weight.detach()
    share = C[:, unit : unit + 1] / (copies + 1)
    W2 = torch.cat([W, W[unit : unit + 1].repeat(copies, 1)])
    b2 = torch.cat([b, b[unit : unit + 1].repeat(copies)])
    C2 = torch.cat([C[:, :unit], share, C[:, unit + 1 :], share.repeat(1, copies)], 1)
    first = nn.Linear(W2.shape[1], W2.shape[0], dtype=torch.float64)
    second = nn.Linear(C2.shape[1], C2.shape[0], dtype=torch.float64)
    with torch.no_grad():
        first.weight.copy_(W2)
        first.bias.copy_(b2)
        second.weight.copy_(C2)
        second.bias.copy_(nxt.bias)
    return nn.Sequential(first, act, second)


def _hessian_rank(model: nn.Module, x: torch.Tensor) -> tuple[int, np.ndarray]:
    """Rank of the Hessian of ``L_B(θ) = mean ||f_θ(x) − f_θ*(x)||²`` at ``θ*``, and the
    eigenvalues divided by the largest (descending)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone() for _, p in model.named_parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    theta = torch.cat([p.reshape(-1) for p in params])
    with torch.no_grad():
        target = model(x)

    def loss(t: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(t, sizes)
        state = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return (functional_call(model, state, (x,)) - target).square().sum(1).mean()

    H = hessian(loss)(theta).detach().numpy()
    ev = np.linalg.eigvalsh(0.5 * (H + H.T))[::-1]
    ev = ev / ev[0]
    return int(np.sum(ev > 1e-12)), ev


def _firing(model: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (model[0](x) > 0).numpy()


# --------------------------------------------------------------------------------------------
# Known answers: sources 1 and 3
# --------------------------------------------------------------------------------------------


def test_generic_network_is_full_rank_with_no_groups():
    model = mlp([6, 12, 10, 4], seed=0)
    x = _data(1000, 6, seed=0)
    report = degeneracy_report(model, x, progress=False)
    assert [layer.activation_deficit for layer in report.layers] == [0, 0, 0, 0]
    assert report.free_activation == 0
    for units in report.unit_sets:
        assert units.analysable
        assert units.groups == () and units.dead == () and units.always_on == ()
    assert report.mixing_directions == 0
    # The inputs are never zero: only the positive rescaling of each first-layer unit is free.
    assert report.unit_set("2").free_directions == 12
    # Second layer: a rescaling each, and more for a unit whose firing points all leave some
    # first-layer unit off (its weights from that unit are free there).
    assert report.unit_set("4").free_directions >= 10
    assert report.n_parameters == sum(p.numel() for p in model.parameters()) == 258
    assert report.effective_parameters_bound == 258 - report.free_synchronised
    # Firing counts are the brute-force column sums of B.
    with torch.no_grad():
        z = model[0](x)
    np.testing.assert_array_equal(report.unit_set("2").firing_counts, (z > 0).sum(0).numpy())


@pytest.mark.parametrize("k", [2, 3])
def test_duplicated_units_form_one_group_and_a_rank_deficit(k):
    base = mlp([5, 8, 3], seed=0)
    x = _data(600, 5, seed=1)
    before = degeneracy_report(base, x, progress=False)
    assert before.unit_set("2").groups == ()
    assert before.layer("2").activation_deficit == 0

    model = _with_copies(base, unit=0, copies=k - 1)
    report = degeneracy_report(model, x, progress=False)
    units = report.unit_set("2")
    assert units.groups == ((0, *range(8, 8 + k - 1)),)
    assert units.group_sizes == (k,)
    assert units.mixing_directions == k * k - k
    hidden = report.layer("2")
    assert hidden.width == 8 + k - 1
    assert hidden.activation_deficit == k - 1
    assert hidden.free_activation == 3 * (k - 1)  # d_next · (d − r_G)


def test_dead_units_are_dead_and_free_all_their_weights():
    base = mlp([5, 8, 3], seed=0)
    model = obfuscate(base, n_duplicate=0, n_dead=3, seed=0)  # dead units appended last
    x = _data(600, 5, seed=2)
    report = degeneracy_report(model, x, progress=False)
    units = report.unit_set("2")
    assert units.dead == (8, 9, 10)
    assert units.always_on == () and units.groups == ()
    assert units.dead_outgoing == 3 * 3  # all outgoing weights: d_next per dead unit ...
    assert report.layer("2").free_activation == 3 * 3  # ... which source 1 of layer "2" counts
    assert units.free_dead == 3 * (5 + 1)  # and every incoming weight and bias
    assert units.free_groups == 8  # one rescaling per live unit


@pytest.mark.parametrize("r", [1, 3])
def test_inputs_in_a_subspace_give_its_dimension(r):
    model = mlp([7, 6, 2], seed=3)
    x = _data(500, 7, seed=3, rank=r)
    report = degeneracy_report(model, x, progress=False)
    first = report.layer("0")
    assert first.activation_rank == r
    assert first.reader_width == 6
    assert first.free_activation == 6 * (7 - r)
    assert int(np.sum(first.gram_eigenvalues > 1e-10 * first.gram_eigenvalues[0])) == r


def test_hamming_tolerance_links_nearly_synchronised_units():
    model = mlp([3, 6, 2], seed=4)
    with torch.no_grad():  # unit 1 = unit 0 with a slightly larger bias: fires a little more
        model[0].weight[1] = model[0].weight[0]
        model[0].bias[1] = model[0].bias[0] + 0.05
    x = _data(800, 3, seed=4)
    B = _firing(model, x)
    distance = int(np.sum(B[:, 0] != B[:, 1]))
    assert 0 < distance < 80
    exact = degeneracy_report(model, x, progress=False).unit_set("2")
    np.testing.assert_array_equal(exact.firing_counts, B.sum(0))
    assert exact.groups == ()
    below = degeneracy_report(model, x, hamming_tol=distance - 1, progress=False)
    assert below.unit_set("2").groups == ()
    at = degeneracy_report(model, x, hamming_tol=distance, progress=False)
    assert at.unit_set("2").groups == ((0, 1),)
    assert at.unit_set("2").mixing_directions == 2
    fraction = degeneracy_report(model, x, hamming_tol=(distance + 0.5) / 800, progress=False)
    assert fraction.hamming_points == distance
    assert fraction.unit_set("2").groups == ((0, 1),)


# --------------------------------------------------------------------------------------------
# The behavioural-loss Hessian: rank ≤ parameters − (source 1 + source 3)
# --------------------------------------------------------------------------------------------


def _case_generic():
    return mlp([3, 5, 2], seed=0), _data(300, 3, seed=0)


def _case_dead_and_subspace():
    model = mlp([4, 5, 2], seed=1)
    with torch.no_grad():
        model[0].bias[1] = -6.0  # z < 0 on every point: dead, off the kink
    return model, _data(300, 4, seed=1, rank=2)


def _case_duplicate_and_always_on():
    model = _with_copies(mlp([3, 4, 2], seed=2), unit=0, copies=1)
    with torch.no_grad():
        model[0].bias[2] = 6.0  # z > 0 on every point: always on (linear)
    return model, _data(300, 3, seed=2)


def _case_three_copies_one_output():
    return _with_copies(mlp([3, 3, 1], seed=3), unit=1, copies=2), _data(300, 3, seed=3)


def _case_junction():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(3, 4, dtype=torch.float64),
        nn.Linear(4, 3, dtype=torch.float64),
        nn.ReLU(),
        nn.Linear(3, 2, dtype=torch.float64),
    )
    return model, _data(300, 3, seed=4)


def _case_leaky():
    model = mlp([3, 5, 2], nn.LeakyReLU, seed=5)
    model[1].negative_slope = 0.2
    with torch.no_grad():
        model[0].bias[0], model[0].bias[1] = 6.0, -6.0  # both linear: slopes 1 and 0.2
    return model, _data(300, 3, seed=5)


# Equality holds when the only degeneracies are those of sources 1 and 3: generic weights,
# enough data (N·d_out ≫ parameters), every firing region seeing the full input span, and no
# preactivation exactly on a kink. Then the null space of the Hessian is spanned by: weight rows
# orthogonal to the data span (source 1; an input subspace, dead or duplicated units), the
# invertible mixings and rescalings of synchronised units, the incoming weights of dead units,
# and the mixings and bias shifts of linear units (always on, junctions) (source 3).
EQUALITY_CASES = {
    "generic": (_case_generic, 0, 5),
    "dead+subspace": (_case_dead_and_subspace, 12, 7),
    "duplicate+always_on": (_case_duplicate_and_always_on, 2, 9),
    "three copies, one output": (_case_three_copies_one_output, 2, 11),
    "junction": (_case_junction, 3, 19),
    "leaky": (_case_leaky, 0, 9),
}


@pytest.mark.parametrize("name", list(EQUALITY_CASES))
def test_free_directions_equal_hessian_nullity(name):
    build, free1, free3 = EQUALITY_CASES[name]
    model, x = build()
    report = degeneracy_report(model, x, progress=False)
    assert (report.free_activation, report.free_synchronised) == (free1, free3)
    rank, ev = _hessian_rank(model, x)
    assert ev[rank - 1] > 1e-10 and (rank == ev.size or ev[rank] < 1e-15)  # a clean gap
    assert rank == report.effective_parameters_bound
    assert rank == report.n_parameters - free1 - free3


def test_hessian_rank_below_bound_when_a_unit_sits_on_the_kink():
    """A unit with ``z ≡ 0`` is dead but on the kink: its incoming weights are not exactly free
    (moving them switches it on), so they are not counted, yet autograd's ``relu'(0) = 0`` puts
    them in the Hessian's null space: rank < bound, never >."""
    model = mlp([3, 4, 2], seed=6)
    model[0].bias = None
    with torch.no_grad():
        model[0].weight[0] = 0.0
    x = _data(300, 3, seed=6)
    report = degeneracy_report(model, x, progress=False)
    units = report.unit_set("2")
    assert units.dead == (0,) and units.excluded == (0,)
    assert units.free_dead == 0
    rank, _ = _hessian_rank(model, x)
    assert rank == report.effective_parameters_bound - 3  # its 3 incoming weights


# --------------------------------------------------------------------------------------------
# Tolerance, other nonlinearities, other architectures
# --------------------------------------------------------------------------------------------


def test_rtol_changes_the_counts_monotonically():
    model = obfuscate(mlp([6, 10, 8, 3], seed=0), n_duplicate=1, n_dead=1, seed=0)
    scales = torch.logspace(0, -6, 6, dtype=torch.float64)  # covariance spectrum 1 … 1e-12
    x = _data(400, 6, seed=0) * scales
    rows = []
    for rtol in [1e-14, 1e-11, 1e-8, 1e-5, 1e-2]:
        r = degeneracy_report(model, x, rtol=rtol, progress=False)
        rows.append(
            (
                [layer.activation_rank for layer in r.layers],
                [layer.jacobian_rank for layer in r.layers],
                r.free_activation,
                r.free_directions,
                r.free_activation + r.free_second_order,
            )
        )
    for (g0, m0, a0, t0, s0), (g1, m1, a1, t1, s1) in zip(rows[:-1], rows[1:]):
        assert all(b <= a for a, b in zip(g0, g1))  # ranks never grow with rtol
        assert all(b <= a for a, b in zip(m0, m1))
        assert a1 >= a0 and t1 >= t0 and s1 >= s0  # free counts never shrink
    assert rows[0][0][0] == 6 and rows[-1][0][0] == 1  # the input rank really moved
    assert rows[-1][3] > rows[0][3]


def test_tanh_is_reported_as_not_analysable():
    model = mlp([4, 6, 5, 3], nn.Tanh, seed=1)
    report = degeneracy_report(model, _data(300, 4, seed=1), progress=False)
    assert [u.layer for u in report.unit_sets] == ["2", "4"]
    for units in report.unit_sets:
        assert not units.analysable
        assert "not ReLU-like" in units.note
        assert units.free_directions == 0 and units.firing_counts.size == 0
    assert report.free_synchronised == 0
    assert "not ReLU-like" in str(report)


def test_layer_not_followed_by_a_weight_bearing_module_says_so():
    model = mlp([6, 10, 4], seed=2)  # "1" is the ReLU: its input is the preactivation
    report = degeneracy_report(model, _data(300, 6, seed=2), layers=["0", "1"], progress=False)
    layer = report.layer("1")
    assert layer.reader is None and layer.reader_width is None
    assert "not followed by a weight-bearing module" in layer.reader_note
    assert layer.free_activation == 0
    assert "not followed by a weight-bearing module" in report.layer("output").reader_note
    assert "not followed by a weight-bearing module" in str(report)


class _FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7, dtype=torch.float64)
        self.fc2 = nn.Linear(7, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def test_functional_relu_is_detected_and_a_residual_branch_blocks_the_count():
    report = degeneracy_report(_FunctionalRelu(), _data(300, 5, seed=3), progress=False)
    units = report.unit_set("fc2")
    assert units.analysable and units.activation == "relu (functional)"
    assert units.free_groups == 7  # the rescalings are free: nothing else reads the units

    custom = degeneracy_report(Custom(), correlated_inputs(300, 6, seed=5), progress=False)
    units = custom.unit_set("fc2")  # h = relu(fc1(x)) is also added to fc2's output
    assert units.analysable and units.activation == "relu (functional)"
    assert "also used outside 'fc2'" in units.note
    assert units.free_directions == 0
    assert not custom.unit_set("head").analysable  # tanh(fc2(h)) + 0.5 h is not elementwise


# --------------------------------------------------------------------------------------------
# The result object
# --------------------------------------------------------------------------------------------


def test_report_exports_renders_and_plots(tmp_path):
    model = obfuscate(mlp([4, 8, 3], seed=0), n_duplicate=1, n_dead=1, seed=0)
    model.train()
    model[0].weight.requires_grad_(True)
    report = degeneracy_report(model, _data(300, 4, seed=0), progress=False)
    assert model.training and model[0].weight.requires_grad  # the model is left as it was

    payload = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert payload["totals"]["effective_parameters_bound"] == report.effective_parameters_bound
    assert payload["unit_sets"][0]["group_sizes"] == [2]
    assert len(payload["layers"][1]["gram_eigenvalues"]) == 10

    text = str(report)
    assert "upper bound on the effective parameter count" in text
    assert f"{report.effective_parameters_bound:,}" in text

    layer = report.layer("2")
    with pytest.raises(ValueError):
        layer.gram_eigenvalues[0] = 1.0  # read-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.width = 3  # type: ignore[misc]

    path = tmp_path / "spectra.png"
    fig = plot_spectra(report, path=path)
    assert path.stat().st_size > 0
    assert len([ax for ax in fig.axes if ax.get_visible()]) == len(report.layers)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert any(np.allclose(line.get_ydata(), report.rtol) for line in ax.get_lines())
    from matplotlib.figure import Figure

    own = Figure().add_subplot()
    assert plot_spectra(report, ax=own) is own.figure
    with pytest.raises(ModgraphValueError, match="suffix"):
        plot_spectra(report, path=tmp_path / "spectra.txt")
    with pytest.raises(ModgraphValueError, match="no node layer"):
        report.layer("nope")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rtol": 0.0}, ModgraphValueError, "'rtol'"),
        ({"rtol": "1e-10"}, ModgraphTypeError, "'rtol'"),
        ({"hamming_tol": -1}, ModgraphValueError, "'hamming_tol'"),
        ({"hamming_tol": 1.0}, ModgraphValueError, "'hamming_tol'"),
        ({"hamming_tol": True}, ModgraphTypeError, "'hamming_tol'"),
        ({"hamming_tol": "0"}, ModgraphTypeError, "'hamming_tol'"),
        ({"batch_size": 0}, ModgraphValueError, "'batch_size'"),
        ({"dtype": torch.int32}, ModgraphTypeError, "'dtype'"),
        ({"progress": "yes"}, ModgraphTypeError, "'progress'"),
        ({"layers": ["nope"]}, ModgraphValueError, "'nope' not found"),
        ({"output": 3}, ModgraphTypeError, "'output'"),
    ],
)
def test_bad_parameters_name_the_parameter(kwargs, error, match):
    model = mlp([3, 4, 2], seed=0)
    with pytest.raises(error, match=match):
        degeneracy_report(model, _data(20, 3, seed=0), **{"progress": False, **kwargs})


def test_bad_model_and_data_name_the_parameter():
    with pytest.raises(ModgraphTypeError, match="'model'"):
        degeneracy_report("model", _data(20, 3, seed=0))  # type: ignore[arg-type]
    with pytest.raises(ModgraphTypeError, match="'data'"):
        degeneracy_report(mlp([3, 4, 2]), iter([_data(20, 3, seed=0)]))


def test_attention_heads_that_attend_alike_are_grouped():
    """Heads 0 and 2 share their query and key maps, so their patterns agree on every input;
    heads 1 and 3 differ. The report groups {0, 2}, with differences matching a brute force."""
    torch.manual_seed(0)
    d, H = 8, 4
    attention = nn.MultiheadAttention(d, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        W = attention.in_proj_weight  # rows: q (d), k (d), v (d); head h owns rows h·2:(h+1)·2
        b = attention.in_proj_bias
        for block in (0, d):  # queries, keys
            W[block + 4 : block + 6] = W[block : block + 2]
            b[block + 4 : block + 6] = b[block : block + 2]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(d, d, dtype=torch.float64)
            self.att = attention
            self.head = nn.Linear(d, 3, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            a, _ = self.att(h, h, h, need_weights=False)
            return self.head((h + a)[:, -1])

    model = Block()
    x = torch.randn(64, 3, d, dtype=torch.float64)
    report = degeneracy_report(model, x, progress=False)
    (entry,) = report.attention
    assert entry.module == "att" and entry.n_heads == H and entry.groups == ((0, 2),)
    with torch.no_grad():
        h = model.inp(x)
        _, w = attention(h, h, h, average_attn_weights=False)  # (N, H, L, S)
    brute = (w[:, :, None] - w[:, None, :]).abs().amax(dim=(0, 3, 4)).numpy()
    np.testing.assert_allclose(entry.max_difference, brute, atol=1e-12)
    assert report.to_dict()["attention"][0]["groups"] == [[0, 2]]
    assert "attention" in str(report)
