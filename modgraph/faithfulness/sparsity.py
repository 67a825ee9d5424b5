"""Sparsity of the interaction graph: how few edges carry most of each layer pair's weight."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._arrays import readonly
from .._validate import check_float
from ..errors import ModgraphValueError
from ..graph import InteractionGraph
from .curves import _kinds_and_sets

__all__ = ["SparsityReport", "SparsityRow", "edges_for_share", "sparsity_report"]

FRACTIONS = (0.5, 0.9, 0.99)


def edges_for_share(E: np.ndarray, fractions: Iterable[float]) -> np.ndarray:
    """The fewest edges (largest first) whose summed ``E`` reaches each share of the total,
    shape (n_fractions,); 0 for a pair with no weight."""
    values = np.sort(np.asarray(E, dtype=np.float64).ravel())[::-1]
    total = float(values.sum())
    shares = np.asarray(list(fractions), dtype=np.float64)
    if total <= 0:
        return np.zeros(shares.size, dtype=np.int64)
    cumulative = np.cumsum(values)
    # the share is reached once the sum is within rounding of share · total
    needed = np.searchsorted(cumulative, shares * total * (1 - 1e-12), "left") + 1
    return np.minimum(needed, values.size).astype(np.int64)


@dataclass(frozen=True)
class SparsityRow:
    """One layer pair in one basis.

    Attributes
    ----------
    basis : str
        The basis (graph) label.
    pair : (str, str)
        The layer pair.
    n_edges : int
        All edges of the pair (``k'·k``).
    total_weight : float
        ``Σ E`` over the pair.
    counts : ndarray of int, shape (n_fractions,)
        Edges (largest first) that carry each share of ``total_weight``.
    """

    basis: str
    pair: tuple[str, str]
    n_edges: int
    total_weight: float
    counts: np.ndarray


@dataclass(frozen=True)
class SparsityReport:
    """How many edges carry 50 / 90 / 99 % of each layer pair's edge weight, per basis.

    Attributes
    ----------
    fractions : tuple of float
        The shares (default ``(0.5, 0.9, 0.99)``).
    rows : tuple of SparsityRow
        One per (basis, pair), basis outer.
    """

    fractions: tuple[float, ...]
    rows: tuple[SparsityRow, ...]

    def counts(self, basis: str, pair: tuple[str, str]) -> np.ndarray:
        """The counts of one (basis, pair), shape (n_fractions,)."""
        for row in self.rows:
            if row.basis == basis and row.pair == tuple(pair):
                return row.counts
        raise ModgraphValueError(f"SparsityReport has no row for basis {basis!r}, pair {pair!r}.")

    def to_text(self) -> str:
        """A text table: one line per (basis, pair)."""
        head = f"{'basis':<12} {'pair':<28} {'edges':>8} " + " ".join(
            f"{f'{100 * f:g}%':>8}" for f in self.fractions
        )
        lines = [head]
        for row in self.rows:
            pair = f"{row.pair[0]}→{row.pair[1]}"
            lines.append(
                f"{row.basis[:12]:<12} {pair[:28]:<28} {row.n_edges:>8} "
                + " ".join(f"{int(c):>8}" for c in row.counts)
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def sparsity_report(graphs: Any, fractions: Iterable[float] = FRACTIONS) -> SparsityReport:
    """The number of edges that carry 50 / 90 / 99 % of each layer pair's edge weight.

    Parameters
    ----------
    graphs : InteractionGraph, list of them, or dict label → InteractionGraph
        E.g. the same model's graph in the bases ``"interaction"``, ``"pca"`` and
        ``"neuron"`` (labelled by their bases' kind unless a dict names them).
    fractions : list of float in (0, 1]
        The shares of the weight.

    Returns
    -------
    SparsityReport
        ``str(report)`` is a table; ``report.counts(basis, pair)`` the numbers.

    Examples
    --------
    >>> import numpy as np
    >>> from modgraph import InteractionGraph
    >>> from modgraph.faithfulness import sparsity_report
    >>> g = InteractionGraph.from_matrices([np.diag([8.0, 1.0, 1.0])], epsilon=1.0)
    >>> sparsity_report(g).counts("graph", ("L0", "L1")).tolist()
    [1, 3, 3]
    """
    where = "sparsity_report"
    sets = _kinds_and_sets(graphs, InteractionGraph, "graphs", where)
    if any(isinstance(g, str) for _, g in sets):
        raise ModgraphValueError(
            f"The 'graphs' parameter of {where} must hold InteractionGraphs (from "
            "interaction_graph), not basis names."
        )
    shares = tuple(
        check_float(f, "fractions", where, low=0.0, high=1.0, high_open=False) for f in fractions
    )
    if not shares:
        raise ModgraphValueError(f"The 'fractions' parameter of {where} is empty.")
    rows = [
        SparsityRow(
            basis=label,
            pair=pair,
            n_edges=int(np.asarray(E).size),
            total_weight=float(np.asarray(E).sum()),
            counts=readonly(edges_for_share(E, shares), np.int64),
        )
        for label, g in sets
        for pair, E in g.edges.items()
    ]
    return SparsityReport(fractions=shares, rows=tuple(rows))
