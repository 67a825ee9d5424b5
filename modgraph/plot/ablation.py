"""Ablation curves of :mod:`modgraph.faithfulness` (:func:`plot_ablation`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_choice, check_float
from ..errors import ModgraphTypeError, ModgraphValueError
from ..faithfulness import AblationCurve
from ._figure import figure_of, panel_grid, plain, save, save_format

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Colour of each basis, the same in every panel and figure.
BASIS_COLORS = {"interaction": "C0", "pca": "C1", "neuron": "C2"}

_VALUES = ("relative", "loss", "metric")

#: Losses below this share of the largest one drawn are drawn at it (float rounding, not loss).
FLOOR = 1e-10


def plot_ablation(
    curves: Sequence[AblationCurve] | AblationCurve,
    *,
    value: str = "relative",
    tolerance: float | None = None,
    ax: Axes | None = None,
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Ablation curves, one panel per node layer (or layer pair) and one line per basis.

    Parameters
    ----------
    curves : AblationCurve or sequence of them
        From :func:`~modgraph.faithfulness.ablation_curve` or
        :func:`~modgraph.faithfulness.edge_ablation_curve` (either, or both).
    value : {"relative", "loss", "metric"}
        The y axis: the mean squared output change as a share of ``tr Cov(output)`` (log
        scale), the mean squared change itself (log scale; in both, values below 1e-10 of the
        largest, float rounding, are drawn at that floor), or the metric the curves were
        measured with (e.g. accuracy; the unablated model's as a dotted line).
    tolerance : float > 0, optional
        Draw this relative loss as a horizontal line (with ``value="relative"``).
    ax : matplotlib Axes, optional
        Draw every curve into this axes; default: a new figure with one panel per layer.
    path : str or PathLike, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``, by suffix), atomically.
    title : str, optional
        Figure title (your own text: mathtext allowed).

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with pyplot: nothing needs closing and nothing pops up.

    Raises
    ------
    ModgraphTypeError
        ``curves`` holds something other than AblationCurves; ``path`` is not a str or PathLike.
    ModgraphValueError
        No curves; ``value="metric"`` for curves measured without a metric; a bad suffix.
    """
    where = "plot_ablation"
    fmt = save_format(path, where, stem="ablation")
    if isinstance(curves, AblationCurve):
        curves = [curves]
    if isinstance(curves, (str, bytes)) or not isinstance(curves, Sequence) or not curves:
        raise ModgraphValueError(f"{where}: curves must be a non-empty list of AblationCurves.")
    for c in curves:
        if not isinstance(c, AblationCurve):
            raise ModgraphTypeError(
                f"{where}: curves must hold AblationCurves (from ablation_curve or "
                f"edge_ablation_curve); got {type(c).__name__}."
            )
    check_choice(value, "value", where, _VALUES)
    if value == "metric" and any(c.metric is None for c in curves):
        raise ModgraphValueError(
            f"{where}: value='metric' needs curves measured with labels and a metric."
        )
    if tolerance is not None:
        tolerance = check_float(tolerance, "tolerance", where, low=0.0)
    panels: dict[tuple[str, tuple[str, ...]], list[AblationCurve]] = {}
    for c in curves:
        panels.setdefault((c.kind, c.layers), []).append(c)
    if ax is None:
        n = len(panels)
        fig, axes = panel_grid(n, (4.4, 3.4))
        for panel, ((kind, layers), group) in zip(axes, panels.items()):
            _draw(panel, group, value, tolerance)
            panel.set_title(_name(kind, layers), fontsize=9)
    else:
        fig = figure_of(ax, where)
        _draw(ax, list(curves), value, tolerance, several=len(panels) > 1)
    if title is not None:
        fig.suptitle(title)
    save(fig, path, fmt, where)
    return fig


def _name(kind: str, layers: tuple[str, ...]) -> str:
    if kind == "edges":
        return f"edges {plain(layers[0], 20)} → {plain(layers[1], 20)}"
    return f"features of {plain(layers[0])}"


def _draw(
    ax: Axes,
    curves: list[AblationCurve],
    value: str,
    tolerance: float | None,
    several: bool = False,
) -> None:
    ys = [_values(c, value) for c in curves]
    positive = [y[y > 0] for y in ys if value != "metric"]
    smallest = min((float(p.min()) for p in positive if p.size), default=1.0)
    top = max((float(p.max()) for p in positive if p.size), default=1.0)
    floor = max(smallest / 2, top * FLOOR)
    for i, (c, y) in enumerate(zip(curves, ys)):
        color = BASIS_COLORS.get(c.basis, f"C{3 + i % 7}")
        label = plain(c.basis) + (f" ({_name(c.kind, c.layers)})" if several else "")
        shown = y if value == "metric" else np.maximum(y, floor)
        ax.plot(c.kept, shown, marker=".", color=None if several else color, label=label)
        if value == "metric" and c.reference_metric is not None:
            ax.axhline(c.reference_metric, color="0.5", linestyle=":", linewidth=1.0)
    if value != "metric":
        ax.set_yscale("log")
        if tolerance is not None and value == "relative":
            ax.axhline(
                tolerance, color="0.3", linestyle="--", linewidth=1.0, label=f"{tolerance:g}"
            )
    if any(c.kind == "edges" for c in curves):
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0, right=max(int(c.kept.max()) for c in curves) * 1.05 + 0.5)
    kinds = {c.kind for c in curves}
    ax.set_xlabel(" / ".join(f"{k} kept" for k in sorted(kinds)))
    ax.set_ylabel(
        {
            "relative": "output change / tr Cov(output)",
            "loss": "mean squared output change",
            "metric": "metric",
        }[value]
    )
    ax.legend(fontsize=7)


def _values(curve: AblationCurve, value: str) -> np.ndarray:
    data: Any = {"relative": curve.relative_loss, "loss": curve.loss, "metric": curve.metric}
    return np.asarray(data[value], dtype=np.float64)
