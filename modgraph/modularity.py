"""The degeneracy-based modularity metric (arXiv 2405.10927 §4; formalised in docs/method.md).

An interaction of strength ``E`` between modules costs about ``½ ln(E/ε)`` nats of degeneracy
(nothing below the tolerance ``ε``). With those *degeneracy costs* ``c`` as weights of the
undirected feature graph, a partition ``P`` (membership ``m``) scores::

    Q_deg(P; γ) = (1/2W) Σ_ij [c_ij − γ k_i k_j / 2W] 1[m_i = m_j],   k_i = Σ_j c_ij,  2W = Σ_ij c_ij

the Newman–Girvan modularity of the cost graph. The cross-module interaction cost
``X(P) = Σ_{i<j, m_i ≠ m_j} c_ij`` is the degeneracy (in nats) that the interactions between modules
remove; ``1 − X/W`` is the share of cost inside modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validate import check_choice, check_float
from .errors import ModgraphTypeError
from .graph import InteractionGraph, degeneracy_cost

__all__ = [
    "PartitionCost",
    "degeneracy_cost",
    "modularity_score",
    "partition_cost",
]


@dataclass(frozen=True)
class PartitionCost:
    """How a partition splits the degeneracy cost (nats).

    Attributes
    ----------
    total : float
        ``W = Σ_{i<j} c_ij``, the total cost of all interactions.
    internal : float
        Cost of interactions inside modules.
    cross : float
        ``X(P)``, cost of interactions between modules.
    cross_fraction : float
        ``X / W`` (0 for a graph with no cost).
    """

    total: float
    internal: float
    cross: float
    cross_fraction: float


def canonical_membership(membership: np.ndarray) -> np.ndarray:
    """Labels 0..m-1 where each ``-1`` (no module) becomes its own singleton."""
    m = np.asarray(membership, dtype=np.int64).copy()
    alone = m < 0
    if alone.any():
        top = m.max(initial=-1) + 1
        m[alone] = top + np.arange(int(alone.sum()))
    _, m = np.unique(m, return_inverse=True)
    return m


def module_lists(membership: np.ndarray, ids: Any) -> list[list[str]]:
    """The node ids of each module ``0 … max`` of ``membership (n,)``, in node order (features
    in no module, ``-1``, are left out)."""
    order = np.argsort(membership, kind="stable")
    bounds = np.searchsorted(membership[order], np.arange(int(membership.max(initial=-1)) + 2))
    return [[ids[i] for i in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]


def node_strength(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``k_i = Σ_j w_ij`` of every node, shape (n,), from an undirected edge list (each edge once)."""
    return np.bincount(src, weight, minlength=n) + np.bincount(dst, weight, minlength=n)


def modularity_from_edges(
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    weight: np.ndarray,
    membership: np.ndarray,
    resolution: float = 1.0,
) -> float:
    """Newman–Girvan modularity of an undirected weighted graph given as an edge list.

    Each undirected edge appears once in ``(src, dst)``. ``membership (n,)`` may use ``-1`` for
    singletons. Returns 0.0 for a graph with no weight.
    """
    m = canonical_membership(membership)
    two_w = 2.0 * float(weight.sum())
    if two_w == 0.0:
        return 0.0
    internal = 2.0 * float(weight[m[src] == m[dst]].sum())
    per_module = np.bincount(m, node_strength(n, src, dst, weight))
    return (internal - resolution * float(per_module @ per_module) / two_w) / two_w


def _check_graph(graph: Any, where: str) -> InteractionGraph:
    if not isinstance(graph, InteractionGraph):
        raise ModgraphTypeError(
            f"{where} needs an InteractionGraph (from interaction_graph, or the "
            f"interaction_graph of a ModuleResult). Got {type(graph).__name__}."
        )
    return graph


_WEIGHTS = ("cost", "weight", "sqrt_weight")


def modularity_score(
    graph: InteractionGraph,
    membership: Any,
    *,
    resolution: float = 1.0,
    weight: str = "cost",
) -> float:
    """``Q_deg`` of a partition of the interaction graph.

    Parameters
    ----------
    graph : InteractionGraph
    membership : dict of str to int, or sequence of int, shape (n_features,)
        Module of each feature (node id → label, or labels in ``graph.node_ids`` order);
        ``-1`` marks a feature in no module (scored as a singleton).
    resolution : float > 0
        ``γ``.
    weight : {"cost", "weight", "sqrt_weight"}
        ``"cost"`` (default): ``Q_deg`` on degeneracy costs. For comparison, plain Newman
        modularity on the raw strengths ``E`` (``"weight"``) or on ``√E`` (``"sqrt_weight"``),
        over the edges that carry cost (``E > ε``).

    Returns
    -------
    float
        ``(1/2W) Σ_ij [c_ij − γ k_i k_j / 2W] 1[m_i = m_j]``; 0.0 when no edge has cost.

    Notes
    -----
    Equals ``igraph.Graph.modularity(membership, weights=c, resolution=γ, directed=False)`` on the
    undirected cost graph, and ``RBConfigurationVertexPartition.quality() / 2W`` (leidenalg).
    """
    where = "modularity_score"
    resolution = check_float(resolution, "resolution", where, low=0.0)
    check_choice(weight, "weight", where, _WEIGHTS)
    graph = _check_graph(graph, where)
    m = graph.membership_array(membership, where)
    src, dst, w = graph.undirected_edges(weight)
    return modularity_from_edges(len(graph.node_ids), src, dst, w, m, resolution)


def partition_cost(graph: InteractionGraph, membership: Any) -> PartitionCost:
    """Split the total degeneracy cost into the parts inside and between modules.

    Parameters
    ----------
    graph : InteractionGraph
    membership : dict of str to int, or sequence of int, shape (n_features,)
        As for :func:`modularity_score`.
    """
    graph = _check_graph(graph, "partition_cost")
    m = canonical_membership(graph.membership_array(membership, "partition_cost"))
    src, dst, c = graph.undirected_edges("cost")
    return cost_split(src, dst, c, m)


def cost_split(src: np.ndarray, dst: np.ndarray, c: np.ndarray, m: np.ndarray) -> PartitionCost:
    total = float(c.sum())
    cross = float(c[m[src] != m[dst]].sum())
    return PartitionCost(
        total=total,
        internal=total - cross,
        cross=cross,
        cross_fraction=cross / total if total > 0 else 0.0,
    )
