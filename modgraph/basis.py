"""The interaction basis (arXiv 2405.10927 §2; local variant of arXiv 2405.10928).

For every node layer ``l`` (the input of a submodule; ``"output"`` last) modgraph finds a basis
``C_l (d_l, k_l)`` whose features ``f̂_l = C_lᵀ (a_l − μ_l)`` are invariant to the two linear
sources of degeneracy: linearly dependent activations (directions with no variance are dropped) and
linearly dependent gradients (directions the next layer ignores are dropped). The computation runs
from the output backwards, because layer ``l`` needs the basis of layer ``l + 1``::

    G_l = E[ã ãᵀ] = U D Uᵀ                    (kept: D > tolerance)
    M'  = E[Jᵀ A J],  J = ∂a_{l+1}/∂a_l,  A = C_{l+1} C_{l+1}ᵀ       (local variant)
          J = ∂out/∂a_l,  A = I                                       (global variant)
    M   = D^{1/2} Uᵀ M' U D^{1/2} = V Λ Vᵀ      (kept: Λ > tolerance)
    C_l = U D^{−1/2} V Λ^{1/2},   C_l⁺ = Λ^{−1/2} Vᵀ D^{1/2} Uᵀ

Every expectation is a float64 sum accumulated batch by batch (memory O(d²) per layer, independent
of the number of samples). Jacobian products are batched vector–Jacobian products
(``torch.autograd.grad(..., is_grads_batched=True)``); sections ``a_{l+1} = σ(W a_l + b)`` with an
elementwise σ use the exact shortcut ``M' = Wᵀ (A ∘ E[σ'(z) σ'(z)ᵀ]) W`` and need no extra pass.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validate import check_choice, check_dtype, check_float, check_int, check_model, check_seed
from .capture import OUTPUT, Plan, Section, Session, session
from .errors import ModgraphValueError

__all__ = ["BasisOptions", "InteractionBasis", "interaction_basis"]

logger = logging.getLogger("modgraph")

#: Elements of the largest temporary (VJP results, per-sample products) built at once.
CHUNK_ELEMENTS = 2**23
_EPS64 = float(np.finfo(np.float64).eps)


def _readonly(t: torch.Tensor) -> np.ndarray:
    a = t.detach().to("cpu", torch.float64).numpy().copy()
    a.setflags(write=False)
    return a


@dataclass(frozen=True)
class InteractionBasis:
    """The interaction basis of one node layer.

    Attributes
    ----------
    layer : str
        Node-layer name (a module name from ``model.named_modules()``, or ``"output"``).
    mean : ndarray, shape (d,)
        ``μ = E[a]``, the mean activation.
    C : ndarray, shape (d, k)
        Basis: features are ``f̂ = Cᵀ (a − μ)``.
    C_pinv : ndarray, shape (k, d)
        Pseudo-inverse, ``C_pinv @ C = I_k``; activations come back as ``μ + C_pinvᵀ f̂``
        (exactly, on the kept subspace).
    eigenvalues : ndarray, shape (k,)
        ``Λ``, descending: ``E[f̂ f̂ᵀ] = diag(Λ)``, each feature's importance. For the output layer
        with ``output_basis="identity"`` these are the output variances, in output order.
    gram_eigenvalues : ndarray, shape (d,)
        All eigenvalues of the activation covariance ``G``, descending.
    jacobian_eigenvalues : ndarray, shape (r,)
        All eigenvalues of ``M`` (``r`` = kept covariance directions), descending; empty for the
        output layer.
    n_samples : int
        Number of data points the sums ran over.
    variant : str
        ``"local"`` or ``"global"``.
    rtol : float
        Relative eigenvalue tolerance used for both cuts.
    """

    layer: str
    mean: np.ndarray
    C: np.ndarray
    C_pinv: np.ndarray
    eigenvalues: np.ndarray
    gram_eigenvalues: np.ndarray
    jacobian_eigenvalues: np.ndarray
    n_samples: int
    variant: str
    rtol: float

    @property
    def d(self) -> int:
        """Width of the node layer (number of neurons)."""
        return int(self.C.shape[0])

    @property
    def k(self) -> int:
        """Number of interaction-basis features kept."""
        return int(self.C.shape[1])

    @property
    def gram_rank(self) -> int:
        """Number of covariance directions above tolerance."""
        return count_kept(self.gram_eigenvalues, self.rtol)

    def transform(self, acts: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map activations ``(..., d)`` to features ``(..., k)``: ``(a − μ) @ C``.

        Returns the same kind (numpy or torch, device and dtype kept for torch) as ``acts``.
        """
        if isinstance(acts, torch.Tensor):
            dtype = acts.dtype if acts.is_floating_point() else torch.float64
            mean = torch.tensor(self.mean, dtype=dtype, device=acts.device)
            C = torch.tensor(self.C, dtype=dtype, device=acts.device)
            return (acts.to(dtype) - mean) @ C
        acts = np.asarray(acts, dtype=np.float64)
        if acts.shape[-1] != self.d:
            raise ModgraphValueError(
                f"transform of layer {self.layer!r} needs activations of shape (..., {self.d}); "
                f"got {acts.shape}."
            )
        return (acts - self.mean) @ self.C

    def __repr__(self) -> str:
        return f"InteractionBasis(layer={self.layer!r}, d={self.d}, k={self.k})"


