"""The interaction graph: features of adjacent node layers joined by interaction strengths.

Convention (stated once): ``edges[(l, l_next)][i, j]`` is the strength from feature ``j`` of layer
``l`` (the source) to feature ``i`` of layer ``l_next`` (the target): rows are targets, columns
are sources. Node ids are ``"{layer}:{index}"``; nodes carry ``layer`` (str), ``depth`` (int, the
node-layer position), ``index`` (int) and ``importance`` (Λ, float); edges carry ``weight`` (E)
and ``cost`` (the degeneracy cost ``½ max(0, ln(E/ε))``, with the ε of the edge's layer pair:
one ε for the whole graph, or one per pair when ``pair_epsilon`` is set).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validate import check_float, check_int
from .errors import ModgraphTypeError, ModgraphValueError
from .io import check_graphml_name, write_graphml

if TYPE_CHECKING:
    import igraph
    import networkx

    from .basis import InteractionBasis

__all__ = ["InteractionGraph", "degeneracy_cost"]


def degeneracy_cost(E: np.ndarray, epsilon: float) -> np.ndarray:
    """Degeneracy cost of interactions: ``c = ½ · max(0, ln(E / ε))`` in nats.

    Parameters
    ----------
    E : array_like, shape (...)
        Interaction strengths, finite and ``>= 0``.
    epsilon : float
        Interaction tolerance ``ε > 0`` (same units as ``E``).

    Returns
    -------
    ndarray, shape (...)
        Costs, 0 where ``E <= ε``.

    Examples
    --------
    >>> float(degeneracy_cost([1e-6, 1.0, 1e4], 1.0)[2])  # ½ ln 1e4
    4.605170185988092
    """
    epsilon = check_float(epsilon, "epsilon", "degeneracy_cost", low=0.0)
    E = np.asarray(E, dtype=np.float64)
    check_weights(E, "E", "degeneracy_cost")
    with np.errstate(divide="ignore"):
        return 0.5 * np.maximum(0.0, np.log(np.maximum(E, 0.0) / epsilon))


def check_weights(w: np.ndarray, name: str, where: str) -> None:
    """Weights must be finite and non-negative (leidenalg raises BaseException otherwise)."""
    if w.size == 0:
        return
    finite = np.isfinite(w)
    if not finite.all():
        raise ModgraphValueError(
            f"{where}: {name} holds {int((~finite).sum())} NaN/Inf values; interaction strengths "
            "must be finite. Recompute them from finite activations."
        )
    if (w < 0).any():
        raise ModgraphValueError(
            f"{where}: {name} holds {int((w < 0).sum())} negative values (smallest "
            f"{float(w.min()):.3g}); interaction strengths and costs must be >= 0."
        )


def _check_layers(layers: Any, where: str) -> tuple[str, ...]:
    """Layer names: at least two, non-empty strs, each once (node ids are ``"{layer}:{index}"``)."""
    layers = tuple(layers)
    if len(layers) < 2:
        raise ModgraphValueError(f"{where}: an interaction graph needs at least two node layers.")
    for name in layers:
        if not isinstance(name, str) or not name:
            raise (ModgraphValueError if isinstance(name, str) else ModgraphTypeError)(
                f"{where}: layer names must be non-empty strs; got {name!r} in {list(layers)}."
            )
    repeated = [name for i, name in enumerate(layers) if name in layers[:i]]
    if repeated:
        raise ModgraphValueError(
            f"{where}: layer names must be unique; {repeated[0]!r} appears "
            f"{layers.count(repeated[0])} times in {list(layers)}. Give each node layer its own "
            "name (node ids are '{layer}:{index}')."
        )
    return layers


def _check_pair_epsilon(
    given: Any, edges: Mapping[tuple[str, str], np.ndarray]
) -> Mapping[tuple[str, str], float]:
    """``pair_epsilon``: adjacent layer pairs of the graph → floats > 0."""
    where = "InteractionGraph"
    if not isinstance(given, Mapping):
        raise ModgraphTypeError(
            f"{where}: pair_epsilon must be a dict (layer, next_layer) → float > 0 or None; got "
            f"{type(given).__name__}."
        )
    out = {}
    for pair, value in given.items():
        if pair not in edges:
            raise ModgraphValueError(
                f"{where}: pair_epsilon names {pair!r}, which is not an adjacent layer pair of "
                f"the graph; the pairs are {list(edges)}."
            )
        out[pair] = check_float(value, "pair_epsilon", where, low=0.0)
    return MappingProxyType(out)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.setflags(write=False)
    return a


def _frozen_all(arrays: dict[tuple[str, str], np.ndarray]) -> dict[tuple[str, str], np.ndarray]:
    return {k: _frozen(v) for k, v in arrays.items()}


@dataclass(frozen=True)
class InteractionGraph:
    """Interaction strengths between the features of adjacent node layers.

    Attributes
    ----------
    layers : tuple of str
        Node layers in order, ``"output"`` last.
    edges : mapping of (str, str) to ndarray, shape (k_next, k)
        ``E`` per adjacent pair (rows: target features, columns: source features).
    importance : mapping of str to ndarray, shape (k,)
        Feature importance Λ per layer.
    epsilon : float
        Interaction tolerance ``ε`` of the degeneracy cost (of every layer pair that
        ``pair_epsilon`` does not name).
    tau : float or None
        ``τ`` when ``ε = τ · tr Cov(output)``; ``None`` when ε was given.
    n_alpha : int
        Quadrature points of the α-integral (1: gradient × input at α = 1).
    bases : mapping of str to InteractionBasis, optional
        The bases the edges were computed in.
    pair_epsilon : mapping of (str, str) to float, optional
        ``ε`` per adjacent layer pair, overriding ``epsilon`` for the pairs it names (e.g. from
        ``find_modules(epsilon="ablation")``); see :meth:`epsilon_of`.
    edge_stderr : mapping of (str, str) to ndarray, shape (k_next, k), optional
        Standard error of every edge when the edges come from a subsample
        (``edge_samples=``); None when they are means over all the data.
    """

    layers: tuple[str, ...]
    edges: Mapping[tuple[str, str], np.ndarray]
    importance: Mapping[str, np.ndarray]
    epsilon: float
    tau: float | None = None
    n_alpha: int = 1
    bases: Mapping[str, InteractionBasis] | None = None
    pair_epsilon: Mapping[tuple[str, str], float] | None = None
    edge_stderr: Mapping[tuple[str, str], np.ndarray] | None = None

    def __post_init__(self) -> None:
        where = "InteractionGraph"
        layers = _check_layers(self.layers, where)
        missing = [name for name in layers if name not in self.importance]
        if missing:
            raise ModgraphValueError(f"{where}: importance lacks the layer {missing[0]!r}.")
        object.__setattr__(self, "epsilon", check_float(self.epsilon, "epsilon", where, low=0.0))
        if self.tau is not None:
            object.__setattr__(self, "tau", check_float(self.tau, "tau", where, low=0.0))
        object.__setattr__(self, "n_alpha", check_int(self.n_alpha, "n_alpha", where, minimum=1))
        edges = {}
        for src, dst in zip(layers[:-1], layers[1:]):
            if (src, dst) not in self.edges:
                raise ModgraphValueError(f"edges lacks the layer pair ({src!r}, {dst!r}).")
            E = np.asarray(self.edges[(src, dst)], dtype=np.float64)
            k_src, k_dst = len(self.importance[src]), len(self.importance[dst])
            if E.shape != (k_dst, k_src):
                raise ModgraphValueError(
                    f"edges[({src!r}, {dst!r})] has shape {E.shape}; expected ({k_dst}, {k_src}) "
                    "(rows: target features, columns: source features)."
                )
            check_weights(E, f"edges[({src!r}, {dst!r})]", "InteractionGraph")
            edges[(src, dst)] = _frozen(E)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "edges", MappingProxyType(edges))
        object.__setattr__(
            self, "importance", MappingProxyType({n: _frozen(self.importance[n]) for n in layers})
        )
        if self.bases is not None:
            object.__setattr__(self, "bases", MappingProxyType(dict(self.bases)))
        if self.pair_epsilon is not None:
            object.__setattr__(self, "pair_epsilon", _check_pair_epsilon(self.pair_epsilon, edges))
        if self.edge_stderr is not None:
            err = {p: np.asarray(self.edge_stderr.get(p, []), dtype=np.float64) for p in edges}
            if any(err[p].shape != E.shape for p, E in edges.items()):
                raise ModgraphValueError(f"{where}: edge_stderr needs one array like E per pair.")
            object.__setattr__(self, "edge_stderr", MappingProxyType(_frozen_all(err)))

    def epsilon_of(self, pair: tuple[str, str]) -> float:
        """``ε`` of the layer pair ``(layer, next_layer)``: its entry in ``pair_epsilon``, or
        ``epsilon``."""
        if self.pair_epsilon is not None and pair in self.pair_epsilon:
            return float(self.pair_epsilon[pair])
        return float(self.epsilon)

    # ---------------------------------------------------------------- nodes
    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Features per layer."""
        return tuple(len(self.importance[n]) for n in self.layers)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Index of each layer's first node, shape (n_layers + 1,)."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @cached_property
    def node_ids(self) -> list[str]:
        """Node ids ``"{layer}:{index}"`` in node order (layer by layer)."""
        return [f"{n}:{i}" for n, k in zip(self.layers, self.sizes) for i in range(k)]

    @cached_property
    def node_index(self) -> dict[str, int]:
        return {node: i for i, node in enumerate(self.node_ids)}

    @property
    def n_nodes(self) -> int:
        return int(self.offsets[-1])

    def node_attributes(self) -> dict[str, np.ndarray]:
        """Per-node arrays ``layer``, ``depth``, ``index``, ``importance`` in node order."""
        sizes = np.asarray(self.sizes)
        depth = np.repeat(np.arange(len(self.layers)), sizes)
        return {
            "layer": np.repeat(np.asarray(self.layers, dtype=np.str_), sizes),
            "depth": depth.astype(np.int64),
            "index": (np.arange(self.n_nodes) - self.offsets[depth]).astype(np.int64),
            "importance": np.concatenate([self.importance[n] for n in self.layers]),
        }

    # ---------------------------------------------------------------- edges
    def costs(self) -> dict[tuple[str, str], np.ndarray]:
        """Degeneracy cost ``c = ½ max(0, ln(E/ε))`` per layer pair (with the pair's ε),
        shape (k_next, k)."""
        return {pair: degeneracy_cost(E, self.epsilon_of(pair)) for pair, E in self.edges.items()}

    def edge_list(self, min_weight: float | None = None) -> dict[str, np.ndarray]:
        """All edges with ``E > min_weight`` (default: the pair's ``ε``, the edges that carry
        cost).

        Returns arrays ``source``, ``target`` (node indices), ``weight`` (E), ``cost``; the source
        is in the earlier layer. ``min_weight``: a finite float ``>= 0`` or None.
        """
        return self._edge_list(min_weight, "InteractionGraph.edge_list")

    def _edge_list(self, min_weight: float | None, where: str) -> dict[str, np.ndarray]:
        given = (
            None
            if min_weight is None
            else check_float(min_weight, "min_weight", where, low=0.0, low_open=False)
        )
        parts: dict[str, list[np.ndarray]] = {"source": [], "target": [], "weight": [], "cost": []}
        for l, pair in enumerate(zip(self.layers[:-1], self.layers[1:])):
            E, eps = self.edges[pair], self.epsilon_of(pair)
            rows, cols = np.nonzero(E > (eps if given is None else given))
            parts["source"].append(self.offsets[l] + cols)
            parts["target"].append(self.offsets[l + 1] + rows)
            parts["weight"].append(E[rows, cols])
            parts["cost"].append(degeneracy_cost(E[rows, cols], eps))
        out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        out["source"] = out["source"].astype(np.int64)
        out["target"] = out["target"].astype(np.int64)
        return out

    def undirected_edges(self, weight: str = "cost") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(src, dst, w)`` of the undirected graph used by the metric (each edge once).

        ``weight="cost"``: edges with cost > 0 and their cost; ``"weight"``/``"sqrt_weight"``:
        the same edges with ``E`` or ``√E``.
        """
        edges = self.edge_list()
        w = {"cost": edges["cost"], "weight": edges["weight"]}.get(weight)
        if w is None:
            w = np.sqrt(edges["weight"])
        return edges["source"], edges["target"], w

    @cached_property
    def total_cost(self) -> float:
        """``W``: the summed degeneracy cost of all interactions (nats)."""
        return float(sum(c.sum() for c in self.costs().values()))

    # ---------------------------------------------------------------- exports
    def epsilon_attributes(self) -> dict[str, float]:
        """Graph attributes of the exports: ``epsilon``, and ``epsilon_{l}`` (the ε of the pair
        from node layer ``l`` to ``l + 1``, by depth) for every pair when ``pair_epsilon`` is
        set."""
        attrs = {"epsilon": float(self.epsilon)}
        if self.pair_epsilon is not None:
            for l, pair in enumerate(zip(self.layers[:-1], self.layers[1:])):
                attrs[f"epsilon_{l}"] = self.epsilon_of(pair)
        return attrs

    def membership_array(self, membership: Any, where: str = "InteractionGraph") -> np.ndarray:
        """Membership as an int array ``(n_nodes,)`` in node order, from a dict (node id → label)
        or a sequence of labels in :attr:`node_ids` order; errors name ``where``."""
        ids = self.node_ids
        n = len(ids)
        if isinstance(membership, Mapping):
            index = self.node_index
            unknown = [k for k in membership if k not in index]
            if unknown:
                raise ModgraphValueError(
                    f"{where}: membership names {len(unknown)} unknown node ids (first: "
                    f"{unknown[0]!r}); node ids look like {ids[0]!r} (see graph.node_ids)."
                )
            if len(membership) != n:
                raise ModgraphValueError(
                    f"{where}: membership gives {len(membership)} of the {n} nodes; give every "
                    "node a module (-1 for none)."
                )
            out = np.empty(n, dtype=np.int64)
            keys = np.fromiter((index[k] for k in membership), dtype=np.int64, count=n)
            out[keys] = np.fromiter(membership.values(), dtype=np.int64, count=n)
            return out
        if isinstance(membership, (str, bytes)) or not isinstance(
            membership, (Sequence, np.ndarray)
        ):
            raise ModgraphTypeError(
                f"{where}: membership must be a dict node id → module or a sequence of ints in node "
                f"order. Got {type(membership).__name__}."
            )
        arr = np.asarray(membership)
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ModgraphValueError(
                f"{where}: membership has shape {arr.shape}; expected ({n},), one label per node in "
                "graph.node_ids order."
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ModgraphTypeError(f"{where}: membership labels must be ints; got {arr.dtype}.")
        return arr.astype(np.int64)

    def _membership(self, membership: Any) -> np.ndarray | None:
        if membership is None:
            return None
        return self.membership_array(membership, "InteractionGraph export")

    def to_networkx(
        self, membership: Any = None, *, min_weight: float | None = None
    ) -> networkx.DiGraph:
        """A ``networkx.DiGraph`` (edges from layer l to l+1), with a ``module`` node attribute
        when ``membership`` is given. Python scalars only, so it writes to GraphML as is."""
        import networkx as nx

        attrs = self.node_attributes()
        m = self._membership(membership)
        if m is not None:
            attrs["module"] = m
        columns = {k: v.tolist() for k, v in attrs.items()}
        names = list(columns)
        G = nx.DiGraph(**self.epsilon_attributes(), n_alpha=int(self.n_alpha))
        if self.tau is not None:
            G.graph["tau"] = float(self.tau)
        G.add_nodes_from(
            (node, dict(zip(names, values)))
            for node, *values in zip(self.node_ids, *columns.values())
        )
        e = self._edge_list(min_weight, "InteractionGraph.to_networkx")
        ids = self.node_ids
        G.add_edges_from(
            (ids[s], ids[t], {"weight": w, "cost": c})
            for s, t, w, c in zip(
                e["source"].tolist(), e["target"].tolist(), e["weight"].tolist(), e["cost"].tolist()
            )
        )
        return G

    def to_igraph(self, membership: Any = None, *, min_weight: float | None = None) -> igraph.Graph:
        """A directed ``igraph.Graph`` with the node ids as ``name`` and the same attributes."""
        import igraph as ig

        e = self._edge_list(min_weight, "InteractionGraph.to_igraph")
        g = ig.Graph(
            n=self.n_nodes,
            edges=np.column_stack([e["source"], e["target"]]).tolist(),
            directed=True,
        )
        g.vs["name"] = self.node_ids
        for k, v in self.node_attributes().items():
            g.vs[k] = v.tolist()
        m = self._membership(membership)
        if m is not None:
            g.vs["module"] = m.tolist()
        g.es["weight"] = e["weight"].tolist()
        g.es["cost"] = e["cost"].tolist()
        for key, value in self.epsilon_attributes().items():
            g[key] = value
        return g

    def to_graphml(
        self,
        path: str | os.PathLike[str],
        membership: Any = None,
        *,
        min_weight: float | None = None,
        graph_attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the graph as GraphML (read back by networkx and igraph), atomically.

        Layer names and attribute names must pass :func:`modgraph.io.check_graphml_name` (text
        XML 1.0 can hold, no ``&``), string graph attributes :func:`modgraph.io.check_xml_text`.
        """
        where = "InteractionGraph.to_graphml"
        for name in self.layers:
            check_graphml_name(name, f"{where}: layer name")
        attrs = self.node_attributes()
        m = self._membership(membership)
        if m is not None:
            attrs["module"] = m
        e = self._edge_list(min_weight, where)
        meta: dict[str, Any] = {**self.epsilon_attributes(), "n_alpha": int(self.n_alpha)}
        if self.tau is not None:
            meta["tau"] = float(self.tau)
        meta.update(graph_attributes or {})
        write_graphml(
            path,
            np.asarray(self.node_ids, dtype=np.str_),
            attrs,
            e["source"],
            e["target"],
            {"weight": e["weight"], "cost": e["cost"]},
            meta,
        )

    @classmethod
    def from_matrices(
        cls,
        edges: Sequence[np.ndarray],
        *,
        epsilon: float,
        layers: Sequence[str] | None = None,
        importance: Sequence[np.ndarray] | None = None,
        pair_epsilon: Sequence[float] | None = None,
    ) -> InteractionGraph:
        """Build a graph from a chain of matrices ``E_l (k_{l+1}, k_l)`` (e.g. synthetic ones);
        ``pair_epsilon``: one ε per matrix, overriding ``epsilon``."""
        where = "InteractionGraph.from_matrices"
        epsilon = check_float(epsilon, "epsilon", where, low=0.0)
        mats = [np.asarray(E, dtype=np.float64) for E in edges]
        if not mats:
            raise ModgraphValueError(
                f"{where}: edges is empty; give at least one matrix E (k_next, k) (two node layers)."
            )
        for l, E in enumerate(mats):
            if E.ndim != 2:
                raise ModgraphValueError(
                    f"{where}: edges[{l}] has shape {E.shape}; each matrix must be 2-d (k_next, k)."
                )
        sizes = [mats[0].shape[1]] + [E.shape[0] for E in mats]
        layers = list(layers) if layers is not None else [f"L{i}" for i in range(len(sizes))]
        if importance is None:
            importance = [np.ones(k) for k in sizes]
        for name, given in (("layers", layers), ("importance", importance)):
            if len(given) != len(sizes):
                raise ModgraphValueError(
                    f"{where}: {name} has {len(given)} entries for {len(mats)} matrices; give "
                    f"{len(sizes)} (one per node layer)."
                )
        layers = list(_check_layers(layers, where))
        pairs = list(zip(layers[:-1], layers[1:]))
        if pair_epsilon is not None and len(pair_epsilon) != len(mats):
            raise ModgraphValueError(
                f"{where}: pair_epsilon has {len(pair_epsilon)} entries for {len(mats)} "
                "matrices; give one ε per matrix."
            )
        return cls(
            layers=tuple(layers),
            edges={pair: E for pair, E in zip(pairs, mats)},
            importance=dict(zip(layers, importance)),
            epsilon=epsilon,
            pair_epsilon=None if pair_epsilon is None else dict(zip(pairs, pair_epsilon)),
        )

    def __repr__(self) -> str:
        return (
            f"InteractionGraph(layers={list(self.layers)}, features={list(self.sizes)}, "
            f"epsilon={self.epsilon:.3g}"
            + ("" if self.pair_epsilon is None else ", epsilon per pair")
            + ")"
        )
