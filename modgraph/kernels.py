"""The edge kernels: interaction strengths ``E`` of every section, summed over the data.

For features ``f̂_l`` and ``f̂_{l+1}`` of adjacent node layers::

    E[i, j] = E_x[ ( ∫₀¹ ∂f̂_{l+1,i}/∂f̂_{l,j} |_{μ + α ã_l} dα · f̂_{l,j}(x) )² ]

(rows: target features, columns: source features). By default the integral is the gradient at
``α = 1`` (gradient × input, squared); ``n_alpha > 1`` uses Gauss–Legendre quadrature on ``[0, 1]``,
evaluating the Jacobian at activations ``μ + α (a − μ)``. With ``Γ(x) = ∂f̂_{l+1}/∂f̂_l =
C_{l+1}ᵀ J(x) C_l⁺ᵀ``, every sum is a float64 accumulation over batches of ``(Γ ⊙ f̂_lᵀ)²``:

- elementwise sections ``a_{l+1} = σ(W a_l + b)``: ``Γ(x) = C_{l+1}ᵀ diag(σ̄'(x)) W C_l⁺ᵀ`` with
  ``σ̄'`` the quadrature average of ``σ'``, no autograd (:mod:`modgraph.elementwise`: the row
  form or the pair form), all of them in one shared pass;
  a Linear→Linear junction has a constant ``Γ`` and ``E = Γ² ∘ Λ_l`` needs no pass at all;
- any other section: batched vector–Jacobian products (one per target feature) by autograd.

With a :class:`~modgraph.ties.TieSums`, the same passes also sum the moments of tied feature
pairs. :mod:`modgraph.interactions` turns the edges into a graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .capture import Session
from .elementwise import LayerTensors, elementwise_slopes, factors, pair_form, row_edges
from .jacobian import (
    chunk_rows,
    constant_jacobian,
    cotangents,
    narrowing_linear,
    section_vjp,
    sign_vectors,
)
from .pairs import PairSums
from .plan import CONVOLUTIONS, Section
from .ties import TieSums

if TYPE_CHECKING:
    from .basis import InteractionBasis

__all__ = ["Subsample", "compute_edges", "quadrature"]


#: Elements of the per-row convolution outputs of a junction built at once (64 MB).
CHUNK_ELEMENTS = 2**23


def quadrature(n_alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on ``[0, 1]``: ``α = 1`` for ``n_alpha = 1``, else Gauss–Legendre."""
    if n_alpha == 1:
        return np.ones(1), np.ones(1)
    t, w = np.polynomial.legendre.leggauss(n_alpha)
    return (t + 1) / 2, w / 2


class Subsample:
    """A seeded random subsample of the data points, the same on every pass: point ``i`` is
    kept when a hash of ``(seed, i)`` (splitmix64) falls below ``n_keep / n_total``.

    The standard error of an edge (a mean over kept units ``u``, each a row of an elementwise
    section or a data point of an autograd one) is ``√(s²/n · (1 − n/N))``, ``s²`` the sample
    variance of ``u`` and ``(1 − n/N)`` the finite-population correction (the full-data value is
    the target, and it contains the subsample); rows of one data point are taken as independent.
    """

    def __init__(self, n_keep: int, n_total: int, seed: int) -> None:
        self.share = min(1.0, n_keep / max(n_total, 1))
        self.seed = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)

    def keep(self, offset: int, n: int, device: torch.device) -> torch.Tensor:
        """Which of the data points ``offset … offset + n − 1`` are in the subsample, (n,)."""
        with np.errstate(over="ignore"):
            z = np.arange(offset, offset + n, dtype=np.uint64)
            z = z + self.seed * np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        u = (z >> np.uint64(11)).astype(np.float64) / float(2**53)
        return torch.from_numpy(u < self.share).to(device)

    def stderr(self, mean: torch.Tensor, squares: torch.Tensor, n: int) -> torch.Tensor:
        """Standard error of ``mean`` from the sum of squares of ``n`` kept units."""
        if n < 2:
            return torch.full_like(mean, float("inf"))
        variance = (squares / n - mean.square()).clamp(min=0.0) * (n / (n - 1))
        return (variance / n * max(0.0, 1.0 - self.share)).sqrt()


