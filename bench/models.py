"""The benchmark models and data, and the FLOPs each numeric stage performs on them.

Models: ``modgraph.toy.mlp`` ReLU MLPs (float64, seed 0) on N(0, 1) float64 inputs, each either as
the ``nn.Sequential`` itself (modgraph's elementwise shortcuts) or as :class:`FunctionalMLP` (the
same weights with ``F.relu`` in ``forward``: modgraph's autograd path).

FLOPs (multiply-add = 2), per stage and :data:`PARTS` (:func:`totals` sums them):
:func:`stage_flops` counts what modgraph's stage functions compute, term by term (checked
against torch's FLOP counter in ``tests/test_bench_baseline.py``), :func:`baseline_flops` what
``bench/baseline.py`` computes. The formulas are in bench/README.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modgraph.capture import Session
from modgraph.jacobian import narrowing_linear
from modgraph.moments import gram_blocks
from modgraph.pairs import pair_form_pays
from modgraph.toy import mlp

__all__ = [
    "NUMERIC_STAGES",
    "FunctionalMLP",
    "baseline_flops",
    "eigh_flops",
    "make_data",
    "make_model",
    "mnist_inputs",
    "section_kinds",
    "stage_flops",
    "totals",
]

NUMERIC_STAGES = ("gram", "basis", "edges")
#: How the FLOPs of a stage split: matrix products (what torch's FLOP counter sees), symmetric
#: eigen-decompositions, and elementwise arithmetic on the per-sample edge products.
PARTS = ("matmul", "eigh", "elementwise")

Parts = dict[str, dict[str, float]]


class FunctionalMLP(nn.Module):
    """The function of a Sequential ReLU MLP, with ``F.relu`` in ``forward``.

    modgraph cannot see a functional nonlinearity as a module, so the sections between hidden
    layers take its general path (batched autograd VJPs) instead of the elementwise shortcut.
    """

    def __init__(self, sequential: nn.Sequential) -> None:
        super().__init__()
        self.linears = nn.ModuleList(
            copy.deepcopy(m) for m in sequential if isinstance(m, nn.Linear)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.linears
        for lin in hidden:
            x = F.relu(lin(x))
        return last(x)


def make_model(widths: Sequence[int], path: str, seed: int = 0) -> nn.Module:
    """``nn.Sequential`` ReLU MLP (``path="shortcut"``) or its :class:`FunctionalMLP` twin."""
    seq = mlp(list(widths), nn.ReLU, seed=seed)
    return seq if path == "shortcut" else FunctionalMLP(seq)


def make_data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=torch.float64, generator=gen)


def mnist_inputs(n: int, seed: int = 1) -> torch.Tensor:
    """``n`` MNIST-like 28 × 28 inputs (flattened, float64) for ``modgraph.toy.load_mnist_mlp``:
    ``modgraph.toy.digits_as_mnist`` (1,797 images) as they are, then tiled copies with N(0, 0.1²)
    noise on the 24 × 24 square the digits cover (the 2-pixel border stays 0), clipped to [0, 1]."""
    from modgraph.toy import digits_as_mnist

    digits = digits_as_mnist()[0]
    if n <= digits.shape[0]:
        return digits[:n].clone()
    x = digits.repeat(-(-n // digits.shape[0]), 1)[:n].clone()
    gen = torch.Generator().manual_seed(seed)
    noise = 0.1 * torch.randn(n - digits.shape[0], 28, 28, dtype=x.dtype, generator=gen)
    noise[:, :2] = noise[:, -2:] = noise[:, :, :2] = noise[:, :, -2:] = 0.0
    x[digits.shape[0] :] += noise.reshape(-1, 784)
    return x.clamp_(0.0, 1.0)


def section_kinds(sess: Session) -> list[str]:
    """How modgraph differentiates each section of the session's plan.

    ``"elementwise"`` (Linear + elementwise module: exact shortcuts), ``"junction"`` (Linear
    alone: no data pass for the edges), ``"autograd"`` (batched VJPs at the source node layer) or
    ``"autograd_folded"`` (the source module is a narrowing ``nn.Linear``: VJPs at its output
    ``z``, folded back by ``W``; see ``modgraph.jacobian.narrowing_linear``).
    """
    kinds = []
    for s in sess.plan.sections:
        if s.elementwise:
            kinds.append("junction" if s.activation is None else "elementwise")
        else:
            kinds.append("autograd" if narrowing_linear(sess, s) is None else "autograd_folded")
    return kinds


def eigh_flops(n: int) -> float:
    """Symmetric eigen-decomposition with vectors: tridiagonal reduction 4/3 n³ plus
    back-transformation 2 n³ (a lower bound; the tridiagonal solver is not counted)."""
    return (4 / 3 + 2) * n**3


def gram_flops(n: int, d: int) -> float:
    """FLOPs of ``moments.add_gram`` over ``n`` rows of width ``d``: the upper triangle's block
    rows, ``2·n·(hi − lo)·(d − lo)`` each."""
    edges = gram_blocks(d)
    return sum(2.0 * n * (hi - lo) * (d - lo) for lo, hi in zip(edges[:-1], edges[1:]))


def _empty() -> Parts:
    return {s: dict.fromkeys(PARTS, 0.0) for s in NUMERIC_STAGES}


def stage_flops(
    dims: Sequence[int],
    ks: Sequence[int],
    ranks: Sequence[int],
    kinds: Sequence[str],
    n: int,
    batch_size: int = 256,
    as_filed: bool = False,
) -> Parts:
    """FLOPs of modgraph's numeric stages, per stage and part (:data:`PARTS`).

    ``dims[l]``, ``ks[l]``, ``ranks[l]``: width, kept features and covariance rank of node layer
    ``l`` (``l = 0..L``, the output last); ``kinds[l]``: the kind of section ``l → l+1`` (see
    :func:`section_kinds`). Each term names the code that performs it. ``as_filed=True``
    counts the work of the code issue 16 was filed against (the floor it measured): whole
    Grams ``cᵀc``, the pre-activations ``W a + b`` computed again for the slopes, and every
    elementwise section in the row form.
    """
    L = len(kinds)
    fwd = [2.0 * n * dims[l] * dims[l + 1] for l in range(L)]  # forward of each section
    parts = _empty()
    gram, basis, edges = (parts[s] for s in NUMERIC_STAGES)
    # capture.session: the plan's probe forward (first rows of the first batch); then
    # moments.accumulate_statistics: one forward, cᵀc per node layer, σ'ᵀσ' per elementwise
    probe = min(16, batch_size, n) / n
    grams = [2.0 * n * d * d if as_filed else gram_flops(n, d) for d in dims]
    gram["matmul"] = sum(fwd) * (1 + probe) + sum(grams)
    gram["matmul"] += sum(2.0 * n * dims[l + 1] ** 2 for l in range(L) if kinds[l] == "elementwise")
    basis["eigh"] = eigh_flops(dims[L])  # basis.fit_output: covariance_cut of the output
    if "elementwise" in kinds:  # kernels.compute_edges: one shared forward pass
        edges["matmul"] = sum(fwd)
    for l, kind in enumerate(kinds):
        d, dn, k, kn, r = dims[l], dims[l + 1], ks[l], ks[l + 1], ranks[l]
        # basis.fit_layer: covariance_cut eigh(d); eigh(r) of M; C (2·d·r·k) and C⁺ (4·k·d·r)
        basis["eigh"] += eigh_flops(d) + (eigh_flops(r) if r else 0.0)
        basis["matmul"] += 6.0 * d * r * k
        project = kind.startswith("autograd") and 2 * r < d  # local_jacobian_gram(project=…)
        if r and not project:  # M = (U D^½)ᵀ M' (U D^½)
            basis["matmul"] += 2.0 * d * d * r + 2.0 * d * r * r
        if kind in ("elementwise", "junction") and r:
            # jacobian.elementwise_jacobian_gram: A = C'C'ᵀ, then Wᵀ (A ∘ S) W; no data pass
            basis["matmul"] += 2.0 * dn * dn * kn + 2.0 * d * dn * dn + 2.0 * d * d * dn
        elif kind.startswith("autograd") and r and kn:
            # jacobian.constant_jacobian reads one sample's graph (a Linear source), then
            # jacobian.local_jacobian_gram: forward to l+1, k' VJPs per row
            basis["matmul"] += sum(fwd[: l + 1]) * (1 + 1 / n)
            if kind == "autograd_folded":
                # VJPs at z through σ only (no product), Gram of the z-VJPs 2·N·k'·d'², then W
                basis["matmul"] += 2.0 * n * kn * dn * dn
                basis["matmul"] += (
                    2.0 * dn * d * r + 2.0 * r * dn * dn + 2.0 * r * r * dn
                    if project
                    else 2.0 * d * dn * dn + 2.0 * d * d * dn
                )
            else:  # VJPs through the source Linear (2·N·k'·d'·d), then their Gram
                basis["matmul"] += 2.0 * n * kn * dn * d
                basis["matmul"] += (
                    2.0 * n * kn * d * r + 2.0 * n * kn * r * r if project else 2.0 * n * kn * d * d
                )
        if kind == "junction":  # kernels._junction_edges: Γ = C'ᵀ W C⁺ᵀ, no data pass
            edges["matmul"] += 2.0 * kn * dn * d + 2.0 * kn * d * k
        elif kind == "elementwise" and not as_filed and pair_form_pays(n, kn, dn, k):
            # elementwise.elementwise_slopes: features (2·N·d·k), the slopes read off the
            # target (nn.ReLU); pairs.PairSums: Σ f̂² s_u s_v (2·N·k·p), contracted once
            # (2·k'·p·k) with Q = W C⁺ᵀ (2·d'·d·k); p = d'(d'+1)/2 pairs
            p = dn * (dn + 1) / 2
            edges["matmul"] += 2.0 * n * d * k + 2.0 * n * k * p + 2.0 * kn * p * k
            edges["matmul"] += 2.0 * dn * d * k
            edges["elementwise"] += 2.0 * n * p + 3.0 * p * (kn + k)  # s_u s_v; P_u P_v, Q_u Q_v T
        elif kind == "elementwise":  # elementwise.row_edges, every batch (d' < SPARSE_MIN_WIDTH):
            # features (2·N·d·k), slopes read off the target (as filed: W a + b again,
            # 2·N·d·d'), Q = W C⁺ᵀ once per pass (as filed: per batch), Γ GEMM
            edges["matmul"] += 2.0 * n * d * k + (2.0 * n * d * dn if as_filed else 0.0)
            factors = math.ceil(n / batch_size) if as_filed else 1
            edges["matmul"] += factors * 2.0 * dn * d * k
            edges["matmul"] += 2.0 * n * kn * dn * k
            # Q or P scaled per row (the smaller), then (Γ ⊙ f̂)², Σ (as filed: P ∘ s; Γ², ∘f², Σ)
            scaled = 2.0 * dn * k if dn * k <= kn * (dn + k) else kn * dn + kn * k
            if as_filed:
                scaled = kn * dn + kn * k
            edges["elementwise"] += n * scaled + 2.0 * n * kn * k
        elif k and kn:  # kernels._autograd_edges: forward to l+1, k' VJPs per row
            # (whether its Jacobian is constant was read once, in the basis stage)
            edges["matmul"] += sum(fwd[: l + 1]) + 2.0 * n * d * k
            if kind == "autograd_folded":  # (W C⁺ᵀ) once; Γ = (∂f̂'/∂z) (W C⁺ᵀ)
                edges["matmul"] += 2.0 * dn * d * k + 2.0 * n * kn * dn * k
            else:  # VJPs through W, then Γ = (∂f̂'/∂a) C⁺ᵀ
                edges["matmul"] += 2.0 * n * kn * dn * d + 2.0 * n * kn * d * k
            edges["elementwise"] += 3.0 * n * kn * k
    return parts


def baseline_flops(dims: Sequence[int], ks: Sequence[int], ranks: Sequence[int], n: int) -> Parts:
    """FLOPs of ``bench.baseline.run_baseline`` on an MLP, per stage and part.

    Every section runs through autograd, one ``autograd.grad`` per next feature; each call's
    backward goes through ``· @ C'`` (2·B·k'·d'), the section (2·B·d'·d) and, for the edges,
    ``· @ C⁺`` (2·B·d·k).
    """
    L = len(dims) - 1
    fwd = [2.0 * n * dims[l] * dims[l + 1] for l in range(L)]
    parts = _empty()
    gram, basis, edges = (parts[s] for s in NUMERIC_STAGES)
    gram["matmul"] = sum(fwd) + sum(2.0 * n * d * d for d in dims)
    for l in range(L):
        d, dn, k, kn, r = dims[l], dims[l + 1], ks[l], ks[l + 1], ranks[l]
        basis["eigh"] += eigh_flops(d) + eigh_flops(r)
        forward = sum(fwd[: l + 1]) + 2.0 * n * dn * kn  # to l+1, then (· − μ') C'
        basis["matmul"] += forward + 2.0 * n * kn * (kn * dn + dn * d) + 2.0 * n * kn * d * d
        basis["matmul"] += 2.0 * d * d * r + 2.0 * d * r * r + 4.0 * d * r * k
        edges["matmul"] += forward + 4.0 * n * d * k  # features f̂ and back, μ + f̂ C⁺
        edges["matmul"] += 2.0 * n * kn * (kn * dn + dn * d + d * k)
        edges["elementwise"] += 3.0 * n * kn * k
    return parts


def totals(parts: Parts) -> dict[str, float]:
    """FLOPs per stage: the parts of :func:`stage_flops` or :func:`baseline_flops` summed."""
    return {stage: sum(p.values()) for stage, p in parts.items()}


def synthetic_matrices(
    n_edges: int,
    *,
    n_layers: int = 11,
    density: float = 0.1,
    n_modules: int = 8,
    mixing: float = 0.2,
    epsilon: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Layered interaction matrices with about ``n_edges`` entries above ``epsilon``.

    ``n_layers`` node layers of equal width ``w ≈ sqrt(n_edges / ((n_layers − 1) · density))``;
    each feature belongs to one of ``n_modules`` planted modules (contiguous blocks); a fraction
    ``mixing`` of the entries above ε join different modules. Above ε: ``E = ε·exp(2·Exp(1))``
    (cost ``½ ln(E/ε)`` exponential with mean 1); below: ``E = ε·U(0, 1)``.
    """
    rng = np.random.default_rng(seed)
    pairs = n_layers - 1
    w = max(2, round(math.sqrt(n_edges / (pairs * density))))
    p_in = min(1.0, (1 - mixing) * density * n_modules)
    p_out = mixing * density / (1 - 1 / n_modules)
    labels = np.arange(w) * n_modules // w
    same = labels[:, None] == labels[None, :]
    prob = np.where(same, p_in, p_out)
    mats = []
    for _ in range(pairs):
        above = rng.random((w, w)) < prob
        E = epsilon * rng.random((w, w))
        E[above] = epsilon * np.exp(2.0 * rng.exponential(1.0, int(above.sum())) + 1e-9)
        mats.append(E)
    return mats
