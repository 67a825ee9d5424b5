"""Searching partitions: Leiden on the degeneracy-cost graph.

leidenalg's ``RBConfigurationVertexPartition`` with weights ``c`` maximises
``Σ_ij (c_ij − γ k_i k_j / 2W) δ(m_i, m_j)``, which is ``2W · Q_deg(·; γ)``: Leiden optimises exactly
the degeneracy-based modularity. ``n_restarts`` runs with distinct seeds derived from ``seed``; the
best by ``Q_deg`` wins (the first on ties), so the same seed always gives the same partition,
whether the restarts run here or in worker processes (:mod:`modgraph._leiden_worker`), and on
any number of cores.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy.sparse import triu as sp_triu

from ._leiden_worker import Workers, build, restart, worker_count
from .errors import ModgraphTypeError, ModgraphValueError
from .graph import InteractionGraph, check_weights
from .modularity import (
    canonical_membership,
    cost_split,
    modularity_from_edges,
    module_lists,
    node_strength,
)
from .options import Options

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
    if isinstance(graph, InteractionGraph):
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


#: Restarts run in worker processes only on graphs with at least this many edges (the
#: break-even, measured in bench/leiden.py: below it, starting the workers and building the graph
#: in each costs more than the restarts run side by side save). Tests lower it.
_PARALLEL_MIN_EDGES = 200_000
#: On graphs with at least ``_STOP_MIN_EDGES`` edges, a search stops once ``_STOP_AFTER``
#: restarts have returned the best partition so far (0: never). Small graphs run every restart:
#: they are fast, and Leiden can return one local optimum most of the time there (a 6-node path:
#: 5 of 8 restarts give 3 modules, Q_deg 0.26; restart 6 gives 2, Q_deg 0.30).
_STOP_AFTER = 2
_STOP_MIN_EDGES = 100_000
#: leidenalg's ``n_iterations``: -1, until an iteration improves nothing. 2 was measured (README
#: of bench/, "Leiden at scale"): no faster where Leiden settles in one iteration (the layered
#: graphs up to 1.6M edges, clean planted ones), and 1.3–5× faster on noisy graphs only because
#: it stops early, with a lower best ``Q_deg`` (planted, 65 % mixing: 0.256 → 0.244).
_N_ITERATIONS = -1
#: Seconds before a restart bar shows (fast searches show none).
_BAR_DELAY = 0.5


class _Search:
    """The cost graph plus the metric, for repeated Leiden runs (a context manager: it may hold
    worker processes)."""

    def __init__(self, graph: Any, progress: bool | None = None) -> None:
        self.n = graph.n_nodes
        self.src, self.dst, self.cost = graph.undirected_edges("cost")
        self.strength = node_strength(self.n, self.src, self.dst, self.cost)  # k_i, shape (n,)
        self.progress = progress
        self.workers: Workers | None = None
        self.tried_workers = False

    @cached_property
    def g(self) -> Any:
        """The igraph graph in this process (built when first needed)."""
        return build(self.n, self.src, self.dst, self.cost)

    def __enter__(self) -> _Search:
        return self

    def __exit__(self, *exc: object) -> None:
        self._drop_workers()

    def _drop_workers(self) -> None:
        if self.workers is not None:
            self.workers.close()
            self.workers = None

    def _pool(self, n_restarts: int) -> Workers | None:
        """The worker processes, started on first use where they pay; None: run here."""
        if not self.tried_workers:
            self.tried_workers = True
            count = worker_count(n_restarts)
            if count > 1 and self.cost.size >= _PARALLEL_MIN_EDGES and sys.executable:
                try:
                    self.workers = Workers(count, (self.n, self.src, self.dst, self.cost))
                except OSError as error:  # pragma: no cover - cannot start processes
                    logger.warning("Leiden: restarts run here (no worker processes: %s)", error)
        return self.workers

    def _restarts(self, resolution: float, seeds: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """``(membership, seconds)`` of each seeded restart, in seed order, computed lazily
        here or ahead in the workers (closing the iterator cancels the restarts not started)."""
        tasks = [(resolution, int(s), _N_ITERATIONS) for s in seeds]
        workers = self._pool(len(tasks))
        futures = [workers.submit(t) for t in tasks] if workers is not None else []
        try:
            for i, task in enumerate(tasks):
                if futures and self.workers is not None:
                    try:
                        yield futures[i].result()
                        continue
                    except Exception as error:  # a worker died: the rest run here
                        logger.warning("Leiden: a worker process failed (%r); restarts run "
                                       "here from now on", error)  # fmt: skip
                        self._drop_workers()
                yield restart(self.g, *task)
        finally:
            for f in futures:
                f.cancel()

    def run(
        self, resolution: float, seed: int, n_restarts: int, *, level: int = logging.INFO
    ) -> tuple[np.ndarray, float]:
        """The best partition (relabelled) of up to ``n_restarts`` seeded restarts and its
        ``Q_deg``; per-restart lines are logged at ``level``."""
        if self.cost.size == 0:  # nothing interacts above ε: every feature alone
            return np.full(self.n, -1, dtype=np.int64), 0.0
        seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n_restarts)
        best, best_q, found, total = None, -math.inf, 0, 0.0
        bar = _bar(self.progress, n_restarts, resolution)
        stops = _STOP_AFTER > 0 and self.cost.size >= _STOP_MIN_EDGES
        restarts = self._restarts(resolution, seeds)
        try:
            for i, (raw, seconds) in enumerate(restarts, 1):
                m = _relabel(raw)
                q = modularity_from_edges(self.n, self.src, self.dst, self.cost, m, resolution)
                if best is None or q > best_q:
                    best, best_q, found = m, q, 1
                elif np.array_equal(m, best):
                    found += 1
                total += seconds
                logger.log(level, "Leiden restart %d/%d at γ=%.4g: %.2f s, Q_deg=%.6f (best "
                           "%.6f, found %d×)", i, n_restarts, resolution, seconds, q, best_q,
                           found)  # fmt: skip
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"s/restart": f"{seconds:.2f}", "Q_deg": f"{best_q:.4f}"})
                if stops and found >= _STOP_AFTER and i < n_restarts:
                    break
        finally:
            restarts.close()
            if bar is not None:
                bar.close()
        assert best is not None
        logger.info("Leiden at γ=%.4g: %d of %d restarts, %.2f s per restart, Q_deg=%.6f%s",
                    resolution, i, n_restarts, total / i, best_q,
                    f" (stopped: the best found {found}×)" if i < n_restarts else "")  # fmt: skip
        return best, best_q

    def count(self, membership: np.ndarray) -> int:
        return int(membership.max(initial=-1) + 1)


def _bar(progress: bool | None, total: int, resolution: float) -> Any:
    """A tqdm bar over the restarts (``progress=None``: when stderr is a terminal; shown only
    after ``_BAR_DELAY`` seconds), or None."""
    if not (sys.stderr.isatty() if progress is None else progress):
        return None
    from tqdm.auto import tqdm

    desc = f"Leiden γ={resolution:.4g}"
    return tqdm(total=total, desc=desc, unit="restart", leave=False, delay=_BAR_DELAY)


def _shares(search: _Search, membership: np.ndarray) -> np.ndarray:
    """Each module's share of the total interaction strength, ``K_m / 2W``, shape (n_modules,)."""
    k = int(membership.max(initial=-1)) + 1
    inside = membership >= 0
    per_module = np.bincount(membership[inside], search.strength[inside], minlength=k)
    total = search.strength.sum()
    return per_module / total if total > 0 else per_module


