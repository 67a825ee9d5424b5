"""Leiden search: quality on planted partitions, determinism, n_modules, errors."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from modgraph import InteractionGraph, leiden_modules, modularity_score


def planted(mixing: float, seed: int) -> tuple[nx.Graph, np.ndarray]:
    """10 groups of 100 nodes, average degree 20, a share `mixing` of edges leaving the group."""
    k_in, k_out = 20 * (1 - mixing), 20 * mixing
    G = nx.random_partition_graph([100] * 10, k_in / 99, k_out / 900, seed=seed)
    truth = np.repeat(np.arange(10), 100)
    return G, truth


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_partition_is_recovered(seed):
    G, truth = planted(0.5, seed)
    mixing = sum(truth[u] != truth[v] for u, v in G.edges) / G.number_of_edges()
    assert 0.45 < mixing < 0.55  # the realised mixing, not just the nominal one
    part = leiden_modules(G, seed=seed)
    nmi = normalized_mutual_info_score(truth, part.membership)
    assert nmi >= 0.95, nmi


def test_same_seed_same_partition_and_best_of_restarts():
    G, _ = planted(0.55, 3)
    a = leiden_modules(G, seed=5, n_restarts=4)
    b = leiden_modules(G, seed=5, n_restarts=4)
    np.testing.assert_array_equal(a.membership, b.membership)
    assert a.score == b.score
    single = [leiden_modules(G, seed=s, n_restarts=1).score for s in range(3)]
    assert leiden_modules(G, seed=0, n_restarts=8).score >= max(single[:1]) - 1e-12


def test_modules_are_numbered_by_size_and_scored_consistently():
    rng = np.random.default_rng(0)
    E = rng.lognormal(0, 1, (30, 20)) * (rng.random((30, 20)) < 0.3)
    graph = InteractionGraph.from_matrices([E, rng.lognormal(0, 1, (10, 30))], epsilon=0.5)
    part = leiden_modules(graph, seed=1)
    sizes = [len(m) for m in part.modules]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 2
    assert part.score == pytest.approx(modularity_score(graph, part.membership), abs=1e-12)
    for i, members in enumerate(part.modules):
        assert all(part.membership[graph.node_index[n]] == i for n in members)


def test_n_modules_bisects_the_resolution():
    G = nx.random_partition_graph([50] * 8, 12 / 49, 4 / 350, seed=1)
    low = leiden_modules(G, n_modules=3, n_restarts=2)
    exact = leiden_modules(G, n_modules=8, n_restarts=2)
    high = leiden_modules(G, n_modules=12, n_restarts=2)
    assert [len(p.modules) for p in (low, exact, high)] == [3, 8, 12]
    assert low.resolution < 1.0 < high.resolution


def test_n_modules_impossible_says_so():
    two = nx.disjoint_union(nx.complete_graph(5), nx.complete_graph(5))
    with pytest.raises(ValueError, match="2 separate connected parts"):
        leiden_modules(two, n_modules=1)
    with pytest.raises(ValueError, match="larger than the number of features"):
        leiden_modules(two, n_modules=11)
    with pytest.raises(ValueError, match="at most 5 modules"):
        leiden_modules(two, n_modules=6)
    path = nx.path_graph(6)
    with pytest.raises(ValueError, match=r"out of reach.*at most 2 modules"):
        leiden_modules(path, n_modules=3)


def anchored_graph() -> InteractionGraph:
    """Two output modules A and B, a chain C that reaches an output of A only weakly, and a
    pair D that reaches no output (epsilon 1, so cost = ½ ln E).

    Features: inputs 0-1 → hidden 0-1 → outputs 0-1 (A); inputs 2-3 → hidden 2-3 → outputs 2-3
    (B); input 4 → hidden 4 → output 0 (C); input 5 → hidden 5 (D).
    """
    E1 = np.zeros((6, 6))
    E2 = np.zeros((4, 6))
    strong = np.exp(8.0)
    for a, b in [(0, 1), (2, 3)]:  # A and B: dense inside
        E1[a : b + 1, a : b + 1] = strong
        E2[a : b + 1, a : b + 1] = strong
    E1[2, 1] = np.exp(3.0)  # a real link from A to B (cost 1.5)
    E1[4, 4] = np.exp(2.0)  # C inside (cost 1)
    E2[0, 4] = np.exp(0.02)  # C to A's output 0: barely above ε (cost 0.01)
    E1[5, 5] = np.exp(2.0)  # D inside, nothing beyond
    return InteractionGraph.from_matrices([E1, E2], epsilon=1.0)


def test_n_modules_counts_modules_holding_outputs():
    graph = anchored_graph()
    ids = graph.node_ids
    modules = lambda part: sorted(sorted(m) for m in part.modules)  # noqa: E731
    A = ["L0:0", "L0:1", "L1:0", "L1:1", "L2:0", "L2:1"]
    B = ["L0:2", "L0:3", "L1:2", "L1:3", "L2:2", "L2:3"]
    C, D = ["L0:4", "L1:4"], ["L0:5", "L1:5"]
    part = leiden_modules(graph, n_modules=2)
    # C is attached to the output module it links to; D reaches no output and is in no module
    assert modules(part) == sorted([sorted(A + C), sorted(B)])
    assert all(part.membership[ids.index(n)] == -1 for n in D)
    # at that resolution Leiden itself keeps C and D apart: the attachment did the merging
    raw = leiden_modules(graph, resolution=part.resolution)
    assert sorted(C) in modules(raw) and sorted(D) in modules(raw)
    # the coarsest such partition: a little lower, A and B merge
    lower = leiden_modules(graph, resolution=part.resolution / 1.1)
    assert sorted(A + B) in [sorted(set(m) - set(C)) for m in lower.modules]
    # D is a connected part of its own, yet n_modules=1 is possible: it holds no output
    one = leiden_modules(graph, n_modules=1)
    assert modules(one) == [sorted(A + B + C)]
    # the score and costs are those of the returned membership
    assert part.score == pytest.approx(
        modularity_score(graph, part.membership, resolution=part.resolution), abs=1e-12
    )


def test_n_modules_needs_interacting_outputs():
    graph = anchored_graph()
    with pytest.raises(ValueError, match=r"4 of them output features, so at most 4 modules"):
        leiden_modules(graph, n_modules=5)
    cut = InteractionGraph.from_matrices([np.full((3, 4), 5.0), np.full((2, 3), 0.5)], epsilon=1.0)
    with pytest.raises(ValueError, match="0 of them output features"):
        leiden_modules(cut, n_modules=1)
    parts = InteractionGraph.from_matrices([np.eye(2) * 9.0], epsilon=1.0)
    with pytest.raises(ValueError, match="2 separate connected parts that hold output features"):
        leiden_modules(parts, n_modules=1)


def test_isolated_graph_gives_no_modules():
    graph = InteractionGraph.from_matrices([np.full((3, 4), 1e-9)], epsilon=1.0)
    part = leiden_modules(graph)
    assert part.modules == [] and (part.membership == -1).all() and part.score == 0.0


def test_bad_parameters_and_negative_weights():
    G, _ = planted(0.3, 0)
    with pytest.raises(ValueError, match="'resolution'"):
        leiden_modules(G, resolution=0)
    with pytest.raises(ValueError, match="'resolution'"):
        leiden_modules(G, resolution=float("nan"))
    with pytest.raises(ValueError, match="'n_restarts'"):
        leiden_modules(G, n_restarts=0)
    with pytest.raises(TypeError, match="'seed'"):
        leiden_modules(G, seed=1.5)
    with pytest.raises(ValueError, match="'seed'"):
        leiden_modules(G, seed=-1)
    with pytest.raises(TypeError, match="InteractionGraph"):
        leiden_modules([[0, 1]])
    bad = nx.Graph()
    bad.add_edge(0, 1, weight=-1.0)
    bad.add_edge(1, 2, weight=1.0)
    with pytest.raises(ValueError, match="negative"):  # leidenalg would raise BaseException
        leiden_modules(bad)
