"""The elementwise edge kernel: ``E`` of a section ``a_{l+1} = σ(W a_l + b)`` from the slopes.

Such a section has ``Γ(x) = C_{l+1}ᵀ diag(σ̄'(x)) W C_l⁺ᵀ = P diag(s(x)) Q`` with ``σ̄'`` the
quadrature average of ``σ'``, so its summed squared attributions need no autograd. Two forms
give the same sums (to rounding):

- the **row form** (:func:`row_edges`): one matrix product per row, ``(Γ ⊙ f̂)²`` summed in
  chunks that stay in cache; the smaller of ``P`` and ``Q`` is the one scaled per row, and on
  wide layers only each row's active units (slope ≠ 0) enter its product, rows taken two by
  two where that is cheaper (:mod:`modgraph.sparse_rows`);
- the **pair form** (:class:`~modgraph.pairs.PairSums`): the moments ``Σ f̂_j² s_u s_v`` by
  large products, contracted once; :func:`pair_form` picks it per section where it takes fewer
  FLOPs and no tie moments or standard errors are asked for (both need each row's ``Γ``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .jacobian import elementwise_derivative, elementwise_slope, linear_preactivation
from .pairs import PairSums, pair_form_pays
from .plan import Section
from .sparse_rows import SparseRows, Workspace, matched_order
from .ties import TieSums

if TYPE_CHECKING:
    from .basis import InteractionBasis

__all__ = [
    "CACHE_ELEMENTS",
    "LayerTensors",
    "elementwise_edges",
    "elementwise_slopes",
    "pair_form",
    "row_edges",
]


#: Elements of the per-sample edge products built at once (about 8 MB: stays in cache).
CACHE_ELEMENTS = 2**20

#: Widths from which the elementwise kernel skips each row's inactive units (measured on one
#: thread: 0.94× at 256, 1.6× at 512, 1.8× at 1,024 with half the units active) ...
SPARSE_MIN_WIDTH = 512
#: ... and the fewest target features (measured: a section into 10 features was 6× slower).
SPARSE_MIN_TARGETS = 64
#: With ``precision="float32"``, the squares of at most this many rows are summed in float32
#: before they join the float64 total (one conversion per chunk had been 15 % of the time).
FLOAT32_ROWS = 16


class LayerTensors:
    """Basis tensors of one node layer on the compute device (float64); ``moments`` is
    ``E[f̂ f̂ᵀ]`` (k, k) (:attr:`InteractionBasis.feature_moments`)."""

    def __init__(self, basis: InteractionBasis, device: torch.device) -> None:
        arrays = (basis.mean, basis.C, basis.C_pinv, basis.eigenvalues, basis.feature_moments)
        tensors = [torch.tensor(a, dtype=torch.float64, device=device) for a in arrays]
        self.mean, self.C, self.C_pinv, self.eigenvalues, self.moments = tensors
        self.k = int(self.C.shape[1])


def elementwise_slopes(
    section: Section,
    a: torch.Tensor,
    src: LayerTensors,
    alphas: np.ndarray,
    weights: np.ndarray,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The slopes ``σ̄'`` (quadrature average of ``σ'(z)`` at ``μ + α (a − μ)``), (B, d'), and
    the source features ``f̂ = (a − μ) C``, (B, k), of the rows of ``a``, float64. With the
    target's activations ``out`` and the single node ``α = 1``, the slopes are read off them
    where σ allows it (no second product with ``W``)."""
    assert section.linear is not None
    centred = a.to(torch.float64) - src.mean
    f = centred @ src.C
    if out is not None and len(alphas) == 1 and float(alphas[0]) == 1.0:
        return elementwise_slope(section, a, out).to(torch.float64), f
    slope = torch.zeros(
        (a.shape[0], section.linear.weight.shape[0]), dtype=torch.float64, device=a.device
    )
    for alpha, w in zip(alphas, weights):
        point = (src.mean + float(alpha) * centred).to(a.dtype)
        slope += float(w) * elementwise_derivative(section, linear_preactivation(section, point))
    return slope, f


