"""Eigenvalue spectra of a :class:`~modgraph.DegeneracyReport` (:func:`plot_spectra`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ._figure import figure_of, panel_grid, plain, save, save_format

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..degeneracy import DegeneracyReport, LayerDegeneracy


def plot_spectra(
    report: DegeneracyReport,
    *,
    path: str | os.PathLike[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Eigenvalue spectra of ``G`` and ``M'`` per node layer, on a log scale.

    Each spectrum is divided by its largest eigenvalue, so the tolerance is the same line
    ``rtol`` for all of them; eigenvalues below it count as zero. Values below ``rtol·1e-6``
    (zeros included) are drawn at that floor. Also :meth:`DegeneracyReport.plot_spectra`.

    Parameters
    ----------
    report : DegeneracyReport
        From :func:`~modgraph.degeneracy_report`.
    path : str or PathLike, optional
        Save the figure there (``.png``, ``.svg`` or ``.pdf``, by suffix), atomically.
    ax : matplotlib Axes, optional
        Draw every layer into this axes; default: a new figure with one panel per layer.

    Returns
    -------
    matplotlib.figure.Figure
        Not registered with pyplot: nothing needs closing and nothing pops up.

    Raises
    ------
    ModgraphTypeError
        ``path`` is not a str or PathLike.
    ModgraphValueError
        The file suffix is not supported, or ``ax`` belongs to no figure.
    """
    where = "plot_spectra"
    fmt = save_format(path, where, stem="spectra")
    floor = report.rtol * 1e-6
    if ax is None:
        n = len(report.layers)
        fig, axes = panel_grid(n, (4.2, 3.2))
        for panel, layer in zip(axes, report.layers):
            _draw(panel, [layer], floor, report.rtol)
            panel.set_title(
                f"{plain(layer.name)}: d={layer.width}, r_G={layer.activation_rank}, "
                f"r_M={layer.jacobian_rank}",
                fontsize=9,
            )
    else:
        fig = figure_of(ax, where)
        _draw(ax, list(report.layers), floor, report.rtol)
    save(fig, path, fmt, where, tight=False)
    return fig


def _draw(ax: Axes, layers: list[LayerDegeneracy], floor: float, rtol: float) -> None:
    """The spectra of ``layers`` in one axes (one colour per layer when there are several)."""
    colors = [f"C{i % 10}" for i in range(len(layers))]
    several = len(layers) > 1
    for color, layer in zip(colors, layers):
        for values, style, label in (
            (layer.gram_eigenvalues, "-", "G (activations)"),
            (layer.jacobian_eigenvalues, "--", "M' (Jacobian)"),
        ):
            if values.size == 0 or values[0] <= 0:
                continue
            y = np.maximum(values / values[0], floor)
            x = np.arange(1, values.size + 1)
            name = f"{plain(layer.name)}: {label}" if several else label
            ax.plot(x, y, style, marker=".", color=color if several else None, label=name)
    ax.axhline(rtol, color="0.3", linestyle=":", linewidth=1.0, label=f"rtol = {rtol:g}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2, top=2.0)
    ax.set_xlabel("eigenvalue number")
    ax.set_ylabel("eigenvalue / largest")
    ax.legend(fontsize=7)
