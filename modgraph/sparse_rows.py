"""The sparse products of the elementwise row form: only the units whose slope is nonzero.

An elementwise section has ``Γ(x) = P diag(s(x)) Q`` (``P`` (k', d'), ``Q`` (d', k), ``s`` the
slopes σ̄'). A unit whose slope is zero on a row (an inactive ReLU) adds nothing to that row's
``Γ``, so each row's product needs only its active units' columns of ``P`` and rows of ``Q``,
gathered: with half the units active, half the FLOPs of the dense product (exact).

Rows taken two by two do less again. The units with the same nonzero slope in both rows of a
pair (``shared``) enter one product ``S = P diag(shared) Q`` for the pair, and each row adds
the product of its remainder, ``Γ = S + P diag(s − shared) Q``: a unit active in both rows is
multiplied once. With half the units active at random, a quarter are shared, so a row costs
``(1/4 + 2·1/4)/2 = 0.375`` of the dense product instead of 0.5; rows put next to rows they
share many units with (:func:`matched_order`) do a little less again (0.346–0.365 on random
ReLU MLPs).

:class:`SparseRows` analyses a whole batch of slopes at once (which units enter, in which
order, how wide each chunk's products are, whether pairing pays) so that each chunk of rows
is only gathers and two batched products; :class:`Workspace` keeps the gathered factors and
products in buffers reused from chunk to chunk.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "MATCH_BLOCK",
    "MATCH_ROUNDS",
    "PAIRED_ROWS_MAX_COST",
    "SPARSE_MAX_SHARE",
    "SparseRows",
    "Workspace",
    "matched_order",
]

#: The largest part of the dense product (nonzero slopes, padding included) at which the
#: sparse products pay (the gathers cost the rest; measured on one thread: 1.6× at 512 and
#: 1.8× at 1,024 with half the units active, one row at a time).
SPARSE_MAX_SHARE = 0.75
#: Rows are paired only where that takes at most this part of the products of rows one by
#: one (the shared product costs a copy of ``Γ`` per row).
PAIRED_ROWS_MAX_COST = 0.9
#: Rounds of mutual best matches that pair similar rows (:func:`matched_order`) ...
MATCH_ROUNDS = 8
#: ... within blocks of this many rows (their overlap counts, 1 MB in float32).
MATCH_BLOCK = 512


class Workspace:
    """The factors of one section and the buffers its chunks reuse: ``Pᵀ`` contiguous (so that
    gathering columns of ``P`` copies whole rows) and ``Q``; fresh multi-MB tensors per chunk
    cost a page fault per 4 kB (the broadcast ``S ⊙ f̂`` took 1 ms per chunk at 512³ in
    float32, its products 1.5 ms)."""

    def __init__(self, P: torch.Tensor, Q: torch.Tensor) -> None:
        self.PT, self.Q = P.T.contiguous(), Q
        self.k_next, self.k = int(P.shape[0]), int(Q.shape[1])
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, *shape: int) -> torch.Tensor:
        """A contiguous tensor of ``shape`` from the buffer ``name`` (contents undefined)."""
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self._buffers[name] = self.Q.new_empty(max(n, 1))
        return buf[:n].view(shape)

    def factors(
        self, idx: torch.Tensor, values: torch.Tensor, f: torch.Tensor | None, tag: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The gathered factors of ``P diag(s) Q diag(f)`` over the units ``idx`` (b, w) of each
        row, whose slopes are ``values`` (b, w): ``P``'s columns (b, k', w) and ``Q``'s rows
        scaled by the slopes and (unless ``None``) the features ``f`` (b, k), (b, w, k)."""
        b, w = idx.shape
        flat = idx.reshape(-1)
        right = self.take(f"right {tag}", b * w, self.k)
        torch.index_select(self.Q, 0, flat, out=right)
        right = right.view(b, w, self.k)
        right *= values[..., None]
        if f is not None:
            right *= f[:, None, :]
        left = self.take(f"left {tag}", b * w, self.k_next)
        torch.index_select(self.PT, 0, flat, out=left)
        return left.view(b, w, self.k_next).transpose(1, 2), right


def _listed(slopes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's units with a nonzero slope first, (n, d): their indices and their slopes."""
    order = torch.sort((slopes != 0).to(torch.int8), dim=1, descending=True, stable=True)[1]
    return order, torch.gather(slopes, 1, order)


def _widest(counts: torch.Tensor, per_chunk: int) -> list[int]:
    """The largest of ``counts`` in each chunk of ``per_chunk`` consecutive entries."""
    n = counts.shape[0]
    padded = torch.zeros(math.ceil(n / per_chunk) * per_chunk, dtype=counts.dtype)
    padded[:n] = counts.cpu()
    return padded.view(-1, per_chunk).max(1).values.tolist()


def matched_order(slopes: torch.Tensor, rounds: int = MATCH_ROUNDS) -> torch.Tensor:
    """An order of the rows of ``slopes`` (B, d') in which consecutive pairs share many
    active units, (B,): within each block of :data:`MATCH_BLOCK` rows, rounds of mutual best
    matches by the count of units active in both rows, the rows left unmatched last. The sums
    over rows do not depend on the order."""
    blocks = [
        start + _matched(slopes[start : start + MATCH_BLOCK], rounds)
        for start in range(0, slopes.shape[0], MATCH_BLOCK)
    ]
    return torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.long, device=slopes.device)