def elementwise_edges(
    section: Section,
    a: torch.Tensor,
    src: LayerTensors,
    dst: LayerTensors,
    alphas: np.ndarray,
    weights: np.ndarray,
    ties: TieSums | None = None,
    products: torch.dtype = torch.float64,
    squares: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ over the rows of ``a`` of ``(Γ(x) ⊙ f̂(x))²`` for an elementwise section, (k', k), in
    the row form (:func:`row_edges` of :func:`elementwise_slopes`)."""
    slope, f = elementwise_slopes(section, a, src, alphas, weights)
    return row_edges(section, slope, f, src, dst, ties, products, squares)


def row_edges(
    section: Section,
    slope: torch.Tensor,
    f: torch.Tensor,
    src: LayerTensors,
    dst: LayerTensors,
    ties: TieSums | None = None,
    products: torch.dtype = torch.float64,
    squares: torch.Tensor | None = None,
    pq: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Σ over rows of ``(Γ(x) ⊙ f̂(x))²`` (k', k) from their slopes (B, d') and features
    (B, k), one product per row; with ``ties``, the moments of the tied pairs are added to it
    in the same chunks. ``pq``: the section's :func:`factors`, where the caller keeps them
    from batch to batch (``Q = W C⁺ᵀ`` is a d'·d·k product).

    ``products=torch.float32`` builds each chunk's ``Γ`` and its squares in float32, and sums
    the squares of at most :data:`FLOAT32_ROWS` rows in float32; the sum over those stays
    float64. With ``squares`` (k', k), the sum over rows of each row's value squared is added
    to it (for the standard error of a subsample)."""
    P, Q = factors(section, src, dst) if pq is None else pq
    k_next, d_next, k = P.shape[0], P.shape[1], Q.shape[1]
    total = torch.zeros((k_next, k), dtype=torch.float64, device=slope.device)
    if k_next == 0 or k == 0:
        return total
    # Small chunks keep the per-sample products in cache, so the elementwise work after the
    # matrix product costs little (measured: 65 % → ~100 % of the GEMM rate at 8 rows).
    rows = max(1, CACHE_ELEMENTS // max(1, k_next * max(d_next, k)))
    partial, since = total, 0
    if products != torch.float64:
        P, Q, slope, f = P.to(products), Q.to(products), slope.to(products), f.to(products)
        partial = torch.zeros_like(total, dtype=products)
    # Skipping inactive units gathers each row's share of P and Q, (rows, active, k' + k): only
    # where the target keeps enough features for that to pay, and in chunks sized by it (with
    # k' = 10 a chunk of ~200 rows gathered 200-450 MB and ran 6x slower than dense).
    sparse = None
    if _skips_inactive(d_next, k_next):
        rows = _sparse_chunk_rows(k_next, d_next, k)
        order = matched_order(slope)  # similar rows paired: the sums do not depend on order
        slope, f = slope[order], f[order]
        plan = SparseRows(slope, rows)
        sparse = (plan, Workspace(P, Q)) if plan.usable else None
    for chunk, (s, fc) in enumerate(zip(slope.split(rows), f.split(rows))):
        scale = fc if ties is None else torch.ones_like(fc)  # the tie moments need Γ itself
        if sparse is None:
            scaled = _scaled_gamma_chunk(P, Q, s, scale)
        else:
            scaled = sparse[0].gamma(sparse[1], chunk, scale)
        if ties is not None:  # (k', 1, b, 1, k) against (b, 1, k)
            ties.add(section.key, scaled.permute(1, 0, 2)[:, None, :, None, :], fc[:, None, :])
            scaled *= fc[:, None, :]
        scaled.square_()
        partial += scaled.sum(0)
        if squares is not None:
            squares += scaled.square().sum(0)
        since += s.shape[0]
        if partial is not total and since >= FLOAT32_ROWS:
            total += partial
            partial.zero_()
            since = 0
    if partial is not total:
        total += partial
    return total


def factors(
    section: Section, src: LayerTensors, dst: LayerTensors
) -> tuple[torch.Tensor, torch.Tensor]:
    """``P = C_{l+1}ᵀ`` (k', d') and ``Q = W C_l⁺ᵀ`` (d', k), so that ``Γ(x) = P diag(s(x)) Q``."""
    assert section.linear is not None
    return dst.C.T, section.linear.weight.detach().to(torch.float64) @ src.C_pinv.T


def _skips_inactive(d_next: int, k_next: int) -> bool:
    """Whether the row form skips each row's inactive units: wide layers whose target keeps
    enough features (:data:`SPARSE_MIN_WIDTH`, :data:`SPARSE_MIN_TARGETS`)."""
    return d_next >= SPARSE_MIN_WIDTH and k_next >= SPARSE_MIN_TARGETS


def _sparse_chunk_rows(k_next: int, d_next: int, k: int) -> int:
    """Rows per chunk where inactive units are skipped: each row's gathered share of ``P`` and
    ``Q`` (d'·(k' + k) at most) in cache, and an even number, so that rows can be paired."""
    rows = min(
        CACHE_ELEMENTS // max(1, k_next * max(d_next, k)), CACHE_ELEMENTS // (d_next * (k_next + k))
    )
    return 2 * max(1, rows // 2)


def _scaled_gamma_chunk(
    P: torch.Tensor, Q: torch.Tensor, s: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """``Γ(x) ⊙ f̂(x) = P diag(s(x)) Q diag(f̂(x))`` (b, k', k) for a chunk of rows by one dense
    product, in which the slopes and features scale the rows and columns of ``Q`` where that
    tensor is the smaller one to build, else the columns of ``P`` (measured on one thread:
    1.5–1.8× over scaling ``P`` where ``k' ≥ k``; 4× slower with ``k' = 10``)."""
    b, (k_next, d_next), k = s.shape[0], P.shape, Q.shape[1]
    if d_next * k <= k_next * (d_next + k):
        right = Q[:, None, :] * f[None]  # (d', b, k)
        right *= s.T[:, :, None]
        return (P @ right.reshape(d_next, -1)).reshape(k_next, b, k).transpose(0, 1)
    gamma = ((P[None] * s[:, None, :]).reshape(-1, d_next) @ Q).reshape(b, k_next, k)
    gamma *= f[:, None, :]
    return gamma


def pair_form(
    slope: torch.Tensor, k_next: int, k: int, n_rows: int, products: torch.dtype, allowed: bool
) -> PairSums | None:
    """A :class:`~modgraph.pairs.PairSums` for a section whose first chunk of slopes is
    ``slope`` (B, d'), where the pair form is ``allowed`` (not with tie moments or standard
    errors: both need each row's Γ) and takes fewer FLOPs than the row form at ``n_rows`` rows
    (the row form counted at the chunk's active share where it would skip inactive units)."""
    d_next = slope.shape[1]
    if not allowed:
        return None
    share = 1.0
    if _skips_inactive(d_next, k_next):
        ordered = slope[matched_order(slope)]
        sparse = SparseRows(ordered, _sparse_chunk_rows(k_next, d_next, k))
        share = sparse.share if sparse.usable else 1.0
    if not pair_form_pays(n_rows, k_next, d_next, k, share):
        return None
    return PairSums(d_next, k, slope.device, products)
