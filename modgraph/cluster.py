"""Searching partitions: Leiden on the degeneracy-cost graph.

leidenalg's ``RBConfigurationVertexPartition`` with weights ``c`` maximises
``Σ_ij (c_ij − γ k_i k_j / 2W) δ(m_i, m_j)``, which is ``2W · Q_deg(·; γ)``: Leiden optimises exactly
the degeneracy-based modularity. ``n_restarts`` runs with distinct seeds derived from ``seed``; the
best by ``Q_deg`` wins (the first on ties), so the same seed always gives the same partition.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import triu as sp_triu

from ._validate import check_float, check_int, check_seed
from .errors import ModgraphTypeError, ModgraphValueError
from .modularity import canonical_membership, check_weights, cost_split, modularity_from_edges

__all__ = ["Partition", "leiden_modules"]

logger = logging.getLogger("modgraph")


@dataclass(frozen=True)
class Partition:
    """Modules found by :func:`leiden_modules`.

    Attributes
    ----------
    membership : ndarray of int, shape (n_features,)
        Module number per feature in ``graph.node_ids`` order; modules are numbered by size
        (largest first); ``-1`` for a feature in no module (isolated, or alone in its group).
    modules : list of list of str
        Node ids per module (modules of two or more features), largest first.
    score : float
        ``Q_deg`` at ``resolution``.
    cross_cost, cross_fraction : float
        ``X(P)`` (nats) and its share of the total cost.
    resolution : float
    seed : int
    n_restarts : int
    """

    membership: np.ndarray
    modules: list[list[str]]
    score: float
    cross_cost: float
    cross_fraction: float
    resolution: float
    seed: int
    n_restarts: int


def _relabel(raw: np.ndarray) -> np.ndarray:
    """Modules of size >= 2 numbered by size (ties: lowest node first); others -1."""
    labels, first, sizes = np.unique(raw, return_index=True, return_counts=True)
    order = np.lexsort((first, -sizes))
    new = np.full(labels.shape[0], -1, dtype=np.int64)
    big = order[sizes[order] >= 2]
    new[big] = np.arange(big.shape[0])
    return new[np.searchsorted(labels, raw)]


class _NetworkxCosts:
    """Adapter: a networkx graph as a cost graph (edge attribute ``cost``, else ``weight``, else 1;
    directions are merged by summing)."""

    def __init__(self, G: Any) -> None:
        import networkx as nx

        nodes = list(G.nodes)
        attrs = {k for _, _, d in G.edges(data=True) for k in d}
        attr = "cost" if "cost" in attrs else "weight" if "weight" in attrs else None
        A = nx.to_scipy_sparse_array(G, nodelist=nodes, weight=attr, format="csr")
        if G.is_directed():
            A = A + A.T
        upper = sp_triu(A, k=1).tocoo()
        self.n_nodes = len(nodes)
        self.node_ids = [str(v) for v in nodes]
        self._edges = (
            upper.row.astype(np.int64),
            upper.col.astype(np.int64),
            np.asarray(upper.data, dtype=np.float64),
        )
        check_weights(self._edges[2], f"edge attribute {attr!r}", "leiden_modules")

    def undirected_edges(self, weight: str = "cost") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._edges


def _cost_graph(graph: Any) -> Any:
    if hasattr(graph, "undirected_edges"):
        return graph
    try:
        import networkx as nx
    except ImportError:  # pragma: no cover
        nx = None
    if nx is not None and isinstance(graph, nx.Graph):
        return _NetworkxCosts(graph)
    raise ModgraphTypeError(
        "leiden_modules needs an InteractionGraph (from interaction_graph) or a networkx graph "
        f"with edge attribute 'cost' or 'weight'. Got {type(graph).__name__}."
    )


class _Search:
    """The cost graph in igraph form plus the metric, for repeated Leiden runs."""

    def __init__(self, graph: Any) -> None:
        import igraph as ig

        self.n = graph.n_nodes
        self.src, self.dst, self.cost = graph.undirected_edges("cost")
        self.g = ig.Graph(n=self.n, edges=np.column_stack([self.src, self.dst]), directed=False)
        self.g.es["cost"] = self.cost

    def run(self, resolution: float, seed: int, n_restarts: int) -> tuple[np.ndarray, float]:
        import leidenalg as la

        if self.cost.size == 0:  # nothing interacts above ε: every feature alone
            return np.full(self.n, -1, dtype=np.int64), 0.0
        seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n_restarts)
        best, best_q = None, -math.inf
        for s in seeds:
            part = la.find_partition(
                self.g,
                la.RBConfigurationVertexPartition,
                weights="cost",
                resolution_parameter=resolution,
                n_iterations=-1,
                seed=int(s),
            )
            m = np.asarray(part.membership, dtype=np.int64)
            q = modularity_from_edges(self.n, self.src, self.dst, self.cost, m, resolution)
            if q > best_q:
                best, best_q = m, q
        assert best is not None
        return _relabel(best), best_q

    def count(self, membership: np.ndarray) -> int:
        return int(membership.max(initial=-1) + 1)

    def n_components(self) -> int:
        sizes = self.g.connected_components().sizes()
        return sum(1 for s in sizes if s >= 2)


def _bisect(
    search: _Search, n_modules: int, seed: int, n_restarts: int
) -> tuple[np.ndarray, float, float]:
    """Find a resolution giving ``n_modules`` modules by geometric bisection."""
    floor = search.n_components()
    connected = int(
        np.count_nonzero(np.bincount(np.r_[search.src, search.dst], minlength=search.n))
    )
    if n_modules < floor:
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible: the cost graph has {floor} separate connected "
            "parts, so every partition has at least that many modules. Ask for more modules, or "
            "lower epsilon/tau so more interactions count."
        )
    if n_modules > connected // 2:
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible: only {connected} features interact above ε, "
            f"so at most {connected // 2} modules of two or more features exist."
        )
    seen: dict[float, int] = {}

    def evaluate(gamma: float) -> tuple[np.ndarray, float, int]:
        m, q = search.run(gamma, seed, n_restarts)
        seen[gamma] = search.count(m)
        return m, q, seen[gamma]

    lo = hi = gamma = 1.0
    m, q, c = evaluate(gamma)
    if c < n_modules:  # too few modules: raise γ until the count reaches n_modules
        while c < n_modules and hi < 1e8:
            previous = c
            lo, hi = hi, hi * 4
            gamma = hi
            m, q, c = evaluate(gamma)
            if c < previous:  # past the peak: modules now dissolve into single features
                raise ModgraphValueError(
                    f"n_modules={n_modules} is out of reach: raising the resolution gives at most "
                    f"{max(seen.values())} modules of two or more features before they dissolve "
                    f"into single features (counts: {sorted(seen.items())}). Ask for fewer."
                )
    else:  # too many: lower γ
        while c > n_modules and lo > 1e-8:
            hi, lo = lo, lo / 4
            gamma = lo
            m, q, c = evaluate(gamma)
    if c == n_modules:
        return m, q, gamma
    for _ in range(48):
        mid = math.sqrt(lo * hi)
        m, q, c = evaluate(mid)
        if c == n_modules:
            return m, q, mid
        lo, hi = (mid, hi) if c < n_modules else (lo, mid)
        if hi / lo < 1 + 1e-9:
            break
    items = sorted(seen.items())
    if len(items) > 8:
        items = items[:4] + items[-4:]
    counts = ", ".join(f"γ={g:.4g}: {k}" for g, k in items)
    raise ModgraphValueError(
        f"n_modules={n_modules} is impossible to reach by changing the resolution: the number "
        f"of modules jumps over it ({counts}). Ask for a neighbouring number of modules."
    )


def leiden_modules(
    graph: Any,
    *,
    resolution: float = 1.0,
    seed: int = 0,
    n_restarts: int = 8,
    n_modules: int | None = None,
) -> Partition:
    """Modules of an interaction graph: Leiden on the degeneracy costs, best of several seeds.

    Parameters
    ----------
    graph : InteractionGraph or networkx.Graph
        A networkx graph is read with edge attribute ``cost`` (else ``weight``, else 1) as
        the weights; its node ids are ``str(node)``.
    resolution : float > 0
        ``γ`` of ``Q_deg`` (ignored when ``n_modules`` is set).
    seed : int
        Seeds of the ``n_restarts`` runs are drawn from ``numpy.random.default_rng(seed)``.
    n_restarts : int >= 1
    n_modules : int, optional
        Bisect the resolution until exactly this many modules (of two or more features) result;
        raises if the count jumps over it or is out of reach.

    Returns
    -------
    Partition

    Raises
    ------
    ModgraphValueError
        Bad parameters, or an unreachable ``n_modules``.
    """
    where = "leiden_modules"
    resolution = check_float(resolution, "resolution", where, low=0.0)
    seed = check_seed(seed, where)
    n_restarts = int(check_int(n_restarts, "n_restarts", where, minimum=1) or 1)
    graph = _cost_graph(graph)
    if n_modules is not None:
        n_modules = check_int(n_modules, "n_modules", where, minimum=1)
        if n_modules > graph.n_nodes:
            raise ModgraphValueError(
                f"n_modules={n_modules} is larger than the number of features ({graph.n_nodes})."
            )
    search = _Search(graph)
    if n_modules is None:
        membership, _ = search.run(resolution, seed, n_restarts)
    else:
        membership, _, resolution = _bisect(search, n_modules, seed, n_restarts)
    # score the relabelled partition (features in no module count as singletons)
    score = modularity_from_edges(
        search.n, search.src, search.dst, search.cost, membership, resolution
    )
    split = cost_split(search.src, search.dst, search.cost, canonical_membership(membership))
    ids = graph.node_ids
    order = np.argsort(membership, kind="stable")
    bounds = np.searchsorted(membership[order], np.arange(search.count(membership) + 1))
    modules = [[ids[i] for i in order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
    membership.setflags(write=False)
    logger.info("Leiden: %d modules, Q_deg=%.4f at γ=%.4g", len(modules), score, resolution)
    return Partition(
        membership=membership,
        modules=modules,
        score=score,
        cross_cost=split.cross,
        cross_fraction=split.cross_fraction,
        resolution=resolution,
        seed=seed,
        n_restarts=n_restarts,
    )
