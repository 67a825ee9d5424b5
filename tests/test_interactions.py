"""Interaction strengths E against an independent brute-force reference, and known patterns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modgraph import interaction_basis, interaction_graph
from modgraph.toy import block_diagonal_mlp, mlp
from tests.blocks import feature_blocks, product_data, sequential_node_inputs
from tests.reference import brute_edges
from tests.zoo import cases, correlated_inputs

CASES = cases(n=200)


@pytest.mark.parametrize("n_alpha", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_edges_match_brute_force(case, n_alpha):
    bases = interaction_basis(case.model, case.x, progress=False)
    graph = interaction_graph(case.model, case.x, bases, n_alpha=n_alpha, progress=False)
    ref_bases = [{"mean": b.mean, "C": b.C} for b in bases.values()]
    ref = brute_edges(case.x, case.sections, ref_bases, n_alpha=n_alpha)
    assert len(graph.edges) == len(ref)
    for (pair, E), R in zip(graph.edges.items(), ref):
        assert E.shape == R.shape, pair
        np.testing.assert_allclose(E, R, rtol=1e-8, atol=1e-8 * R.max(), err_msg=str(pair))


@pytest.mark.parametrize("n_alpha", [1, 2])
def test_sparse_relu_kernel_matches_brute_force(monkeypatch, n_alpha):
    """The elementwise kernel skips each row's inactive ReLUs on wide layers: forced on at
    every width here, it must give the brute-force edges, and the dense kernel's to 1e-12."""
    from modgraph import elementwise, pairs, sparse_rows

    case = CASES[0]  # ReLU MLP
    assert isinstance(case.model[1], nn.ReLU)
    bases = interaction_basis(case.model, case.x, progress=False)
    dense = interaction_graph(case.model, case.x, bases, n_alpha=n_alpha, progress=False).edges
    monkeypatch.setattr(elementwise, "SPARSE_MIN_WIDTH", 1)
    monkeypatch.setattr(sparse_rows, "SPARSE_MAX_SHARE", 1.0)
    monkeypatch.setattr(elementwise, "SPARSE_MIN_TARGETS", 1)
    monkeypatch.setattr(pairs, "PAIR_MAX_ELEMENTS", 0)  # the row form on every section
    sparse = interaction_graph(case.model, case.x, bases, n_alpha=n_alpha, progress=False).edges
    ref_bases = [{"mean": b.mean, "C": b.C} for b in bases.values()]
    ref = brute_edges(case.x, case.sections, ref_bases, n_alpha=n_alpha)
    for (pair, E), R in zip(sparse.items(), ref):
        np.testing.assert_allclose(E, R, rtol=1e-8, atol=1e-8 * R.max(), err_msg=str(pair))
        assert np.abs(E - dense[pair]).max() <= 1e-12 * dense[pair].max()


def test_integrated_gradient_differs_from_alpha_one_on_nonlinear_model():
    case = CASES[2]  # GELU: the Jacobian depends on the point, so the quadrature matters
    bases = interaction_basis(case.model, case.x, progress=False)
    e1 = interaction_graph(case.model, case.x, bases, n_alpha=1, progress=False).edges
    e4 = interaction_graph(case.model, case.x, bases, n_alpha=4, progress=False).edges
    pair = next(iter(e1))
    assert np.abs(e1[pair] - e4[pair]).max() > 1e-3 * e1[pair].max()


def test_linear_network_gives_permutation_pattern():
    model = nn.Sequential(
        *[m for m in mlp([5, 5, 5, 5], nn.Identity, seed=3) if isinstance(m, nn.Linear)]
    )
    x = correlated_inputs(300, 5, seed=4)
    graph = interaction_graph(model, x, output_basis="pca", progress=False)
    for pair, E in graph.edges.items():
        big = E > 1e-9 * E.max()
        assert (big.sum(0) == 1).all() and (big.sum(1) == 1).all(), (pair, big.astype(int))
        assert E[~big].max(initial=0) < 1e-12 * E.max()


def test_block_diagonal_network_has_no_cross_block_edges():
    model = block_diagonal_mlp([[4, 10, 8, 3], [3, 9, 8, 2]], seed=1)
    n1, n2 = 40, 30
    x = product_data(n1, n2, 4, 3, seed=2)
    graph = interaction_graph(model, x, progress=False)
    labels, purity = feature_blocks(graph.bases, sequential_node_inputs(model, x), n1, n2)
    assert purity.min() > 1 - 1e-10  # every feature depends on exactly one block
    assert set(labels) == {0, 1}
    e = graph.edge_list(min_weight=0.0)
    cross = labels[e["source"]] != labels[e["target"]]
    total = sum(E.sum() for E in graph.edges.values())
    assert e["weight"][cross].sum() < 1e-12 * total
    assert e["weight"][~cross].sum() > 0.99 * total


def test_edges_are_streaming_and_batch_size_independent():
    case = CASES[3]
    bases = interaction_basis(case.model, case.x, progress=False)
    a = interaction_graph(case.model, case.x, bases, batch_size=7, progress=False).edges
    b = interaction_graph(case.model, case.x, bases, batch_size=200, progress=False).edges
    for pair in a:
        np.testing.assert_allclose(a[pair], b[pair], rtol=1e-10, atol=1e-14)


def test_epsilon_default_and_costs():
    case = CASES[0]
    graph = interaction_graph(case.model, case.x, tau=1e-3, progress=False)
    out = case.model(case.x).detach().numpy()
    np.testing.assert_allclose(graph.epsilon, 1e-3 * out.var(0).sum(), rtol=1e-10)
    for pair, c in graph.costs().items():
        E = graph.edges[pair]
        np.testing.assert_allclose(c, 0.5 * np.log(np.maximum(E, graph.epsilon) / graph.epsilon))
    fixed = interaction_graph(case.model, case.x, epsilon=0.5, progress=False)
    assert fixed.epsilon == 0.5 and fixed.tau is None


def test_interaction_graph_rejects_bases_of_another_model():
    case = CASES[0]
    bases = interaction_basis(case.model, case.x, progress=False)
    other = mlp([6, 11, 8, 4], seed=0)
    with pytest.raises(ValueError, match="width"):
        interaction_graph(other, case.x, bases, progress=False)
    with pytest.raises(ValueError, match="dict returned by interaction_basis"):
        interaction_graph(case.model, case.x, {"a": 1}, progress=False)


def test_float32_compute_dtype_stays_close():
    case = CASES[0]
    g64 = interaction_graph(case.model, case.x, progress=False)
    g32 = interaction_graph(case.model, case.x.float(), dtype=torch.float32, progress=False)
    for pair in g64.edges:
        E, F = g64.edges[pair], g32.edges[pair]
        assert E.shape == F.shape
        np.testing.assert_allclose(F, E, rtol=1e-3, atol=1e-4 * E.max())
