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


def restart_scores(G: nx.Graph, seed: int, n_restarts: int, resolution: float = 1.0):
    """Q_deg of each restart, computed with leidenalg and igraph directly: the undirected graph
    with weights = costs (edge attribute 'cost', else 'weight', else 1), the seeds drawn as
    leiden_modules documents, Q_deg = RBConfigurationVertexPartition.quality() / 2W."""
    import igraph as ig
    import leidenalg as la

    index = {v: i for i, v in enumerate(G.nodes)}
    costs: dict[tuple[int, int], float] = {}
    for u, v, d in G.edges(data=True):
        i, j = sorted((index[u], index[v]))
        if i != j:
            costs[i, j] = costs.get((i, j), 0.0) + d.get("cost", d.get("weight", 1.0))
    edges = sorted(costs)  # the order leiden_modules gives igraph (upper triangle, row-major)
    weights = [costs[e] for e in edges]
    g = ig.Graph(n=len(index), edges=edges, directed=False)
    two_w = 2 * sum(weights)
    seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n_restarts)
    scores = []
    for s in seeds:
        part = la.find_partition(
            g,
            la.RBConfigurationVertexPartition,
            weights=weights,
            resolution_parameter=resolution,
            n_iterations=-1,
            seed=int(s),
        )
        scores.append(part.quality() / two_w)
    return np.array(scores), g, weights


@pytest.mark.slow
def test_same_seed_same_partition_and_best_of_restarts():
    G, _ = planted(0.55, 3)
    a = leiden_modules(G, seed=5, n_restarts=4)
    b = leiden_modules(G, seed=5, n_restarts=4)
    np.testing.assert_array_equal(a.membership, b.membership)
    assert a.score == b.score
    # best of restarts, against an independent run of each restart on a noisy graph where the
    # restarts disagree
    G, _ = planted(0.6, 1)
    scores, g, weights = restart_scores(G, seed=0, n_restarts=8)
    assert scores.max() - scores.min() > 1e-3  # the restarts disagree: the check means something
    best = leiden_modules(G, seed=0, n_restarts=8)
    assert best.score == pytest.approx(scores.max(), abs=1e-12)
    assert all(best.score >= q - 1e-12 for q in scores)
    assert best.score > scores.min() + 1e-3
    # the score is that of the returned membership (igraph's modularity, -1 as singletons)
    labels = best.membership.copy()
    alone = labels == -1
    labels[alone] = labels.max() + 1 + np.arange(alone.sum())
    assert best.score == pytest.approx(
        g.modularity(labels.tolist(), weights=weights, resolution=1.0, directed=False), abs=1e-12
    )
    # a single restart is the first of those seeds
    single = leiden_modules(G, seed=0, n_restarts=1)
    assert single.score == pytest.approx(scores[0], abs=1e-12)


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


