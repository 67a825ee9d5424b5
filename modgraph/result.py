"""``ModuleResult``: the modules of a network, a thin view over (graph, partition).

A :class:`ModuleResult` holds two values and nothing else: the :class:`~modgraph.InteractionGraph`
and the :class:`~modgraph.Partition` found on it. Everything else (modules, scores, the membership
by node id, the networkx graph) is derived from those two on access, so nothing is copied and the
networkx graph, costly on large graphs, is built only when it is first asked for. A user who calls
the stages one by one builds the same value with ``ModuleResult(graph, partition)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from .cluster import Partition
from .errors import ModgraphTypeError, ModgraphValueError
from .graph import InteractionGraph
from .io import write_json

if TYPE_CHECKING:
    import networkx
    from matplotlib.figure import Figure

    from .basis import InteractionBasis

__all__ = ["ModuleResult"]


@dataclass(frozen=True, eq=False)
class ModuleResult:
    """The modules of a network: an interaction graph and a partition of its features.

    Attributes
    ----------
    interaction_graph : InteractionGraph
        Features, interaction strengths ``E`` and their degeneracy costs.
    partition : Partition
        The modules found on it (membership array, score, cost split, resolution, seed).

    Everything else is derived on access: ``modules``, ``membership`` (the partition's array),
    ``module_of`` (node id → module), ``score``, ``cross_cost``, ``cross_fraction``,
    ``resolution``, ``seed``, ``epsilon``, ``pair_epsilon``, ``bases``, ``edges`` and ``graph`` (a networkx
    ``DiGraph``, built on first access and then kept).

    Examples
    --------
    >>> from modgraph import InteractionGraph, ModuleResult, leiden_modules
    >>> import numpy as np
    >>> graph = InteractionGraph.from_matrices([np.eye(4) * 10], epsilon=1.0)
    >>> result = ModuleResult(graph, leiden_modules(graph))
    >>> result.n_modules
    4
    """

    interaction_graph: InteractionGraph
    partition: Partition

    def __post_init__(self) -> None:
        if not isinstance(self.interaction_graph, InteractionGraph):
            raise ModgraphTypeError(
                "ModuleResult needs an InteractionGraph (from interaction_graph) first; got "
                f"{type(self.interaction_graph).__name__}."
            )
        if not isinstance(self.partition, Partition):
            raise ModgraphTypeError(
                "ModuleResult needs a Partition (from leiden_modules) second; got "
                f"{type(self.partition).__name__}."
            )
        if self.partition.membership.shape != (self.interaction_graph.n_nodes,):
            raise ModgraphValueError(
                f"ModuleResult: the partition has {self.partition.membership.shape[0]} entries "
                f"for {self.interaction_graph.n_nodes} features; it must be a partition of "
                "this graph."
            )

    # ---------------------------------------------------------------- the partition
    @property
    def modules(self) -> list[list[str]]:
        """Node ids (``"{layer}:{index}"``) per module, largest first; features in no module
        are left out."""
        return self.partition.modules

    @property
    def membership(self) -> np.ndarray:
        """Module of every feature in ``interaction_graph.node_ids`` order, shape (n_features,);
        ``-1`` for features in no module (the partition's array, read-only)."""
        return self.partition.membership

    @cached_property
    def module_of(self) -> dict[str, int]:
        """Module of every feature by node id (``-1`` for none)."""
        return dict(zip(self.interaction_graph.node_ids, self.partition.membership.tolist()))

    @property
    def n_modules(self) -> int:
        return len(self.partition.modules)

    @property
    def score(self) -> float:
        """``Q_deg`` of the partition at ``resolution``."""
        return self.partition.score

    @property
    def cross_cost(self) -> float:
        """``X(P)``: degeneracy cost (nats) of the interactions between modules."""
        return self.partition.cross_cost

    @property
    def cross_fraction(self) -> float:
        """``X(P)`` as a share of the total cost."""
        return self.partition.cross_fraction

    @property
    def resolution(self) -> float:
        """``γ`` (the one found by bisection when ``n_modules`` was given)."""
        return self.partition.resolution

    @property
    def seed(self) -> int:
        """Seed of the Leiden restarts (replays the run)."""
        return self.partition.seed

    # ---------------------------------------------------------------- the graph
    @property
    def epsilon(self) -> float:
        """Interaction tolerance used for the costs."""
        return self.interaction_graph.epsilon

    @property
    def pair_epsilon(self) -> Mapping[tuple[str, str], float]:
        """ε of every adjacent layer pair (all equal to :attr:`epsilon` unless they were chosen
        per pair, as ``find_modules(epsilon="ablation")`` does)."""
        g = self.interaction_graph
        return {pair: g.epsilon_of(pair) for pair in g.edges}

    @property
    def bases(self) -> Mapping[str, InteractionBasis]:
        """The interaction bases the edges were computed in (empty for a synthetic graph)."""
        bases = self.interaction_graph.bases
        return bases if bases is not None else {}

    @property
    def edges(self) -> Mapping[tuple[str, str], np.ndarray]:
        """Interaction strengths ``E (k_next, k)`` per layer pair (rows: targets)."""
        return self.interaction_graph.edges

    @cached_property
    def graph(self) -> networkx.DiGraph:
        """The feature graph as a networkx ``DiGraph`` with a ``module`` node attribute (edges
        above ε), built on first access; see :meth:`InteractionGraph.to_networkx`."""
        return self.interaction_graph.to_networkx(self.partition.membership)

    # ---------------------------------------------------------------- reports and files
    def module_table(self) -> list[dict[str, Any]]:
        """One row per module: size, layers spanned, internal and external cost, top features."""
        g = self.interaction_graph
        src, dst, cost = g.undirected_edges("cost")
        m = self.partition.membership
        ms, md = m[src], m[dst]
        n = self.n_modules
        inside = (ms == md) & (ms >= 0)
        internal = np.bincount(ms[inside], cost[inside], n)
        cross = ms != md
        external = np.bincount(ms[cross & (ms >= 0)], cost[cross & (ms >= 0)], n) + np.bincount(
            md[cross & (md >= 0)], cost[cross & (md >= 0)], n
        )
        importance = g.node_attributes()["importance"]
        rows = []
        for i, members in enumerate(self.modules):
            idx = np.flatnonzero(m == i)
            layers = [g.layers[d] for d in np.unique(np.searchsorted(g.offsets, idx, "right") - 1)]
            top = idx[np.argsort(-importance[idx], kind="stable")[:3]]
            rows.append(
                {
                    "module": i,
                    "size": len(members),
                    "layers": layers,
                    "internal_cost": float(internal[i]),
                    "external_cost": float(external[i]),
                    "top_features": [g.node_ids[j] for j in top],
                }
            )
        return rows

    def summary(self) -> str:
        """A text table of the modules."""
        m = self.partition.membership
        head = (
            f"{self.n_modules} modules over {m.shape[0]} features "
            f"({int((m < 0).sum())} in none); Q_deg={self.score:.4f} "
            f"at resolution {self.resolution:.4g}; cross-module cost {self.cross_cost:.4g} nats "
            f"({100 * self.cross_fraction:.2f}% of total); epsilon={self.epsilon:.3g}"
        )
        if self.interaction_graph.pair_epsilon is not None:
            head += "; epsilon per layer pair: " + ", ".join(
                f"{a}→{b}: {e:.3g}" for (a, b), e in self.pair_epsilon.items()
            )
        lines = [
            head,
            f"{'module':>6} {'size':>5} {'layers':<24} {'internal':>10} {'external':>10}  top",
        ]
        for row in self.module_table():
            layers = row["layers"]
            span = f"{layers[0]}..{layers[-1]} ({len(layers)})" if len(layers) > 1 else layers[0]
            lines.append(
                f"{row['module']:>6} {row['size']:>5} {span[:24]:<24} "
                f"{row['internal_cost']:>10.4g} {row['external_cost']:>10.4g}  "
                f"{', '.join(row['top_features'])}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (modules, membership by node id, scores, settings, the
        per-module table)."""
        return {
            "modules": self.modules,
            "membership": self.module_of,
            "score": self.score,
            "cross_cost": self.cross_cost,
            "cross_fraction": self.cross_fraction,
            "epsilon": self.epsilon,
            "pair_epsilon": {f"{a}->{b}": e for (a, b), e in self.pair_epsilon.items()},
            "resolution": self.resolution,
            "seed": self.seed,
            "layers": list(self.interaction_graph.layers),
            "features_per_layer": list(self.interaction_graph.sizes),
            "module_table": self.module_table(),
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically."""
        write_json(path, self.to_dict())

    def to_graphml(self, path: str | os.PathLike[str], *, min_weight: float | None = None) -> None:
        """Write the feature graph with its ``module`` attribute as GraphML, atomically."""
        self.interaction_graph.to_graphml(
            path,
            self.partition.membership,
            min_weight=min_weight,
            graph_attributes={
                "resolution": float(self.resolution),
                "seed": int(self.seed),
                "score": float(self.score),
                "cross_fraction": float(self.cross_fraction),
            },
        )

    def plot(self, **kwargs: Any) -> Figure:
        """Draw the layered module graph: :func:`modgraph.plot.plot_modules` of the graph and
        the partition (same keywords)."""
        from .plot import plot_modules

        return plot_modules(self.interaction_graph, self.partition, **kwargs)

    def __repr__(self) -> str:
        return (
            f"ModuleResult(n_modules={self.n_modules}, score={self.score:.4f}, "
            f"cross_fraction={self.cross_fraction:.4f}, resolution={self.resolution:.4g})"
        )