def _matched(slopes: torch.Tensor, rounds: int) -> torch.Tensor:
    n = slopes.shape[0]
    active = (slopes != 0).to(torch.float32)
    overlap = active @ active.T  # (n, n): units active in both rows, exact up to 2²⁴
    overlap.fill_diagonal_(-1.0)
    index = torch.arange(n, device=slopes.device)
    free = torch.ones(n, dtype=torch.bool, device=slopes.device)
    matched = []
    for _ in range(rounds):
        best = overlap.masked_fill(~(free[:, None] & free[None, :]), -2.0).argmax(1)
        mutual = free & free[best] & (best[best] == index) & (index < best)
        if not bool(mutual.any()):
            break
        first, second = index[mutual], best[mutual]
        matched.append(torch.stack([first, second], 1).reshape(-1))
        free[first] = False
        free[second] = False
    return torch.cat([*matched, index[free]])


class SparseRows:
    """Which units of a batch of slopes enter the sparse products, chunk by chunk.

    Parameters
    ----------
    slopes : Tensor, shape (B, d')
        The rows' slopes.
    rows : int
        Rows per chunk, even (so that chunks hold whole pairs).

    Attributes
    ----------
    paired : bool
        Rows taken two by two (where that costs at most :data:`PAIRED_ROWS_MAX_COST` of the
        products of rows one by one, padding included).
    share : float
        The part of the dense product done (padding aside).
    usable : bool
        Whether the sparse products pay at all (at most :data:`SPARSE_MAX_SHARE` of the dense
        product, padding included).
    """

    def __init__(self, slopes: torch.Tensor, rows: int) -> None:
        assert rows % 2 == 0 and rows > 0
        n_rows, d = slopes.shape
        self.n_rows, self.rows = n_rows, rows
        if n_rows % 2:  # a zero row (no slopes, no features) pairs the last one
            slopes = torch.cat([slopes, slopes.new_zeros((1, d))])
        n = self.n_padded = slopes.shape[0]
        sizes = [min(rows, n - start) for start in range(0, n, rows)]
        two = slopes.view(n // 2, 2, d)
        shared = torch.where((two[:, 0] == two[:, 1]) & (two[:, 0] != 0), two[:, 0], 0)
        rest = (two - shared[:, None]).view(n, d)
        active = (slopes != 0).sum(1)
        shared_count, rest_count = (shared != 0).sum(1), (rest != 0).sum(1)
        self.row_widths = _widest(active, rows)
        self.shared_widths = _widest(shared_count, rows // 2)
        self.rest_widths = _widest(rest_count, rows)
        one_by_one = sum(w * b for w, b in zip(self.row_widths, sizes))
        two_by_two = sum(
            (s + 2 * r) * (b // 2) for s, r, b in zip(self.shared_widths, self.rest_widths, sizes)
        )
        self.paired = two_by_two <= PAIRED_ROWS_MAX_COST * one_by_one
        self.usable = min(one_by_one, two_by_two) <= SPARSE_MAX_SHARE * d * n
        if self.paired:
            done = int(shared_count.sum() + rest_count.sum())
            self._shared = _listed(shared)
            self._rest = _listed(rest)
        else:
            done = int(active.sum())
            self._rest = _listed(slopes)
        self.share = done / max(1, n_rows * d)

    def gamma(self, space: Workspace, chunk: int, f: torch.Tensor) -> torch.Tensor:
        """``Γ(x) ⊙ f̂(x)`` (b, k', k) of the rows of chunk number ``chunk``, whose features
        are ``f`` (b, k); a view of a buffer of ``space``, valid until its next chunk."""
        b, start = f.shape[0], chunk * self.rows
        n = min(self.rows, self.n_padded - start)  # rows of the chunk, the zero row included
        if n > b:
            f = torch.cat([f, f.new_zeros((n - b, f.shape[1]))])
        order, values = self._rest
        width = (self.rest_widths if self.paired else self.row_widths)[chunk]
        idx, vals = order[start : start + n, :width], values[start : start + n, :width]
        gamma = space.take("gamma", n, space.k_next, space.k)
        if not self.paired:
            left, right = space.factors(idx, vals, f, "rows")
            return torch.bmm(left, right, out=gamma)[:b]
        p, width = n // 2, self.shared_widths[chunk]
        order, values = self._shared
        pairs = slice(start // 2, start // 2 + p)
        left, right = space.factors(order[pairs, :width], values[pairs, :width], None, "shared")
        shared = torch.bmm(left, right, out=space.take("shared", p, space.k_next, space.k))
        out = gamma.view(p, 2, space.k_next, space.k)
        torch.mul(shared[:, None], f.view(p, 2, 1, space.k), out=out)  # S ⊙ f̂, each row
        left, right = space.factors(idx, vals, f, "rest")
        return gamma.baddbmm_(left, right)[:b]