def _attach_fragments(search: _Search, membership: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Merge every module not ``counted`` (a fragment) into the counted module it shares the most
    cost with, strongest link first and repeatedly (so a fragment linked only through another
    fragment follows it); fragments with no cost towards any counted module are left in no
    module (``-1``). Returns the membership renumbered by size."""
    m = membership.copy()
    k = counted.shape[0]
    a, b = m[search.src], m[search.dst]
    between = (a >= 0) & (b >= 0) & (a != b)
    links = np.zeros((k, k))  # cost between modules, symmetric
    np.add.at(links, (a[between], b[between]), search.cost[between])
    links += links.T
    heads = np.flatnonzero(counted)
    fragments = np.flatnonzero(~counted)
    attached = 0
    while fragments.size:
        to_heads = links[np.ix_(fragments, heads)]
        if to_heads.size == 0 or to_heads.max() <= 0.0:
            dropped = np.isin(m, fragments)
            logger.info(
                "n_modules: %d features in %d small groups share no cost with a counted module; "
                "they are left in no module",
                int(dropped.sum()),
                fragments.size,
            )
            m[dropped] = -1
            break
        i, j = np.unravel_index(int(to_heads.argmax()), to_heads.shape)
        f, h = fragments[i], heads[j]
        m[m == f] = h
        links[h] += links[f]  # the merged module keeps the fragment's links
        links[:, h] += links[:, f]
        links[h, h] = 0.0
        fragments = np.delete(fragments, i)
        attached += 1
    if attached:
        logger.info("n_modules: %d small groups attached to the modules they link to", attached)
    # features in no module become singleton labels, then everything is renumbered by size
    raw = np.where(m >= 0, m, k + np.arange(m.size))
    return _relabel(raw)


def _coarsest(
    search: _Search, n_modules: int, min_share: float, seed: int, n_restarts: int
) -> tuple[np.ndarray, float]:
    """The lowest resolution at which Leiden gives ``n_modules`` modules of share ``>= min_share``.

    Geometric search: bracket the point where the count of such modules first reaches
    ``n_modules`` (factors of 4 from ``γ = 1``), bisect the bracket down to a ratio of 1.03
    (further while the count there jumps past ``n_modules``), and take the lowest ``γ`` seen
    whose partition has exactly ``n_modules`` of them; smaller modules are then attached.
    """
    # connected parts of two or more features, numbered; -1 for isolated features
    part_of = _relabel(np.asarray(search.g.connected_components().membership))
    n_parts = int(part_of.max(initial=-1)) + 1
    big_parts = int((_shares(search, part_of) >= min_share).sum())
    interacting = int((part_of >= 0).sum())
    kind = "modules of two or more features" + (
        f" holding ≥ {min_share:.3g} of the interaction strength" if min_share > 0 else ""
    )
    if n_modules < big_parts:
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible: the cost graph has {big_parts} separate "
            f"connected parts{' of that share' if min_share > 0 else ''}, so every partition has "
            "at least that many modules. Ask for more modules, or lower epsilon/tau so more "
            "interactions count."
        )
    most = interacting // 2
    if min_share > 0:
        most = min(most, math.floor(1.0 / min_share + 1e-9))
    if n_modules > most:
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible: {interacting} features interact above ε, so at "
            f"most {most} {kind} exist. Ask for fewer"
            + (", or lower min_module_share." if min_share > 0 else ".")
        )
    seen: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def count_at(gamma: float) -> int:
        if gamma not in seen:
            m, _ = search.run(gamma, seed, n_restarts, level=logging.DEBUG)
            seen[gamma] = (m, _shares(search, m) >= min_share)
        return int(seen[gamma][1].sum())

    lo = hi = 1.0
    if count_at(1.0) >= n_modules:  # lower γ until the count falls below n_modules
        # (or until the modules are the connected parts: no lower γ can merge more)
        while count_at(lo) >= n_modules and lo > 1e-8 and seen[lo][0].max() + 1 > n_parts:
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
                    f"most {max(int(c.sum()) for _, c in seen.values())} {kind} before they "
                    "dissolve into single features (counts: "
                    f"{sorted((g, int(c.sum())) for g, (_, c) in seen.items())}). Ask for fewer."
                )
    # invariant: count(lo) < n_modules <= count(hi); narrow to a ratio of 1.03 once count(hi)
    # is exactly n_modules, further (to 1 + 1e-9) while it jumps past n_modules
    while count_at(lo) < n_modules and hi / lo > 1 + 1e-9:
        if hi / lo <= 1.03 and count_at(hi) == n_modules:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if count_at(mid) < n_modules else (lo, mid)
    exact = sorted(g for g, (_, c) in seen.items() if int(c.sum()) == n_modules)
    if not exact:
        items = sorted((g, int(c.sum())) for g, (_, c) in seen.items())
        if len(items) > 8:
            items = items[:4] + items[-4:]
        counts = ", ".join(f"γ={g:.4g}: {k}" for g, k in items)
        raise ModgraphValueError(
            f"n_modules={n_modules} is impossible to reach by changing the resolution: the number "
            f"of {kind} jumps over it ({counts}). Ask for a neighbouring number of modules."
        )
    gamma = exact[0]
    logger.info(
        "n_modules=%d: lowest resolution found %.4g (%d Leiden searches)",
        n_modules,
        gamma,
        len(seen),
    )
    membership, counted = seen[gamma]
    return _attach_fragments(search, membership, counted), gamma


def leiden_modules(
    graph: Any,
    *,
    resolution: float = 1.0,
    seed: int = 0,
    n_restarts: int = 8,
    n_modules: int | None = None,
    min_module_share: float | None = None,
) -> Partition:
    """Modules of an interaction graph: Leiden on the degeneracy costs, best of several seeds.

    Parameters
    ----------
    graph : InteractionGraph or networkx.Graph
        A networkx graph is read with edge attribute ``cost`` (else ``weight``, else 1) as
        the weights; its node ids are ``str(node)``.
    resolution : float > 0
        ``γ`` of ``Q_deg``; not with ``n_modules`` (a value other than 1 then raises).
    seed : int
        Seeds of the ``n_restarts`` runs are drawn from ``numpy.random.default_rng(seed)``.
    n_restarts : int >= 1
        At most this many restarts. On graphs of 100,000 edges or more the search stops early,
        once two restarts have returned the best partition found so far (the same membership,
        not just the same score); the result is the partition the full run would return
        whenever no later restart finds a better one. Measured (8 restarts, bench/README.md):
        on layered graphs of 0.1–1.6M edges with planted modules it stops after 2 with the
        full run's partition; on noisy graphs the restarts rarely repeat, and all run. Smaller
        graphs run every restart: they are fast, and Leiden can miss the optimum in most
        restarts there.
        On graphs of 200,000 edges or more the restarts run side by side in worker processes
        (one per core this process may use, at most ``n_restarts``), each holding a copy of
        the graph; below that, starting them costs more than they save. Each restart is logged
        at INFO with its seconds (DEBUG inside the ``n_modules`` search), and a progress bar
        shows the seconds per restart.
    n_modules : int, optional
        Return the coarsest partition into exactly this many modules: the lowest resolution at
        which Leiden gives ``n_modules`` modules that each hold at least ``min_module_share`` of
        the total interaction strength, found by geometric bisection. Smaller groups are then
        merged into the counted module they share the most cost with, or left in no module
        (``-1``) if they share none. Raises if the count jumps over ``n_modules`` or cannot
        reach it.
    min_module_share : float in [0, 1), optional
        With ``n_modules``: the share ``K_m / 2W`` of the total cost strength below which a
        module is a fragment, not counted. Default ``0.1 / n_modules``: a tenth of an equal
        share (5 % for two modules). 0 counts every module of two or more features. Raises
        without ``n_modules``.

    Returns
    -------
    Partition

    Raises
    ------
    ModgraphValueError
        Bad parameters, or an unreachable ``n_modules``.
    """
    options = Options.from_arguments(locals(), "leiden_modules")
    return search_modules(graph, options)


def search_modules(graph: Any, options: Options) -> Partition:
    """:func:`leiden_modules` with validated ``options`` (``resolution``, ``seed``,
    ``n_restarts``, ``n_modules``, ``min_module_share``)."""
    graph = _cost_graph(graph)
    resolution, seed, n_restarts = options.resolution, options.seed, options.n_restarts
    n_modules = options.n_modules
    if n_modules is not None and n_modules > graph.n_nodes:
        raise ModgraphValueError(
            f"n_modules={n_modules} is larger than the number of features ({graph.n_nodes})."
        )
    with _Search(graph, options.progress) as search:
        if n_modules is None:
            membership, _ = search.run(resolution, seed, n_restarts)
        else:
            share = (
                0.1 / n_modules if options.min_module_share is None else options.min_module_share
            )
            membership, resolution = _coarsest(search, n_modules, share, seed, n_restarts)
    # score the relabelled partition (features in no module count as singletons)
    score = modularity_from_edges(
        search.n, search.src, search.dst, search.cost, membership, resolution
    )
    split = cost_split(search.src, search.dst, search.cost, canonical_membership(membership))
    modules = module_lists(membership, graph.node_ids)
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
