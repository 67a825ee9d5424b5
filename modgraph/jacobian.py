"""Jacobians of sections: one definition of every derivative the analyses take.

Both the interaction basis (``M' = E[Jᵀ A J]``) and the interaction strengths (``Γ = ∂f̂'/∂f̂``)
and the degeneracy report (``M'_l = E[J_lᵀ J_l]``, ``J_l = ∂out/∂a_l``) differentiate the same
sections, and do it here:

- **elementwise sections** ``a_{l+1} = σ(W a_l + b)`` have ``J = diag(σ'(z)) W``:
  :func:`elementwise_slope` gives ``σ'(z)`` (read off ``σ(z)`` where σ allows it),
  :func:`elementwise_jacobian_gram` the exact shortcut ``M' = Wᵀ (A ∘ E[σ'σ'ᵀ]) W``;
- **any other section**: batched vector–Jacobian products by autograd
  (:func:`section_vjp`, ``torch.autograd.grad(..., is_grads_batched=True)``), with the forward
  stopped at the target node layer and the backward stopped at the source; a narrowing source
  ``nn.Linear`` is differentiated at its output (VJPs ``d_out`` wide, folded back by ``W``);
- **to the model output** (global variant, degeneracy report): :func:`global_jacobian_grams`.

What a Linear, an identity and an elementwise module are is defined once, in
:mod:`modgraph.plan`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ._autograd import walk_to
from .capture import Session
from .layout import Layout
from .plan import CONVOLUTIONS as _AFFINE_CONVOLUTIONS
from .plan import IDENTITY, Section, is_plain_linear

__all__ = [
    "chunk_rows",
    "constant_jacobian",
    "conv_elementwise_jacobian_gram",
    "conv_shortcut",
    "conv_site_grams",
    "cotangents",
    "elementwise_derivative",
    "elementwise_jacobian_gram",
    "elementwise_slope",
    "global_jacobian_grams",
    "linear_preactivation",
    "local_jacobian_gram",
    "narrowing_linear",
    "section_vjp",
    "sign_vectors",
    "warn_no_gradient",
]

#: Elements of the largest temporary (VJP results, per-sample products) built at once.
CHUNK_ELEMENTS = 2**23


def elementwise_derivative(section: Section, z: torch.Tensor) -> torch.Tensor:
    """``σ'(z)`` of an elementwise section (ones for a Linear→Linear junction), shape of ``z``."""
    act = section.activation
    if act is None or type(act) in IDENTITY:
        return torch.ones_like(z)
    with torch.enable_grad():
        point = z.detach().requires_grad_(True)
        # elementwise: the gradient of Σ σ(z) is σ'(z); the clone lets in-place modules run
        (slope,) = torch.autograd.grad(act(point.clone()).sum(), point)
    return slope


#: Elementwise modules whose slope ``σ'(z)`` is read off their output (:func:`_slope_from_output`).
_SLOPE_FROM_OUTPUT: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)


def _slope_from_output(section: Section, out: torch.Tensor) -> torch.Tensor | None:
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


def conv_shortcut(section: Section, src: Layout, dst: Layout) -> bool:
    """Whether the co-activation shortcut applies to a convolution → elementwise section: an
    ungrouped convolution with zero or circular padding, a σ whose slope is read off its output,
    and every position analysed."""
    conv = section.conv
    return (
        conv is not None
        and conv.groups == 1  # type: ignore[union-attr]
        and conv.padding_mode in ("zeros", "circular")  # type: ignore[union-attr]
        and type(section.activation) in _SLOPE_FROM_OUTPUT
        and src.select is None
        and dst.select is None
    )


def conv_site_grams(section: Section, out_rows: torch.Tensor, n_positions: int) -> torch.Tensor:
    """``Σ_b σ'(z_{b,t}) σ'(z_{b,t})ᵀ`` for every output site ``t``, shape ``(P', C', C')``, from
    the target's rows ``(B·P', C')`` of one batch."""
    slope = _slope_from_output(section, out_rows)
    assert slope is not None
    per_site = slope.to(torch.float64).reshape(-1, n_positions, slope.shape[-1])
    return torch.einsum("btc,btd->tcd", per_site, per_site)