def _junction_edges(
    section: Section, src: LayerTensors, dst: LayerTensors, ties: TieSums | None = None
) -> torch.Tensor:
    """Linear→Linear junction: Γ = C_{l+1}ᵀ W C_l⁺ᵀ is constant, so E = Γ² · Λ_l (exact: Λ_l
    the features' second moments), and the tie moments follow from ``E[f̂ f̂ᵀ]`` in closed
    form."""
    assert section.linear is not None
    gamma = dst.C.T @ section.linear.weight.to(torch.float64) @ src.C_pinv.T
    if ties is not None:
        ties.add_constant(section.key, gamma, src.moments)
    return gamma.square() * src.eigenvalues[None, :]


def _constant_edges(
    sess: Session, section: Section, src: LayerTensors, dst: LayerTensors, ties: TieSums | None
) -> torch.Tensor:
    """A section whose Jacobian does not depend on the data (a residual add after a Linear,
    say; :func:`~modgraph.jacobian.constant_jacobian`), without positions: ``Γ`` from the VJPs
    at one data point, and ``E = Γ² ∘ Λ_l`` exactly, with no pass (as for a junction)."""
    k_next = dst.C.shape[1]
    x = next(iter(sess.batches(f"edges {section.source}", first_row_only=True)))
    _, grad_a, _ = section_vjp(
        sess, section, x, lambda b: _edge_cotangents(dst.C, b, 1, None, None)
    )
    assert grad_a is not None
    gamma = (grad_a.to(torch.float64) @ src.C_pinv.T).reshape(k_next, -1)
    if ties is not None:
        ties.add_constant(section.key, gamma, src.moments)
    return gamma.square() * src.eigenvalues[None, :]


def _constant_without_positions(sess: Session, section: Section) -> bool:
    layouts = sess.plan.layouts
    if layouts[section.source].n_positions != 1 or layouts[section.target].n_positions != 1:
        return False
    return section.constant or constant_jacobian(sess, section)


def _conv_junction(sess: Session, section: Section) -> nn.Module | None:
    """The convolution of a junction ``target = conv(source)`` with positions whose edges one
    forward pass gives (:func:`_conv_junction_edges`): a plain convolution with zero padding,
    its input and output channels first, every position analysed; else None."""
    conv = sess.plan.modules.get(section.source)
    if not (section.constant and section.linear is None and type(conv) in CONVOLUTIONS):
        return None
    assert isinstance(conv, nn.modules.conv._ConvNd)
    src, dst = sess.plan.layouts[section.source], sess.plan.layouts[section.target]
    if conv.padding_mode != "zeros" or src.select is not None or dst.select is not None:
        return None
    if not (src.channels_first and dst.channels_first):
        return None
    return conv


