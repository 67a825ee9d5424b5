"""Figures of module structure (matplotlib, safe under any backend).

Three views of a :class:`~modgraph.api.ModuleResult`:

- :func:`plot_modules`: the layered feature graph, features coloured by module and edges drawn
  by degeneracy cost (also :meth:`ModuleResult.plot`).
- :func:`plot_module_map`: a module × layer matrix of feature counts (which layers a module spans).
- :func:`plot_interactions`: the interaction matrix ``E`` of one layer pair as a heatmap, rows and
  columns sorted by module.

Every function draws into ``ax`` when given (else into a new :class:`matplotlib.figure.Figure`,
which is not registered with pyplot, so nothing needs closing and nothing pops up), returns the
figure, and saves it when ``path`` is given: PNG, SVG or PDF by the file suffix, written
atomically. matplotlib is imported inside the functions, so ``import modgraph`` stays light, and the
global backend is never changed.
"""

from __future__ import annotations

import colorsys
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validate import check_float, check_int
from .errors import ModgraphTypeError, ModgraphValueError
from .io import atomic_open
from .modularity import degeneracy_cost

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "NO_MODULE_COLOR",
    "SAVE_FORMATS",
    "module_colors",
    "plot_interactions",
    "plot_module_map",
    "plot_modules",
]

logger = logging.getLogger("modgraph")

#: File suffixes :func:`plot_modules` and friends can write, and the matplotlib format of each.
SAVE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}

#: Colour (RGBA) of features in no module.
NO_MODULE_COLOR = (0.62, 0.62, 0.62, 1.0)

_LEGEND_MAX = 20
_GAP = 0.8  # vertical gap between module groups, in feature slots
_NONE_SLOT = 0.4  # vertical space of a feature in no module, in feature slots


# ---------------------------------------------------------------------------- palette
def _qualitative() -> list[tuple[float, float, float, float]]:
    """54 distinct qualitative colours, greys removed (grey means "no module")."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"].colors
    tab20b = colormaps["tab20b"].colors
    tab20c = colormaps["tab20c"].colors
    # tab20: dark shades (= tab10) first, then light ones; indices 14/15 are grey.
    order20 = [i for i in range(0, 20, 2) if i != 14] + [i for i in range(1, 20, 2) if i != 15]
    # tab20b/c: 5 hues × 4 shades; take one shade of every hue before the next shade.
    order_bc = [4 * h + s for s in (0, 2, 1, 3) for h in range(5)]
    colors = [tab20[i] for i in order20]
    colors += [tab20b[i] for i in order_bc]
    colors += [tab20c[i] for i in order_bc if i < 16]  # tab20c's last hue is grey
    return [(*map(float, c[:3]), 1.0) for c in colors]


def _default_colors(n: int) -> np.ndarray:
    """The qualitative colours, then the HLS colour farthest from all chosen ones (and from the
    no-module grey), one at a time; past the candidate grid, golden-ratio hues."""
    chosen = np.asarray(_qualitative()[:n], dtype=np.float64)
    if n <= len(chosen):
        return chosen
    grid = np.array(
        [
            colorsys.hls_to_rgb(h, light, sat)
            for h in np.arange(48) / 48
            for light in (0.3, 0.45, 0.6, 0.75)
            for sat in (0.55, 0.95)
        ]
    )
    taken = np.vstack([chosen[:, :3], np.asarray(NO_MODULE_COLOR[:3])[None]])
    nearest = np.linalg.norm(grid[:, None] - taken[None], axis=-1).min(axis=1)
    extra = []
    for _ in range(min(n - len(chosen), len(grid))):
        i = int(np.argmax(nearest))
        extra.append(grid[i])
        nearest = np.minimum(nearest, np.linalg.norm(grid - grid[i], axis=1))
        nearest[i] = -1.0
    golden = 0.618033988749895
    for i in range(n - len(chosen) - len(extra)):
        light, sat = ((0.45, 0.75), (0.65, 0.6), (0.35, 0.9))[i % 3]
        extra.append(colorsys.hls_to_rgb((0.11 + i * golden) % 1.0, light, sat))
    rgba = np.column_stack([np.asarray(extra), np.ones(len(extra))])
    return np.vstack([chosen, rgba])


def module_colors(n: int, palette: str | Sequence[Any] | None = None) -> np.ndarray:
    """Distinct colours for ``n`` modules.

    Parameters
    ----------
    n : int >= 0
        Number of modules.
    palette : str, sequence of colours, or None
        ``None``: tab10 hues (grey left out), then the lighter tab20 shades, then tab20b and
        tab20c (54 colours), then, one at a time, the colour of a 384-colour HLS grid farthest
        from all colours chosen so far (and from the no-module grey), then golden-ratio hues:
        every module gets its own colour. A str names a matplotlib colormap, sampled at
        ``n`` evenly spaced points. A sequence gives the colours in module order (any matplotlib
        colour specification); it must hold at least ``n`` of them.

    Returns
    -------
    ndarray, shape (n, 4)
        RGBA colours; module ``i`` gets row ``i``.

    Raises
    ------
    ModgraphValueError
        Unknown colormap name, too few colours, or an invalid colour.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba_array

    n = int(check_int(n, "n", "module_colors", minimum=0) or 0)
    if n == 0:
        return np.zeros((0, 4))
    if palette is None:
        return _default_colors(n)
    if isinstance(palette, str):
        if palette not in colormaps:
            raise ModgraphValueError(
                f"palette={palette!r} is not a matplotlib colormap name; use e.g. 'tab20', "
                "'viridis', a list of colours, or None for modgraph's default."
            )
        cmap = colormaps[palette]
        return np.asarray(cmap(np.linspace(0.0, 1.0, n) if n > 1 else [0.0]), dtype=np.float64)
    try:
        colors = to_rgba_array(list(palette))
    except (TypeError, ValueError) as exc:
        raise ModgraphValueError(
            f"palette must be None, a colormap name or a list of matplotlib colours: {exc}"
        ) from exc
    if len(colors) < n:
        raise ModgraphValueError(
            f"palette has {len(colors)} colours for {n} modules; give at least {n}, a colormap "
            "name, or None for modgraph's default palette (distinct for any number of modules)."
        )
    return np.asarray(colors[:n], dtype=np.float64)


