"""The pair form of the elementwise edge kernel: ``E`` from moments of slope pairs.

An elementwise section has ``Γ(x) = P diag(s(x)) Q`` (``P = C_{l+1}ᵀ``, (k', d'); ``Q = W
C_l⁺ᵀ``, (d', k); ``s`` the slopes σ̄', (d',)), so its summed squared attributions expand as::

    Σ_x (Γ(x)_{ij} f̂_j(x))² = Σ_{u,v} P_{iu} P_{iv} Q_{uj} Q_{vj} T_j[u, v],
    T_j[u, v] = Σ_x f̂_j(x)² s_u(x) s_v(x).

``T`` is symmetric in ``(u, v)``: its ``d'(d'+1)/2`` upper-triangle entries per source feature
are summed over the data by one matrix product per block of pairs, ``(k, rows) @ (rows,
pairs)``, and contracted with ``P`` and ``Q`` once at the end. Per row that is ``k·d'(d'+1)``
FLOPs in large GEMMs, against ``2·k'·d'·k`` in the row form (:func:`~modgraph.elementwise.
row_edges`: one small product per row and an elementwise epilogue); the contraction
adds ``k'·k·d'(d'+1)`` once. It holds ``k·d'(d'+1)/2`` float64 sums, so
:func:`pair_form_pays` takes it only where those fit :data:`PAIR_MAX_ELEMENTS` and the FLOPs
favour it (narrow layers that keep most features: the MNIST MLP's first section, 3.2× in a
kernel A/B).
"""

from __future__ import annotations

import torch

__all__ = ["PAIR_MAX_ELEMENTS", "PairSums", "pair_form_pays"]

#: The most float64 pair sums (``k·d'(d'+1)/2``) one section may hold (128 MB).
PAIR_MAX_ELEMENTS = 2**24
#: Elements of one block of slope products ``s_u s_v`` (rows × pairs) built at once (2 MB).
BLOCK_ELEMENTS = 2**18
#: Rows of data per block product (measured on one thread: 256 rows × 1,024 pairs best).
BLOCK_ROWS = 256


def pair_count(d_next: int) -> int:
    """Entries of the upper triangle of a ``d' × d'`` matrix, its diagonal included."""
    return d_next * (d_next + 1) // 2


def pair_form_pays(n_rows: int, k_next: int, d_next: int, k: int, share: float = 1.0) -> bool:
    """Whether the pair form takes fewer FLOPs than the row form for ``n_rows`` rows, with
    ``share`` the part of the row form's product that is done (its active units), and its sums
    fit :data:`PAIR_MAX_ELEMENTS`."""
    pairs = pair_count(d_next)
    if k * pairs > PAIR_MAX_ELEMENTS or k_next == 0 or k == 0:
        return False
    pair_flops = 2 * pairs * k * (n_rows + k_next)
    row_flops = 2 * n_rows * k_next * d_next * k * share
    return pair_flops < row_flops


class PairSums:
    """The sums ``T_j[u, v]`` (``u ≤ v``) of one section over chunks of rows, (k, pairs),
    float64; the chunk products in ``products`` (float32 for ``precision="float32"``)."""

    def __init__(
        self, d_next: int, k: int, device: torch.device, products: torch.dtype = torch.float64
    ) -> None:
        self.upper, self.lower = torch.triu_indices(d_next, d_next, device=device)
        self.sums = torch.zeros((k, pair_count(d_next)), dtype=torch.float64, device=device)
        self.products = products

    def add(self, slope: torch.Tensor, f: torch.Tensor) -> None:
        """Add the rows of ``slope`` (n, d') and ``f`` (n, k): ``T_j += Σ f_j² s_u s_v``."""
        n_pairs = self.sums.shape[1]
        for s, fc in zip(slope.split(BLOCK_ROWS), f.split(BLOCK_ROWS)):
            columns = s.T.to(self.products).contiguous()  # (d', b): rows of pairs are copies
            weight = fc.square().T.to(self.products)  # (k, b)
            step = max(1, BLOCK_ELEMENTS // s.shape[0])
            for start in range(0, n_pairs, step):
                stop = min(start + step, n_pairs)
                both = columns.index_select(0, self.upper[start:stop])
                both *= columns.index_select(0, self.lower[start:stop])  # (pairs, b): s_u s_v
                if self.products == torch.float64:
                    self.sums[:, start:stop].addmm_(weight, both.T)
                else:
                    self.sums[:, start:stop] += (weight @ both.T).to(torch.float64)

    def edges(self, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """``Σ_{u,v} P_iu P_iv Q_uj Q_vj T_j[u, v]`` (k', k), float64, by blocks of pairs: each
        off-diagonal pair stands for ``(u, v)`` and ``(v, u)``, so it counts twice."""
        n_pairs = self.sums.shape[1]
        total = P.new_zeros((P.shape[0], Q.shape[1]))
        twice = torch.where(self.upper == self.lower, 1.0, 2.0).to(P)
        step = max(1, BLOCK_ELEMENTS * 4 // max(1, P.shape[0] + Q.shape[1]))
        for start in range(0, n_pairs, step):
            u, v = self.upper[start : start + step], self.lower[start : start + step]
            left = P.index_select(1, u) * P.index_select(1, v)  # (k', pairs)
            right = Q.index_select(0, u) * Q.index_select(0, v)  # (pairs, k)
            right *= self.sums[:, start : start + step].T
            right *= twice[start : start + step, None]
            total += left @ right
        return total
