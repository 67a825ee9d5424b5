"""What every figure shares: the file formats, the save-format check, the atomic save, the figure
and its axes, user text as literal labels, and the view of (graph, partition) as arrays in node
order."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cluster import Partition
from ..errors import ModgraphTypeError, ModgraphValueError
from ..graph import InteractionGraph
from ..io import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger("modgraph")

#: File suffixes the plot functions can write, and the matplotlib format of each.
SAVE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


# ---------------------------------------------------------------------------- files
def save_format(path: Any, where: str, stem: str = "modules") -> str | None:
    """The matplotlib format for ``path`` (check it before any drawing), or None for no path.

    Raises
    ------
    ModgraphTypeError
        ``path`` is not a str or PathLike.
    ModgraphValueError
        The suffix is not one of :data:`SAVE_FORMATS` (the message suggests ``{stem}.png``...).
    """
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise ModgraphTypeError(
            f"{where}: path must be a str or PathLike; got {type(path).__name__}."
        )
    suffix = Path(path).suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise ModgraphValueError(
            f"{where}: cannot save {os.fspath(path)!r}: the suffix {suffix or '(none)'!r} is not "
            f"one of {sorted(SAVE_FORMATS)}. Name the file e.g. '{stem}.png', '{stem}.svg' or "
            f"'{stem}.pdf'."
        )
    return SAVE_FORMATS[suffix]


def save(
    fig: Figure,
    path: str | os.PathLike[str] | None,
    fmt: str | None,
    where: str,
    *,
    tight: bool = True,
) -> None:
    """Write ``fig`` to ``path`` atomically (150 dpi; cropped to its content when ``tight``);
    nothing when ``path`` is None."""
    if path is None or fmt is None:
        return
    with atomic_open(path, "wb", where=where) as handle:
        fig.savefig(handle, format=fmt, dpi=150, bbox_inches="tight" if tight else None)
    logger.info("%s: wrote %s", where, os.fspath(path))


# ---------------------------------------------------------------------------- labels
#: Longest layer name drawn in full; a longer one is shortened in the middle with an ellipsis.
LABEL_CHARS = 32


def plain(text: object, limit: int | None = LABEL_CHARS) -> str:
    """User text (a layer name) as a one-line label that matplotlib draws literally.

    Every piece of user text the figures draw goes through here. Layer names are any string
    (``model.named_modules()``), and matplotlib reads text with an even number of unescaped
    ``$`` as mathtext, which fails at draw time for e.g. ``"$\\frac$"``, so:

    - characters that are not printable (newline, tab, other control and format characters)
      are written as their Python escape (``"a\\nb"``), so a label stays on one line;
    - a label of more than ``limit`` characters keeps its start and its end, joined by "…";
    - every ``$`` is escaped as ``\\$``, which matplotlib draws as ``$`` (not mathtext).

    Drawn as given only when ``text.usetex`` is off (the default); with LaTeX rendering the user
    owns escaping.
    """
    s = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )
    if limit is not None and len(s) > limit:
        tail = max(limit // 3, 1)
        s = s[: max(limit - 1 - tail, 1)] + "…" + s[-tail:]
    return s.replace("$", r"\$")


# ---------------------------------------------------------------------------- figure and axes
def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with constrained layout, not registered with pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def panel_grid(n: int, panel: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A new figure of ``n`` panels of size ``panel`` (inches), at most three per row; the
    grid's unused cells are hidden."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure((panel[0] * cols, panel[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[n:]:
        extra.set_visible(False)
    return fig, list(axes[:n])


def figure_of(ax: Axes, where: str) -> Figure:
    """The figure ``ax`` belongs to."""
    fig = ax.get_figure()
    if fig is None:
        raise ModgraphValueError(f"{where}: ax must belong to a matplotlib figure.")
    return fig  # type: ignore[return-value]


def figure_and_axes(
    ax: Axes | None, figsize: tuple[float, float], where: str
) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` with one axes."""
    if ax is not None:
        return figure_of(ax, where), ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


# ---------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class View:
    """What the plots need from (graph, partition), as arrays in node order."""

    graph: InteractionGraph
    partition: Partition | None  # None when given a plain membership
    layers: tuple[str, ...]
    sizes: np.ndarray
    offsets: np.ndarray
    importance: np.ndarray
    membership: np.ndarray
    n_modules: int
    epsilon: float
    edges: Mapping[tuple[str, str], np.ndarray]  # (layer, next_layer) -> E (k_next, k)


def view(graph: Any, partition: Any, where: str) -> View:
    """Check (graph, partition) and lay them out as arrays in node order.

    Raises
    ------
    ModgraphTypeError
        ``graph`` is not an InteractionGraph, or ``partition`` is neither a Partition nor a
        membership (dict node id → module, or a sequence of ints in node order).
    ModgraphValueError
        The partition does not fit the graph.
    """
    if not isinstance(graph, InteractionGraph):
        raise ModgraphTypeError(
            f"{where} needs an InteractionGraph (from interaction_graph, or "
            "result.interaction_graph) first and the partition second; for a ModuleResult call "
            f"{where}(result.interaction_graph, result.partition), or result.plot() for the "
            f"module graph. Got {type(graph).__name__}."
        )
    if isinstance(partition, Partition):
        membership = np.asarray(partition.membership, dtype=np.int64)
        if membership.shape != (graph.n_nodes,):
            raise ModgraphValueError(
                f"{where}: the partition has {membership.shape[0]} entries for {graph.n_nodes} "
                "features."
            )
        given: Partition | None = partition
    elif isinstance(partition, (Mapping, Sequence, np.ndarray)) and not isinstance(
        partition, (str, bytes)
    ):
        membership = graph.membership_array(partition, where)
        given = None
    else:
        raise ModgraphTypeError(
            f"{where}: partition must be a Partition (from leiden_modules), a dict node id → "
            "module, or a sequence of ints in graph.node_ids order (-1 for no module). Got "
            f"{type(partition).__name__}."
        )
    return View(
        graph=graph,
        partition=given,
        layers=tuple(graph.layers),
        sizes=np.asarray(graph.sizes, dtype=np.int64),
        offsets=np.asarray(graph.offsets, dtype=np.int64),
        importance=np.asarray(graph.node_attributes()["importance"], dtype=np.float64),
        membership=membership,
        n_modules=int(membership.max(initial=-1) + 1),
        epsilon=float(graph.epsilon),
        edges=graph.edges,
    )
