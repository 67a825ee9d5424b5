"""Faithfulness (issue 15): behavioural loss, feature and edge ablations, ε from ablation, the
sparsity report and its figure. Every number is checked against an independent float64 brute
force written here (numpy forwards, one target feature at a time)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import modgraph
from modgraph import (
    ModgraphTypeError,
    ModgraphValueError,
    find_modules,
    interaction_basis,
    interaction_graph,
)
from modgraph.faithfulness import (
    AblationCurve,
    ablation_curve,
    ablation_epsilon,
    behavioural_loss,
    edge_ablation_curve,
    sparsity_report,
)
from modgraph.toy import mlp, node_inputs, train_mlp, two_task_digits

GEN = torch.Generator().manual_seed(0)
MODEL = mlp([5, 7, 6, 3], seed=1)  # node layers "0", "2", "4", "output"
X = torch.randn(300, 5, dtype=torch.float64, generator=GEN)


# ------------------------------------------------------------------------- brute force
def np_forward(model: nn.Sequential, a: np.ndarray, start: int, stop: int | None = None):
    """``model[start:stop]`` on ``a`` in numpy (Linear, ReLU and Identity only)."""
    for m in list(model)[start:stop]:
        if isinstance(m, nn.Linear):
            a = a @ m.weight.detach().numpy().T + m.bias.detach().numpy()
        elif isinstance(m, nn.ReLU):
            a = np.maximum(a, 0.0)
    return a


def mse_and_share(out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    mse = float(((out - ref) ** 2).sum(1).mean())
    return mse, mse / float(((ref - ref.mean(0)) ** 2).sum(1).mean())


def brute_feature_loss(model, x, basis, index: int, keep: np.ndarray) -> float:
    """Relative loss of keeping the features ``keep`` of the input of ``model[index]``."""
    ref = np_forward(model, x.numpy(), 0)
    a = np_forward(model, x.numpy(), 0, index)
    ablated = basis.mean + (((a - basis.mean) @ basis.C) * keep) @ basis.C_pinv
    return mse_and_share(np_forward(model, ablated, index), ref)[1]


def brute_edge_loss(model, x, graph, pair, start: int, stop: int, keep: np.ndarray) -> float:
    """Relative loss of cutting the edges of ``pair`` (inputs of ``model[start]`` and
    ``model[stop]``) where ``keep`` is False: one target feature at a time."""
    src, dst = graph.bases[pair[0]], graph.bases[pair[1]]
    ref = np_forward(model, x.numpy(), 0)
    a = np_forward(model, x.numpy(), 0, start)
    t = np_forward(model, a, start, stop)
    f = (a - src.mean) @ src.C
    delta = np.zeros((len(a), dst.k))
    for i in range(dst.k):
        moved = a - (f * ~keep[i]) @ src.C_pinv
        delta[:, i] = (np_forward(model, moved, start, stop) - t) @ dst.C[:, i]
    return mse_and_share(np_forward(model, t + delta @ dst.C_pinv, stop), ref)[1]


# ------------------------------------------------------------------------- behavioural loss
def test_behavioural_loss_is_the_mean_squared_output_change():
    shift = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    loss = behavioural_loss(MODEL, X, lambda m, x: m(x) + shift, batch_size=64, progress=False)
    ref = np_forward(MODEL, X.numpy(), 0)
    assert loss.mse == pytest.approx(float((shift**2).sum()), rel=1e-12)
    variance = float(((ref - ref.mean(0)) ** 2).sum(1).mean())
    assert loss.output_variance == pytest.approx(variance, rel=1e-10)
    assert loss.relative == pytest.approx(loss.mse / variance, rel=1e-10)
    assert loss.n_rows == 300 and loss.metric is None and loss.metric_change is None


def test_behavioural_loss_reports_the_metric_change():
    ref = np_forward(MODEL, X.numpy(), 0)
    labels = torch.from_numpy(ref.argmax(1))  # the model's own predictions: accuracy 1

    def flipped(m, x):
        return -m(x)

    loss = behavioural_loss(MODEL, X, flipped, labels=labels, metric="accuracy", progress=False)
    assert loss.metric == 1.0
    assert loss.ablated_metric == pytest.approx(float(((-ref).argmax(1) == ref.argmax(1)).mean()))
    assert loss.metric_change == pytest.approx(loss.ablated_metric - 1.0)
    assert loss.mse == pytest.approx(float((4 * ref**2).sum(1).mean()), rel=1e-12)


# ------------------------------------------------------------------------- features
def test_feature_ablation_matches_the_brute_force_in_every_basis():
    curves = ablation_curve(MODEL, X, ns=[0, 1, 3, 6], progress=False)
    assert [c.basis for c in curves[:3]] == ["interaction", "pca", "neuron"]
    assert {c.layers for c in curves} == {("0",), ("2",), ("4",)}
    for c in curves:
        basis = interaction_basis(MODEL, X, basis=c.basis, progress=False)[c.layers[0]]
        order = np.argsort(-basis.eigenvalues, kind="stable")
        for n, got in zip(c.kept, c.relative_loss):
            keep = np.zeros(basis.k)
            keep[order[:n]] = 1.0
            want = brute_feature_loss(MODEL, X, basis, int(c.layers[0]), keep)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-14), (c, n)


def test_ablating_no_feature_changes_nothing_and_every_feature_is_mean_ablation():
    curves = ablation_curve(MODEL, X, ("pca", "neuron"), ns=[0, 100], progress=False)
    ref = np_forward(MODEL, X.numpy(), 0)
    for c in curves:
        assert c.relative_loss[-1] <= 1e-12  # all kept (n beyond k keeps all)
        index = int(c.layers[0])
        a = np_forward(MODEL, X.numpy(), 0, index)
        mean = np.broadcast_to(a.mean(0), a.shape)
        want = mse_and_share(np_forward(MODEL, mean, index), ref)[1]
        assert c.relative_loss[0] == pytest.approx(want, rel=1e-9)


def test_feature_ablation_with_positions_and_a_metric():
    class PerPosition(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin1 = nn.Linear(4, 6, dtype=torch.float64)
            self.lin2 = nn.Linear(6, 5, dtype=torch.float64)
            self.head = nn.Linear(15, 2, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.lin2(torch.relu(self.lin1(x))))
            return self.head(h.flatten(1))

    torch.manual_seed(0)
    model = PerPosition()
    x = torch.randn(200, 3, 4, dtype=torch.float64, generator=GEN)
    labels = torch.randint(0, 2, (200,), generator=GEN)
    (curve,) = ablation_curve(
        model, x, "interaction", "lin2", ns=[2], labels=labels, metric="accuracy", progress=False
    )
    basis = interaction_basis(model, x, progress=False)["lin2"]
    with torch.no_grad():
        ref = model(x).numpy()
        a = torch.relu(model.lin1(x)).numpy()  # (B, 3, 6): features last, per position
        keep = np.zeros(basis.k)
        keep[:2] = 1.0
        ablated = torch.from_numpy(
            basis.mean + (((a - basis.mean) @ basis.C) * keep) @ basis.C_pinv
        )
        out = model.head(torch.relu(model.lin2(ablated)).flatten(1)).numpy()
    assert curve.relative_loss[0] == pytest.approx(mse_and_share(out, ref)[1], rel=1e-9)
    assert curve.reference_metric == pytest.approx(float((ref.argmax(1) == labels.numpy()).mean()))
    assert curve.metric[0] == pytest.approx(float((out.argmax(1) == labels.numpy()).mean()))

    # edges with positions: lin1 → lin2 is elementwise per position, lin2 → head is not
    graph = interaction_graph(model, x, progress=False)
    for pair in (("lin1", "lin2"), ("lin2", "head")):
        E = graph.edges[pair]
        (edge,) = edge_ablation_curve(model, x, graph, pair, n_edges=[E.size // 2], progress=False)
        keep = E >= edge.thresholds[0]
        src, dst = graph.bases[pair[0]], graph.bases[pair[1]]
        with torch.no_grad():
            if pair[0] == "lin1":
                a, run = x.numpy(), lambda v: torch.relu(model.lin1(torch.from_numpy(v))).numpy()
            else:
                a = torch.relu(model.lin1(x)).numpy()
                run = lambda v: torch.relu(model.lin2(torch.from_numpy(v))).flatten(1).numpy()  # noqa: E731
            t = run(a)
            f = (a - src.mean) @ src.C
            delta = np.stack(
                [(run(a - (f * ~keep[i]) @ src.C_pinv) - t) @ dst.C[:, i] for i in range(dst.k)],
                -1,
            )
            moved = torch.from_numpy(t + delta @ dst.C_pinv)
            if pair[0] == "lin1":
                out = model.head(torch.relu(model.lin2(moved)).flatten(1)).numpy()
            else:
                out = model.head(moved).numpy()
        assert edge.relative_loss[0] == pytest.approx(mse_and_share(out, ref)[1], rel=1e-9)


def test_ablations_of_convolution_inputs_act_on_channels():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(48, 2),
    ).double()  # fmt: skip
    x = torch.randn(64, 2, 6, 6, dtype=torch.float64, generator=GEN)
    graph = interaction_graph(model, x, layers=["0", "2", "5"], progress=False)
    src, dst = graph.bases["0"], graph.bases["2"]
    (feat,) = ablation_curve(model, x, dict(graph.bases), "2", ns=[2], progress=False)
    E = graph.edges[("0", "2")]
    (edge,) = edge_ablation_curve(model, x, graph, ("0", "2"), n_edges=[3], progress=False)
    keep = E >= edge.thresholds[0]

    def channels(v, basis, fn):  # apply fn to (..., channels) and come back
        return torch.from_numpy(fn(v.movedim(1, -1).numpy())).movedim(-1, 1)

    with torch.no_grad():
        ref = model(x).numpy()
        a = model[1](model[0](x))
        mask = np.zeros(dst.k)
        mask[:2] = 1.0
        ablated = channels(
            a, dst, lambda v: dst.mean + (((v - dst.mean) @ dst.C) * mask) @ dst.C_pinv
        )
        want = mse_and_share(model[2:](ablated).numpy(), ref)[1]
        assert feat.relative_loss[0] == pytest.approx(want, rel=1e-9)
        f = channels(x, src, lambda v: (v - src.mean) @ src.C).movedim(1, -1).numpy()
        t = a.movedim(1, -1).numpy()
        delta = np.zeros((*t.shape[:-1], dst.k))
        for i in range(dst.k):
            moved = channels(x, src, lambda v, i=i: v - (f * ~keep[i]) @ src.C_pinv)
            delta[..., i] = (model[1](model[0](moved)).movedim(1, -1).numpy() - t) @ dst.C[:, i]
        out = model[2:](torch.from_numpy(t + delta @ dst.C_pinv).movedim(-1, 1)).numpy()
    assert edge.relative_loss[0] == pytest.approx(mse_and_share(out, ref)[1], rel=1e-9)


# ------------------------------------------------------------------------- edges
@pytest.mark.parametrize("basis", ["interaction", "pca", "neuron"])
def test_edge_ablation_matches_the_brute_force(basis):
    graph = interaction_graph(MODEL, X, basis=basis, progress=False)
    curves = edge_ablation_curve(MODEL, X, graph, n_edges=[0, 5, 20], progress=False)
    starts = {"0": 0, "2": 2, "4": 4, "output": len(MODEL)}
    for c in curves:
        E = graph.edges[c.layers]
        order = np.argsort(-E.ravel(), kind="stable")
        for n, got in zip(c.kept, c.relative_loss):
            keep = np.zeros(E.size, dtype=bool)
            keep[order[:n]] = True
            want = brute_edge_loss(
                MODEL, X, graph, c.layers, starts[c.layers[0]], starts[c.layers[1]],
                keep.reshape(E.shape),
            )  # fmt: skip
            assert got == pytest.approx(want, rel=1e-9, abs=1e-14), (c, n)


def test_edge_ablation_of_a_section_that_is_not_elementwise():
    # node layers "0" and "4": the section between them is Linear-ReLU-Linear-ReLU (autograd path)
    graph = interaction_graph(MODEL, X, layers=["0", "4"], progress=False)
    pair = ("0", "4")
    E = graph.edges[pair]
    (c,) = edge_ablation_curve(MODEL, X, graph, pair, n_edges=[3, E.size], progress=False)
    keep = E >= c.thresholds[0]
    assert c.kept[0] == 3 and keep.sum() == 3
    assert c.relative_loss[0] == pytest.approx(
        brute_edge_loss(MODEL, X, graph, pair, 0, 4, keep), rel=1e-9
    )
    assert c.relative_loss[1] <= 1e-12  # every edge kept: nothing changes


def test_cutting_off_diagonal_edges_of_a_linear_network_changes_nothing():
    model = mlp([5, 6, 4, 3], seed=2, linear_at=(1, 2))  # three Linears, no nonlinearity
    x = torch.randn(400, 5, dtype=torch.float64, generator=GEN)
    graph = interaction_graph(model, x, output_basis="pca", progress=False)
    neuron = interaction_graph(model, x, basis="neuron", output_basis="pca", progress=False)
    for pair, E in graph.edges.items():
        diagonal = np.diag(E)
        off = E - np.diag(diagonal)
        assert E.shape[0] == E.shape[1] and off.max() <= 1e-12 * diagonal.min()
        (c,) = edge_ablation_curve(
            model, x, graph, pair, thresholds=[0.5 * diagonal.min()], progress=False
        )
        assert c.kept[0] == len(diagonal) < E.size
        assert c.relative_loss[0] <= 1e-12
        # the same number of edges kept in the neuron basis is far from harmless
        (n,) = edge_ablation_curve(model, x, neuron, pair, n_edges=[len(diagonal)], progress=False)
        assert n.relative_loss[0] > 1e-3


def test_no_edge_cut_changes_nothing():
    curves = edge_ablation_curve(MODEL, X, "neuron", n_edges=[10**6], progress=False)
    assert all(c.relative_loss[0] == 0.0 and c.kept[0] == c.total for c in curves)


# ------------------------------------------------------------------------- trained two-task MLP
@pytest.fixture(scope="module")
def two_tasks():
    data = two_task_digits(1000, seed=0)
    return data, train_mlp(data, seed=0, epochs=250)


def test_interaction_basis_needs_no_more_features_than_pca(two_tasks):
    data, model = two_tasks
    curves = ablation_curve(
        model, data.x, ("interaction", "pca"), ["0", "2", "4"], ns=range(81), progress=False
    )
    needed = {(c.layers[0], c.basis): c.kept_for(1e-2) for c in curves}
    for layer in ("0", "2", "4"):
        assert needed[(layer, "interaction")] <= needed[(layer, "pca")], needed


def test_epsilon_from_ablation_respects_its_tolerance_on_held_back_data(two_tasks):
    data, model = two_tasks
    fit, held = data.x[:600], data.x[600:]
    tolerance = 1e-2
    result = find_modules(
        model, fit, epsilon="ablation", loss_tolerance=tolerance, n_restarts=2, progress=False
    )
    graph = result.interaction_graph
    assert graph.pair_epsilon is not None and set(graph.pair_epsilon) == set(graph.edges)
    assert result.pair_epsilon == dict(graph.pair_epsilon)
    for pair, eps in graph.pair_epsilon.items():
        cut = int((graph.edges[pair] < eps).sum())
        assert cut > 0  # trained with L1: many interactions are weak
        (c,) = edge_ablation_curve(model, held, graph, pair, thresholds=[eps], progress=False)
        assert c.kept[0] == graph.edges[pair].size - cut
        # measured on 400 held-back points (tolerance 1e-2): see docs/faithfulness.md
        assert c.relative_loss[0] <= 1.5 * tolerance, (pair, c.relative_loss[0])
    # the costs use each pair's ε, everywhere the graph hands them out
    costs = graph.costs()
    for pair, eps in graph.pair_epsilon.items():
        want = 0.5 * np.maximum(0.0, np.log(np.maximum(graph.edges[pair], 1e-300) / eps))
        np.testing.assert_allclose(costs[pair], want, rtol=1e-12)
    assert graph.total_cost == pytest.approx(sum(c.sum() for c in costs.values()))
    assert "epsilon per layer pair" in result.summary()
    assert set(result.to_dict()["pair_epsilon"]) == {f"{a}->{b}" for a, b in graph.edges}
    G = graph.to_networkx()
    assert G.graph["epsilon_0"] == graph.pair_epsilon[graph.layers[:2]]


def test_ablation_epsilon_is_the_largest_within_tolerance():
    graph = interaction_graph(MODEL, X, progress=False)
    chosen = ablation_epsilon(MODEL, X, graph, loss_tolerance=0.05, progress=False)
    for pair, choice in chosen.items():
        E = graph.edges[pair]
        assert choice.n_cut == int((E < choice.epsilon).sum())
        assert choice.relative_loss <= 0.05
        values = np.unique(E)
        above = values[values > choice.epsilon * 1.1]
        (c,) = edge_ablation_curve(
            MODEL, X, graph, pair, thresholds=[choice.epsilon, *above[:1]], progress=False
        )
        assert c.relative_loss[0] == pytest.approx(choice.relative_loss, rel=1e-9, abs=1e-15)
        if above.size:  # the next edge value beyond the resolution would exceed the tolerance
            assert c.relative_loss[1] > 0.05


# ------------------------------------------------------------------------- sparsity
def test_sparsity_report_counts_the_edges_that_carry_each_share():
    graphs = {
        b: interaction_graph(MODEL, X, basis=b, progress=False) for b in ("interaction", "pca")
    }
    report = sparsity_report(graphs)
    assert report.fractions == (0.5, 0.9, 0.99) and len(report.rows) == 6
    for basis, graph in graphs.items():
        for pair, E in graph.edges.items():
            values = np.sort(E.ravel())[::-1]
            want = [
                next(n for n in range(1, values.size + 1) if values[:n].sum() >= f * values.sum())
                for f in (0.5, 0.9, 0.99)
            ]
            assert report.counts(basis, pair).tolist() == want
    assert "interaction" in str(report) and "99%" in str(report)


# ------------------------------------------------------------------------- figure
def test_plot_ablation_draws_one_line_per_basis(tmp_path):
    from modgraph.plot import plot_ablation

    curves = ablation_curve(MODEL, X, layers="2", ns=[0, 2, 4], progress=False)
    fig = plot_ablation(curves, tolerance=1e-2, path=tmp_path / "ablation.png")
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert [line.get_label() for line in ax.get_lines()[:3]] == ["interaction", "pca", "neuron"]
    with pytest.raises(ModgraphValueError, match="metric"):
        plot_ablation(curves, value="metric")
    with pytest.raises(ModgraphTypeError, match="AblationCurve"):
        plot_ablation([1, 2])


# ------------------------------------------------------------------------- bad inputs, safety
@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: interaction_graph(MODEL, X, epsilon="ablation"), ModgraphValueError, "'epsilon'"),
        (lambda: find_modules(MODEL, X, epsilon="auto"), ModgraphTypeError, "'epsilon'"),
        (lambda: find_modules(MODEL, X, loss_tolerance=0.1), ModgraphValueError, "ablation"),
        (
            lambda: find_modules(MODEL, X, epsilon="ablation", loss_tolerance=-1.0),
            ModgraphValueError,
            "'loss_tolerance'",
        ),
        (lambda: ablation_curve(MODEL, X, layers="output"), ModgraphValueError, "cannot be"),
        (lambda: ablation_curve(MODEL, X, "ica"), ModgraphValueError, "'bases'"),
        (lambda: ablation_curve(MODEL, X, 3), ModgraphTypeError, "'bases'"),
        (lambda: ablation_curve(MODEL, X, ns=[-1]), ModgraphValueError, "'ns'"),
        (lambda: ablation_curve(MODEL, X, layers="9"), ModgraphValueError, "'layers'"),
        (lambda: ablation_curve(MODEL, X, metric="accuracy"), ModgraphValueError, "'labels'"),
        (
            lambda: ablation_curve(MODEL, X, labels=torch.zeros(5), metric="accuracy"),
            ModgraphValueError,
            "labels",
        ),
        (
            lambda: edge_ablation_curve(MODEL, X, n_edges=[1], thresholds=[0.1]),
            ModgraphValueError,
            "not both",
        ),
        (
            lambda: edge_ablation_curve(
                MODEL, X, modgraph.InteractionGraph.from_matrices([np.eye(2)], epsilon=1.0)
            ),
            ModgraphValueError,
            "without bases",
        ),
        (lambda: edge_ablation_curve(MODEL, X, pairs=("0", "4")), ModgraphValueError, "'pairs'"),
        (lambda: behavioural_loss(MODEL, X, "forward"), ModgraphTypeError, "'ablated_forward'"),
        (lambda: sparsity_report("pca"), ModgraphValueError, "'graphs'"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_model_is_left_as_it_was_also_on_error():
    model = mlp([5, 7, 3], seed=3)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)

    def broken(output, labels):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        ablation_curve(
            model, X, "neuron", labels=torch.zeros(300), metric=broken, dtype=None, progress=False
        )
    with pytest.raises(RuntimeError, match="metric failed"):
        edge_ablation_curve(
            model, X, "pca", labels=torch.zeros(300), metric=broken, dtype=None, progress=False
        )
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_curves_are_frozen_values():
    (c,) = ablation_curve(MODEL, X, "pca", "2", ns=[0, 1], progress=False)
    assert isinstance(c, AblationCurve) and c.total == 7 and c.kept.tolist() == [0, 1]
    with pytest.raises(ValueError):
        c.loss[0] = 1.0
    assert c.kept_for(10.0) == 0 and c.kept_for(1e-30) is None
    assert np.allclose(node_inputs(MODEL, X[:2])[-1], MODEL(X[:2]).detach().numpy())
