"""Linear algebra of the counts: the data span a Linear sees, ranks, and free directions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._arrays import EPS64
from ..moments import Moments

__all__ = [
    "Cut",
    "Span",
    "augmented_weight",
    "block_free",
    "components",
    "data_span",
    "linear_block",
    "rank",
    "restrict",
]

#: Relative singular-value cut for the ranks of (small) weight matrices: the weights are exact,
#: so only rounding is cut here; the data tolerance ``rtol`` enters through the input span.
_RANK_TOL = math.sqrt(EPS64)


@dataclass
class Span:
    """The data span the weights of the Linear reading a layer see.

    Coordinates ``ã = [a; 1]`` when that Linear has a bias, else ``a``. ``Q`` (orthonormal
    columns) spans ``{ã(x)}``, ``Qc`` the centred directions (the kept eigenvectors of ``G``).
    """

    Q: np.ndarray
    Qc: np.ndarray
    bias: bool

    @property
    def s(self) -> int:
        return int(self.Q.shape[1])

    @property
    def r(self) -> int:
        return int(self.Qc.shape[1])


#: ``covariance_cut`` of a node layer: (all eigenvalues, kept U (d, r), kept D (r,)).
Cut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def data_span(moments: Moments, cut: Cut, rtol: float, bias: bool) -> Span:
    _, U_t, _ = cut
    U = U_t.detach().cpu().numpy().astype(np.float64)
    mu = moments.mean.detach().cpu().numpy().astype(np.float64)
    d, r = U.shape
    if bias:
        Qc = np.vstack([U, np.zeros((1, r))])
        raw = np.hstack([Qc, np.r_[mu, 1.0][:, None]])
        Q, _ = np.linalg.qr(raw)
        return Span(Q=Q, Qc=Qc, bias=True)
    # No bias: span{a(x)} = span(U) + span(μ); μ adds a direction when its part outside span(U)
    # carries more than rtol of the second moment E[a aᵀ] = G + μμᵀ.
    G = moments.cov.detach().cpu().numpy()
    top = max(float(np.linalg.eigvalsh(0.5 * (G + G.T))[-1]) if d else 0.0, float(mu @ mu))
    perp = mu - U @ (U.T @ mu)
    floor = 64 * EPS64 * moments.square_norm / max(moments.n, 1)
    if float(perp @ perp) > max(rtol * top, floor) and top > 0:
        Q = np.hstack([U, (perp / np.linalg.norm(perp))[:, None]])
    else:
        Q = U
    return Span(Q=Q, Qc=U, bias=False)


def augmented_weight(linear: nn.Linear, bias: bool) -> np.ndarray:
    W = linear.weight.detach().cpu().to(torch.float64).numpy()
    if not bias:
        return W
    b = linear.bias.detach().cpu().to(torch.float64).numpy()
    return np.hstack([W, b[:, None]])


def rank(m: np.ndarray, reference: float) -> int:
    """Number of singular values of ``m`` above ``_RANK_TOL × reference``."""
    if m.size == 0 or reference <= 0:
        return 0
    sv = np.linalg.svd(m, compute_uv=False)
    return int(np.sum(sv > _RANK_TOL * reference))


def block_free(W_rows: np.ndarray, C: np.ndarray | None, basis: np.ndarray, s: int) -> int:
    """First-order free directions of one block of units, beyond source 1.

    On the data the block enters the next layer only through ``C W̃ ã`` (times a fixed mask), so
    its directions are the kernel of ``(δC, δW̃) ↦ (δC W̃ + C δW̃) basis``; without the parts
    source 1 counts, that leaves ``k·s − r_C·(dim basis − r_W)`` with ``r_C = rank C`` and
    ``r_W = rank W̃·basis``. ``C = None`` (no weights can absorb a change) gives 0.
    """
    k = W_rows.shape[0]
    if C is None:
        return 0
    r_C = rank(C, float(np.linalg.norm(C, 2)) if C.size else 0.0)
    r_W = rank(W_rows @ basis, float(np.linalg.norm(W_rows, 2)) if W_rows.size else 0.0)
    return k * s - r_C * (basis.shape[1] - r_W)


def restrict(Q: np.ndarray, zero_rows: np.ndarray) -> np.ndarray:
    """Orthonormal basis of ``span(Q) ∩ {v : v[zero_rows] = 0}`` (``Q`` orthonormal)."""
    if zero_rows.size == 0 or Q.shape[1] == 0:
        return Q
    _, sv, vt = np.linalg.svd(Q[zero_rows], full_matrices=True)
    rank = int(np.sum(sv > _RANK_TOL))
    return Q @ vt[rank:].T


def components(on: np.ndarray, co: np.ndarray, units: np.ndarray, tol: int) -> list[np.ndarray]:
    """Connected components of ``Hamming(i, j) ≤ tol`` among ``units`` (all sizes)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if units.size == 0:
        return []
    n = on[units]
    hamming = n[:, None] + n[None, :] - 2.0 * co[np.ix_(units, units)]
    adjacency = csr_matrix(hamming <= tol + 0.5)
    count, labels = connected_components(adjacency, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    comps = [units[np.sort(part)] for part in np.split(order, cuts)]
    assert len(comps) == count
    return sorted(comps, key=lambda c: int(c[0]))


def linear_block(W: np.ndarray, C: np.ndarray, span: Span, dst_bias: bool) -> int:
    """Free directions of a block of linear units (always on, or a junction), beyond source 1.

    With a bias in the next Linear the constant part of the block's output is absorbed there, so
    the block is measured on the centred directions ``Qc`` only: ``k·s − r_C·(r − r_W)``.
    """
    basis = span.Qc if dst_bias else span.Q
    return block_free(W, C, basis, span.s)
