"""``find_modules``: interaction basis → interaction graph → Leiden on degeneracy costs.

A short function over the public stages (:func:`interaction_basis`, :func:`interaction_graph`,
:func:`leiden_modules`), which a user can also call one by one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ._validate import check_float, check_int, check_model, check_seed
from .basis import InteractionBasis
from .cluster import Partition, leiden_modules
from .errors import ModgraphError
from .graph import InteractionGraph
from .interactions import interaction_graph
from .io import write_json

if TYPE_CHECKING:
    import networkx
    from matplotlib.figure import Figure

__all__ = ["ModuleResult", "find_modules"]


@dataclass(frozen=True)
class ModuleResult:
    """The modules of a network.

    Attributes
    ----------
    modules : list of list of str
        Node ids (``"{layer}:{index}"``) per module, largest module first; features in no
        module (isolated, or alone) are left out.
    membership : dict of str to int
        Module number of every feature; ``-1`` for features in no module.
    score : float
        ``Q_deg`` of the partition at ``resolution``.
    cross_cost : float
        ``X(P)``: degeneracy cost (nats) of the interactions between modules.
    cross_fraction : float
        ``X(P)`` as a share of the total cost.
    epsilon : float
        Interaction tolerance used for the costs.
    resolution : float
        ``γ`` (the one found by bisection when ``n_modules`` was given).
    seed : int
        Seed of the Leiden restarts (replays the run).
    graph : networkx.DiGraph
        Feature graph with node attributes ``layer``, ``depth``, ``index``, ``importance``,
        ``module`` and edge attributes ``weight``, ``cost`` (edges above ε).
    bases : dict of str to InteractionBasis
    edges : dict of (str, str) to ndarray, shape (k_next, k)
        Interaction strengths ``E`` (rows: target features, columns: source features).
    interaction_graph : InteractionGraph
    partition : Partition
    """

    modules: list[list[str]]
    membership: dict[str, int]
    score: float
    cross_cost: float
    cross_fraction: float
    epsilon: float
    resolution: float
    seed: int
    graph: networkx.DiGraph
    bases: Mapping[str, InteractionBasis]
    edges: Mapping[tuple[str, str], np.ndarray]
    interaction_graph: InteractionGraph
    partition: Partition

    @property
    def n_modules(self) -> int:
        return len(self.modules)

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

    def module_table(self) -> list[dict[str, Any]]:
        """One row per module: size, layers spanned, internal and external cost, top features."""
        g = self.interaction_graph
        src, dst, cost = g.undirected_edges("cost")
        m = self.partition.membership
        ms, md = m[src], m[dst]
        n = self.n_modules
        internal = np.bincount(ms[(ms == md) & (ms >= 0)], cost[(ms == md) & (ms >= 0)], n)
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
        head = (
            f"{self.n_modules} modules over {len(self.membership)} features "
            f"({sum(v < 0 for v in self.membership.values())} in none); Q_deg={self.score:.4f} "
            f"at resolution {self.resolution:.4g}; cross-module cost {self.cross_cost:.4g} nats "
            f"({100 * self.cross_fraction:.2f}% of total); epsilon={self.epsilon:.3g}"
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
        """JSON-serialisable summary (modules, membership, scores, settings, per-module table)."""
        return {
            "modules": self.modules,
            "membership": self.membership,
            "score": self.score,
            "cross_cost": self.cross_cost,
            "cross_fraction": self.cross_fraction,
            "epsilon": self.epsilon,
            "resolution": self.resolution,
            "seed": self.seed,
            "layers": list(self.interaction_graph.layers),
            "features_per_layer": list(self.interaction_graph.sizes),
            "module_table": self.module_table(),
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        write_json(path, self.to_dict())

    def plot(self, **kwargs: Any) -> Figure:
        """Draw the layered module graph (see :func:`modgraph.plot.plot_modules`)."""
        from .plot import plot_modules

        return plot_modules(self, **kwargs)

    def __repr__(self) -> str:
        return (
            f"ModuleResult(n_modules={self.n_modules}, score={self.score:.4f}, "
            f"cross_fraction={self.cross_fraction:.4f}, resolution={self.resolution:.4g})"
        )


def module_result(graph: InteractionGraph, partition: Partition) -> ModuleResult:
    """Wrap a graph and a partition of it into a :class:`ModuleResult`."""
    ids = graph.node_ids
    membership = dict(zip(ids, partition.membership.tolist()))
    return ModuleResult(
        modules=partition.modules,
        membership=membership,
        score=partition.score,
        cross_cost=partition.cross_cost,
        cross_fraction=partition.cross_fraction,
        epsilon=graph.epsilon,
        resolution=partition.resolution,
        seed=partition.seed,
        graph=graph.to_networkx(partition.membership),
        bases=graph.bases if graph.bases is not None else {},
        edges=graph.edges,
        interaction_graph=graph,
        partition=partition,
    )


_WHERE = "find_modules"


def find_modules(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None = None,
    *,
    resolution: float = 1.0,
    n_modules: int | None = None,
    min_module_share: float | None = None,
    epsilon: float | None = None,
    tau: float = 1e-4,
    variant: str = "local",
    n_restarts: int = 8,
    seed: int = 0,
    n_alpha: int = 1,
    rtol: float = 1e-10,
    batch_size: int = 256,
    n_random_sources: int | None = None,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    output_basis: str = "identity",
    progress: bool | None = None,
) -> ModuleResult:
    """Find the modules of a trained network (arXiv 2405.10927).

    Computes the interaction basis of every node layer, the interaction strengths between
    features of adjacent layers, their degeneracy costs ``½ max(0, ln(E/ε))``, and the partition
    of features that maximises the degeneracy-based modularity ``Q_deg`` (Leiden, best of
    ``n_restarts`` seeded runs).

    Parameters
    ----------
    model : torch.nn.Module
        Never modified (see :func:`interaction_basis`).
    data : Tensor (N, ...), Dataset, DataLoader or re-iterable of batches
    layers : list of str, optional
        Node layers (inputs of these modules); default: every ``nn.Linear``; ``"output"`` last.
    resolution : float > 0
        ``γ`` of ``Q_deg``: larger gives more, smaller modules.
    n_modules : int, optional
        The coarsest partition into exactly this many modules, each holding at least
        ``min_module_share`` of the total interaction strength (``resolution`` is then ignored;
        see :func:`leiden_modules`).
    min_module_share : float in [0, 1), optional
        With ``n_modules``: modules holding a smaller share of the total interaction strength
        are fragments, attached to the module they link to most (default ``0.1 / n_modules``;
        0 counts every module).
    epsilon : float, optional
        Interaction tolerance; default ``τ · tr Cov(output)``.
    tau : float
        ``τ`` of the default ε.
    variant : {"local", "global"}
        Interaction-basis variant.
    n_restarts : int
        Leiden runs (seeds derived from ``seed``); the best by ``Q_deg`` is kept.
    seed : int
        Seed of the Leiden restarts and of random sources.
    n_alpha : int
        Quadrature points of the integrated gradient (1: gradient × input).
    rtol, batch_size, n_random_sources, dtype, device, output, output_basis, progress
        As for :func:`interaction_basis`.

    Returns
    -------
    ModuleResult

    Examples
    --------
    >>> import torch
    >>> from modgraph import find_modules
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> result = find_modules(model, torch.randn(256, 4), progress=False)
    >>> result.n_modules >= 1
    True
    """
    check_model(model, _WHERE)
    check_float(resolution, "resolution", _WHERE, low=0.0)
    check_int(n_restarts, "n_restarts", _WHERE, minimum=1)
    check_int(n_modules, "n_modules", _WHERE, minimum=1, allow_none=True)
    if min_module_share is not None:
        check_float(min_module_share, "min_module_share", _WHERE, low=0.0, high=1.0, low_open=False)
    check_seed(seed, _WHERE)
    try:
        graph = interaction_graph(
            model,
            data,
            layers=layers,
            n_alpha=n_alpha,
            epsilon=epsilon,
            tau=tau,
            variant=variant,
            rtol=rtol,
            batch_size=batch_size,
            n_random_sources=n_random_sources,
            dtype=dtype,
            device=device,
            output=output,
            output_basis=output_basis,
            seed=seed,
            progress=progress,
        )
    except ModgraphError as exc:  # re-raise with the caller's context
        raise type(exc)(f"find_modules: {exc}") from exc
    partition = leiden_modules(
        graph,
        resolution=resolution,
        seed=seed,
        n_restarts=n_restarts,
        n_modules=n_modules,
        min_module_share=min_module_share,
    )
    return module_result(graph, partition)
