"""Module colours: a distinct colour per module, grey for features in no module."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._validate import check_int
from ..errors import ModgraphValueError

#: Colour (RGBA) of features in no module.
NO_MODULE_COLOR = (0.62, 0.62, 0.62, 1.0)


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
