"""Property tests (hypothesis) on the pure functions: metric, costs, GraphML, linear bases."""

from __future__ import annotations

import igraph as ig
import networkx as nx
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from modgraph import InteractionGraph, degeneracy_cost, interaction_basis, modularity_score

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sizes = st.lists(st.integers(1, 6), min_size=2, max_size=4)


@st.composite
def graphs(draw):
    ks = draw(sizes)
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    mats = [
        rng.lognormal(0, 3, (b, a)) * (rng.random((b, a)) < 0.7) for a, b in zip(ks[:-1], ks[1:])
    ]
    eps = draw(st.floats(1e-3, 10.0))
    importance = [rng.lognormal(0, 5, k) for k in ks]
    return InteractionGraph.from_matrices(mats, epsilon=eps, importance=importance), rng


@SETTINGS
@given(graphs(), st.floats(0.05, 5.0))
def test_modularity_equals_igraph(data, resolution):
    graph, rng = data
    membership = rng.integers(-1, 3, graph.n_nodes)
    src, dst, c = graph.undirected_edges("cost")
    if c.sum() == 0:
        assert modularity_score(graph, membership, resolution=resolution) == 0.0
        return
    m = membership.copy()
    m[m < 0] = 100 + np.arange((m < 0).sum())  # -1: singletons
    g = ig.Graph(n=graph.n_nodes, edges=np.column_stack([src, dst]), directed=False)
    ref = g.modularity(list(m), weights=c, resolution=resolution, directed=False)
    assert abs(modularity_score(graph, membership, resolution=resolution) - ref) < 1e-12


@SETTINGS
@given(
    st.lists(st.floats(0, 1e12, allow_nan=False), min_size=1, max_size=20),
    st.floats(1e-9, 1e9),
)
def test_costs_are_zero_below_epsilon_and_monotone(values, eps):
    E = np.sort(np.asarray(values))
    c = degeneracy_cost(E, eps)
    assert (c >= 0).all()
    assert (c[E <= eps] == 0).all() and (c[E > eps] > 0).all()
    assert (np.diff(c) >= 0).all()
    np.testing.assert_allclose(c[E > eps], 0.5 * np.log(E[E > eps] / eps))


layer_names = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="._"),
    min_size=1,
    max_size=8,
).filter(lambda s: s != "output")


@SETTINGS
@given(graphs(), st.lists(layer_names, min_size=4, max_size=4, unique=True), st.data())
def test_graphml_round_trip_of_random_graphs(tmp_path_factory, data, names, more):
    graph, rng = data
    graph = InteractionGraph.from_matrices(
        [graph.edges[p] for p in zip(graph.layers[:-1], graph.layers[1:])],
        epsilon=graph.epsilon,
        layers=names[: len(graph.layers)],
        importance=[graph.importance[n] for n in graph.layers],
    )
    membership = rng.integers(-1, 4, graph.n_nodes)
    path = tmp_path_factory.mktemp("g") / "g.graphml"
    graph.to_graphml(path, membership, min_weight=0.0)
    G = nx.read_graphml(path)
    expected = graph.to_networkx(membership, min_weight=0.0)
    assert list(G.nodes) == list(expected.nodes)
    assert dict(G.nodes(data=True)) == dict(expected.nodes(data=True))  # exact: repr round-trips
    assert {(u, v): d for u, v, d in G.edges(data=True)} == {
        (u, v): d for u, v, d in expected.edges(data=True)
    }


@SETTINGS
@given(st.integers(2, 5), st.integers(2, 5), st.integers(0, 2**31))
def test_basis_of_random_linear_maps(d_in, d_hidden, seed):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(d_in, d_hidden, dtype=torch.float64), nn.Linear(d_hidden, 3, dtype=torch.float64)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    x = torch.randn(200, d_in, generator=gen, dtype=torch.float64) * torch.linspace(
        0.5, 2.0, d_in, dtype=torch.float64
    )
    bases = interaction_basis(model, x, output_basis="pca", progress=False)
    a = x.numpy()
    for name, b in list(bases.items())[:-1]:
        f = b.transform(a)
        scale = b.eigenvalues.max()
        np.testing.assert_allclose(f.T @ f / len(f), np.diag(b.eigenvalues), atol=1e-9 * scale)
        assert b.k <= min(b.d, 3)  # at most the rank of the linear map to the output
        with torch.no_grad():
            a = model[int(name)](torch.from_numpy(a)).numpy()
    # ∂f̂_1/∂f̂_0 has orthonormal columns (a signed permutation when k_0 = k_1)
    b0, b1 = bases["0"], bases["1"]
    J = b1.C.T @ model[0].weight.detach().numpy() @ b0.C_pinv.T
    np.testing.assert_allclose(J.T @ J, np.eye(b0.k), atol=1e-6)
