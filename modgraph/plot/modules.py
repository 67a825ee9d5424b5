"""The layered module graph (:func:`plot_modules`) and its layout: which features of a layer to
draw, in which order, at which height."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validate import check_float, check_int
from ..modularity import degeneracy_cost, modularity_score, partition_cost
from ._figure import View, figure_and_axes, plain, save, save_format, view
from .colors import NO_MODULE_COLOR, module_colors

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..cluster import Partition
    from ..graph import InteractionGraph

_LEGEND_MAX = 20
_GAP = 0.8  # vertical gap between module groups, in feature slots
_NONE_SLOT = 0.4  # vertical space of a feature in no module, in feature slots


# ---------------------------------------------------------------------------- layout
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


# ---------------------------------------------------------------------------- the figure
def plot_modules(
    graph: InteractionGraph,
    partition: Partition | Mapping[str, int] | Sequence[int] | np.ndarray,
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
    graph : InteractionGraph
        From :func:`~modgraph.interaction_graph` (or ``result.interaction_graph``); a
        :class:`~modgraph.ModuleResult` draws itself with ``result.plot()``.
    partition : Partition, dict of str to int, or sequence of int, shape (n_features,)
        The modules: a :class:`~modgraph.Partition` from :func:`~modgraph.leiden_modules`, or
        a membership (node id → module, or modules in ``graph.node_ids`` order; ``-1`` for a
        feature in no module).
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
        Default: the number of modules, ``Q_deg`` and the cross-module cost share (those of the
        Partition; for a plain membership computed at resolution 1). A given title is the
        caller's own text and is drawn as matplotlib draws any title, mathtext included (e.g.
        ``r"$\\varepsilon = 0.1$"``); escape a literal dollar as ``\\$``. Layer names, which come
        from the model, are always drawn literally (one line, at most 32 characters, shortened
        in the middle with "…").
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
        Bad ``max_features_per_layer``, ``min_cost``, ``palette``, membership or file suffix.
    """
    where = "plot_modules"
    fmt = save_format(path, where)
    budget = int(check_int(max_features_per_layer, "max_features_per_layer", where, minimum=1) or 1)
    min_cost = check_float(min_cost, "min_cost", where, low=0.0, low_open=False)
    v = view(graph, partition, where)
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

    fig, ax = figure_and_axes(
        ax,
        (
            float(np.clip(1.25 * n_layers + 3.5, 6.5, 24.0)),
            float(np.clip(0.07 * widest + 3.6, 4.8, 10.0)),
        ),
        where,
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
        c = degeneracy_cost(E, v.graph.epsilon_of(pair))
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
    names = [plain(name) for name in v.layers]
    rotate = n_layers > 10 or max((len(s) for s in names), default=0) * n_layers > 60
    ax.set_xticklabels(
        [f"{name}\n({k})" if not rotate else name for name, k in zip(names, v.sizes)],
        rotation=90 if rotate else 0,
        fontsize=8 if rotate else 9,
    )
    ax.set_yticks([])
    ax.set_xlabel("node layer" if rotate else "node layer (features)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="x", length=0)
    if title is None:
        score, cross = _scores(v)
        title = f"{v.n_modules} module{'s' if v.n_modules != 1 else ''}"
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
    save(fig, path, fmt, where)
    return fig


def _scores(v: View) -> tuple[float, float]:
    """``Q_deg`` and the cross-module cost share: the Partition's, or those of the plain
    membership at resolution 1."""
    if v.partition is not None:
        return float(v.partition.score), float(v.partition.cross_fraction)
    score = modularity_score(v.graph, v.membership)
    return score, partition_cost(v.graph, v.membership).cross_fraction