# ---------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class _View:
    """What the plots need from a result, as arrays in node order."""

    layers: tuple[str, ...]
    sizes: np.ndarray
    offsets: np.ndarray
    importance: np.ndarray
    membership: np.ndarray
    n_modules: int
    epsilon: float
    edges: Any  # mapping (layer, next_layer) -> E (k_next, k)
    result: Any


def _view(result: Any, where: str) -> _View:
    graph = getattr(result, "interaction_graph", None)
    partition = getattr(result, "partition", None)
    if graph is None or partition is None:
        raise ModgraphTypeError(
            f"{where} needs a ModuleResult (from modgraph.find_modules); got "
            f"{type(result).__name__}."
        )
    membership = np.asarray(partition.membership, dtype=np.int64)
    if membership.shape != (graph.n_nodes,):
        raise ModgraphValueError(
            f"{where}: the partition has {membership.shape[0]} entries for {graph.n_nodes} "
            "features."
        )
    n_modules = int(membership.max(initial=-1) + 1)
    return _View(
        layers=tuple(graph.layers),
        sizes=np.asarray(graph.sizes, dtype=np.int64),
        offsets=np.asarray(graph.offsets, dtype=np.int64),
        importance=np.asarray(graph.node_attributes()["importance"], dtype=np.float64),
        membership=membership,
        n_modules=n_modules,
        epsilon=float(graph.epsilon),
        edges=graph.edges,
        result=result,
    )


