"""Streaming float64 moments of node layers: one definition, shared by every analysis.

Every expectation modgraph takes over the data is a float64 sum accumulated batch by batch, in
memory O(d²) per node layer whatever the number of samples. :class:`Moments` holds the sums of one
layer (shifted by its first sample, for accuracy); :func:`add_layer_moments` is the one per-batch
step (check width and finiteness, add); :func:`accumulate_statistics` is the first pass of the
interaction basis (moments of every layer, and the co-activation Gram ``E[σ'σ'ᵀ]`` of every
elementwise section); :func:`covariance_cut` is the one rule for which covariance directions
count as non-zero.

In a distributed run every process starts its moments at the same shift (the activations of the
first row of the whole data, :func:`start_moments`) and :func:`reduce_moments` adds the sums and
counts of every process, never their means, before anything is divided by ``n``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from ._arrays import EPS64, eigh_desc
from .capture import Session
from .errors import ModgraphValueError
from .jacobian import conv_shortcut, conv_site_grams, elementwise_slope
from .plan import Plan, Section

__all__ = [
    "Moments",
    "Statistics",
    "accumulate_statistics",
    "add_layer_moments",
    "count_kept",
    "covariance_cut",
    "reduce_moments",
    "start_moments",
    "warn_if_few_samples",
]


#: Widths from which :func:`add_gram` sums ``cᵀc`` by block rows of its upper triangle, and
#: the width of a block (measured on one thread, 256 × 784: 6.7 ms in one product, 5.2 ms in
#: six block rows with the lower triangle copied; 7.6 ms for ``+= cᵀ @ c``).
GRAM_BLOCK = 128


def gram_blocks(d: int) -> list[int]:
    """The edges of the block rows :func:`add_gram` splits a ``d``-wide Gram into (``[0, d]``:
    one block, below ``2·GRAM_BLOCK``)."""
    n_blocks = max(1, d // GRAM_BLOCK)
    return [round(i * d / n_blocks) for i in range(n_blocks + 1)]


def add_gram(out: torch.Tensor, c: torch.Tensor) -> None:
    """``out += cᵀ c`` (d, d) for ``c`` (B, d): on wide layers only the upper triangle's block
    rows are multiplied (about half the FLOPs) and the lower triangle is copied from them."""
    edges = gram_blocks(c.shape[1])
    if len(edges) == 2:
        out += c.T @ c
        return
    for lo, hi in zip(edges[:-1], edges[1:]):
        out[lo:hi, lo:].addmm_(c[:, lo:hi].T, c[:, lo:])
    for lo, hi in zip(edges[:-1], edges[1:]):
        out[hi:, lo:hi] = out[lo:hi, hi:].T


@dataclass
class Moments:
    """Streaming float64 sums for one node layer, shifted by the first sample for accuracy."""

    shift: torch.Tensor
    total: torch.Tensor
    outer: torch.Tensor
    n: int = 0

    @classmethod
    def start(cls, a: torch.Tensor) -> Moments:
        d = a.shape[-1]
        zeros = a.new_zeros((), dtype=torch.float64)
        return cls(
            shift=a[0].to(torch.float64).clone(),
            total=zeros.new_zeros(d),
            outer=zeros.new_zeros((d, d)),
        )

    def add(self, a: torch.Tensor) -> None:
        c = a.to(torch.float64) - self.shift
        self.total += c.sum(0)
        add_gram(self.outer, c)
        self.n += a.shape[0]

    @property
    def square_norm(self) -> float:
        """``Σ ‖a‖²`` over the samples, from the shifted sums (no extra pass)."""
        shift = self.shift
        return float(torch.trace(self.outer) + 2 * shift @ self.total + self.n * shift @ shift)

    @property
    def noise_floor(self) -> float:
        """The variance below which a covariance direction is rounding, not data:
        ``64 ε tr G`` (the rounding of the centred sums) plus ``(64 ε ‖μ‖)²`` (the rounding of
        activations of size ``‖μ‖`` themselves). Unlike the uncentred ``E‖a‖²`` it is (up to
        that last term) invariant to a translation of the activations: a unit with a large
        mean keeps its variance."""
        trace = float(torch.trace(self.cov).clamp_min(0.0))
        mean_norm = float(torch.linalg.vector_norm(self.mean))
        return 64 * EPS64 * trace + (64 * EPS64 * mean_norm) ** 2

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self.n

    @property
    def cov(self) -> torch.Tensor:
        m = self.total / self.n
        cov = self.outer / self.n - torch.outer(m, m)
        return 0.5 * (cov + cov.T)


@dataclass
class Statistics:
    """Result of the first pass: moments per node layer, co-activation Grams per section."""

    moments: dict[str, Moments]
    coactivation: dict[str, torch.Tensor] = field(default_factory=dict)  # E[s sᵀ] per source
    #: per convolution → elementwise source: Σ σ'σ'ᵀ per output site (P', C', C') and its rows
    site_coactivation: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return next(iter(self.moments.values())).n


def _check_finite(name: str, a: torch.Tensor, batch: int) -> None:
    bad = int((~torch.isfinite(a)).sum())
    if bad:
        raise ModgraphValueError(
            f"node layer {name!r} has {bad} NaN/Inf activation values in batch {batch}. Remove "
            "non-finite inputs, or check the model's numerics (e.g. overflow in float16)."
        )


def _check_width(name: str, a: torch.Tensor, d: int, batch: int) -> None:
    if a.ndim != 2 or a.shape[1] != d:
        raise ModgraphValueError(
            f"node layer {name!r} has shape {tuple(a.shape)} in batch {batch}, but "
            f"(batch, {d}) in the first batch: all batches must have the same input shape."
        )


def add_layer_moments(
    moments: dict[str, Moments], acts: dict[str, torch.Tensor], plan: Plan, batch: int
) -> None:
    """Check one batch's activations of every node layer of ``plan`` (width, finiteness) and add
    them to that layer's running :class:`Moments` (started on the first batch)."""
    for name in plan.names:
        a = acts[name]
        _check_width(name, a, plan.dims[name], batch)
        if name not in moments:
            _check_finite(name, a, batch)  # the shift must be finite
            moments[name] = Moments.start(a)
        m = moments[name]
        m.add(a)
        # A NaN/Inf activation makes the sums non-finite, and so does an overflow of a square;
        # the diagonal bounds every entry of the Gram (Cauchy–Schwarz), so d values tell.
        if bool(torch.isfinite(m.total).all() & torch.isfinite(m.outer.diagonal()).all()):
            continue
        _check_finite(name, a, batch)
        top = float(a.detach().abs().max())
        raise ModgraphValueError(
            f"node layer {name!r} has activations up to {top:.3g} in batch {batch}; the "
            "float64 sums of their squares overflow (above about 1e154). Rescale the inputs "
            "(or the model) to a moderate range."
        )


