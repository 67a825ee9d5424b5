"""Matrix views: the module × layer map of feature counts (:func:`plot_module_map`) and the
interaction matrix of one layer pair, sorted by module (:func:`plot_interactions`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModgraphValueError
from ._figure import figure_and_axes, plain, save, save_format, view
from .colors import NO_MODULE_COLOR, module_colors
from .modules import _order

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..cluster import Partition
    from ..graph import InteractionGraph


def plot_module_map(
    graph: InteractionGraph,
    partition: Partition | Mapping[str, int] | Sequence[int] | np.ndarray,
    *,
    ax: Axes | None = None,
    path: str | os.PathLike[str] | None = None,
    palette: str | Sequence[Any] | None = None,
) -> Figure:
    """Draw the module × layer matrix of feature counts (which layers each module spans).

    Rows are modules (module 0 at the top, then a ``none`` row for features in no module, when
    there are any); columns are node layers. Each cell holds the number of features of that
    module in that layer, annotated when the matrix has at most 600 cells, and is shaded in the
    module's colour (as in :func:`plot_modules`) from pale (one feature) to full (the largest
    count of any module cell); empty cells are blank, the ``none`` row is grey.

    Artists: one ``AxesImage`` (RGBA) and one text per non-empty cell when annotated.

    Parameters
    ----------
    graph : InteractionGraph
        From :func:`~modgraph.interaction_graph` (or ``result.interaction_graph``).
    partition : Partition, dict of str to int, or sequence of int, shape (n_features,)
        A :class:`~modgraph.Partition` from :func:`~modgraph.leiden_modules`, or a membership
        (node id → module, or modules in ``graph.node_ids`` order; ``-1`` for no module).
    ax : matplotlib Axes, optional
    path : str or PathLike, optional
        Save the figure: ``.png``, ``.svg`` or ``.pdf``.
    palette : str, sequence of colours, or None
        Module colours (see :func:`module_colors`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ModgraphTypeError
        ``graph`` is not an InteractionGraph, ``partition`` not a Partition or membership, or
        ``path`` not a str or PathLike.
    ModgraphValueError
        Bad membership, ``palette`` or file suffix.
    """
    where = "plot_module_map"
    fmt = save_format(path, where)
    v = view(graph, partition, where)
    n_layers = len(v.layers)
    depth = np.repeat(np.arange(n_layers), v.sizes)
    has_none = bool((v.membership < 0).any())
    n_rows = v.n_modules + int(has_none)
    annotate = n_rows * n_layers <= 600
    row = np.where(v.membership < 0, v.n_modules, v.membership)
    counts = np.zeros((max(n_rows, 1), n_layers), dtype=np.int64)
    np.add.at(counts, (row, depth), 1)
    counts = counts[:n_rows]

    fig, ax = figure_and_axes(
        ax,
        (
            float(np.clip(0.55 * n_layers + 3.2, 4.5, 20.0)),
            float(np.clip(0.42 * n_rows + 1.9, 2.6, 14.0)),
        ),
        where,
    )
    # a cell's colour: its module's colour, from pale (one feature) to full (the largest count of
    # any module cell); features in no module in grey, capped at the same scale
    colors = module_colors(v.n_modules, palette)
    base = np.vstack([colors, [NO_MODULE_COLOR]]) if has_none else colors
    vmax = max(int(counts[: v.n_modules].max(initial=0)), 1)
    share = np.clip(counts / vmax, 0.0, 1.0)
    alpha = np.where(counts > 0, 0.12 + 0.88 * share, 0.0)
    if has_none:
        alpha[-1] *= 0.7
    rgba = np.ones((*counts.shape, 4))
    rgba[..., :3] = 1.0 - alpha[..., None] * (1.0 - base[:n_rows, None, :3])
    ax.imshow(rgba, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(n_layers))
    names = [plain(name) for name in v.layers]
    # upright "name\n(k)" under each column while the names fit there, else rotated names
    rotate = n_layers > 10 or max((len(s) for s in names), default=0) > 12
    ax.set_xticklabels(
        names if rotate else [f"{name}\n({k})" for name, k in zip(names, v.sizes)],
        rotation=90 if rotate else 0,
        fontsize=8,
    )
    ax.set_yticks(np.arange(n_rows))
    labels = [f"module {m}" for m in range(v.n_modules)] + (["none"] if has_none else [])
    ax.set_yticklabels(labels, fontsize=8)
    for m, label in enumerate(ax.get_yticklabels()):
        label.set_color(colors[m] if m < v.n_modules else NO_MODULE_COLOR)
        label.set_fontweight("bold")
    ax.set_xticks(np.arange(n_layers + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.6)
    ax.tick_params(which="both", length=0)
    ax.set_xlabel("node layer" if rotate else "node layer (features)")
    ax.set_title(
        "features per module and layer" + ("" if annotate else f" (darkest: {vmax} features)"),
        fontsize=11,
    )
    if has_none and v.n_modules:
        ax.axhline(v.n_modules - 0.5, color="0.4", linewidth=1.0)
    if annotate:
        for (r, c), k in np.ndenumerate(counts):
            if k == 0:
                continue
            red, green, blue = rgba[r, c, :3]
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(
                c,
                r,
                str(k),
                ha="center",
                va="center",
                fontsize=8 if counts.size <= 200 else 6,
                color="white" if dark else "0.15",
            )
    save(fig, path, fmt, where)
    return fig


# ---------------------------------------------------------------------------- plot_interactions
def plot_interactions(
    graph: InteractionGraph,
    partition: Partition | Mapping[str, int] | Sequence[int] | np.ndarray,
    layer: str,
    *,
    ax: Axes | None = None,
    path: str | os.PathLike[str] | None = None,
    log: bool = True,
    palette: str | Sequence[Any] | None = None,
) -> Figure:
    """Draw the interaction matrix ``E`` from node layer ``layer`` to the next one as a heatmap.

    Columns are the source features (of ``layer``), rows the target features (of the next node
    layer), both sorted by module (module 0 first, features in no module last) and by importance
    within a module. Module boundaries are drawn as thin lines, each module's own block (its
    sources × its targets) is outlined in the module colour (on a white halo), and coloured strips
    along the top and the right show the module of every column and row. The colour bar marks ε, below which an
    interaction carries no degeneracy cost.

    Artists: one ``AxesImage`` (``E``); one horizontal line per row-group boundary and one vertical
    line per column-group boundary (``ax.lines``); one ``Rectangle`` per module present on both
    sides (``ax.patches``).

    Parameters
    ----------
    graph : InteractionGraph
        From :func:`~modgraph.interaction_graph` (or ``result.interaction_graph``).
    partition : Partition, dict of str to int, or sequence of int, shape (n_features,)
        A :class:`~modgraph.Partition` from :func:`~modgraph.leiden_modules`, or a membership
        (node id → module, or modules in ``graph.node_ids`` order; ``-1`` for no module).
    layer : str
        Source node layer, any layer but ``"output"`` (the last, which has no next layer).
    ax : matplotlib Axes, optional
    path : str or PathLike, optional
        Save the figure: ``.png``, ``.svg`` or ``.pdf``.
    log : bool
        Logarithmic colour scale (down to ``max(E)·1e-6``; zeros drawn in the lowest colour).
    palette : str, sequence of colours, or None
        Module colours of the outlines and strips (see :func:`module_colors`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ModgraphTypeError
        ``graph`` is not an InteractionGraph, ``partition`` not a Partition or membership, or
        ``path`` not a str or PathLike.
    ModgraphValueError
        ``layer`` is unknown or is the last node layer, bad membership, ``palette`` or file
        suffix.
    """
    where = "plot_interactions"
    fmt = save_format(path, where)
    v = view(graph, partition, where)
    sources = list(v.layers[:-1])
    if not isinstance(layer, str) or layer not in sources:
        why = (
            f"{layer!r} is the last node layer and has no next layer"
            if isinstance(layer, str) and layer == v.layers[-1]
            else f"{layer!r} is not a node layer of this graph"
        )
        raise ModgraphValueError(
            f"{where}: {why}. The interaction matrices start at one of {sources} (the matrix "
            f"from layer l to the next one)."
        )
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Rectangle
    from matplotlib.patheffects import withStroke

    d = v.layers.index(layer)
    target = v.layers[d + 1]
    E = np.asarray(v.edges[(layer, target)], dtype=np.float64)
    s_lo, t_lo = v.offsets[d], v.offsets[d + 1]
    m_src = v.membership[s_lo : v.offsets[d + 1]]
    m_dst = v.membership[t_lo : v.offsets[d + 2]]
    col_order = _order(m_src, v.importance[s_lo : v.offsets[d + 1]])
    row_order = _order(m_dst, v.importance[t_lo : v.offsets[d + 2]])
    E = E[np.ix_(row_order, col_order)]
    m_cols, m_rows = m_src[col_order], m_dst[row_order]
    k_rows, k_cols = E.shape

    src, dst = plain(layer), plain(target)
    xlabel = f"source features of '{src}' ({k_cols}), by module"
    ylabel = f"target features of '{dst}' ({k_rows}), by module"
    title = f"interactions '{src}' → '{dst}'"
    # room for the matrix, and for the title and the y label along it (~0.09 in per character)
    fig, ax = figure_and_axes(
        ax,
        (
            float(max(np.clip(0.09 * k_cols + 3.6, 5.0, 13.0), 0.095 * len(title) + 0.6)),
            float(max(np.clip(0.09 * k_rows + 2.2, 3.6, 12.0), 0.085 * len(ylabel) + 1.0)),
        ),
        where,
    )
    vmax = float(E.max(initial=0.0))
    if log and vmax > 0:
        positive = E[E > 0]
        vmin = max(float(positive.min()), vmax * 1e-6)
        norm: Normalize = LogNorm(vmin=vmin, vmax=vmax, clip=True)
        shown = np.where(E > 0, E, vmin)
    else:
        norm = Normalize(vmin=0.0, vmax=vmax if vmax > 0 else 1.0)
        shown = E
    im = ax.imshow(shown, cmap="magma_r", norm=norm, aspect="auto", interpolation="nearest")

    def groups(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, starts and ends of the contiguous module groups of a sorted axis."""
        if m.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        starts = np.r_[0, np.flatnonzero(m[1:] != m[:-1]) + 1]
        ends = np.r_[starts[1:], m.size]
        return m[starts], starts, ends

    lab_r, st_r, en_r = groups(m_rows)
    lab_c, st_c, en_c = groups(m_cols)
    for b in st_r[1:]:
        ax.axhline(b - 0.5, color="0.35", linewidth=0.8)
    for b in st_c[1:]:
        ax.axvline(b - 0.5, color="0.35", linewidth=0.8)
    colors = module_colors(v.n_modules, palette)
    for lab, r0, r1 in zip(lab_r, st_r, en_r):
        if lab < 0 or lab not in lab_c:
            continue
        j = int(np.flatnonzero(lab_c == lab)[0])
        c0, c1 = st_c[j], en_c[j]
        ax.add_patch(
            Rectangle(
                (c0 - 0.5, r0 - 0.5),
                c1 - c0,
                r1 - r0,
                fill=False,
                edgecolor=colors[lab],
                linewidth=2.0,
                path_effects=[withStroke(linewidth=4.0, foreground="white")],
            )
        )

    def strip(m: np.ndarray) -> np.ndarray:
        rgba = np.tile(np.asarray(NO_MODULE_COLOR), (m.size, 1))
        rgba[m >= 0] = colors[m[m >= 0]]
        return rgba

    top = ax.inset_axes((0.0, 1.01, 1.0, 0.025))
    top.imshow(strip(m_cols)[None], aspect="auto", interpolation="nearest")
    top.set_axis_off()
    right = ax.inset_axes((1.01, 0.0, 0.025, 1.0))
    right.imshow(strip(m_rows)[:, None], aspect="auto", interpolation="nearest")
    right.set_axis_off()

    def ticks(lab: np.ndarray, st: np.ndarray, en: np.ndarray) -> tuple[list[float], list[str]]:
        pos = ((st + en - 1) / 2.0).tolist()
        names = [f"m{int(x)}" if x >= 0 else "none" for x in lab]
        return pos, names

    pos, names = ticks(lab_c, st_c, en_c)
    ax.set_xticks(pos, names, fontsize=8)
    pos, names = ticks(lab_r, st_r, en_r)
    ax.set_yticks(pos, names, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11, pad=14)
    cbar = fig.colorbar(im, ax=ax, pad=0.05, shrink=0.9)
    cbar.set_label("interaction strength E" + (" (log scale)" if log else ""))
    # one ε line, unless the layer pairs have ε of their own (epsilon="ablation")
    eps_all = {v.graph.epsilon_of(pair) for pair in zip(v.layers[:-1], v.layers[1:])}
    eps = eps_all.pop() if len(eps_all) == 1 else None
    if (
        eps is not None
        and norm.vmin is not None
        and norm.vmax is not None
        and (norm.vmin <= eps <= norm.vmax)
    ):
        cbar.ax.axhline(eps, color="tab:cyan", linewidth=2.0)
        cbar.ax.text(
            -0.08,
            eps,
            "ε",
            transform=cbar.ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=9,
            color="tab:cyan",
        )
    save(fig, path, fmt, where)
    return fig