def _save_format(path: str | os.PathLike[str] | None, where: str) -> str | None:
    """The matplotlib format for ``path`` (checked before any drawing), or None."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise ModgraphTypeError(
            f"{where}: path must be a str or PathLike; got {type(path).__name__}."
        )
    suffix = Path(path).suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise ModgraphValueError(
            f"{where}: cannot save {str(path)!r}: the suffix {suffix or '(none)'!r} is not one of "
            f"{sorted(SAVE_FORMATS)}. Name the file e.g. 'modules.png', 'modules.svg' or "
            "'modules.pdf'."
        )
    return SAVE_FORMATS[suffix]


def _save(fig: Figure, path: str | os.PathLike[str] | None, fmt: str | None, where: str) -> None:
    if path is None or fmt is None:
        return
    with atomic_open(path, "wb", where=where) as handle:
        fig.savefig(handle, format=fmt, dpi=150, bbox_inches="tight")
    logger.info("%s: wrote %s", where, os.fspath(path))


def _figure_and_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure()
        if fig is None:
            raise ModgraphValueError("ax must belong to a matplotlib figure.")
        return fig, ax  # type: ignore[return-value]
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _order(membership: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """Positions sorted by module (0, 1, ..., then none) and by importance within one."""
    key = np.where(membership < 0, np.iinfo(np.int64).max, membership)
    return np.lexsort((-importance, key))


def _quotas(counts: np.ndarray, budget: int) -> np.ndarray:
    """Split ``budget`` slots over groups proportionally to ``counts`` (largest remainder),
    giving every non-empty group at least one slot while the budget allows."""
    total = int(counts.sum())
    if total <= budget:
        return counts.copy()
    present = np.flatnonzero(counts > 0)
    quota = np.zeros_like(counts)
    if budget <= present.size:  # not even one per group: the biggest groups first
        big = present[np.argsort(-counts[present], kind="stable")[:budget]]
        quota[big] = 1
        return quota
    quota[present] = 1
    rest = budget - present.size
    share = (counts - quota) * rest / (total - present.size)
    extra = np.floor(share).astype(np.int64)
    quota += extra
    left = rest - int(extra.sum())
    if left > 0:
        frac = share - extra
        frac[counts - quota <= 0] = -1.0
        quota[np.argsort(-frac, kind="stable")[:left]] += 1
    return np.minimum(quota, counts)


def _pick(membership: np.ndarray, importance: np.ndarray, budget: int) -> np.ndarray:
    """Local indices of the features of one layer to draw, in drawing order (top to bottom)."""
    order = _order(membership, importance)
    if membership.size <= budget:
        return order
    groups = np.where(membership < 0, -1, membership)
    labels, counts = np.unique(groups, return_counts=True)
    quota = _quotas(counts, budget)
    # position of each feature within its group in `order` (groups are contiguous there)
    g_sorted = groups[order]
    starts = np.r_[0, np.flatnonzero(g_sorted[1:] != g_sorted[:-1]) + 1]
    rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    keep_quota = quota[np.searchsorted(labels, g_sorted)]
    return order[rank < keep_quota]


def _stack(m: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Heights in [0, 1] (top to bottom) of features sorted by module, the number of slots, and
    the slot of a feature in no module.

    A feature in a module takes one slot and a gap of ``_GAP`` slots separates groups; a feature
    in no module takes ``_NONE_SLOT`` of a slot, less where needed so that features in no module
    fill at most half the column when there are modules.
    """
    if m.size == 0:
        return np.zeros(0), 0.0, _NONE_SLOT
    gap = np.r_[0.0, np.where(m[1:] != m[:-1], _GAP, 0.0)]
    n_none = int(np.count_nonzero(m < 0))
    module_space = float(np.count_nonzero(m >= 0) + gap[m >= 0].sum())
    none_slot = _NONE_SLOT
    if n_none and module_space > 0:
        none_slot = min(_NONE_SLOT, module_space / n_none)
    slot = np.where(m < 0, none_slot, 1.0)
    end = np.cumsum(slot + gap)
    centre = end - slot / 2
    return 1.0 - centre / end[-1], float(end[-1]), none_slot