def start_moments(sess: Session) -> dict[str, Moments]:
    """Empty moments to add batches to: none on one process (each layer starts at its first
    sample); in a distributed run, every node layer started at the activations of the first
    row of the whole data, the same shift in every process (one with no data included)."""
    if not sess.distributed:
        return {}
    with torch.no_grad():
        acts = sess.tracer.run(sess.first_row, record=sess.plan.names)
    return {name: Moments.start(acts[name]) for name in sess.plan.names}


def reduce_moments(sess: Session, moments: dict[str, Moments]) -> None:
    """Add up, in place, the sums and counts of every process (same shift everywhere, from
    :func:`start_moments`); nothing on one process."""
    if not sess.distributed:
        return
    names = list(moments)
    parts = []
    for name in names:
        m = moments[name]
        parts += [m.total, m.outer, m.total.new_tensor([float(m.n)])]
    done = sess.reduce_all(parts)
    for i, name in enumerate(names):
        m = moments[name]
        m.total, m.outer = done[3 * i], done[3 * i + 1]
        m.n = int(done[3 * i + 2][0])


def accumulate_statistics(
    sess: Session, *, coactivation: bool = True, desc: str = "moments"
) -> Statistics:
    """One pass over the data: means and covariances of every node layer, and ``E[σ'σ'ᵀ]`` of
    every elementwise section with a nonlinearity (when ``coactivation``)."""
    plan = sess.plan
    moments = start_moments(sess)
    coact: dict[str, torch.Tensor] = {}
    need = (
        [s for s in plan.sections if s.elementwise and s.activation is not None]
        if coactivation
        else []
    )
    convs = (
        [
            s
            for s in plan.sections
            if conv_shortcut(s, plan.layouts[s.source], plan.layouts[s.target])
        ]
        if coactivation
        else []
    )
    sites: dict[str, torch.Tensor] = {}
    site_rows: dict[str, int] = {}
    with torch.no_grad():
        for b, x in enumerate(sess.batches(desc)):
            acts = sess.run(b, x, plan.names)
            add_layer_moments(moments, acts, plan, b)
            for s in need:
                slope = elementwise_slope(s, acts[s.source], acts[s.target]).to(torch.float64)
                gram = slope.T @ slope
                coact[s.source] = coact[s.source] + gram if s.source in coact else gram
            for s in convs:
                P_out = plan.layouts[s.target].n_positions
                gram = conv_site_grams(s, acts[s.target], P_out)
                sites[s.source] = sites[s.source] + gram if s.source in sites else gram
                site_rows[s.source] = site_rows.get(s.source, 0) + acts[s.target].shape[0]
    if sess.distributed:  # every process's sums (zeros where a shard is empty), then divide
        reduce_moments(sess, moments)
        coact, sites, site_rows = _reduce_grams(sess, need, convs, coact, sites, site_rows)
    stats = Statistics(moments=moments, coactivation={})
    stats.coactivation = {k: v / stats.n for k, v in coact.items()}
    stats.site_coactivation = {k: (v, site_rows[k]) for k, v in sites.items()}
    warn_if_few_samples(stats.n, plan.dims)
    return stats