def conv_elementwise_jacobian_gram(
    section: Section, site_grams: torch.Tensor, rows: int, basis_next: torch.Tensor, src: Layout
) -> torch.Tensor:
    """Shortcut ``M' = Σ_o K_oᵀ (A ∘ S_o) K_o`` for ``a_{l+1} = σ(conv(a_l))``.

    ``J_{t,s} = diag(σ'(z_t)) K_o`` where the kernel tap ``o`` joins input site ``s`` to output
    site ``t``, so ``E_{x,t}[Σ_s J_{t,s}ᵀ A J_{t,s}] = Σ_o K_oᵀ (A ∘ S_o) K_o`` with
    ``S_o = E_{x,t}[m_o(t) σ'_t σ'_tᵀ]`` and ``m_o(t) = 1`` where tap ``o`` of site ``t`` reads
    an input site (not padding): the co-activation Grams ``site_grams (P', C', C')`` summed over
    ``rows`` output rows, weighted per tap by masks the convolution itself computes.
    """
    conv = section.conv
    assert conv is not None
    W = conv.weight.detach().to(torch.float64)  # (C', C, *kernel)
    kernel = tuple(W.shape[2:])
    taps = int(torch.Size(kernel).numel())
    probe = type(conv)(1, taps, kernel, stride=conv.stride, padding=conv.padding,  # type: ignore[call-arg]
                       dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode,
                       dtype=torch.float64, device=W.device)  # fmt: skip
    with torch.no_grad():
        probe.weight.copy_(torch.eye(taps, dtype=torch.float64).reshape(taps, 1, *kernel))
        ones = torch.ones((1, 1, *src.positions), dtype=torch.float64, device=W.device)
        masks = probe(ones).reshape(taps, -1)  # (taps, P'): 1 where the tap reads the input
    S = torch.einsum("ot,tcd->ocd", masks, site_grams) / rows  # (taps, C', C')
    A = basis_next @ basis_next.T
    K = W.reshape(W.shape[0], W.shape[1], taps).permute(2, 0, 1)  # (taps, C', C)
    return torch.einsum("oci,ocd,odj->ij", K, A[None] * S, K)


def linear_preactivation(section: Section, a: torch.Tensor) -> torch.Tensor:
    assert section.linear is not None
    return torch.nn.functional.linear(a, section.linear.weight, section.linear.bias)