# ---------------------------------------------------------------------------- plot_modules
def plot_modules(
    result: Any,
    *,
    ax: Axes | None = None,
    path: str | os.PathLike[str] | None = None,
    max_features_per_layer: int = 60,
    min_cost: float = 0.0,
    title: str | None = None,
    palette: str | Sequence[Any] | None = None,
) -> Figure:
    """Draw the layered feature graph with features coloured by module.

    Node layers run left to right (x = layer depth, layer names on the x axis). Within a layer,
    features are stacked top to bottom by module (module 0 first, features in no module last, in
    grey, packed closer and filling at most half the height) and by importance Λ within a module,
    with a small gap between modules, on a common vertical scale from 0 to 1, so a module forms a
    band across layers. Edges are the interactions with degeneracy cost above ``min_cost``; width
    and opacity grow with the cost; an edge inside a module takes the module's colour, an edge
    between modules (or to a feature in no module) is grey.

    Artists (stable, for tests and restyling): one ``PathCollection`` (scatter) per module that has
    a drawn feature, in module order, then one for the drawn features in no module (if any); one
    ``LineCollection`` holding every drawn edge (sorted by cost, strongest on top), present even
    when it is empty; a note (``ax.texts``) when any layer is subsampled.

    Parameters
    ----------
    result : ModuleResult
    ax : matplotlib Axes, optional
        Draw here; default: a new figure sized to the graph.
    path : str or PathLike, optional
        Save the figure: ``.png``, ``.svg`` or ``.pdf``.
    max_features_per_layer : int >= 1
        Draw at most this many features per layer. A bigger layer keeps its most important
        features of each module, the slots shared out in proportion to the modules' sizes in that
        layer (each module keeps at least one); the figure says so.
    min_cost : float >= 0
        Draw only edges with cost above this (nats); ``0`` draws every edge above ε.
    title : str, optional
        Default: the number of modules, ``Q_deg`` and the cross-module cost share.
    palette : str, sequence of colours, or None
        Module colours (see :func:`module_colors`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ModgraphValueError
        Bad ``max_features_per_layer``, ``min_cost``, ``palette`` or file suffix.
    """
    where = "plot_modules"
    fmt = _save_format(path, where)
    budget = int(check_int(max_features_per_layer, "max_features_per_layer", where, minimum=1) or 1)
    min_cost = check_float(min_cost, "min_cost", where, low=0.0, low_open=False)
    v = _view(result, where)
    colors = module_colors(v.n_modules, palette)
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    n_layers = len(v.layers)
    # ---- choose and place features: per layer, y in [0, 1] top to bottom
    drawn_local: list[np.ndarray] = []
    y_local: list[np.ndarray] = []
    subsampled = []
    slots, none_slot_min = 1.0, _NONE_SLOT
    for d in range(n_layers):
        lo, hi = v.offsets[d], v.offsets[d + 1]
        pick = _pick(v.membership[lo:hi], v.importance[lo:hi], budget)
        if pick.size < hi - lo:
            subsampled.append(d)
        y, n_slots, none_slot = _stack(v.membership[lo:hi][pick])
        slots = max(slots, n_slots)
        if np.any(v.membership[lo:hi][pick] < 0):
            none_slot_min = min(none_slot_min, none_slot)
        drawn_local.append(pick)
        y_local.append(y)
    counts = np.array([p.size for p in drawn_local])
    widest = int(counts.max(initial=1))

    fig, ax = _figure_and_axes(
        ax,
        (
            float(np.clip(1.25 * n_layers + 3.5, 6.5, 24.0)),
            float(np.clip(0.07 * widest + 3.6, 4.8, 10.0)),
        ),
    )
    node = np.concatenate([v.offsets[d] + drawn_local[d] for d in range(n_layers)]).astype(np.int64)
    x_of = np.full(int(v.offsets[-1]), np.nan)
    y_of = np.full(int(v.offsets[-1]), np.nan)
    x_of[node] = np.repeat(np.arange(n_layers, dtype=np.float64), counts)
    y_of[node] = np.concatenate(y_local) if node.size else np.zeros(0)

    # ---- edges among drawn features, per layer pair on the drawn sub-matrix only
    srcs, dsts, costs = [], [], []
    for d, pair in enumerate(zip(v.layers[:-1], v.layers[1:])):
        cols, rows = drawn_local[d], drawn_local[d + 1]
        if cols.size == 0 or rows.size == 0:
            continue
        E = np.asarray(v.edges[pair], dtype=np.float64)[np.ix_(rows, cols)]
        c = degeneracy_cost(E, v.epsilon)
        r, k = np.nonzero(c > min_cost)
        srcs.append(v.offsets[d] + cols[k])
        dsts.append(v.offsets[d + 1] + rows[r])
        costs.append(c[r, k])
    src = np.concatenate(srcs).astype(np.int64) if srcs else np.zeros(0, np.int64)
    dst = np.concatenate(dsts).astype(np.int64) if dsts else np.zeros(0, np.int64)
    cost = np.concatenate(costs) if costs else np.zeros(0)
    order = np.argsort(cost, kind="stable")
    src, dst, cost = src[order], dst[order], cost[order]
    segments = np.stack(
        [np.column_stack([x_of[src], y_of[src]]), np.column_stack([x_of[dst], y_of[dst]])], axis=1
    )
    strength = cost / cost.max() if cost.size else cost
    ms, md = v.membership[src], v.membership[dst]
    same = (ms == md) & (ms >= 0)
    rgba = np.tile(np.asarray(NO_MODULE_COLOR), (src.size, 1))
    if same.any():
        rgba[same] = colors[ms[same]]
    # fewer, lighter strokes when the graph is dense
    per_pair = src.size / max(n_layers - 1, 1)
    top_alpha = float(np.clip(12.0 / np.sqrt(max(per_pair, 1.0)), 0.15, 0.85))
    rgba[:, 3] = (0.04 + 0.96 * strength**1.5) * top_alpha * np.where(same, 1.0, 0.7)
    widths = 0.15 + 2.6 * strength**1.5
    edges_artist = LineCollection(
        segments.reshape(-1, 2, 2), colors=rgba, linewidths=widths, zorder=1, capstyle="round"
    )
    ax.add_collection(edges_artist, autolim=False)

    # ---- nodes: one scatter per module with drawn features, then the features in no module
    # marker diameters (points) from the spacing of the most crowded layer
    box = ax.get_position()
    pitch = box.height * fig.get_figheight() * 72.0 / (1.12 * slots)
    diameter = float(np.clip(0.8 * pitch, 2.0, 9.0))
    size = diameter**2
    none_size = float(np.clip(0.8 * none_slot_min * pitch, 1.5, 0.75 * diameter)) ** 2
    m_drawn = v.membership[node]
    handles = []
    for m in range(v.n_modules):
        sel = node[m_drawn == m]
        if sel.size == 0:
            continue
        total = int(np.count_nonzero(v.membership == m))
        h = ax.scatter(
            x_of[sel],
            y_of[sel],
            s=size,
            color=colors[m],
            edgecolors="white",
            linewidths=0.4,
            zorder=3,
            label=f"module {m} ({total})",
        )
        handles.append(h)
    none = node[m_drawn < 0]
    none_handle = None
    if none.size:
        total = int(np.count_nonzero(v.membership < 0))
        none_handle = ax.scatter(
            x_of[none],
            y_of[none],
            s=none_size,
            color=NO_MODULE_COLOR,
            edgecolors="none",
            zorder=2,
            label=f"no module ({total})",
        )

    # ---- axes, legend, notes
    ax.set_xlim(-0.45, n_layers - 0.55)
    ax.set_ylim(-0.09 if subsampled else -0.03, 1.03)
    ax.set_xticks(np.arange(n_layers))
    rotate = n_layers > 10 or max((len(s) for s in v.layers), default=0) * n_layers > 60
    ax.set_xticklabels(
        [f"{name}\n({k})" if not rotate else name for name, k in zip(v.layers, v.sizes)],
        rotation=90 if rotate else 0,
        fontsize=8 if rotate else 9,
    )
    ax.set_yticks([])
    ax.set_xlabel("node layer" if rotate else "node layer (features)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="x", length=0)
    if title is None:
        score = getattr(result, "score", None)
        cross = getattr(result, "cross_fraction", None)
        title = f"{v.n_modules} module{'s' if v.n_modules != 1 else ''}"
        if score is not None and cross is not None:
            title += f"  (Q_deg = {score:.3f}, cross-module cost {100 * cross:.1f}%)"
    ax.set_title(title, fontsize=11)

    legend_handles: list[Any] = handles[:_LEGEND_MAX]
    if len(handles) > _LEGEND_MAX:
        legend_handles.append(
            Line2D([], [], linestyle="none", label=f"+{len(handles) - _LEGEND_MAX} more modules")
        )
    if none_handle is not None:
        legend_handles.append(none_handle)
    if legend_handles:
        ax.legend(
            handles=legend_handles,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            frameon=False,
            fontsize=8,
            markerscale=7.0 / diameter,
        )
    if subsampled:
        shown = int(counts[subsampled].max())
        largest = int(v.sizes[subsampled].max())
        ax.text(
            0.0,
            0.01,
            f"showing at most {shown} of up to {largest} features per layer "
            f"({len(subsampled)} of {n_layers} layers subsampled: the most important features "
            "of each module, in proportion to module size)",
            transform=ax.transAxes,
            ha="left",
            va="bottom",
            fontsize=7.5,
            color="0.3",
        )
    _save(fig, path, fmt, where)
    return fig


# ---------------------------------------------------------------------------- plot_module_map
def plot_module_map(
    result: Any,
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
    result : ModuleResult
    ax : matplotlib Axes, optional
    path : str or PathLike, optional
        Save the figure: ``.png``, ``.svg`` or ``.pdf``.
    palette : str, sequence of colours, or None
        Module colours (see :func:`module_colors`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    where = "plot_module_map"
    fmt = _save_format(path, where)
    v = _view(result, where)
    n_layers = len(v.layers)
    depth = np.repeat(np.arange(n_layers), v.sizes)
    has_none = bool((v.membership < 0).any())
    n_rows = v.n_modules + int(has_none)
    annotate = n_rows * n_layers <= 600
    row = np.where(v.membership < 0, v.n_modules, v.membership)
    counts = np.zeros((max(n_rows, 1), n_layers), dtype=np.int64)
    np.add.at(counts, (row, depth), 1)
    counts = counts[:n_rows]

    fig, ax = _figure_and_axes(
        ax,
        (
            float(np.clip(0.55 * n_layers + 3.2, 4.5, 20.0)),
            float(np.clip(0.42 * n_rows + 1.9, 2.6, 14.0)),
        ),
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
    ax.set_xticklabels(
        [f"{name}\n({k})" for name, k in zip(v.layers, v.sizes)]
        if n_layers <= 10
        else list(v.layers),
        rotation=0 if n_layers <= 10 else 90,
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
    ax.set_xlabel("node layer (features)" if n_layers <= 10 else "node layer")
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
    _save(fig, path, fmt, where)
    return fig


# ---------------------------------------------------------------------------- plot_interactions
def plot_interactions(
    result: Any,
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
    result : ModuleResult
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
    ModgraphValueError
        ``layer`` is unknown or is the last node layer, or the file suffix is not supported.
    """
    where = "plot_interactions"
    fmt = _save_format(path, where)
    v = _view(result, where)
    sources = list(v.layers[:-1])
    if not isinstance(layer, str) or layer not in sources:
        why = (
            f"{layer!r} is the last node layer and has no next layer"
            if isinstance(layer, str) and layer == v.layers[-1]
            else f"{layer!r} is not a node layer of this result"
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

    fig, ax = _figure_and_axes(
        ax,
        (
            float(np.clip(0.09 * k_cols + 3.6, 5.0, 13.0)),
            float(np.clip(0.09 * k_rows + 2.2, 3.6, 12.0)),
        ),
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
    ax.set_xlabel(f"source features of {layer!r} ({k_cols}), by module")
    ax.set_ylabel(f"target features of {target!r} ({k_rows}), by module")
    ax.set_title(f"interactions {layer!r} → {target!r}", fontsize=11, pad=14)
    cbar = fig.colorbar(im, ax=ax, pad=0.05, shrink=0.9)
    cbar.set_label("interaction strength E" + (" (log scale)" if log else ""))
    if norm.vmin is not None and norm.vmax is not None and norm.vmin <= v.epsilon <= norm.vmax:
        cbar.ax.axhline(v.epsilon, color="tab:cyan", linewidth=2.0)
        cbar.ax.text(
            -0.08,
            v.epsilon,
            "ε",
            transform=cbar.ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=9,
            color="tab:cyan",
        )
    _save(fig, path, fmt, where)
    return fig
