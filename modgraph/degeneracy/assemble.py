"""The degeneracy report: the passes over the data, and the assembly of the counts."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._arrays import eigvals_desc, readonly
from .._validate import check_model
from ..capture import Session, session
from ..jacobian import global_jacobian_grams
from ..moments import Moments, count_kept, covariance_cut
from ..options import Options
from ..plan import IDENTITY, Section, is_plain_linear
from .attention import group_heads
from .counts import (
    Cut,
    Span,
    augmented_weight,
    block_free,
    components,
    data_span,
    linear_block,
    rank,
    restrict,
)
from .firing import UnitSetPlan, consumed_only_by, first_pass, plan_unit_sets, probe_batch
from .report import DegeneracyReport, LayerDegeneracy, UnitSetDegeneracy

__all__ = ["degeneracy_report"]

logger = logging.getLogger("modgraph")

_WHERE = "degeneracy_report"
#: Work allowed for restricting the input span of every group to its firing points (flops).
_RESTRICT_FLOPS = 4e9


@dataclass
class _Context:
    sess: Session
    moments: dict[str, Moments]
    cuts: dict[str, Cut]
    spans: dict[str, Span]
    grams: dict[str, np.ndarray]
    rtol: float
    tol_points: int
    exclusive: dict[str, bool] = field(default_factory=dict)


def _reader(module: nn.Module) -> tuple[str | None, int | None, str]:
    if is_plain_linear(module):
        assert isinstance(module, nn.Linear)
        bias = "" if module.bias is not None else ", no bias"
        return f"Linear({module.in_features}→{module.out_features}{bias})", module.out_features, ""
    return (
        None,
        None,
        f"not followed by a weight-bearing module (read by {type(module).__name__}): "
        "source 1 counts 0 here",
    )


def _next_weights(ctx: _Context, dst: str) -> tuple[nn.Linear | None, str]:
    """The Linear that reads ``dst`` and can absorb a change of its input, or why there is none."""
    if dst == ctx.sess.plan.output:
        return None, "these units are the model output (no weights read them)"
    module = ctx.sess.plan.modules[dst]
    if not is_plain_linear(module):
        return None, (
            f"node layer {dst!r} is read by {type(module).__name__}, not nn.Linear: mixings and "
            "rescalings are not counted"
        )
    if not ctx.exclusive.get(dst, False):
        return None, (
            f"the activations of these units (or their preactivations) are also used outside "
            f"{dst!r} (e.g. a residual branch): nothing is counted as free"
        )
    assert isinstance(module, nn.Linear)
    return module, ""


def _weights_of(linear: nn.Linear | None) -> np.ndarray | None:
    if linear is None:
        return None
    return linear.weight.detach().cpu().to(torch.float64).numpy()


def _unit_set(ctx: _Context, p: UnitSetPlan) -> UnitSetDegeneracy:
    s = p.section
    base: dict[str, Any] = dict(
        layer=s.target,
        linear=s.source,
        activation=p.label,
        width=ctx.sess.plan.dims[s.target],
        firing_counts=readonly(np.zeros(0), np.int64),
        groups=(),
        dead=(),
        always_on=(),
        excluded=(),
        mixing_directions=0,
        dead_outgoing=0,
        free_groups=0,
        free_linear=0,
        free_dead=0,
    )
    if p.status == "skip":
        return UnitSetDegeneracy(analysable=False, note=p.note, **base)
    assert p.linear is not None
    span = ctx.spans[s.source]
    W = augmented_weight(p.linear, span.bias)
    nxt, why = _next_weights(ctx, s.target)
    C_all = _weights_of(nxt)
    dst_bias = nxt is not None and nxt.bias is not None

    if p.status == "linear":
        free = linear_block(W, C_all, span, dst_bias) if C_all is not None else 0
        if is_plain_linear(ctx.sess.plan.modules[s.target]):
            junction = "Linear→Linear junction: every unit is linear, an invertible mixing is free"
            note = "; ".join(filter(None, (junction, why)))
        else:
            note = f"the output of {s.source!r} is the input of {s.target!r} itself; {why}"
        return UnitSetDegeneracy(analysable=False, note=note, **{**base, "free_linear": free})

    f = p.firing
    assert f is not None
    if not f.matched or f.on is None:
        note = (
            f"the input of {s.target!r} is not an elementwise function of the output of "
            f"{s.source!r} (no activation module between them, and not relu(z) on the data): "
            "not analysable"
        )
        return UnitSetDegeneracy(analysable=False, note=note, **{**base, "activation": "-"})
    assert f.co is not None and f.kinks is not None and f.saturated is not None
    assert f.zmin is not None and f.zmax is not None

    N = f.n
    on = f.on.cpu().numpy()
    co = f.co.cpu().numpy()
    kinks = f.kinks.cpu().numpy() > 0
    saturating = f.saturated.cpu().numpy() > 0
    zmin, zmax = f.zmin.cpu().numpy(), f.zmax.cpu().numpy()
    dead = on == 0
    always = on == N
    alive = ~dead & ~always
    excluded = kinks | (saturating & ~dead)
    comps = components(on, co, np.flatnonzero(alive), ctx.tol_points)
    groups = tuple(tuple(int(i) for i in c) for c in comps if c.size >= 2)

    # Constant output (ReLU: dead) frees the outgoing weights: zero-variance directions of the
    # next layer, counted by its source 1. Inert units (slope 0 at every point, strictly off a
    # kink) free their incoming weights. Linear units (constant slope) merge with neighbours.
    if f.kind == "leaky":
        constant = np.zeros_like(dead)
        inert = np.zeros_like(dead)
        linear_units = (always | dead) & ~kinks
    else:
        constant = dead & ((zmax <= 0) | (zmin >= 6)) if f.kind == "relu6" else dead
        inert = dead & ~kinks
        linear_units = always & ~kinks
    reader = ctx.sess.plan.modules.get(s.target)
    reader_width = reader.out_features if is_plain_linear(reader) else 0  # type: ignore[union-attr]
    dead_outgoing = int(constant.sum()) * int(reader_width)

    exclusive = s.target == ctx.sess.plan.output or ctx.exclusive.get(s.target, False)
    free_dead = int(inert.sum()) * span.s if exclusive else 0
    free_groups = free_linear = 0
    restricted = True
    if C_all is not None:
        support = f.support.cpu().numpy() if f.support is not None else np.zeros((0, 0))
        budget = _RESTRICT_FLOPS
        for c in comps:
            members = c[~excluded[c]]
            if not members.size:
                continue
            # On its firing points a block sees only the source units active there: its input
            # span is span(Q) with those coordinates zero (the bias coordinate is never zero).
            silent = np.flatnonzero(support[members].sum(0) == 0)
            cost = float(silent.size) * span.s * min(silent.size, span.s)
            if cost > budget:
                silent, restricted = silent[:0], False  # conservative: the full span
            budget -= cost if silent.size else 0.0
            if members.size == 1:
                # An alive unit is nonzero on its span (z > 0 where it fires): r_W = 1.
                r_C = int(bool(np.any(C_all[:, members[0]] != 0)))
                s_F = span.s - rank(span.Q[silent], 1.0)
                free_groups += span.s - r_C * (s_F - 1)
            else:
                basis = restrict(span.Q, silent)
                free_groups += block_free(W[members], C_all[:, members], basis, span.s)
        members = np.flatnonzero(linear_units)
        if members.size:
            free_linear = linear_block(W[members], C_all[:, members], span, dst_bias)

    notes = []
    if f.functional:
        notes.append("relu detected numerically (the input equals relu(linear(·)) on all data)")
    if why:
        notes.append(why)
    if excluded.any():
        extra = ", or saturating at 6" if f.kind == "relu6" else ""
        notes.append(
            f"{int(excluded.sum())} unit(s) not counted (preactivation exactly on a kink{extra})"
        )
    if not restricted:
        notes.append(
            "layer too wide to restrict every group's input span to its firing points: the "
            "group count is a lower bound"
        )
    if not exclusive and inert.any():
        notes.append("dead units' incoming weights not counted (preactivations used elsewhere)")
    if f.kind == "leaky" and dead.any():
        notes.append("LeakyReLU units that are never on are linear (slope α), not dead")
    logger.debug(
        "units of %s: %d dead, %d always on, groups %s", s.target, dead.sum(), always.sum(), groups
    )
    return UnitSetDegeneracy(
        analysable=True,
        note="; ".join(notes),
        **{
            **base,
            "firing_counts": readonly(np.rint(on), np.int64),
            "groups": groups,
            "dead": tuple(int(i) for i in np.flatnonzero(dead)),
            "always_on": tuple(int(i) for i in np.flatnonzero(always)),
            "excluded": tuple(int(i) for i in np.flatnonzero(excluded)),
            "mixing_directions": sum(len(g) ** 2 - len(g) for g in groups),
            "dead_outgoing": dead_outgoing,
            "free_groups": free_groups,
            "free_linear": free_linear,
            "free_dead": free_dead,
        },
    )


def _layer_entry(ctx: _Context, name: str, writer: Section | None) -> LayerDegeneracy:
    plan = ctx.sess.plan
    d = plan.dims[name]
    gram_eigenvalues, _, kept = ctx.cuts[name]
    r_G = int(kept.numel())
    if name == plan.output:
        reader, reader_width = None, None
        note = "the model output: not followed by a weight-bearing module"
        free1 = 0
        jacobian = np.ones(d)  # J = ∂out/∂out = I
    else:
        reader, reader_width, note = _reader(plan.modules[name])
        free1 = 0
        if reader_width is not None:
            span = ctx.spans[name]
            free1 = reader_width * (d + int(span.bias) - span.s)
        jacobian = eigvals_desc(ctx.grams[name])
    r_M = count_kept(jacobian, ctx.rtol)

    free2: int | None = None
    if writer is None:
        note2 = "no nn.Linear writes this layer directly (first node layer, or not elementwise)"
    else:
        s_w = ctx.spans[writer.source].s
        act = writer.activation
        if act is None or type(act) in IDENTITY:
            free2 = (d - r_M) * s_w
            note2 = f"(d − r_M)·s = ({d} − {r_M})·{s_w}; Linear {writer.source!r} writes here"
        else:
            # Through an elementwise σ only the units the output ignores (M'_ii = 0) are free:
            # a kernel direction of M' mixing several units is bent by σ'(z).
            diag = np.diag(ctx.grams[name]) if name != plan.output else np.ones(d)
            top = float(jacobian[0]) if jacobian.size else 0.0
            silent = int(np.sum(diag <= ctx.rtol * top)) if top > 0 else d
            free2 = silent * s_w
            note2 = (
                f"(units with M'_ii = 0)·s = {silent}·{s_w}; {type(act).__name__} lies between "
                f"Linear {writer.source!r} and this layer"
            )
    return LayerDegeneracy(
        name=name,
        width=d,
        reader=reader,
        reader_width=reader_width,
        reader_note=note,
        activation_rank=r_G,
        free_activation=free1,
        jacobian_rank=r_M,
        free_second_order=free2,
        second_order_note=note2,
        gram_eigenvalues=readonly(gram_eigenvalues),
        jacobian_eigenvalues=readonly(jacobian),
    )


def degeneracy_report(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None = None,
    *,
    rtol: float = 1e-10,
    hamming_tol: int | float = 0,
    batch_size: int = 256,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    progress: bool | None = None,
    positions: Sequence[int] | None = None,
    distributed: bool | None = None,
    attention_tol: float = 1e-6,
) -> DegeneracyReport:
    """Measure the three sources of degeneracy of ``model`` on ``data`` (METHOD §1).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model; never modified (mode, ``requires_grad``, ``.grad`` restored, hooks
        removed, also on error).
    data : Tensor (N, ...), Dataset, DataLoader or re-iterable of batches
        Inputs, streamed in batches (twice, plus one probe batch).
    layers : list of str, optional
        Node layers, as for :func:`~modgraph.interaction_basis`. Default: the input of every
        ``nn.Linear`` in execution order, then ``"output"``.
    rtol : float in (0, 1)
        An eigenvalue of ``G`` or ``M'`` counts as zero below ``rtol × largest``.
    hamming_tol : int >= 0 or float in [0, 1)
        Units whose firing patterns differ on at most this many points (an int) or this fraction
        of the points (a float, rounded down) are linked; groups are the connected components.
        0 (default): identical patterns, and the source-3 counts are exact.
    batch_size : int
        Rows per forward pass.
    dtype : torch.dtype or None
        Dtype of the passes (default float64; ``None``: the model's own). Sums are float64.
    device : torch.device or str, optional
        Where to run (default: the model's device).
    output : callable, optional
        Picks the Tensor to analyse from the model's return value.
    progress : bool, optional
        Show progress bars (default: when stderr is a terminal).
    positions : list of int, optional
        Analyse only these positions of node layers with positions (flat indices into the
        positions axes, negative allowed: ``[-1]`` is the last token). Default: all.
    attention_tol : float >= 0
        Heads of an ``nn.MultiheadAttention`` whose attention weights differ by at most this
        on every data point are reported as a group (``report.attention``).
    distributed : bool, optional
        As for :func:`~modgraph.interaction_basis`.

    Returns
    -------
    DegeneracyReport
        Per node layer (``report.layers``): width ``d``, ``r_G`` and the source-1 directions
        ``d_next·(d − r_G)``; ``r_M`` and the source-2 directions; both spectra. Per section
        (``report.unit_sets``): dead, always-on and synchronised units, ``Σ (k² − k)`` and the
        source-3 directions. Totals and the bound ``n_parameters − (source 1 + source 3)``.

    Raises
    ------
    ModgraphValueError, ModgraphTypeError
        Bad parameters (the message names the parameter), unknown or misordered layers, empty
        data, inputs the model cannot take, non-finite activations.

    Notes
    -----
    Sources 1 and 3 are counted as linearly independent sets of directions that leave the
    outputs unchanged to first order on the data (exactly, for source 1, for dead units and for
    full-rank groups), so the total is at most the nullity of the behavioural-loss Hessian. See
    ``docs/degeneracy.md`` for the formulas.

    Examples
    --------
    >>> import torch
    >>> from modgraph.degeneracy import degeneracy_report
    >>> from modgraph.toy import mlp, obfuscate
    >>> model = obfuscate(mlp([4, 8, 2]), n_duplicate=2, n_dead=1)
    >>> x = torch.randn(512, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> report = degeneracy_report(model, x, progress=False)
    >>> report.unit_set("2").group_sizes, report.unit_set("2").dead
    ((2, 2), (10,))
    """
    check_model(model, _WHERE)
    options = Options.from_arguments(locals(), _WHERE)
    rtol, hamming = options.rtol, options.hamming_tol
    n_parameters = sum(p.numel() for p in model.parameters())
    with session(model, data, layers, options) as sess:
        plan = sess.plan
        sets = plan_unit_sets(sess)
        moments, heads = first_pass(sess, sets)
        grams = {
            name: g.detach().cpu().numpy()
            for name, g in global_jacobian_grams(sess, n_sources=None, gen=None).items()
        }
        n = moments[plan.output].n
        tol_points = hamming if isinstance(hamming, int) else math.floor(hamming * n)
        cuts = {name: covariance_cut(moments[name], rtol) for name in plan.names}
        spans = {}
        for name in plan.names[:-1]:
            module = plan.modules[name]
            if is_plain_linear(module):
                assert isinstance(module, nn.Linear)
                spans[name] = data_span(moments[name], cuts[name], rtol, module.bias is not None)
        ctx = _Context(sess, moments, cuts, spans, grams, rtol, tol_points)
        probe = probe_batch(sess)
        for p in sets:
            measured = p.status == "linear" or (p.firing is not None and p.firing.matched)
            target = p.section.target
            if measured and target != plan.output and target not in ctx.exclusive:
                assert p.linear is not None
                ctx.exclusive[target] = consumed_only_by(sess, p.linear, target, probe)
        unit_sets = tuple(_unit_set(ctx, p) for p in sets)
        writers = {s.target: s for s in plan.sections if s.elementwise}
        entries = tuple(_layer_entry(ctx, name, writers.get(name)) for name in plan.names)
    report = DegeneracyReport(
        layers=entries,
        unit_sets=unit_sets,
        n_parameters=n_parameters,
        n_samples=n,
        rtol=rtol,
        hamming_tol=hamming,
        hamming_points=tol_points,
        attention=tuple(group_heads(n, d, options.attention_tol) for n, d in heads.items()),
    )
    logger.info(
        "degeneracy: %d parameters, %d free (source 1: %d, source 3: %d), %d free to second order",
        n_parameters,
        report.free_directions,
        report.free_activation,
        report.free_synchronised,
        report.free_second_order,
    )
    return report