def _reduce_grams(
    sess: Session,
    need: list[Section],
    convs: list[Section],
    coact: dict[str, torch.Tensor],
    sites: dict[str, torch.Tensor],
    site_rows: dict[str, int],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """The co-activation Grams ``Σ σ'σ'ᵀ`` (d', d') and the convolution site Grams
    ``(P', C', C')`` with their rows, summed over every process, in one collective."""
    plan, f64 = sess.plan, torch.float64
    parts = [
        coact.get(s.source, torch.zeros((plan.dims[s.target],) * 2, dtype=f64, device=sess.device))
        for s in need
    ]
    for s in convs:
        shape = (plan.layouts[s.target].n_positions, *(plan.dims[s.target],) * 2)
        parts.append(sites.get(s.source, torch.zeros(shape, dtype=f64, device=sess.device)))
        parts.append(torch.tensor([float(site_rows.get(s.source, 0))], dtype=f64))
    done = sess.reduce_all([p.to(sess.device) for p in parts])
    coact = {s.source: done[i] for i, s in enumerate(need)}
    rest = done[len(need) :]
    sites = {s.source: rest[2 * i] for i, s in enumerate(convs)}
    site_rows = {s.source: int(rest[2 * i + 1][0]) for i, s in enumerate(convs)}
    return coact, sites, site_rows


def warn_if_few_samples(n: int, dims: dict[str, int]) -> None:
    """Warn when the data points are too few to span a node layer: a covariance over ``n``
    points has rank at most ``n − 1``, so the features would reflect the sample, not the
    network."""
    narrow = {name: d for name, d in dims.items() if n <= d}
    if narrow:
        shown = ", ".join(f"{k!r} (width {d})" for k, d in list(narrow.items())[:4])
        warnings.warn(
            f"only {n} data points for node layers as wide as {max(narrow.values())}: {shown}"
            f"{' ...' if len(narrow) > 4 else ''}. Their covariance has rank at most {n - 1}, so "
            "ranks, features and modules are limited by the data, not the network. Use more "
            "data points than the widest layer (ideally many times more).",
            UserWarning,
            stacklevel=3,
        )


def count_kept(eigenvalues: np.ndarray, rtol: float) -> int:
    """Eigenvalues (descending) above ``rtol × largest``; 0 when the largest is not positive."""
    if eigenvalues.size == 0 or eigenvalues[0] <= 0:
        return 0
    return int(np.sum(eigenvalues > rtol * eigenvalues[0]))


def covariance_cut(
    moments: Moments, rtol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigen-decompose the covariance; return (all eigenvalues, kept U (d, r), kept D (r,)).

    An eigenvalue is kept when it exceeds ``rtol × largest`` and the rounding level
    :attr:`Moments.noise_floor`, so constant layers come out with ``r = 0`` and a translation
    of the activations changes nothing.
    """
    D, U = eigh_desc(moments.cov)
    floor = moments.noise_floor
    top = float(D[0]) if D.numel() else 0.0
    keep = (D > rtol * top) & (D > floor) if top > 0 else torch.zeros_like(D, dtype=torch.bool)
    return D, U[:, keep], D[keep]
