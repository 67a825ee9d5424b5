"""Baseline bases (basis="pca", "neuron"): the same graph in other bases, for comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from modgraph import ModgraphValueError, find_modules, interaction_basis, interaction_graph
from tests.reference import activations, brute_edges
from tests.zoo import cases

CASES = [c for c in cases(n=200) if c.name in ("relu", "custom")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("kind", ["pca", "neuron"])
def test_baseline_bases_and_edges_match_brute_force(case, kind):
    graph = interaction_graph(case.model, case.x, basis=kind, progress=False)
    acts = activations(case.x, case.sections)
    for (name, b), a in zip(list(graph.bases.items())[:-1], acts):
        a = a.numpy()
        G = np.cov(a.T, bias=True)
        assert b.kind == kind
        if kind == "neuron":
            np.testing.assert_array_equal(b.C, np.eye(a.shape[1]))
            np.testing.assert_allclose(b.eigenvalues, np.diag(G), rtol=1e-10)
        else:
            w, U = np.linalg.eigh(G)
            np.testing.assert_allclose(b.eigenvalues, w[::-1][: b.k], rtol=1e-9)
            np.testing.assert_allclose(np.abs(b.C.T @ U[:, ::-1][:, : b.k]), np.eye(b.k), atol=1e-8)
            np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.k), atol=1e-10)
        assert b.jacobian_eigenvalues.size == 0, name
    ref = brute_edges(
        case.x, case.sections, [{"mean": b.mean, "C": b.C} for b in graph.bases.values()]
    )
    for (pair, E), R in zip(graph.edges.items(), ref):
        np.testing.assert_allclose(E, R, rtol=1e-8, atol=1e-8 * R.max(), err_msg=str(pair))


def test_the_interaction_basis_is_the_default_and_baselines_need_no_given_bases():
    case = CASES[0]
    default = interaction_basis(case.model, case.x, progress=False)
    assert all(b.kind == "interaction" for b in default.values())
    with pytest.raises(ModgraphValueError, match="basis='pca' only apply"):
        interaction_graph(case.model, case.x, default, basis="pca", progress=False)
    with pytest.raises(ModgraphValueError, match="'basis' parameter of find_modules"):
        find_modules(case.model, case.x, basis="svd", progress=False)
    assert find_modules(case.model, case.x, basis="neuron", progress=False).n_modules >= 1
