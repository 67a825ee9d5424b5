"""Ablation curves: the behavioural loss against the number of features or edges kept, per basis.

:func:`ablation_curve` keeps the top-``n`` features (by Λ) of a node layer; :func:`edge_ablation_curve`
keeps the top-``n`` edges (by ``E``) of a layer pair. Both take several bases at once (the
interaction basis and the baselines ``"pca"`` and ``"neuron"`` by default) and evaluate every
point of every curve in one pass over the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._arrays import readonly
from .._validate import check_model
from ..basis import InteractionBasis, fit_bases, measure_statistics
from ..capture import Session, session
from ..errors import ModgraphTypeError, ModgraphValueError
from ..graph import InteractionGraph
from ..interactions import measure_graph
from ..options import Options
from .ablate import EdgeAblation, FeatureAblation, check_ablatable
from .loss import BehaviouralLoss, Metric, check_metric, measure_losses

__all__ = ["AblationCurve", "ablation_curve", "edge_ablation_curve"]

BASES = ("interaction", "pca", "neuron")


@dataclass(frozen=True)
class AblationCurve:
    """Behavioural loss against the number of features (or edges) kept, for one basis.

    Attributes
    ----------
    kind : {"features", "edges"}
        What was kept: the top features of a node layer, or the top edges of a layer pair.
    basis : str
        The basis: ``"interaction"``, ``"pca"``, ``"neuron"`` (or the label it was given).
    layers : tuple of str
        The node layer ``(layer,)``, or the layer pair ``(layer, next_layer)``.
    kept : ndarray of int, shape (n_points,)
        Features (edges) kept at each point, ascending.
    total : int
        All features of the layer in this basis (``k``), or all edges of the pair (``k'·k``).
    loss : ndarray, shape (n_points,)
        Mean squared change of the output, ``E ‖out_ablated − out‖²``.
    relative_loss : ndarray, shape (n_points,)
        ``loss / tr Cov(output)``.
    output_variance : float
        ``tr Cov(output)`` of the model as it is.
    thresholds : ndarray, shape (n_points,), or None
        Edges: the smallest ``E`` kept at each point (``inf`` when none is kept).
    metric : ndarray, shape (n_points,), or None
        The metric (e.g. accuracy) of the ablated model at each point, with labels and metric.
    reference_metric : float or None
        The metric of the model as it is.
    """

    kind: str
    basis: str
    layers: tuple[str, ...]
    kept: np.ndarray
    total: int
    loss: np.ndarray
    relative_loss: np.ndarray
    output_variance: float
    thresholds: np.ndarray | None = None
    metric: np.ndarray | None = None
    reference_metric: float | None = None

    def kept_for(self, tolerance: float) -> int | None:
        """The fewest features (edges) kept from which on the curve stays within ``tolerance``
        (relative loss ≤ tolerance at that point and every larger one); None when even the
        largest point exceeds it."""
        ok = self.relative_loss <= tolerance
        if not ok[-1]:
            return None
        bad = np.flatnonzero(~ok)
        return int(self.kept[bad[-1] + 1] if bad.size else self.kept[0])

    def __repr__(self) -> str:
        return (
            f"AblationCurve(kind={self.kind!r}, basis={self.basis!r}, layers={list(self.layers)}, "
            f"points={self.kept.size}, total={self.total})"
        )


def _curve(
    kind: str,
    label: str,
    layers: tuple[str, ...],
    kept: Sequence[int],
    total: int,
    losses: Sequence[BehaviouralLoss],
    thresholds: Sequence[float] | None = None,
) -> AblationCurve:
    first = losses[0]
    return AblationCurve(
        kind=kind,
        basis=label,
        layers=layers,
        kept=readonly(np.asarray(kept), np.int64),
        total=int(total),
        loss=readonly(np.array([x.mse for x in losses])),
        relative_loss=readonly(np.array([x.relative for x in losses])),
        output_variance=first.output_variance,
        thresholds=None if thresholds is None else readonly(np.asarray(thresholds, dtype=float)),
        metric=None
        if first.metric is None
        else readonly(np.array([x.ablated_metric for x in losses], dtype=float)),
        reference_metric=first.metric,
    )


# ------------------------------------------------------------------------------ arguments
def _kinds_and_sets(value: Any, what: type, name: str, where: str) -> list[tuple[str, Any]]:
    """``(label, item)`` pairs from one of: a basis name, a sequence of basis names and/or items,
    an item, or a dict label → item (``item``: a bases dict, or a graph)."""
    if isinstance(value, str) or _is_item(value, what):
        value = [value]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Iterable):
        pairs = [(None, v) for v in value]
    else:
        pairs = [(None, value)]
    out: list[tuple[str, Any]] = []
    for label, item in pairs:
        if isinstance(item, str):
            if item not in BASES:
                raise ModgraphValueError(
                    f"The {name!r} parameter of {where} names the basis {item!r}; the bases "
                    f"are {list(BASES)}."
                )
        elif not _is_item(item, what):
            raise ModgraphTypeError(
                f"The {name!r} parameter of {where} must hold basis names {list(BASES)} or "
                f"{'bases dicts from interaction_basis' if what is dict else 'InteractionGraphs'}"
                f". Got {type(item).__name__}."
            )
        out.append((str(label) if label is not None else _label_of(item), item))
    if not out:
        raise ModgraphValueError(f"The {name!r} parameter of {where} is empty.")
    seen: dict[str, int] = {}
    labelled = []
    for label, item in out:  # unique labels: "pca", "pca (2)"
        seen[label] = seen.get(label, 0) + 1
        labelled.append((label if seen[label] == 1 else f"{label} ({seen[label]})", item))
    return labelled


def _is_item(value: Any, what: type) -> bool:
    if what is dict:
        return (
            isinstance(value, Mapping)
            and bool(value)
            and all(isinstance(b, InteractionBasis) for b in value.values())
        )
    return isinstance(value, InteractionGraph)


def _label_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    bases = item.bases if isinstance(item, InteractionGraph) else item
    if not bases:
        return "graph"
    hidden = list(bases.values())[:-1] or list(bases.values())
    return hidden[0].kind


def _check_counts(value: Any, name: str, where: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ModgraphTypeError(
            f"The {name!r} parameter of {where} must be a list of ints >= 0 or None."
        )
    counts = []
    for n in value:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ModgraphValueError(
                f"The {name!r} parameter of {where} must hold ints >= 0; got {n!r}."
            )
        counts.append(int(n))
    if not counts:
        raise ModgraphValueError(f"The {name!r} parameter of {where} is empty.")
    return sorted(set(counts))


def default_counts(total: int, points: int = 24) -> list[int]:
    """Every count up to ``points``; beyond, ``points`` counts spaced evenly in log, with 0."""
    if total <= points:
        return list(range(total + 1))
    grid = np.unique(np.round(np.geomspace(1, total, points)).astype(np.int64))
    return [0, *grid.tolist()]


def _with_bases(sess: Session, options: Options, kind: str) -> dict[str, InteractionBasis]:
    opts = dataclasses.replace(options, basis=kind)
    return fit_bases(sess, measure_statistics(sess, opts), opts)


def _check_layers_of(bases: Mapping[str, Any], names: Sequence[str], where: str) -> None:
    if list(bases) != list(names):
        raise ModgraphValueError(
            f"{where}: the bases (or graphs) given have the node layers {list(bases)}, but the "
            f"others {list(names)}; compute them all on the same node layers."
        )


# ------------------------------------------------------------------------------ features
_WHERE_FEATURES = "ablation_curve"


def ablation_curve(
    model: nn.Module,
    data: Any,
    bases: Any = BASES,
    layers: str | Iterable[str] | None = None,
    *,
    ns: Iterable[int] | None = None,
    labels: Any = None,
    metric: str | Metric | None = None,
    variant: str = "local",
    rtol: float = 1e-10,
    output_basis: str = "identity",
    batch_size: int = 256,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> tuple[AblationCurve, ...]:
    """Behavioural loss against the number of features kept, per node layer and basis.

    At each point the node layer keeps its top-``n`` features by importance Λ:
    ``a → μ + (C⁺)ᵀ mask(Cᵀ (a − μ))`` by a forward pre-hook (``n = 0`` is mean ablation).

    Parameters
    ----------
    model, data
        As for :func:`~modgraph.interaction_basis`.
    bases : basis names, bases dicts, or a dict label → bases dict
        Default ``("interaction", "pca", "neuron")``: fitted here on the default node layers
        (with ``variant``, ``rtol``, ``output_basis``); or dicts from
        :func:`~modgraph.interaction_basis` (all on the same node layers).
    layers : str or list of str, optional
        Node layers to ablate (one at a time); default every node layer but the output.
    ns : list of int, optional
        Features kept; default every count up to 24, else 24 counts spaced in log (and 0),
        per basis. Counts above a basis's ``k`` keep all of its features.
    labels, metric
        As for :func:`behavioural_loss`: also the metric (e.g. accuracy) at every point.
    variant, rtol, output_basis, batch_size, dtype, device, output, progress
        As for :func:`~modgraph.interaction_basis`.

    Returns
    -------
    tuple of AblationCurve
        One per (layer, basis), layer outer.
    """
    check_model(model, _WHERE_FEATURES)
    options = Options.from_arguments(locals(), _WHERE_FEATURES)
    where = _WHERE_FEATURES
    sets = _kinds_and_sets(bases, dict, "bases", where)
    counts = _check_counts(ns, "ns", where)
    label_tensor, metric_fn = check_metric(labels, metric, where)
    given = [b for _, b in sets if not isinstance(b, str)]
    node_layers = list(given[0]) if given else None
    for b in given[1:]:
        _check_layers_of(b, node_layers or [], where)
    with session(model, data, node_layers, options) as sess:
        names = list(sess.plan.names)
        fitted = [
            (label, _with_bases(sess, options, b) if isinstance(b, str) else b) for label, b in sets
        ]
        for _, b in fitted:
            _check_layers_of(b, names, where)
        chosen = _ablated_layers(layers, names, where)
        for layer in chosen:
            check_ablatable(sess, layer, where)
        plan: list[tuple[str, str, list[int], int]] = []
        forwards = []
        for layer in chosen:
            for label, b in fitted:
                basis = b[layer]
                order = np.argsort(-basis.eigenvalues, kind="stable")
                points = counts if counts is not None else default_counts(basis.k)
                plan.append((layer, label, points, basis.k))
                for n in points:
                    keep = np.zeros(basis.k, dtype=bool)
                    keep[order[: min(n, basis.k)]] = True
                    forwards.append(FeatureAblation(sess, basis, keep))
        losses = measure_losses(sess, forwards, "feature ablations", label_tensor, metric_fn)
    curves, at = [], 0
    for layer, label, points, k in plan:
        part = losses[at : at + len(points)]
        at += len(points)
        curves.append(_curve("features", label, (layer,), points, k, part))
    return tuple(curves)


def _ablated_layers(layers: Any, names: list[str], where: str) -> list[str]:
    if layers is None:
        return names[:-1]
    chosen = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in chosen if n not in names]
    if unknown or not chosen:
        raise ModgraphValueError(
            f"The 'layers' parameter of {where} names {unknown or chosen!r}; the node layers "
            f"are {names}."
        )
    return chosen


# ------------------------------------------------------------------------------ edges
_WHERE_EDGES = "edge_ablation_curve"


def edge_ablation_curve(
    model: nn.Module,
    data: Any,
    graphs: Any = BASES,
    pairs: tuple[str, str] | Iterable[tuple[str, str]] | None = None,
    *,
    n_edges: Iterable[int] | None = None,
    thresholds: Iterable[float] | None = None,
    labels: Any = None,
    metric: str | Metric | None = None,
    variant: str = "local",
    rtol: float = 1e-10,
    output_basis: str = "identity",
    batch_size: int = 256,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> tuple[AblationCurve, ...]:
    """Behavioural loss against the number of edges kept, per layer pair and basis.

    At each point a layer pair keeps its top-``n`` edges by ``E`` (or those with
    ``E ≥ threshold``); every other interaction is cut: for each target feature, the source
    features whose edge to it is cut are set to their mean, the section runs, and the target
    feature is read off (batched over target features). Other layer pairs are left intact.

    Parameters
    ----------
    model, data
        As for :func:`~modgraph.interaction_basis`.
    graphs : basis names, InteractionGraphs, or a dict label → InteractionGraph
        Default ``("interaction", "pca", "neuron")``: graphs measured here on the default node
        layers; or graphs from :func:`~modgraph.interaction_graph` (with their bases).
    pairs : (str, str) or list of them, optional
        Layer pairs to ablate (one at a time); default every adjacent pair.
    n_edges : list of int, optional
        Edges kept; default 24 counts spaced in log (and 0), per graph.
    thresholds : list of float, optional
        Instead of ``n_edges``: keep the edges with ``E ≥ threshold`` (e.g. a graph's ε).
    labels, metric, variant, rtol, output_basis, batch_size, dtype, device, output, progress
        As for :func:`ablation_curve`.

    Returns
    -------
    tuple of AblationCurve
        One per (pair, graph), pair outer; ``thresholds`` holds the smallest ``E`` kept.
    """
    check_model(model, _WHERE_EDGES)
    options = Options.from_arguments(locals(), _WHERE_EDGES)
    where = _WHERE_EDGES
    sets = _kinds_and_sets(graphs, InteractionGraph, "graphs", where)
    counts = _check_counts(n_edges, "n_edges", where)
    cuts = _check_thresholds(thresholds, where)
    if counts is not None and cuts is not None:
        raise ModgraphValueError(f"{where}: pass n_edges or thresholds, not both.")
    label_tensor, metric_fn = check_metric(labels, metric, where)
    given = [g for _, g in sets if not isinstance(g, str)]
    for g in given:
        if not g.bases:
            raise ModgraphValueError(
                f"{where}: a graph without bases (built from matrices) cannot be ablated; use "
                "graphs from interaction_graph."
            )
    node_layers = list(given[0].layers) if given else None
    measured = [
        (
            label,
            measure_graph(model, data, node_layers, None, dataclasses.replace(options, basis=g))
            if isinstance(g, str)
            else g,
        )
        for label, g in sets
    ]
    names = list(measured[0][1].layers)
    for _, g in measured:
        _check_layers_of(dict.fromkeys(g.layers), names, where)
    with session(model, data, names, options) as sess:
        sections = {(s.source, s.target): s for s in sess.plan.sections}
        chosen = _ablated_pairs(pairs, list(sections), where)
        plan: list[tuple[tuple[str, str], str, list[int], list[float], int]] = []
        forwards = []
        for pair in chosen:
            for label, g in measured:
                E = np.asarray(g.edges[pair])
                order = np.argsort(-E.ravel(), kind="stable")
                values = E.ravel()[order]
                if cuts is not None:
                    points = [int((values >= t).sum()) for t in cuts]
                else:
                    points = counts if counts is not None else default_counts(E.size)
                    points = [min(n, E.size) for n in points]
                smallest = [float(values[n - 1]) if n else float("inf") for n in points]
                plan.append((pair, label, points, smallest, E.size))
                assert g.bases is not None
                for n in points:
                    keep = np.zeros(E.size, dtype=bool)
                    keep[order[:n]] = True
                    ends = (g.bases[pair[0]], g.bases[pair[1]])
                    forwards.append(
                        EdgeAblation(sess, sections[pair], *ends, keep.reshape(E.shape))
                    )
        losses = measure_losses(sess, forwards, "edge ablations", label_tensor, metric_fn)
    curves, at = [], 0
    for pair, label, points, smallest, total in plan:
        part = losses[at : at + len(points)]
        at += len(points)
        curves.append(_curve("edges", label, pair, points, total, part, smallest))
    return tuple(curves)


def _check_thresholds(value: Any, where: str) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ModgraphTypeError(
            f"The 'thresholds' parameter of {where} must be a list of floats >= 0 or None."
        )
    out = []
    for t in value:
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
            raise ModgraphTypeError(
                f"The 'thresholds' parameter of {where} must hold floats; got {t!r}."
            )
        if not np.isfinite(t) or t < 0:
            raise ModgraphValueError(
                f"The 'thresholds' parameter of {where} must hold finite floats >= 0; got {t!r}."
            )
        out.append(float(t))
    if not out:
        raise ModgraphValueError(f"The 'thresholds' parameter of {where} is empty.")
    return out


def _ablated_pairs(pairs: Any, known: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
    if pairs is None:
        return known
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
        pairs = [pairs]
    chosen = [tuple(p) for p in pairs]
    unknown = [p for p in chosen if p not in known]
    if unknown or not chosen:
        raise ModgraphValueError(
            f"The 'pairs' parameter of {where} names {unknown or chosen!r}; the adjacent layer "
            f"pairs are {known}."
        )
    return chosen  # type: ignore[return-value]
