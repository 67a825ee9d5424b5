"""Q_deg against igraph's modularity, by hand, and its cost bookkeeping."""

from __future__ import annotations

import igraph as ig
import numpy as np
import pytest

from modgraph import InteractionGraph, degeneracy_cost, modularity_score, partition_cost


def random_graph(seed: int, sizes=(6, 5, 7, 3), density=0.6) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    mats = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        E = rng.lognormal(0, 2, size=(b, a)) * (rng.random((b, a)) < density)
        mats.append(E)
    return InteractionGraph.from_matrices(mats, epsilon=0.05)


def igraph_reference(graph: InteractionGraph, membership, resolution):
    """Undirected igraph graph built by hand from the E matrices and ½ ln(E/ε)."""
    edges, weights = [], []
    for l, E in enumerate(graph.edges.values()):
        rows, cols = np.nonzero(E > graph.epsilon)
        for i, j in zip(rows, cols):
            edges.append((graph.offsets[l] + j, graph.offsets[l + 1] + i))
            weights.append(0.5 * np.log(E[i, j] / graph.epsilon))
    g = ig.Graph(n=graph.n_nodes, edges=edges, directed=False)
    return g.modularity(list(membership), weights=weights, resolution=resolution, directed=False)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("resolution", [0.3, 1.0, 2.5])
def test_matches_igraph_modularity(seed, resolution):
    graph = random_graph(seed)
    rng = np.random.default_rng(100 + seed)
    membership = rng.integers(0, 4, graph.n_nodes)
    ours = modularity_score(graph, membership, resolution=resolution)
    assert ours == pytest.approx(igraph_reference(graph, membership, resolution), abs=1e-12)


def test_hand_computed_case():
    # two layers of two features; costs c(a0-b0) = 1, c(a1-b1) = 2, c(a0-b1) = 0.5
    eps = 1.0
    E = np.array([[np.exp(2.0), 0.0], [np.exp(1.0), np.exp(4.0)]])  # rows b, columns a
    graph = InteractionGraph.from_matrices([E], epsilon=eps, layers=["a", "b"])
    # nodes: a0, a1, b0, b1; W = 3.5, strengths k = [1.5, 2, 1, 2.5]
    m = {"a:0": 0, "b:0": 0, "a:1": 1, "b:1": 1}
    two_w = 7.0
    expected = (2 * 1 + 2 * 2 - (1.5 + 1) ** 2 / two_w - (2 + 2.5) ** 2 / two_w) / two_w
    assert modularity_score(graph, m) == pytest.approx(expected, abs=1e-14)
    split = partition_cost(graph, m)
    assert split.total == pytest.approx(3.5)
    assert split.cross == pytest.approx(0.5)
    assert split.cross_fraction == pytest.approx(0.5 / 3.5)
    # -1 marks a feature in no module: scored as a singleton
    alone = {**m, "a:0": -1}
    sing = {**m, "a:0": 7}
    assert modularity_score(graph, alone) == pytest.approx(modularity_score(graph, sing))


def test_degeneracy_cost_values_and_errors():
    np.testing.assert_allclose(degeneracy_cost([0.0, 0.5, 1.0, np.e**2], 1.0), [0, 0, 0, 1.0])
    with pytest.raises(ValueError, match="negative"):
        degeneracy_cost(np.array([1.0, -1.0]), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        degeneracy_cost(np.array([np.nan]), 1.0)
    with pytest.raises(ValueError, match="'epsilon'"):
        degeneracy_cost(np.ones(2), 0.0)


def test_weight_options_give_newman_modularity_on_E():
    graph = random_graph(3)
    m = np.random.default_rng(0).integers(0, 3, graph.n_nodes)
    src, dst, w = graph.undirected_edges("weight")
    g = ig.Graph(n=graph.n_nodes, edges=np.column_stack([src, dst]), directed=False)
    assert modularity_score(graph, m, weight="weight") == pytest.approx(
        g.modularity(list(m), weights=w), abs=1e-12
    )
    assert modularity_score(graph, m, weight="sqrt_weight") == pytest.approx(
        g.modularity(list(m), weights=np.sqrt(w)), abs=1e-12
    )


def test_membership_errors():
    graph = random_graph(0)
    with pytest.raises(ValueError, match="expected"):
        modularity_score(graph, [0, 1])
    with pytest.raises(ValueError, match="unknown node ids"):
        modularity_score(graph, {"nope:0": 1})
    with pytest.raises(ValueError, match="gives 1 of the"):
        modularity_score(graph, {"L0:0": 1})
    with pytest.raises(ValueError, match="'resolution'"):
        modularity_score(graph, np.zeros(graph.n_nodes, int), resolution=0)
    with pytest.raises(TypeError, match="InteractionGraph"):
        modularity_score("graph", [0])


def test_graph_rejects_negative_or_nan_weights():
    with pytest.raises(ValueError, match="negative"):
        InteractionGraph.from_matrices([-np.ones((2, 2))], epsilon=1.0)
    with pytest.raises(ValueError, match="NaN"):
        InteractionGraph.from_matrices([np.full((2, 2), np.nan)], epsilon=1.0)
    with pytest.raises(ValueError, match="expected"):
        InteractionGraph(
            layers=("a", "b"),
            edges={("a", "b"): np.ones((2, 3))},
            importance={"a": np.ones(2), "b": np.ones(2)},
            epsilon=1.0,
        )


def test_no_edge_above_epsilon_scores_zero():
    graph = InteractionGraph.from_matrices([np.full((3, 3), 1e-9)], epsilon=1.0)
    assert graph.undirected_edges()[0].size == 0
    assert modularity_score(graph, np.arange(6)) == 0.0
    assert partition_cost(graph, np.arange(6)).cross_fraction == 0.0
