"""ε from the behavioural loss: ``find_modules(epsilon="ablation")``.

Per layer pair, the largest ε such that cutting every edge with ``E < ε`` (by edge ablation,
the other pairs intact) changes the model output by at most ``loss_tolerance · tr Cov(output)``
in mean square. Found by bisection on the pair's sorted edge values: the bracket is a range of
the sorted values (the lower end known to be within tolerance), and each step measures the cut at
the *logarithmic* midpoint of the bracket's values (edge values span many decades, so a
midpoint in log closes the gap in ε in a few passes), until the bracket holds one value or its
values lie within a factor :data:`RESOLUTION` of each other.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validate import check_model
from ..capture import Session, session
from ..errors import ModgraphTypeError, ModgraphValueError
from ..graph import InteractionGraph
from ..interactions import measure_graph
from ..options import DEFAULT_LOSS_TOLERANCE, Options
from .ablate import EdgeAblation
from .loss import measure_losses

__all__ = ["EpsilonChoice", "ablation_epsilon"]

logger = logging.getLogger("modgraph")

#: The bisection stops when the bracket's edge values lie within this factor of each other.
RESOLUTION = 1.1

#: Edge values below this share of a pair's largest are numerically zero (floor of the log scale).
FLOOR = 1e-30


@dataclass(frozen=True)
class EpsilonChoice:
    """The ε chosen for one layer pair by edge ablation.

    Attributes
    ----------
    pair : (str, str)
        The layer pair.
    epsilon : float
        The largest ε found with ``relative_loss ≤ loss_tolerance`` when every edge with
        ``E < ε`` is cut.
    n_cut, n_edges : int
        Edges with ``E < ε``, and all edges of the pair.
    relative_loss : float
        Mean squared output change of that cut, as a share of ``tr Cov(output)`` (measured).
    loss_tolerance : float
        The bound it was chosen under.
    evaluations : int
        Passes over the data the bisection took.
    """

    pair: tuple[str, str]
    epsilon: float
    n_cut: int
    n_edges: int
    relative_loss: float
    loss_tolerance: float
    evaluations: int


def choose_epsilons(
    sess: Session, graph: InteractionGraph, tolerance: float
) -> dict[tuple[str, str], EpsilonChoice]:
    """Bisection per layer pair of ``graph`` (edges and bases measured on this session's
    model), in the session."""
    assert graph.bases is not None
    sections = {(s.source, s.target): s for s in sess.plan.sections}
    out = {}
    for pair, E in graph.edges.items():
        src, dst = graph.bases[pair[0]], graph.bases[pair[1]]
        values = np.asarray(E, dtype=np.float64).ravel()
        u = np.unique(values)  # distinct, ascending: ε = u[j] cuts the edges below u[j]
        top = float(u[-1]) if u.size else 0.0

        def loss(j: int, pair: Any = pair, E: Any = E, u: Any = u, ends: Any = (src, dst)) -> float:
            keep = np.asarray(E) >= (u[j] if j < u.size else math.inf)
            forward = EdgeAblation(sess, sections[pair], *ends, keep)
            (result,) = measure_losses(sess, [forward], f"ε of {pair[0]}→{pair[1]}")
            return result.relative

        # cutting below u[lo] is within tolerance; below u[hi] (u[size]: everything) is not
        lo, hi, lo_loss, steps = 0, u.size + 1, 0.0, 0
        while hi - lo > 1:
            a, b = max(float(u[lo]), top * FLOOR), float(u[min(hi - 1, u.size - 1)])
            if b <= a * RESOLUTION:
                break
            j = int(np.searchsorted(u, math.sqrt(a * b), "left")) if a > 0 else (lo + hi) // 2
            j = min(max(j, lo + 1), hi - 1)
            value = loss(j)
            steps += 1
            if value <= tolerance:
                lo, lo_loss = j, value
            else:
                hi = j
        if lo < u.size and u[lo] > 0:
            eps = float(u[lo])
        elif lo >= u.size and top > 0:
            eps = top  # every edge may go: none carries cost
        else:  # nothing may go, and the smallest edges are 0 (they carry no cost anyway)
            eps = float(u[1]) / 2 if u.size > 1 else graph.epsilon
        n_cut = int((values < eps).sum())
        out[pair] = EpsilonChoice(pair, eps, n_cut, values.size, lo_loss, tolerance, steps)
        logger.info(
            "ε of %s→%s by ablation: %.3g (%d of %d edges below it; output change %.3g of "
            "tr Cov(output), tolerance %.3g; %d passes)",
            pair[0], pair[1], eps, n_cut, values.size, lo_loss, tolerance, steps,
        )  # fmt: skip
    return out


def ablation_graph(model: nn.Module, data: Any, layers: Any, options: Options) -> InteractionGraph:
    """``find_modules(epsilon="ablation")``: the graph measured with the default ε, then ε per
    layer pair by :func:`choose_epsilons`, recorded as the graph's ``pair_epsilon``."""
    plain = dataclasses.replace(options, epsilon=None, loss_tolerance=None)
    graph = measure_graph(model, data, layers, None, plain)
    assert options.loss_tolerance is not None
    with session(model, data, list(graph.layers), plain) as sess:
        chosen = choose_epsilons(sess, graph, options.loss_tolerance)
    return dataclasses.replace(graph, pair_epsilon={p: c.epsilon for p, c in chosen.items()})


_WHERE = "ablation_epsilon"


def ablation_epsilon(
    model: nn.Module,
    data: Any,
    graph: InteractionGraph,
    *,
    loss_tolerance: float = DEFAULT_LOSS_TOLERANCE,
    batch_size: int = 256,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> dict[tuple[str, str], EpsilonChoice]:
    """ε per layer pair of ``graph`` from edge ablations on ``data``, with the measurements.

    What ``find_modules(epsilon="ablation")`` runs (and records as the graph's
    ``pair_epsilon``): per layer pair, the largest ε such that cutting every edge with
    ``E < ε`` changes the output by at most ``loss_tolerance · tr Cov(output)`` in mean square.

    Parameters
    ----------
    model, data
        As for :func:`~modgraph.interaction_basis`.
    graph : InteractionGraph
        From :func:`~modgraph.interaction_graph` on ``model`` (it carries the bases).
    loss_tolerance : float > 0
        Bound on the relative mean squared output change (default 1e-2).
    batch_size, dtype, device, output, progress
        As for :func:`~modgraph.interaction_basis`.

    Returns
    -------
    dict of (str, str) to EpsilonChoice
        Per layer pair: ε, the edges below it, the measured relative loss, the passes taken.
    """
    check_model(model, _WHERE)
    options = Options.from_arguments(locals(), _WHERE)
    if not isinstance(graph, InteractionGraph):
        raise ModgraphTypeError(
            f"The 'graph' parameter of {_WHERE} must be an InteractionGraph (from "
            f"interaction_graph). Got {type(graph).__name__}."
        )
    if not graph.bases:
        raise ModgraphValueError(
            f"{_WHERE}: the graph has no bases (built from matrices); use a graph from "
            "interaction_graph on this model."
        )
    with session(model, data, list(graph.layers), options) as sess:
        assert options.loss_tolerance is not None
        return choose_epsilons(sess, graph, options.loss_tolerance)