def _conv_junction_edges(
    sess: Session, section: Section, conv: nn.Module, src: LayerTensors, dst: LayerTensors
) -> torch.Tensor:
    """A convolution junction with positions: ``Γ_{t,s} = C'ᵀ K_{t−s} C⁺ᵀ`` does not depend on
    the data, so ``Σ_s Γ_{t,s}[i, j] f̂_j(x)[s]`` is feature map ``j`` convolved with the kernel
    ``G[i, j] = Σ_{c',c} C'_{c'i} K_{c'c} C⁺_{jc}`` (the convolution's own stride, padding and
    dilation): one grouped convolution of ``f̂`` per chunk of rows, its squares averaged over the
    output positions. No vector–Jacobian products; the forward pass records the source only
    (or reads the first pass's records, with ``cache_mb``)."""
    assert isinstance(conv, nn.modules.conv._ConvNd)
    weight = conv.weight.detach().to(torch.float64)  # (d', d / groups, *kernel)
    d_next, d = weight.shape[0], weight.shape[1] * conv.groups
    full = weight.new_zeros((d_next, d, *weight.shape[2:]))
    step_out, step_in = d_next // conv.groups, weight.shape[1]
    for g in range(conv.groups):  # the block-diagonal kernel of a grouped convolution
        rows, cols = slice(g * step_out, (g + 1) * step_out), slice(g * step_in, (g + 1) * step_in)
        full[rows, cols] = weight[rows]
    k_next, k = dst.k, src.k
    kernel = torch.einsum("ci,cd...,jd->ji...", dst.C, full, src.C_pinv)  # (k, k', *kernel)
    kernel = kernel.reshape(k * k_next, 1, *weight.shape[2:])
    convolve = getattr(F, f"conv{weight.dim() - 2}d")
    layout = sess.plan.layouts[section.source]
    P, P_next = layout.n_positions, sess.plan.layouts[section.target].n_positions
    total = torch.zeros((k, k_next), dtype=torch.float64, device=sess.device)
    count = 0
    rows = max(1, CHUNK_ELEMENTS // max(1, k * k_next * P_next))
    for index, x in enumerate(sess.batches(f"edges {section.source}")):
        a = sess.run(index, x, [section.source])[section.source]  # (B·P, d)
        f = (a.to(torch.float64) - src.mean) @ src.C  # (B·P, k)
        f = f.reshape(-1, P, k).movedim(1, 2).reshape(-1, k, *layout.positions)
        for part in f.split(rows):
            out = convolve(part, kernel, None, conv.stride, conv.padding, conv.dilation, k)
            total += out.reshape(part.shape[0], k, k_next, -1).square().sum((0, 3))
        count += f.shape[0] * P_next
    return sess.reduce(total).T / max(sess.reduce_count(count), 1)


def _edge_cotangents(
    C_next: torch.Tensor,
    batch: int,
    n_positions: int,
    n_sources: int | None,
    gen: torch.Generator | None,
) -> torch.Tensor:
    """Cotangents ``(k'·m, B, P', d')`` for the edges, target feature outer: one per output
    position (``m = P'``: :func:`~modgraph.jacobian.cotangents`), or ``m = R`` random-sign
    combinations of the output positions ``Σ_t φ_t e_t ⊗ c_i / √R`` (when ``n_sources`` is set
    and ``P' > 1``)."""
    if n_sources is None or n_positions == 1:
        return cotangents(C_next, batch, None, None, n_positions)
    assert gen is not None
    d_next, k = C_next.shape
    phi = sign_vectors(gen, (k, n_sources, batch, n_positions), n_sources, C_next.device)
    cot = phi[..., None] * C_next.T[:, None, None, None, :]  # (k', R, B, P', d')
    return cot.reshape(k * n_sources, batch, n_positions, d_next)


def _autograd_edges(
    sess: Session,
    section: Section,
    src: LayerTensors,
    dst: LayerTensors,
    alphas: np.ndarray,
    weights: np.ndarray,
    n_sources: int | None = None,
    gen: torch.Generator | None = None,
    ties: TieSums | None = None,
    subsample: Subsample | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E for a general section by batched VJPs at each α: one per target feature and output
    position (or random-sign combinations of the output positions), in rows space, so that
    ``Σ_s Γ_{t,s} f̂_s`` is a sum over the source rows of one sample. With ``subsample``, on
    its data points only, and also the standard error of E (else None)."""
    k_next, k = dst.C.shape[1], src.C.shape[1]
    total = torch.zeros((k_next, k), dtype=torch.float64, device=sess.device)
    squares = None if subsample is None else torch.zeros_like(total)
    if k_next == 0 or k == 0:
        return total, squares
    plan = sess.plan
    src_layout = plan.layouts[section.source]
    P, P_next = src_layout.n_positions, plan.layouts[section.target].n_positions
    per_feature = n_sources if (n_sources is not None and P_next > 1) else P_next
    n_vec = k_next * per_feature
    d = plan.dims[section.source]
    width = max(d * P, plan.dims[section.target] * P_next, k * P)
    rows = chunk_rows(n_vec, width, sess.batch_size)

    def cotangent(b: int) -> torch.Tensor:
        return _edge_cotangents(dst.C, b, P_next, n_sources, gen)

    # the mean in the source's own layout (channels first: one value per channel)
    raw_mean = (
        src.mean.reshape(-1, *([1] * len(src_layout.positions)))
        if src_layout.channels_first
        else src.mean
    )
    linear = narrowing_linear(sess, section)
    # through a narrowing Linear: Γ = (∂f̂'/∂z) (W C⁺ᵀ), with the VJPs d_out wide instead of d
    folded = None if linear is None else linear.weight.detach().to(torch.float64) @ src.C_pinv.T
    count = 0  # output rows: samples × analysed output positions
    seen = 0  # data points streamed (for the subsample's draw)
    for x in sess.batches(f"edges {section.source}", rows):
        if subsample is not None:
            x, seen = x[subsample.keep(seen, x.shape[0], x.device)], seen + x.shape[0]
            if x.shape[0] == 0:
                continue
        count += x.shape[0] * P_next
        grad_a = grad_z = a = None
        for alpha, w in zip(alphas, weights):

            def point(v: torch.Tensor, alpha: float = float(alpha)) -> torch.Tensor:
                return (raw_mean + alpha * (v.to(torch.float64) - raw_mean)).to(v.dtype)

            a, g_a, g_z = section_vjp(
                sess,
                section,
                x,
                cotangent,
                point if alpha != 1.0 else None,
                at_output=folded is not None,
            )
            if g_a is not None:
                g_a = float(w) * g_a.to(torch.float64)
                grad_a = g_a if grad_a is None else grad_a + g_a
            if g_z is not None:
                g_z = float(w) * g_z.to(torch.float64)
                grad_z = g_z if grad_z is None else grad_z + g_z
        if grad_a is None and grad_z is None:
            continue
        assert a is not None
        f = (a.to(torch.float64) - src.mean) @ src.C  # (B, P, k)
        gamma = grad_z @ folded if grad_z is not None else 0.0  # (n, B, P, k)
        if grad_a is not None:
            gamma = gamma + grad_a @ src.C_pinv.T
        assert isinstance(gamma, torch.Tensor)
        if ties is not None:
            ties.add(
                section.key,
                gamma.reshape(k_next, per_feature, *gamma.shape[1:]),
                f,
            )
        if P == 1:  # one source position: (Γ f)² = Γ² f², without the (n, B, 1, k) product
            gamma = gamma[:, :, 0]
            gamma.square_()
            gamma *= f[:, 0].square()[None]
        else:
            gamma = (gamma * f[None]).sum(2).square_()  # (Σ_s Γ_{t,s} f̂_s)², (n, B, k)
        total += gamma.reshape(k_next, -1, k).sum(1)
        if squares is not None:  # per data point: its mean over the copies of each target
            unit = gamma.reshape(k_next, per_feature, -1, k).sum(1) / P_next
            squares += unit.square().sum(1)
    total = sess.reduce(total)
    count = sess.reduce_count(count)
    if ties is not None:
        ties.finish(section.key, max(count, 1), sess.reduce)
    E = total / max(count, 1)
    if squares is None or subsample is None:
        return E, None
    return E, subsample.stderr(E, sess.reduce(squares), count // P_next)


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TensorFloat-32 matrix products on CUDA while inside, the user's setting restored after."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = before or enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def compute_edges(
    sess: Session,
    bases: Mapping[str, InteractionBasis],
    *,
    n_alpha: int,
    n_sources: int | None = None,
    seed: int = 0,
    ties: TieSums | None = None,
    only: Iterable[tuple[str, str]] | None = None,
    precision: str = "float64",
    subsample: Subsample | None = None,
    stderr: dict[tuple[str, str], np.ndarray] | None = None,
) -> dict[tuple[str, str], np.ndarray]:
    """``E`` for every section (or the sections ``only`` names): one shared pass for the
    elementwise sections with a nonlinearity (per row: a sample at one position), none for
    junctions, one autograd pass per other section (with ``n_sources`` random-sign
    combinations of output positions where a target has several). With ``ties``, the moments
    of the tied pairs are summed into it in the same passes. ``precision`` ``"float32"`` or
    ``"tf32"`` (TensorFloat-32 on CUDA, float32 elsewhere) is that of the elementwise
    kernel's products; every sum over chunks of rows stays float64. With ``subsample``, the
    passes run on its data points only and ``stderr`` receives the standard error of every
    section's E (junctions: 0, they need no data)."""
    tensors = {n: LayerTensors(b, sess.device) for n, b in bases.items()}
    alphas, weights = quadrature(n_alpha)
    sections = sess.plan.sections
    if only is not None:
        wanted = set(only)
        sections = [s for s in sections if (s.source, s.target) in wanted]
    shared = [s for s in sections if s.elementwise and s.activation is not None]
    sums: dict[tuple[str, str], torch.Tensor] = {}
    squares: dict[tuple[str, str], torch.Tensor] = {}
    rows: dict[tuple[str, str], int] = {}
    pairs: dict[tuple[str, str], PairSums | None] = {}
    pq: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # P, Q once a pass
    seen = 0
    products = torch.float64 if precision == "float64" else torch.float32
    # the sources, and at α = 1 the targets too (their slopes are read off them)
    targets = [s.target for s in shared] if n_alpha == 1 else []
    names = list(dict.fromkeys([*(s.source for s in shared), *targets]))
    if shared:
        with torch.no_grad(), _tf32(precision == "tf32" and sess.device.type == "cuda"):
            for index, x in enumerate(sess.batches("edges (elementwise)")):
                if subsample is not None:
                    x, seen = x[subsample.keep(seen, x.shape[0], x.device)], seen + x.shape[0]
                    if x.shape[0] == 0:
                        continue
                    acts = sess.tracer.run(x, record=names)
                else:  # the first pass's records where the session keeps them (cache_mb)
                    acts = sess.run(index, x, names)
                for s in shared:
                    a, src, dst = acts[s.source], tensors[s.source], tensors[s.target]
                    slope, f = elementwise_slopes(s, a, src, alphas, weights, acts.get(s.target))
                    rows[s.key] = rows.get(s.key, 0) + a.shape[0]
                    if s.key not in pairs:  # the form is chosen on the first chunk
                        allowed = ties is None and subsample is None
                        n = bases[s.source].n_samples
                        pairs[s.key] = pair_form(slope, dst.k, src.k, n, products, allowed)
                        pq[s.key] = factors(s, src, dst)
                    acc = pairs[s.key]
                    if acc is not None:
                        acc.add(slope, f)
                        continue
                    sq = None
                    if subsample is not None:
                        sq = squares.setdefault(s.key, src.C.new_zeros((dst.C.shape[1], src.k)))
                    part = row_edges(s, slope, f, src, dst, ties, products, sq, pq[s.key])
                    sums[s.key] = sums[s.key] + part if s.key in sums else part
        for s in shared:  # contracted here, so that processes reduce sums of E alike
            acc = pairs.get(s.key)
            if acc is not None:
                sums[s.key] = acc.edges(*pq[s.key])
    gen = None
    if n_sources is not None:
        gen = torch.Generator(device=sess.device)
        gen.manual_seed(sess.stream_seed(seed))
    out: dict[tuple[str, str], np.ndarray] = {}
    for s in sections:
        key, src, dst = s.key, tensors[s.source], tensors[s.target]
        err = None
        if s.elementwise and s.activation is None:
            E = _junction_edges(s, src, dst, ties)
            err = torch.zeros_like(E) if subsample is not None else None
        elif s.elementwise:
            n = torch.tensor(float(rows.get(key, 0)), dtype=torch.float64, device=sess.device)
            n_all = max(int(sess.reduce(n)), 1)
            mine = sums.get(key)  # none on a process whose shard of the data is empty
            if mine is None:
                mine = src.C.new_zeros((dst.C.shape[1], src.C.shape[1]))
            E = sess.reduce(mine) / n_all
            if ties is not None:
                ties.finish(key, n_all, sess.reduce)
            if subsample is not None:
                sq = squares.get(key, torch.zeros_like(E))
                err = subsample.stderr(E, sess.reduce(sq), n_all)
        elif src.k and dst.k and _constant_without_positions(sess, s):
            E = _constant_edges(sess, s, src, dst, ties)
            err = torch.zeros_like(E) if subsample is not None else None
        elif (
            src.k and dst.k and ties is None and subsample is None
            and (conv := _conv_junction(sess, s)) is not None
        ):  # fmt: skip
            E = _conv_junction_edges(sess, s, conv, src, dst)
        else:
            E, err = _autograd_edges(
                sess, s, src, dst, alphas, weights, n_sources, gen, ties, subsample
            )
        out[key] = E.cpu().numpy()
        if stderr is not None and err is not None:
            stderr[key] = err.cpu().numpy()
    return out