def count_kept(eigenvalues: np.ndarray, rtol: float) -> int:
    if eigenvalues.size == 0 or eigenvalues[0] <= 0:
        return 0
    return int(np.sum(eigenvalues > rtol * eigenvalues[0]))


def _eigh_desc(sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix, eigenvalues descending."""
    sym = 0.5 * (sym + sym.T)
    values, vectors = torch.linalg.eigh(sym)
    return values.flip(0), vectors.flip(1)


# --------------------------------------------------------------------------------------------
# Streaming sums
# --------------------------------------------------------------------------------------------


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
        self.outer += c.T @ c
        self.n += a.shape[0]

    @property
    def square_norm(self) -> float:
        """``Σ ‖a‖²`` over the samples, from the shifted sums (no extra pass)."""
        shift = self.shift
        return float(torch.trace(self.outer) + 2 * shift @ self.total + self.n * shift @ shift)

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.total / self.n

    @property
    def cov(self) -> torch.Tensor:
        m = self.total / self.n
        cov = self.outer / self.n - torch.outer(m, m)
        return 0.5 * (cov + cov.T)


def elementwise_derivative(section: Section, z: torch.Tensor) -> torch.Tensor:
    """``σ'(z)`` of an elementwise section (ones for a Linear→Linear junction), shape of ``z``."""
    act = section.activation
    if act is None or isinstance(act, (nn.Identity, nn.Dropout)):
        return torch.ones_like(z)
    with torch.enable_grad():
        point = z.detach().requires_grad_(True)
        # elementwise: the gradient of Σ σ(z) is σ'(z); the clone lets in-place modules run
        (slope,) = torch.autograd.grad(act(point.clone()).sum(), point)
    return slope


def slope_from_output(section: Section, out: torch.Tensor) -> torch.Tensor | None:
    """``σ'(z)`` read off ``σ(z)`` itself where σ allows it (ReLU family, Tanh, Sigmoid), so the
    pre-activation need not be recomputed; ``None`` otherwise."""
    act = section.activation
    if type(act) is nn.ReLU:
        return (out > 0).to(out.dtype)
    if type(act) is nn.LeakyReLU:
        ones = torch.ones_like(out)
        return torch.where(out > 0, ones, ones * act.negative_slope)
    if type(act) is nn.Tanh:
        return 1 - out.square()
    if type(act) is nn.Sigmoid:
        return out * (1 - out)
    return None


def linear_preactivation(section: Section, a: torch.Tensor) -> torch.Tensor:
    assert section.linear is not None
    return torch.nn.functional.linear(a, section.linear.weight, section.linear.bias)


@dataclass
class Statistics:
    """Result of the first pass: moments per node layer, co-activation Grams per section."""

    moments: dict[str, Moments]
    coactivation: dict[str, torch.Tensor] = field(default_factory=dict)  # E[s sᵀ] per source

    @property
    def n(self) -> int:
        return next(iter(self.moments.values())).n


def check_finite(name: str, a: torch.Tensor, batch: int) -> None:
    if bool(torch.isfinite(a.sum())):  # one reduction; the exact count only when it fails
        return
    bad = int((~torch.isfinite(a)).sum())
    if bad:
        raise ModgraphValueError(
            f"node layer {name!r} has {bad} NaN/Inf activation values in batch {batch}. Remove "
            "non-finite inputs, or check the model's numerics (e.g. overflow in float16)."
        )


def check_width(name: str, a: torch.Tensor, d: int, batch: int) -> None:
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
        check_width(name, a, plan.dims[name], batch)
        check_finite(name, a, batch)
        if name not in moments:
            moments[name] = Moments.start(a)
        moments[name].add(a)


def accumulate_statistics(
    sess: Session, *, coactivation: bool = True, desc: str = "moments"
) -> Statistics:
    """One pass over the data: means and covariances of every node layer, and ``E[σ'σ'ᵀ]`` of
    every elementwise section with a nonlinearity (when ``coactivation``)."""
    plan = sess.plan
    moments: dict[str, Moments] = {}
    coact: dict[str, torch.Tensor] = {}
    need = (
        [s for s in plan.sections if s.elementwise and s.activation is not None]
        if coactivation
        else []
    )
    with torch.no_grad():
        for b, x in enumerate(sess.batches(desc)):
            acts = sess.tracer.run(x, record=plan.names)
            add_layer_moments(moments, acts, plan, b)
            for s in need:
                slope = slope_from_output(s, acts[s.target])
                if slope is None:
                    slope = elementwise_derivative(s, linear_preactivation(s, acts[s.source]))
                slope = slope.to(torch.float64)
                gram = slope.T @ slope
                coact[s.source] = coact[s.source] + gram if s.source in coact else gram
    stats = Statistics(moments=moments, coactivation={})
    stats.coactivation = {k: v / stats.n for k, v in coact.items()}
    return stats


# --------------------------------------------------------------------------------------------
# Jacobian Grams M' = E[Jᵀ A J]
# --------------------------------------------------------------------------------------------


def _sign_vectors(
    gen: torch.Generator, n_sources: int, batch: int, width: int, device: torch.device
) -> torch.Tensor:
    """Random ±1/√R vectors, shape (R, batch, width)."""
    bits = torch.randint(0, 2, (n_sources, batch, width), generator=gen, device=device)
    return (2.0 * bits - 1.0).to(torch.float64) / math.sqrt(n_sources)


def cotangents(
    basis_next: torch.Tensor,
    batch: int,
    n_sources: int | None,
    gen: torch.Generator | None,
) -> torch.Tensor:
    """Cotangents for batched VJPs, shape (k, batch, d_next): one per next-layer feature, or
    ``R`` random-sign combinations ``Σ_k φ_rk c_k / √R`` when ``n_sources`` is set."""
    k = basis_next.shape[1]
    if n_sources is None:
        return basis_next.T[:, None, :].expand(k, batch, basis_next.shape[0])
    assert gen is not None
    phi = _sign_vectors(gen, n_sources, batch, k, basis_next.device)
    return phi @ basis_next.T


def batched_vjp(
    target: torch.Tensor, source: torch.Tensor, cotangent: torch.Tensor
) -> torch.Tensor | None:
    """``cotangent[i] · ∂target/∂source`` for every ``i`` at once: shape (n, batch, d_source).

    ``None`` when ``target`` does not depend on ``source``.
    """
    if not target.requires_grad:
        return None
    (grad,) = torch.autograd.grad(
        target,
        source,
        grad_outputs=cotangent.to(target.dtype),
        is_grads_batched=True,
        allow_unused=True,
    )
    return grad


def leaf(a: torch.Tensor) -> torch.Tensor:
    return a.detach().requires_grad_(True)


def chunk_rows(n_vectors: int, width: int, batch_size: int) -> int:
    """Rows per autograd sub-batch so that ``n_vectors × rows × width`` stays bounded."""
    return max(1, min(batch_size, CHUNK_ELEMENTS // max(1, n_vectors * width)))


def narrowing_linear(sess: Session, section: Section) -> nn.Linear | None:
    """The source module when it is an ``nn.Linear`` that narrows (``d_out < d_in``): VJPs are
    then cheaper at its output ``z`` (width ``d_out``), with ``∂/∂a = (∂/∂z) W``."""
    module = sess.plan.modules[section.source]
    if type(module) is nn.Linear and module.out_features < module.in_features:
        return module
    return None


def section_vjp(
    sess: Session,
    section: Section,
    x: torch.Tensor,
    cotangent: Callable[[int], torch.Tensor],
    point: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    at_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Batched VJPs of one section: ``cotangent(B)[i] · ∂a_{l+1}/∂a_l`` for every row of ``x``.

    The forward stops at the target node layer; gradients stop at the source node layer. The
    source module sees ``point(a_l)`` (default ``a_l``); paths that bypass it (residual branches)
    are differentiated at ``a_l`` itself. Returns the source activations ``(B, d)``, the VJPs
    ``(n, B, d)`` with respect to ``a_l``, and ``None``; with ``at_output`` (the source module
    is an ``nn.Linear``), the VJPs with respect to ``a_l`` cover only the bypass paths and the
    third value holds the VJPs ``(n, B, d_out)`` with respect to the Linear's output ``z``, so
    that ``∂/∂a_l = (∂/∂z) W + bypass``. ``None`` stands for "no dependence".
    """
    first = sess.plan.names[0]
    src, dst = section.source, section.target

    def moved(a: torch.Tensor) -> torch.Tensor:
        a = point(a) if point is not None else a
        return a.detach() if at_output else leaf(a)

    if x.is_floating_point():  # the whole forward in the graph: bypass paths from x count too
        x = leaf(x)
        substitute = {src: moved}
    else:  # integer inputs (token ids): the graph starts at the first node layer
        substitute = {src: moved} if src == first else {first: leaf, src: moved}
    with torch.enable_grad():
        store = sess.tracer.run(
            x,
            record=(src, dst),
            substitute=substitute,
            stop=None if dst == OUTPUT else dst,
            detach=False,
            replace_output={src: leaf} if at_output else None,
        )
        original = sess.tracer.originals[src]
        target = store[dst]
        if not target.requires_grad:
            return original.detach(), None, None
        start = sess.tracer.outputs[src] if at_output else store[src]
        inputs = [start] + ([original] if original.requires_grad else [])
        grads = torch.autograd.grad(
            target,
            inputs,
            grad_outputs=cotangent(x.shape[0]).to(target.dtype),
            is_grads_batched=True,
            allow_unused=True,
        )
    if at_output:
        return original.detach(), grads[1] if len(grads) > 1 else None, grads[0]
    present = [g for g in grads if g is not None]
    total = None if not present else present[0] if len(present) == 1 else sum(present)
    return original.detach(), total, None


def local_jacobian_gram(
    sess: Session,
    section: Section,
    basis_next: torch.Tensor,
    *,
    n_sources: int | None,
    gen: torch.Generator | None,
    project: torch.Tensor | None = None,
) -> torch.Tensor:
    """``M' = E[Jᵀ A J]`` with ``J = ∂a_{l+1}/∂a_l``, ``A = C_{l+1} C_{l+1}ᵀ``, by batched VJPs.

    With ``project (d, r)``, returns ``projectᵀ M' project`` (r, r) instead, accumulated from
    the projected VJPs: cheaper when ``r < d/2`` (activations confined to a subspace).
    """
    d = sess.plan.dims[section.source]
    d_next = sess.plan.dims[section.target]
    width = d if project is None else project.shape[1]
    gram = torch.zeros((width, width), dtype=torch.float64, device=sess.device)
    n_vec = n_sources or basis_next.shape[1]
    if n_vec == 0:
        return gram
    # A narrowing source Linear: VJPs at its output z, folded in afterwards (M' = Wᵀ Σ gᵀg W),
    # so the Gram is d_out wide instead of d (batches with bypass paths take the full route).
    linear = narrowing_linear(sess, section)
    W = None if linear is None else linear.weight.detach().to(torch.float64)
    gram_z = None if W is None else W.new_zeros((W.shape[0], W.shape[0]))
    rows = chunk_rows(n_vec, max(d, d_next), sess.batch_size)
    n = 0
    for x in sess.batches(f"jacobian {section.source}", rows):
        a, g_a, g_z = section_vjp(
            sess,
            section,
            x,
            lambda b: cotangents(basis_next, b, n_sources, gen),
            at_output=W is not None,
        )
        n += a.shape[0]
        if g_z is not None and g_a is None:
            assert gram_z is not None
            gz = g_z.reshape(-1, g_z.shape[-1]).to(torch.float64)
            gram_z += gz.T @ gz
            continue
        g = None if g_z is None else g_z.reshape(-1, g_z.shape[-1]).to(torch.float64) @ W
        if g_a is not None:
            ga = g_a.reshape(-1, d).to(torch.float64)
            g = ga if g is None else g + ga
        if g is None:
            continue
        if project is not None:
            g = g @ project
        gram += g.T @ g
    if W is not None and gram_z is not None:
        folded = W if project is None else W @ project
        gram += folded.T @ gram_z @ folded
    return gram / n


def global_jacobian_grams(
    sess: Session, *, n_sources: int | None, gen: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """``M'_l = E[J_lᵀ J_l]`` with ``J_l = ∂out/∂a_l`` for every node layer, in one pass."""
    names = sess.plan.names[:-1]
    d_out = sess.plan.dims[OUTPUT]
    grams = {
        n: torch.zeros((sess.plan.dims[n],) * 2, dtype=torch.float64, device=sess.device)
        for n in names
    }
    n_vec = n_sources or d_out
    rows = chunk_rows(n_vec, max(sess.plan.dims.values()), sess.batch_size)
    eye = torch.eye(d_out, dtype=torch.float64, device=sess.device)
    count = 0
    for x in sess.batches("jacobian (global)", rows):
        with torch.enable_grad():
            floating = x.is_floating_point()
            store = sess.tracer.run(
                leaf(x) if floating else x,
                record=sess.plan.names,
                substitute=None if floating else {names[0]: leaf},
                detach=False,
            )
            out = store[OUTPUT]
            used = [n for n in names if store[n].requires_grad]
            cot = cotangents(eye, out.shape[0], n_sources, gen).to(out.dtype)
            if out.requires_grad and used:
                grads = torch.autograd.grad(
                    out,
                    [store[n] for n in used],
                    grad_outputs=cot,
                    is_grads_batched=True,
                    allow_unused=True,
                )
            else:
                grads = [None] * len(used)
        count += out.shape[0]
        for n, g in zip(used, grads):
            if g is not None:
                g = g.reshape(-1, sess.plan.dims[n]).to(torch.float64)
                grams[n] += g.T @ g
    return {n: g / count for n, g in grams.items()}


def elementwise_jacobian_gram(
    section: Section, coactivation: torch.Tensor | None, basis_next: torch.Tensor
) -> torch.Tensor:
    """Exact shortcut ``M' = Wᵀ (A ∘ E[σ'σ'ᵀ]) W`` for ``a_{l+1} = σ(W a_l + b)``."""
    assert section.linear is not None
    W = section.linear.weight.detach().to(torch.float64)
    A = basis_next @ basis_next.T
    if coactivation is not None:
        A = A * coactivation
    return W.T @ A @ W


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _fix_signs(C: torch.Tensor) -> torch.Tensor:
    """Make the largest-magnitude entry of each column positive (a deterministic sign)."""
    if C.shape[1] == 0:
        return C
    idx = C.abs().argmax(0)
    signs = torch.sign(C[idx, torch.arange(C.shape[1], device=C.device)])
    signs[signs == 0] = 1
    return C * signs


def covariance_cut(
    moments: Moments, rtol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigen-decompose the covariance; return (all eigenvalues, kept U (d, r), kept D (r,)).

    An eigenvalue is kept when it exceeds ``rtol × largest`` and the rounding level of the
    uncentred second moment (``64 · eps · E‖a‖²``), so constant layers come out with ``r = 0``.
    """
    D, U = _eigh_desc(moments.cov)
    floor = 64 * _EPS64 * moments.square_norm / max(moments.n, 1)
    top = float(D[0]) if D.numel() else 0.0
    keep = (D > rtol * top) & (D > floor) if top > 0 else torch.zeros_like(D, dtype=torch.bool)
    return D, U[:, keep], D[keep]


def fit_layer(
    name: str,
    moments: Moments,
    jacobian_gram: Callable[[torch.Tensor], torch.Tensor],
    *,
    rtol: float,
    variant: str,
) -> tuple[InteractionBasis, torch.Tensor]:
    """Interaction basis of one hidden node layer; returns it and ``C`` as a float64 tensor.

    ``jacobian_gram(U D^{1/2})`` returns ``M = D^{1/2} Uᵀ M' U D^{1/2}`` (r, r).
    """
    gram_eigenvalues, U, D = covariance_cut(moments, rtol)
    sqrt_d = D.sqrt()
    if D.numel() == 0:
        M_eig = torch.zeros(0, dtype=torch.float64, device=U.device)
        V = torch.zeros((0, 0), dtype=torch.float64, device=U.device)
        lam = M_eig
    else:
        M = jacobian_gram(U * sqrt_d)  # U D^{1/2}
        M_eig, V = _eigh_desc(M)
        top = float(M_eig[0])
        keep = M_eig > rtol * top if top > 0 else torch.zeros_like(M_eig, dtype=torch.bool)
        lam, V = M_eig[keep], V[:, keep]
    C = (U / sqrt_d) @ V * lam.sqrt() if lam.numel() else U.new_zeros((U.shape[0], 0))
    C = _fix_signs(C)
    # C⁺ = Λ^{-1/2} Vᵀ D^{1/2} Uᵀ; recomputed from the sign-fixed C: C⁺ = Λ^{-1} Cᵀ G.
    C_pinv = (C.T @ (U * D) @ U.T) / lam[:, None] if lam.numel() else C.T.clone()
    basis = InteractionBasis(
        layer=name,
        mean=_readonly(moments.mean),
        C=_readonly(C),
        C_pinv=_readonly(C_pinv),
        eigenvalues=_readonly(lam),
        gram_eigenvalues=_readonly(gram_eigenvalues),
        jacobian_eigenvalues=_readonly(M_eig),
        n_samples=moments.n,
        variant=variant,
        rtol=rtol,
    )
    return basis, C


def fit_output(
    moments: Moments, *, rtol: float, output_basis: str, variant: str
) -> tuple[InteractionBasis, torch.Tensor]:
    """Basis of the output node layer: identity (default) or PCA of the output covariance."""
    cov = moments.cov
    gram_eigenvalues, U, D = covariance_cut(moments, rtol)
    if output_basis == "identity":
        C = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
        lam = torch.diagonal(cov).clone()
        C_pinv = C.clone()
    else:
        C = _fix_signs(U)
        lam = D
        C_pinv = C.T.clone()
    basis = InteractionBasis(
        layer=OUTPUT,
        mean=_readonly(moments.mean),
        C=_readonly(C),
        C_pinv=_readonly(C_pinv),
        eigenvalues=_readonly(lam),
        gram_eigenvalues=_readonly(gram_eigenvalues),
        jacobian_eigenvalues=np.zeros(0),
        n_samples=moments.n,
        variant=variant,
        rtol=rtol,
    )
    return basis, C


def fit_bases(
    sess: Session,
    stats: Statistics,
    *,
    variant: str,
    rtol: float,
    n_sources: int | None,
    seed: int,
    output_basis: str,
) -> dict[str, InteractionBasis]:
    """All interaction bases, from the output backwards (one autograd pass per non-elementwise
    section in the local variant; one pass in total in the global variant)."""
    plan = sess.plan
    gen = None
    if n_sources is not None:
        gen = torch.Generator(device=sess.device)
        gen.manual_seed(seed)
    out_basis, C_next = fit_output(
        stats.moments[OUTPUT], rtol=rtol, output_basis=output_basis, variant=variant
    )
    bases = {OUTPUT: out_basis}
    global_grams = None
    if variant == "global":
        global_grams = global_jacobian_grams(sess, n_sources=n_sources, gen=gen)
    for section in reversed(plan.sections):
        name = section.source

        def jacobian_gram(
            half: torch.Tensor, section: Section = section, C_next: torch.Tensor = C_next
        ) -> torch.Tensor:
            if global_grams is not None:
                Mprime = global_grams[section.source]
            elif section.elementwise:
                Mprime = elementwise_jacobian_gram(
                    section, stats.coactivation.get(section.source), C_next
                )
            elif 2 * half.shape[1] < half.shape[0]:  # a subspace: project the VJPs first
                return local_jacobian_gram(
                    sess, section, C_next, n_sources=n_sources, gen=gen, project=half
                )
            else:
                Mprime = local_jacobian_gram(sess, section, C_next, n_sources=n_sources, gen=gen)
            return half.T @ Mprime @ half

        basis, C_next = fit_layer(
            name, stats.moments[name], jacobian_gram, rtol=rtol, variant=variant
        )
        bases[name] = basis
        logger.info("layer %s: d=%d, rank G=%d, k=%d", name, basis.d, basis.gram_rank, basis.k)
    return {name: bases[name] for name in plan.names}


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------

_WHERE = "interaction_basis"


@dataclass(frozen=True)
class BasisOptions:
    """The options shared by every function that computes bases, validated once."""

    variant: str = "local"
    rtol: float = 1e-10
    batch_size: int = 256
    n_random_sources: int | None = None
    dtype: torch.dtype | None = torch.float64
    device: torch.device | str | None = None
    output: Callable[[Any], torch.Tensor] | None = None
    output_basis: str = "identity"
    seed: int = 0
    progress: bool | None = None

    def check(self, where: str) -> BasisOptions:
        """Validate every option (before any expensive work); returns self."""
        check_choice(self.variant, "variant", where, ("local", "global"))
        check_float(self.rtol, "rtol", where, low=0.0, high=1.0)
        check_int(self.batch_size, "batch_size", where, minimum=1)
        check_int(self.n_random_sources, "n_random_sources", where, minimum=1, allow_none=True)
        check_dtype(self.dtype, where)
        check_seed(self.seed, where)
        check_choice(self.output_basis, "output_basis", where, ("identity", "pca"))
        return self

    def session(
        self, model: nn.Module, data: Any, layers: Iterable[str] | None, where: str
    ) -> contextlib.AbstractContextManager[Session]:
        """Prepare ``model`` for analysis (see :func:`modgraph.capture.session`)."""
        return session(
            model,
            data,
            layers,
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            output=self.output,
            progress=self.progress,
            where=where,
        )

    def statistics(self, sess: Session) -> Statistics:
        """The first pass: moments, and co-activation Grams when the local variant needs them."""
        return accumulate_statistics(sess, coactivation=self.variant == "local")

    def fit(self, sess: Session, stats: Statistics | None = None) -> dict[str, InteractionBasis]:
        """Every basis from the output backwards (after the statistics pass, run here if not
        given)."""
        if stats is None:
            stats = self.statistics(sess)
        return fit_bases(
            sess,
            stats,
            variant=self.variant,
            rtol=self.rtol,
            n_sources=self.n_random_sources,
            seed=self.seed,
            output_basis=self.output_basis,
        )


def interaction_basis(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None = None,
    *,
    variant: str = "local",
    rtol: float = 1e-10,
    batch_size: int = 256,
    n_random_sources: int | None = None,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    output_basis: str = "identity",
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, InteractionBasis]:
    """Compute the interaction basis of every node layer of ``model`` on ``data``.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model. It is never modified (mode, ``requires_grad`` and ``.grad`` restored,
        hooks removed, also on error); when ``dtype``/``device`` differ from the model's, a
        converted copy runs instead.
    data : Tensor (N, ...), Dataset, DataLoader or re-iterable of batches
        Inputs, streamed in batches; a batch may be a Tensor or a tuple/list whose first element
        is the input.
    layers : list of str, optional
        Node layers: module names whose *input* is analysed, in execution order, optionally
        ending with ``"output"``. Default: the input of every ``nn.Linear`` in execution order.
        ``"output"`` (the model output) is always appended.
    variant : {"local", "global"}
        ``"local"``: the Jacobian to the next layer's features (arXiv 2405.10928). ``"global"``:
        the Jacobian to the model output.
    rtol : float in (0, 1)
        An eigenvalue (of the covariance or of ``M``) counts as zero below ``rtol × largest``.
    batch_size : int
        Rows per forward pass (autograd passes use smaller sub-batches to bound memory).
    n_random_sources : int, optional
        Estimate ``M`` with this many random ±1 combinations of next-layer features per point
        (unbiased; cheaper for wide layers). Default: exact.
    dtype : torch.dtype or None
        Dtype of the forward/backward passes (default float64; ``None``: the model's own).
        Sums are accumulated in float64 regardless.
    device : torch.device or str, optional
        Where to run (default: the model's device).
    output : callable, optional
        Picks the Tensor to analyse from the model's return value (for tuples or dicts).
    output_basis : {"identity", "pca"}
        Basis of the output node layer: the outputs themselves, or their principal components.
    seed : int
        Seed of the random sources.
    progress : bool, optional
        Show tqdm progress bars (default: when stderr is a terminal).

    Returns
    -------
    dict of str to InteractionBasis
        Ordered by node layer, ``"output"`` last.

    Raises
    ------
    ModgraphValueError, ModgraphTypeError
        Bad parameters, unknown or misordered layers, empty data, inputs the model cannot take,
        non-finite activations.

    Notes
    -----
    ``C_l = U D^{-1/2} V Λ^{1/2}`` with ``G_l = U D Uᵀ`` and ``D^{1/2} Uᵀ M' U D^{1/2} = V Λ Vᵀ``;
    features ``f̂_l = C_lᵀ (a_l − μ_l)`` satisfy ``E[f̂ f̂ᵀ] = diag(Λ)``. See ``docs/method.md``
    and arXiv 2405.10927 §2.

    Examples
    --------
    >>> import torch
    >>> from modgraph import interaction_basis
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> bases = interaction_basis(model, torch.randn(256, 4), progress=False)
    >>> list(bases)
    ['0', '2', 'output']
    """
    check_model(model, _WHERE)
    options = BasisOptions(
        variant=variant,
        rtol=rtol,
        batch_size=batch_size,
        n_random_sources=n_random_sources,
        dtype=dtype,
        device=device,
        output=output,
        output_basis=output_basis,
        seed=seed,
        progress=progress,
    ).check(_WHERE)
    with options.session(model, data, layers, _WHERE) as sess:
        return options.fit(sess)
