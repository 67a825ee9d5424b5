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


def _output_features(graph: Any) -> np.ndarray:
    """Mask of the features a module must hold to count towards ``n_modules``.

    For an :class:`InteractionGraph` these are the features of the last node layer (the model
    output); a networkx graph has no output layer, so every feature counts.
    """
    offsets = getattr(graph, "offsets", None)
    mask = np.ones(graph.n_nodes, dtype=bool)
    if offsets is not None and len(offsets) >= 3:
        mask[: offsets[-2]] = False
    return mask


def _count(membership: np.ndarray, anchors: np.ndarray) -> int:
    """Modules (of two or more features) that hold at least one anchor feature."""
    labels = membership[anchors]
    return int(np.unique(labels[labels >= 0]).size)


def _attach_unanchored(search: _Search, membership: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Merge every module that holds no anchor feature into the anchored module it shares the
    most cost with (strongest link first, repeatedly, so chains of such modules follow their
    link); a group with no cost towards any anchored module is left in no module (``-1``)."""
    m = membership.copy()
    attached = 0
    while True:
        k = int(m.max(initial=-1)) + 1
        anchored = np.zeros(k, dtype=bool)
        anchored[m[anchors & (m >= 0)]] = True
        loose = np.flatnonzero(~anchored)
        if loose.size == 0:
            break
        a, b = m[search.src], m[search.dst]
        between = (a >= 0) & (b >= 0) & (a != b)
        links = np.zeros((k, k))
        np.add.at(links, (a[between], b[between]), search.cost[between])
        links += links.T
        to_anchored = links[np.ix_(loose, np.flatnonzero(anchored))]
        if to_anchored.size == 0 or to_anchored.max() <= 0.0:
            dropped = np.isin(m, loose)
            logger.info(
                "n_modules: %d features in %d groups share no cost with any module holding "
                "outputs; they are left in no module",
                int(dropped.sum()),
                loose.size,
            )
            m[dropped] = -1
            break
        i, j = np.unravel_index(int(to_anchored.argmax()), to_anchored.shape)
        m[m == loose[i]] = np.flatnonzero(anchored)[j]
        attached += 1
    if attached:
        logger.info("n_modules: %d groups without outputs attached to modules", attached)
    # features in no module become their own singleton labels, then renumber by size
    raw = np.where(m >= 0, m, k + np.arange(m.size))
    return _relabel(raw)


def _coarsest(
    search: _Search, n_modules: int, seed: int, n_restarts: int, anchors: np.ndarray
) -> tuple[np.ndarray, float]:
    """The lowest resolution at which Leiden gives ``n_modules`` modules holding anchors.

    Geometric search: bracket the point where the count of anchored modules first reaches
    ``n_modules`` (factors of 4 from ``γ = 1``), bisect the bracket down to a ratio of 1.03
    (further while the count there jumps past ``n_modules``), and return the lowest ``γ`` seen
    whose partition has exactly ``n_modules`` anchored modules.
    """
    parts = [np.asarray(p) for p in search.g.connected_components() if len(p) >= 2]
    anchored_parts = sum(1 for p in parts if anchors[p].any())
    touched = np.bincount(np.r_[search.src, search.dst], minlength=search.n) > 0
    interacting, outputs = int(touched.sum()), int((touched & anchors).sum())
    what = "separate connected parts" + ("" if anchors.all() else " that hold output features")
    kind = "modules of two or more features" + ("" if anchors.all() else " holding outputs")
    if n_modules < anchored_parts:
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible: the cost graph has {anchored_parts} {what}, "
            "so every partition has at least that many modules. Ask for more modules, or "
            "lower epsilon/tau so more interactions count."
        )
    most = min(interacting // 2, outputs)
    if n_modules > most:
        why = (
            f"only {interacting} features interact above ε"
            if anchors.all()
            else f"{interacting} features interact above ε, {outputs} of them output features"
        )
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible: {why}, so at most {most} {kind} exist."
        )
    seen: dict[float, tuple[np.ndarray, int]] = {}

    def count_at(gamma: float) -> int:
        if gamma not in seen:
            m, _ = search.run(gamma, seed, n_restarts)
            seen[gamma] = (m, _count(m, anchors))
        return seen[gamma][1]

    lo = hi = 1.0
    if count_at(1.0) >= n_modules:  # lower γ until the count falls below n_modules
        # (or until the modules are the connected parts: no lower γ can merge more)
        while count_at(lo) >= n_modules and lo > 1e-8 and seen[lo][0].max() + 1 > len(parts):
            hi, lo = lo, lo / 4
    else:  # raise γ until the count reaches n_modules
        while count_at(hi) < n_modules:
            previous = count_at(hi)
            lo, hi = hi, hi * 4
            if count_at(hi) < previous:  # past the peak: look between the last two steps
                steps = [lo * 4 ** (i / 8) for i in range(1, 8)]
                reached = [g for g in steps if count_at(g) >= n_modules]
                if reached:
                    lo, hi = max(g for g in [lo, *steps] if g < reached[0]), reached[0]
                    break
            if count_at(hi) < previous or hi > 1e8:  # modules dissolve into single features
                raise ModgraphValueError(
                    f"n_modules={n_modules} is out of reach: raising the resolution gives at "
                    f"most {max(c for _, c in seen.values())} {kind} before they dissolve "
                    "into single features (counts: "
                    f"{sorted((g, c) for g, (_, c) in seen.items())}). Ask for fewer."
                )
    # invariant: count(lo) < n_modules <= count(hi); narrow to a ratio of 1.03 once count(hi)
    # is exactly n_modules, further (to 1 + 1e-9) while it jumps past n_modules
    while count_at(lo) < n_modules and hi / lo > 1 + 1e-9:
        if hi / lo <= 1.03 and count_at(hi) == n_modules:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if count_at(mid) < n_modules else (lo, mid)
    exact = sorted(g for g, (_, c) in seen.items() if c == n_modules)
    if not exact:
        items = sorted((g, c) for g, (_, c) in seen.items())
        if len(items) > 8:
            items = items[:4] + items[-4:]
        counts = ", ".join(f"γ={g:.4g}: {k}" for g, k in items)
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible to reach by changing the resolution: the number "
            f"of {kind} jumps over it ({counts}). Ask for a neighbouring number of modules."
        )
    gamma = exact[0]
    return _attach_unanchored(search, seen[gamma][0], anchors), gamma


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
        Return the coarsest partition into exactly this many modules: the lowest resolution at
        which Leiden gives ``n_modules`` modules that hold output features (features of the last
        node layer; for a networkx graph, any module counts), found by geometric bisection.
        Modules holding no output feature are then merged into the output module they share
        the most cost with, or left in no module (``-1``) if they share none. Raises if the
        count jumps over ``n_modules`` or cannot reach it.

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
        anchors = _output_features(graph)
        membership, resolution = _coarsest(search, n_modules, seed, n_restarts, anchors)
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