def fragment_graph() -> InteractionGraph:
    """Two large modules A and B, a chain C linked to A by one edge barely above ε, and a pair D
    linked to nothing (epsilon 1, so the cost of an edge is ½ ln E).

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


def strength_share(graph, members):
    """Share of the total cost strength (sum of both ends of every edge) held by `members`."""
    ids = graph.node_ids
    costs = [0.5 * np.log(np.maximum(E, 1.0)) for E in graph.edges.values()]
    strength = np.zeros(len(ids))
    offsets = graph.offsets
    for l, cost in enumerate(costs):
        strength[offsets[l] : offsets[l + 1]] += cost.sum(0)
        strength[offsets[l + 1] : offsets[l + 2]] += cost.sum(1)
    return strength[[ids.index(n) for n in members]].sum() / strength.sum()


A = ["L0:0", "L0:1", "L1:0", "L1:1", "L2:0", "L2:1"]
B = ["L0:2", "L0:3", "L1:2", "L1:3", "L2:2", "L2:3"]
C, D = ["L0:4", "L1:4"], ["L0:5", "L1:5"]


def modules_of(part):
    return sorted(sorted(m) for m in part.modules)


def test_n_modules_attaches_small_fragments():
    graph = fragment_graph()
    ids = graph.node_ids
    # fragments: below the default share for two modules, 0.1 / 2 (and for one, 0.1)
    assert strength_share(graph, C) < 0.02 and strength_share(graph, D) < 0.02
    assert min(strength_share(graph, A), strength_share(graph, B)) > 0.4
    part = leiden_modules(graph, n_modules=2)
    # C is attached to the module it links to; D links to nothing and is in no module
    assert modules_of(part) == sorted([sorted(A + C), sorted(B)])
    assert all(part.membership[ids.index(n)] == -1 for n in D)
    # at that resolution Leiden itself keeps C and D apart: the attachment did the merging
    raw = leiden_modules(graph, resolution=part.resolution)
    assert sorted(C) in modules_of(raw) and sorted(D) in modules_of(raw)
    # the coarsest such partition: a little lower, A and B merge
    lower = leiden_modules(graph, resolution=part.resolution / 1.1)
    assert sorted(A + B) in [sorted(set(m) - set(C)) for m in lower.modules]
    # D is a connected part of its own, yet one module is possible: D is a fragment
    assert modules_of(leiden_modules(graph, n_modules=1)) == [sorted(A + B + C)]
    # counting every module, the two modules are {A, B, C} and the fragment D
    literal = leiden_modules(graph, n_modules=2, min_module_share=0.0)
    assert modules_of(literal) == sorted([sorted(A + B + C), sorted(D)])
    # the score and costs are those of the returned membership
    assert part.score == pytest.approx(
        modularity_score(graph, part.membership, resolution=part.resolution), abs=1e-12
    )


def test_n_modules_counts_large_modules_without_outputs():
    """A network split by depth (as the pretrained MNIST MLP is): the early module holds no
    output, yet it is one of the two modules."""
    strong = np.exp(8.0)
    E1 = np.full((3, 3), strong)  # L0 → L1: module X
    E2 = np.zeros((3, 3))
    E2[0, 0] = np.exp(2.0)  # L1 → L2: one link between X and Y (cost 1)
    E3 = np.full((2, 3), strong)  # L2 → L3 (the output): module Y
    graph = InteractionGraph.from_matrices([E1, E2, E3], epsilon=1.0)
    X = [f"L{l}:{i}" for l in (0, 1) for i in range(3)]
    Y = [f"L2:{i}" for i in range(3)] + ["L3:0", "L3:1"]
    part = leiden_modules(graph, n_modules=2)
    assert modules_of(part) == sorted([sorted(X), sorted(Y)])


def test_n_modules_impossible_with_a_share_says_so():
    graph = fragment_graph()
    with pytest.raises(ValueError, match=r"at most 3 modules .* holding ≥ 0.3 .*min_module_share"):
        leiden_modules(graph, n_modules=4, min_module_share=0.3)
    parts = InteractionGraph.from_matrices([np.eye(2) * 9.0], epsilon=1.0)
    with pytest.raises(ValueError, match="2 separate connected parts of that share"):
        leiden_modules(parts, n_modules=1)
    for bad, error in [(-0.1, ValueError), (1.0, ValueError), (float("nan"), ValueError)]:
        with pytest.raises(error, match="'min_module_share'"):
            leiden_modules(graph, n_modules=2, min_module_share=bad)
    with pytest.raises(TypeError, match="'min_module_share'"):
        leiden_modules(graph, n_modules=2, min_module_share="small")


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


# --------------------------------------------------------------------------------------------
# Leiden at scale (issue 16): restarts in worker processes, early stop, time per restart
# --------------------------------------------------------------------------------------------


@pytest.fixture
def spied_workers(monkeypatch):
    """Worker processes and the early stop on any graph (size thresholds lowered to 0); the
    pools started."""
    from modgraph import _leiden_worker, cluster

    started = []

    class Spy(_leiden_worker.Workers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(cluster, "_PARALLEL_MIN_EDGES", 0)
    monkeypatch.setattr(cluster, "_STOP_MIN_EDGES", 0)
    monkeypatch.setattr(cluster, "Workers", Spy)
    monkeypatch.setattr(_leiden_worker, "worker_count", lambda n_restarts: 2)
    monkeypatch.setattr(cluster, "worker_count", lambda n_restarts: 2)
    return started


def test_restarts_in_worker_processes_equal_the_in_process_run(spied_workers, monkeypatch, caplog):
    """The workers answer (no fallback to this process: with NumPy 2.4, ``np.load`` on the
    pipe itself had failed in every worker, and the search had quietly run here)."""
    import logging

    from modgraph import cluster

    G, _ = planted(0.6, 1)  # noisy: the restarts give different partitions
    nmod = nx.random_partition_graph([50] * 8, 12 / 49, 4 / 350, seed=1)
    runs = [
        (G, {"seed": 0, "n_restarts": 4}),
        (planted(0.5, 0)[0], {"seed": 0}),  # stops early: restarts left running are dropped
        (nmod, {"n_modules": 3, "n_restarts": 2}),  # many searches on one pool
    ]
    with caplog.at_level(logging.WARNING, logger="modgraph"):
        parallel = [leiden_modules(g, **kw) for g, kw in runs]
    assert "worker" not in caplog.text, caplog.text
    assert len(spied_workers) == len(runs)
    for pool in spied_workers:  # every worker is gone once the call returns
        assert all(p.poll() is not None for p in pool.procs)
    monkeypatch.setattr(cluster, "_PARALLEL_MIN_EDGES", 10**12)
    for (g, kw), par in zip(runs, parallel):
        here = leiden_modules(g, **kw)
        np.testing.assert_array_equal(par.membership, here.membership)
        assert par.score == here.score and par.resolution == here.resolution
    assert len(spied_workers) == len(runs)  # none started for the in-process runs


def test_a_failing_worker_falls_back_to_this_process(spied_workers, monkeypatch, caplog):
    import logging

    from modgraph import _leiden_worker

    monkeypatch.setattr(_leiden_worker, "_WORKER_CODE", "import sys; sys.exit(3)")
    G, _ = planted(0.6, 1)
    with caplog.at_level(logging.WARNING, logger="modgraph"):
        part = leiden_modules(G, seed=0, n_restarts=3)
    assert "worker process failed" in caplog.text
    monkeypatch.setattr(_leiden_worker, "_WORKER_CODE", "")
    from modgraph import cluster

    monkeypatch.setattr(cluster, "_PARALLEL_MIN_EDGES", 10**12)
    here = leiden_modules(G, seed=0, n_restarts=3)
    np.testing.assert_array_equal(part.membership, here.membership)


def early_stop_fixtures():
    rng = np.random.default_rng(0)
    E = rng.lognormal(0, 1, (30, 20)) * (rng.random((30, 20)) < 0.3)
    yield InteractionGraph.from_matrices([E, rng.lognormal(0, 1, (10, 30))], epsilon=0.5), {}
    for mixing, seed in [(0.3, 0), (0.5, 0), (0.5, 3)]:
        yield planted(mixing, seed)[0], {"seed": seed}
    yield nx.random_partition_graph([50] * 8, 12 / 49, 4 / 350, seed=1), {"n_modules": 3}
    yield fragment_graph(), {"n_modules": 2}


def test_early_stop_returns_the_full_runs_partition(monkeypatch):
    """On the fixtures (small graphs, where the library itself runs every restart: see
    test_n_modules_impossible_says_so's path graph, where the best is found late)."""
    from modgraph import cluster

    calls = []
    library_restart = cluster.restart

    def counted(*args):
        calls.append(args)
        return library_restart(*args)

    monkeypatch.setattr(cluster, "restart", counted)
    monkeypatch.setattr(cluster, "_STOP_MIN_EDGES", 0)  # the fixtures are small graphs
    fixtures = list(early_stop_fixtures())
    early = [leiden_modules(g, **kw) for g, kw in fixtures]
    n_early = len(calls)
    monkeypatch.setattr(cluster, "_STOP_AFTER", 0)
    for (g, kw), part in zip(fixtures, early):
        full = leiden_modules(g, **kw)
        np.testing.assert_array_equal(part.membership, full.membership)
        assert part.score == full.score and part.resolution == full.resolution
    assert n_early < 0.7 * (len(calls) - n_early)  # the early stop saved restarts


def test_progress_reports_the_time_per_restart(monkeypatch, caplog, capsys):
    import logging
    import re

    from modgraph import cluster
    from modgraph.options import Options

    G, _ = planted(0.3, 0)
    monkeypatch.setattr(cluster, "_STOP_MIN_EDGES", 0)
    with caplog.at_level(logging.INFO, logger="modgraph"):
        leiden_modules(G, seed=0)
    lines = [r.getMessage() for r in caplog.records]
    each = [m for m in lines if re.match(r"Leiden restart \d/8 at γ=1: \d+\.\d\d s, Q_deg=", m)]
    assert len(each) == 2  # a clean graph: the second restart repeats the first, and it stops
    assert any(re.search(r"2 of 8 restarts, \d+\.\d\d s per restart.*stopped", m) for m in lines)
    monkeypatch.setattr(cluster, "_BAR_DELAY", 0)
    cluster.search_modules(G, Options(progress=True).validated("leiden_modules"))
    err = capsys.readouterr().err
    assert "Leiden γ=1" in err and re.search(r"s/restart=\d+\.\d\d", err)
