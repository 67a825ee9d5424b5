"""Streaming firing statistics of ReLU-like unit sets (source 3), and which sets to measure.

One pass over the data records, for every ReLU-like unit set, the firing counts
``n_i = Σ_x B[x, i]``, the co-firing Gram ``K = BᵀB`` and what else the counts need, together with
the moments of every node layer (the one per-batch step of :mod:`modgraph.moments`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._arrays import EPS64
from ..capture import Session
from ..data import iter_batches, unsharded
from ..moments import (
    Moments,
    add_layer_moments,
    reduce_moments,
    start_moments,
    warn_if_few_samples,
)
from ..plan import IDENTITY, Section, is_plain_linear
from .attention import attention_patterns, combine_heads

__all__ = [
    "Firing",
    "UnitSetPlan",
    "consumed_only_by",
    "first_pass",
    "plan_unit_sets",
    "probe_batch",
]

#: Rows of the probe batch used to check which modules consume a Linear's output.
_PROBE_ROWS = 256


@dataclass
class Firing:
    """Streaming firing statistics of one ReLU-like unit set (float64 counts, exact to 2**53)."""

    section: Section
    linear: nn.Linear
    kind: str  # "relu", "leaky" or "relu6"
    label: str
    functional: bool
    matched: bool = True
    n: int = 0
    on: torch.Tensor | None = None  # n_i
    co: torch.Tensor | None = None  # K = BᵀB
    kinks: torch.Tensor | None = None  # points with z exactly on a kink
    saturated: torch.Tensor | None = None  # ReLU6: points with z ≥ 6
    zmin: torch.Tensor | None = None
    zmax: torch.Tensor | None = None
    support: torch.Tensor | None = None  # Bᵀ 1[a_src ≠ 0]: source units active while i fires

    def add(self, a_src: torch.Tensor, a_dst: torch.Tensor) -> None:
        if not self.matched:
            return
        z = F.linear(a_src, self.linear.weight, self.linear.bias)
        if self.functional and not torch.equal(a_dst, torch.relu(z)):
            self.matched = False
            return
        if self.kind == "relu6":
            fire = (z > 0) & (z < 6)
            kink = (z == 0) | (z == 6)
            sat = (z >= 6).to(torch.float64).sum(0)
        else:
            fire = z > 0
            kink = z == 0
            sat = None
        b = fire.to(torch.float64)
        if self.on is None:
            h = z.shape[1]
            zeros = b.new_zeros(h)
            self.on, self.co = zeros.clone(), b.new_zeros((h, h))
            self.kinks, self.saturated = zeros.clone(), zeros.clone()
            self.zmin, self.zmax = z.amin(0).to(torch.float64), z.amax(0).to(torch.float64)
            self.support = b.new_zeros((h, a_src.shape[1]))
        assert self.co is not None and self.kinks is not None and self.saturated is not None
        assert self.zmin is not None and self.zmax is not None and self.support is not None
        self.on += b.sum(0)
        self.co += b.T @ b
        self.support += b.T @ (a_src != 0).to(torch.float64)
        self.kinks += kink.to(torch.float64).sum(0)
        if sat is not None:
            self.saturated += sat
        self.zmin = torch.minimum(self.zmin, z.amin(0).to(torch.float64))
        self.zmax = torch.maximum(self.zmax, z.amax(0).to(torch.float64))
        self.n += z.shape[0]

    def combine(self, sess: Session) -> None:
        """Combine, in place, the statistics of every process of a distributed run (counts
        summed, ``zmin``/``zmax`` the extremes, matched only where every process matched); a
        process with no data contributes zeros. Nothing on one process."""
        if not sess.distributed:
            return
        h, d = self.linear.out_features, self.linear.in_features
        if self.on is None:
            zeros = torch.zeros(h, dtype=torch.float64, device=sess.device)
            self.on, self.co, self.kinks = zeros.clone(), zeros.new_zeros((h, h)), zeros.clone()
            self.saturated, self.support = zeros.clone(), zeros.new_zeros((h, d))
            self.zmin, self.zmax = zeros + torch.inf, zeros - torch.inf
        assert self.co is not None and self.kinks is not None and self.saturated is not None
        assert self.zmin is not None and self.zmax is not None and self.support is not None
        count = self.on.new_tensor([float(self.n)])
        sums = [self.on, self.co, self.kinks, self.saturated, self.support, count]
        self.on, self.co, self.kinks, self.saturated, self.support, count = sess.reduce_all(sums)
        self.n = int(count[0])
        matched = self.on.new_tensor([float(self.matched)])
        self.zmin, low, matched = sess.reduce_all([self.zmin, -self.zmax, matched], "min")
        self.zmax, self.matched = -low, bool(matched[0] > 0)


def _relu_like(act: nn.Module) -> tuple[str, str] | None:
    """(kind, label) of a ReLU-like module, else None. A LeakyReLU with slope α ≠ 0 is linear
    (slope α) where it is off, so a unit never on is linear, not dead."""
    if type(act) is nn.ReLU:
        return "relu", "ReLU"
    if type(act) is nn.ReLU6:
        return "relu6", "ReLU6"
    if type(act) is nn.LeakyReLU:
        slope = float(act.negative_slope)
        return ("relu", "LeakyReLU(0)") if slope == 0.0 else ("leaky", f"LeakyReLU({slope:g})")
    return None


@dataclass
class UnitSetPlan:
    """What to do with one section: measure firing, treat as linear, or say why not."""

    section: Section
    linear: nn.Linear | None
    label: str
    status: str  # "firing", "linear", "skip"
    note: str = ""
    firing: Firing | None = None


def plan_unit_sets(sess: Session) -> list[UnitSetPlan]:
    plan = sess.plan
    out: list[UnitSetPlan] = []
    for s in plan.sections:
        src_module = plan.modules[s.source]
        if not is_plain_linear(src_module):
            out.append(
                UnitSetPlan(
                    s,
                    None,
                    "-",
                    "skip",
                    f"node layer {s.source!r} is read by {type(src_module).__name__}, not "
                    "nn.Linear, so the units of this section have no preactivations to analyse",
                )
            )
            continue
        assert isinstance(src_module, nn.Linear)
        act = s.activation
        if s.elementwise and (act is None or type(act) in IDENTITY):
            if s.target == plan.output:
                continue  # the final readout: its units are the model outputs
            out.append(UnitSetPlan(s, src_module, "linear", "linear"))
            continue
        if s.elementwise:
            assert act is not None
            kind = _relu_like(act)
            if kind is None:
                out.append(
                    UnitSetPlan(
                        s,
                        src_module,
                        type(act).__name__,
                        "skip",
                        f"{type(act).__name__} is not ReLU-like (ReLU, LeakyReLU, ReLU6): not "
                        "analysable for synchronised units",
                    )
                )
                continue
            firing = Firing(s, src_module, kind[0], kind[1], functional=False)
            out.append(UnitSetPlan(s, src_module, kind[1], "firing", firing=firing))
            continue
        # Not matched to an activation module: maybe a functional relu (checked on every batch).
        firing = Firing(s, src_module, "relu", "relu (functional)", functional=True)
        out.append(UnitSetPlan(s, src_module, "relu (functional)", "firing", firing=firing))
    return out


def first_pass(
    sess: Session, sets: list[UnitSetPlan]
) -> tuple[dict[str, Moments], dict[str, torch.Tensor]]:
    """Moments of every node layer, firing statistics of every ReLU-like set, and the pairwise
    differences of the heads of every attention module, in one pass."""
    plan = sess.plan
    moments = start_moments(sess)
    firings = [p.firing for p in sets if p.firing is not None]
    with torch.no_grad(), attention_patterns(sess.model) as heads:
        for b, x in enumerate(sess.batches("degeneracy: moments and firing")):
            acts = sess.tracer.run(x, record=plan.names)
            add_layer_moments(moments, acts, plan, b)
            for f in firings:
                f.add(acts[f.section.source], acts[f.section.target])
    # a distributed run: every process's sums and counts (nothing happens on one process)
    reduce_moments(sess, moments)
    for f in firings:
        f.combine(sess)
    warn_if_few_samples(moments[plan.output].n, plan.dims)
    return moments, combine_heads(sess, dict(heads))


def probe_batch(sess: Session) -> torch.Tensor:
    """The first rows of the whole data (the same in every process of a distributed run)."""
    size = min(sess.batch_size, _PROBE_ROWS)
    whole = unsharded(sess.data, size)
    return next(iter(iter_batches(whole, size, device=sess.device, dtype=sess.dtype)))


def consumed_only_by(sess: Session, linear: nn.Linear, dst: str, probe: torch.Tensor) -> bool:
    """Whether ``linear``'s output reaches the model output only through node module ``dst``.

    Perturbs the Linear's output while feeding ``dst`` its unperturbed input: the model output
    stays the same exactly when nothing else (a residual branch, a second head) uses the Linear's
    output or the activations made from it.
    """
    with torch.no_grad():
        out = sess.plan.output
        ref = sess.tracer.run(probe, record=(dst, out), detach=False)  # raw layouts
        kept, out0 = ref[dst].detach().clone(), ref[out].detach().clone()
        gen = torch.Generator().manual_seed(0)

        def perturb(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            scale = float(output.detach().abs().mean()) + 1.0
            noise = torch.randn(output.shape, generator=gen, dtype=torch.float64)
            return output + scale * noise.to(dtype=output.dtype, device=output.device)

        handle = linear.register_forward_hook(perturb)
        try:
            moved = sess.tracer.run(
                probe, record=(out,), substitute={dst: lambda a: kept}, detach=False
            )
        finally:
            handle.remove()
        out1 = moved[out].detach()
    eps = torch.finfo(out0.dtype).eps if out0.is_floating_point() else EPS64
    tol = 1e3 * eps * (float(out0.abs().max()) + 1e-30)
    return bool(out1.shape == out0.shape and float((out1 - out0).abs().max()) <= tol)