def elementwise_slope(section: Section, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``σ'(z)`` of an elementwise section at source activations ``a (B, d)`` whose target
    activations are ``out (B, d')``: read off ``out`` where σ allows it, else recomputed."""
    slope = _slope_from_output(section, out)
    if slope is None:
        slope = elementwise_derivative(section, linear_preactivation(section, a))
    return slope


def sign_vectors(
    gen: torch.Generator, shape: tuple[int, ...], n_sources: int, device: torch.device
) -> torch.Tensor:
    """Independent random signs ``±1/√R`` (``R = n_sources``) of the given shape, float64."""
    bits = torch.randint(0, 2, shape, generator=gen, device=device)
    return (2.0 * bits - 1.0).to(torch.float64) / math.sqrt(n_sources)


def cotangents(
    basis_next: torch.Tensor,
    batch: int,
    n_sources: int | None,
    gen: torch.Generator | None,
    n_positions: int = 1,
) -> torch.Tensor:
    """Cotangents for batched VJPs in rows space, shape ``(n, batch, P', d_next)``: one per
    (next-layer feature, output position) pair (``n = k·P'``, feature outer), or ``R``
    random-sign combinations ``Σ_{t,k} φ_{r,t,k} e_t ⊗ c_k / √R`` of them when ``n_sources``
    is set."""
    d_next, k = basis_next.shape
    if n_sources is None:
        if n_positions == 1:
            return basis_next.T[:, None, None, :].expand(k, batch, 1, d_next)
        eye = torch.eye(n_positions, dtype=basis_next.dtype, device=basis_next.device)
        cot = torch.einsum("dk,tu->ktud", basis_next, eye).reshape(-1, 1, n_positions, d_next)
        return cot.expand(-1, batch, n_positions, d_next)
    assert gen is not None
    phi = sign_vectors(gen, (n_sources, batch, n_positions * k), n_sources, basis_next.device)
    return phi.reshape(n_sources, batch, n_positions, k) @ basis_next.T


def _leaf(a: torch.Tensor) -> torch.Tensor:
    """A new autograd leaf holding a copy of ``a`` (never its storage: forward may change ``a``
    in place, and ``a`` may be an inference tensor of the caller's)."""
    return a.detach().clone().requires_grad_(True)


def _connected(a: torch.Tensor) -> torch.Tensor:
    """``a`` itself when it is part of the autograd graph, else a new leaf with its values."""
    return a if a.requires_grad else _leaf(a)


def constant_jacobian(sess: Session, section: Section) -> bool:
    """Whether ``∂a_{l+1}/∂a_l`` does not depend on the data, read off the autograd graph of
    one data point: the source module is affine (a plain Linear or a convolution), every
    autograd node between its output and the target is a sum, difference, copy or view (a
    residual add of a term that does not depend on the source, say), and nothing reaches the
    target from the source around the module. Read once per section and session."""
    known = sess.constant_sections.get(section.key)
    if known is None:
        known = sess.constant_sections[section.key] = _constant_jacobian(sess, section)
    return known


def _constant_jacobian(sess: Session, section: Section) -> bool:
    module = sess.plan.modules[section.source]
    if not (is_plain_linear(module) or type(module) in _AFFINE_CONVOLUTIONS):
        return False
    x = next(iter(sess.batches("probe", first_row_only=True)))
    if not x.is_floating_point():
        return False
    src, dst = section.source, section.target
    with torch.enable_grad():
        store = sess.tracer.run(
            _leaf(x),
            record=(dst,),
            substitute={src: lambda a: a.detach()},
            stop=None if dst == sess.plan.output else dst,
            detach=False,
            replace_output={src: _leaf},
        )
        z, original, target = sess.tracer.outputs[src], sess.tracer.originals[src], store[dst]
        if not target.requires_grad:
            return False
        source_node = original.grad_fn if original.requires_grad else None
        to_z, to_source, linear = walk_to(target.grad_fn, z, source_node)
    return to_z and linear and not to_source


def chunk_rows(n_vectors: int, width: int, batch_size: int) -> int:
    """Rows per autograd sub-batch so that ``n_vectors × rows × width`` stays bounded."""
    return max(1, min(batch_size, CHUNK_ELEMENTS // max(1, n_vectors * width)))


def narrowing_linear(sess: Session, section: Section) -> nn.Linear | None:
    """The source module when it is an ``nn.Linear`` that narrows (``d_out < d_in``): VJPs are
    then cheaper at its output ``z`` (width ``d_out``), with ``∂/∂a = (∂/∂z) W``."""
    module = sess.plan.modules[section.source]
    if is_plain_linear(module):
        assert isinstance(module, nn.Linear)
        if module.out_features < module.in_features:
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

    Everything is in rows space (:class:`~modgraph.plan.Layout`): ``cotangent(B)`` is
    ``(n, B, P', d_{l+1})`` over the analysed positions of the target, and the results are
    ``(…, B, P, d)`` over those of the source, so the sum over input positions ``s`` of
    ``J_{t,s}`` is one row per ``s``. The forward stops at the target node layer; gradients
    stop at the source node layer. The source module sees ``point(a_l)`` (default ``a_l``);
    paths that bypass it (residual branches) are differentiated at ``a_l`` itself. Returns
    the source activations ``(B, P, d)``, the VJPs ``(n, B, P, d)`` with respect to ``a_l``,
    and ``None``; with ``at_output`` (the source module is an ``nn.Linear``), the VJPs with
    respect to ``a_l`` cover only the bypass paths and the third value holds the VJPs
    ``(n, B, P, d_out)`` with respect to the Linear's output ``z``, so that
    ``∂/∂a_l = (∂/∂z) W + bypass``. ``None`` stands for "no dependence".
    """
    first = sess.plan.names[0]
    src, dst = section.source, section.target
    src_layout, dst_layout = sess.plan.layouts[src], sess.plan.layouts[dst]

    def moved(a: torch.Tensor) -> torch.Tensor:
        a = point(a) if point is not None else a
        return a.detach() if at_output else _leaf(a)

    if x.is_floating_point():  # the whole forward in the graph: bypass paths from x count too
        x = _leaf(x)  # (the Tracer hands the model a copy, so forward may change it in place)
        substitute = {src: moved}
    else:  # integer inputs (token ids): the graph starts at the first node layer
        substitute = {src: moved} if src == first else {first: _leaf, src: moved}
    with torch.enable_grad():
        store = sess.tracer.run(
            x,
            record=(src, dst),
            substitute=substitute,
            stop=None if dst == sess.plan.output else dst,
            detach=False,
            replace_output={src: _leaf} if at_output else None,
        )
        original = sess.tracer.originals[src]
        value = src_layout.rows(sess.tracer.original_values[src])
        target = store[dst]
        if not target.requires_grad:
            return value, None, None
        start = sess.tracer.outputs[src] if at_output else store[src]
        inputs = [start] + ([original] if original.requires_grad else [])
        cot = dst_layout.unrows(cotangent(x.shape[0]), lead=2)
        grads = torch.autograd.grad(
            target,
            inputs,
            grad_outputs=cot.to(target.dtype),
            is_grads_batched=True,
            allow_unused=True,
        )
    grads = tuple(None if g is None else src_layout.rows(g, lead=2) for g in grads)
    if at_output:
        return value, grads[1] if len(grads) > 1 else None, grads[0]
    present = [g for g in grads if g is not None]
    total = None if not present else present[0] if len(present) == 1 else sum(present)
    return value, total, None


def local_jacobian_gram(
    sess: Session,
    section: Section,
    basis_next: torch.Tensor,
    *,
    n_sources: int | None,
    gen: torch.Generator | None,
    project: torch.Tensor | None = None,
    constant: bool = False,
) -> torch.Tensor:
    """``M' = E[Jᵀ A J]`` with ``J = ∂a_{l+1}/∂a_l``, ``A = C_{l+1} C_{l+1}ᵀ``, by batched VJPs.

    A section whose Jacobian does not depend on the data (``constant``: a convolution junction,
    or see :func:`constant_jacobian`) is differentiated at one data point, with no pass.

    With ``project (d, r)``, returns ``projectᵀ M' project`` (r, r) instead, accumulated from
    the projected VJPs: cheaper when ``r < d/2`` (activations confined to a subspace).
    """
    d = sess.plan.dims[section.source]
    d_next = sess.plan.dims[section.target]
    P = sess.plan.layouts[section.source].n_positions
    P_next = sess.plan.layouts[section.target].n_positions
    width = d if project is None else project.shape[1]
    gram = torch.zeros((width, width), dtype=torch.float64, device=sess.device)
    n_vec = n_sources or basis_next.shape[1] * P_next
    if n_vec == 0:
        return gram
    # A narrowing source Linear: VJPs at its output z, folded in afterwards (M' = Wᵀ Σ gᵀg W),
    # so the Gram is d_out wide instead of d (batches with bypass paths take the full route).
    linear = narrowing_linear(sess, section)
    W = None if linear is None else linear.weight.detach().to(torch.float64)
    gram_z = None if W is None else W.new_zeros((W.shape[0], W.shape[0]))
    rows = chunk_rows(n_vec, max(d * P, d_next * P_next), sess.batch_size)
    n = 0  # output rows: samples × analysed output positions
    arrived = False
    for x in sess.batches(f"jacobian {section.source}", rows, first_row_only=constant):
        a, g_a, g_z = section_vjp(
            sess,
            section,
            x,
            lambda b: cotangents(basis_next, b, n_sources, gen, P_next),
            at_output=W is not None,
        )
        n += a.shape[0] * P_next
        arrived |= g_a is not None or g_z is not None
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
    if not constant:  # a sum over the data: over every process's shard of it
        (gram,), n, (arrived,) = sess.combine([gram], n, [arrived])
    if not arrived:
        warn_no_gradient([section.source], section.target)
    return gram / n


def warn_no_gradient(layers: list[str], target: str) -> None:
    """Say that no gradient reached ``layers`` from ``target``: the analysis sees no dependence,
    so their features are dropped. Usually forward cuts the autograd graph."""
    warnings.warn(
        f"no gradient reached node layer(s) {layers} from {target!r} in any batch, so they "
        "get no features. Either they do not influence it, or forward cuts the autograd graph "
        "between them (.detach(), torch.no_grad(), .data, numpy round trips): remove the cut "
        "for the analysis.",
        UserWarning,
        stacklevel=4,
    )


def global_jacobian_grams(
    sess: Session, *, n_sources: int | None, gen: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """``M'_l = E[J_lᵀ J_l]`` with ``J_l = ∂out/∂a_l`` for every node layer, in one pass."""
    names = sess.plan.names[:-1]
    out_name = sess.plan.output
    d_out = sess.plan.dims[out_name]
    layouts = sess.plan.layouts
    P_out = layouts[out_name].n_positions
    grams = {
        n: torch.zeros((sess.plan.dims[n],) * 2, dtype=torch.float64, device=sess.device)
        for n in names
    }
    n_vec = n_sources or d_out * P_out
    widest = max(sess.plan.dims[n] * layouts[n].n_positions for n in sess.plan.names)
    rows = chunk_rows(n_vec, widest, sess.batch_size)
    eye = torch.eye(d_out, dtype=torch.float64, device=sess.device)
    count = 0  # output rows: samples × analysed output positions
    arrived: set[str] = set()
    for x in sess.batches("jacobian (global)", rows):
        with torch.enable_grad():
            # a node layer whose input carries no graph (integer inputs before it, or a forward
            # that detaches) starts its own: its gradient to the output still counts
            store = sess.tracer.run(
                _leaf(x) if x.is_floating_point() else x,
                record=sess.plan.names,
                substitute=dict.fromkeys(names, _connected),
                detach=False,
            )
            out = store[out_name]
            used = [n for n in names if store[n].requires_grad]
            cot = cotangents(eye, out.shape[0], n_sources, gen, P_out)
            cot = layouts[out_name].unrows(cot, lead=2).to(out.dtype)
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
        count += out.shape[0] * P_out
        for n, g in zip(used, grads):
            if g is not None:
                arrived.add(n)
                g = layouts[n].rows(g, lead=2).reshape(-1, sess.plan.dims[n]).to(torch.float64)
                grams[n] += g.T @ g
    sums, count, seen = sess.combine(list(grams.values()), count, [n in arrived for n in names])
    grams = dict(zip(names, sums))
    lost = [n for n, s in zip(names, seen) if not s]
    if lost:
        warn_no_gradient(lost, out_name)
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
