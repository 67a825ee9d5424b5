"""Interaction strengths between the features of adjacent node layers (arXiv 2405.10927 §3).

For features ``f̂_l`` and ``f̂_{l+1}`` of adjacent node layers::

    E[i, j] = E_x[ ( ∫₀¹ ∂f̂_{l+1,i}/∂f̂_{l,j} |_{μ + α ã_l} dα · f̂_{l,j}(x) )² ]

(rows: target features, columns: source features). By default the integral is the gradient at
``α = 1`` (gradient × input, squared); ``n_alpha > 1`` uses Gauss–Legendre quadrature on ``[0, 1]``,
evaluating the Jacobian at activations ``μ + α (a − μ)``. With ``Γ(x) = ∂f̂_{l+1}/∂f̂_l =
C_{l+1}ᵀ J(x) C_l⁺ᵀ``, every sum is a float64 accumulation over batches of ``(Γ ⊙ f̂_lᵀ)²``:

- elementwise sections ``a_{l+1} = σ(W a_l + b)``: ``Γ(x) = C_{l+1}ᵀ diag(σ̄'(x)) W C_l⁺ᵀ`` with
  ``σ̄'`` the quadrature average of ``σ'``, one batched matrix product per batch, no autograd;
  a Linear→Linear junction has a constant ``Γ`` and ``E = Γ² ∘ Λ_l`` needs no pass at all;
- any other section: batched vector–Jacobian products (one per target feature) by autograd.

With ``ties="rotate"`` the same passes also sum the moments of tied feature pairs
(:mod:`modgraph.ties`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validate import check_model
from .basis import InteractionBasis, fit_bases, measure_statistics, turn_basis
from .capture import Session, session
from .errors import ModgraphValueError
from .graph import InteractionGraph
from .jacobian import (
    chunk_rows,
    cotangents,
    elementwise_derivative,
    linear_preactivation,
    narrowing_linear,
    section_vjp,
    sign_vectors,
)
from .options import Options
from .plan import Section
from .ties import TieSums, untie

__all__ = ["default_epsilon", "interaction_graph", "quadrature"]

logger = logging.getLogger("modgraph")

#: Elements of the per-sample edge products built at once (about 8 MB: stays in cache).
CACHE_ELEMENTS = 2**20


def quadrature(n_alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on ``[0, 1]``: ``α = 1`` for ``n_alpha = 1``, else Gauss–Legendre."""
    if n_alpha == 1:
        return np.ones(1), np.ones(1)
    t, w = np.polynomial.legendre.leggauss(n_alpha)
    return (t + 1) / 2, w / 2


def default_epsilon(bases: Mapping[str, InteractionBasis], tau: float) -> float:
    """``ε = τ · tr Cov(output)``: interactions below a fraction τ of output variance are free."""
    output = list(bases.values())[-1]  # the model output is the last node layer
    return float(tau * output.gram_eigenvalues.sum())


class _LayerTensors:
    """Basis tensors of one node layer on the compute device (float64)."""

    def __init__(self, basis: InteractionBasis, device: torch.device) -> None:
        arrays = (basis.mean, basis.C, basis.C_pinv, basis.eigenvalues)
        tensors = [torch.tensor(a, dtype=torch.float64, device=device) for a in arrays]
        self.mean, self.C, self.C_pinv, self.eigenvalues = tensors


def _elementwise_edges_batch(
    section: Section,
    a: torch.Tensor,
    src: _LayerTensors,
    dst: _LayerTensors,
    alphas: np.ndarray,
    weights: np.ndarray,
    ties: TieSums | None = None,
) -> torch.Tensor:
    """Σ over the rows of ``a`` of ``(Γ(x) ⊙ f̂(x))²`` for an elementwise section, (k', k);
    with ``ties``, the moments of the tied pairs are added to it in the same chunks."""
    assert section.linear is not None
    W = section.linear.weight.to(torch.float64)
    P = dst.C.T  # (k', d')
    Q = W @ src.C_pinv.T  # (d', k)
    centred = a.to(torch.float64) - src.mean
    f = centred @ src.C  # (B, k)
    slope = torch.zeros((a.shape[0], W.shape[0]), dtype=torch.float64, device=a.device)
    for alpha, w in zip(alphas, weights):
        point = (src.mean + float(alpha) * centred).to(a.dtype)
        slope += float(w) * elementwise_derivative(section, linear_preactivation(section, point))
    k_next, d_next, k = P.shape[0], P.shape[1], Q.shape[1]
    total = torch.zeros((k_next, k), dtype=torch.float64, device=a.device)
    if k_next == 0 or k == 0:
        return total
    # Small chunks keep the per-sample products in cache, so the elementwise work after the
    # matrix product costs little (measured: 65 % → ~100 % of the GEMM rate at 8 rows).
    rows = max(1, CACHE_ELEMENTS // max(1, k_next * max(d_next, k)))
    for s, fc in zip(slope.split(rows), f.split(rows)):
        # Γ(x) = P diag(s(x)) Q for a chunk of rows at once: (b·k', d') @ (d', k)
        gamma = ((P[None] * s[:, None, :]).reshape(-1, d_next) @ Q).reshape(-1, k_next, k)
        if ties is not None:  # (k', 1, b, 1, k) against (b, 1, k)
            ties.add(
                section.key,
                gamma.permute(1, 0, 2)[:, None, :, None, :],
                fc[:, None, :],
            )
        gamma.square_()
        gamma *= fc.square()[:, None, :]
        total += gamma.sum(0)
    return total


def _junction_edges(
    section: Section, src: _LayerTensors, dst: _LayerTensors, ties: TieSums | None = None
) -> torch.Tensor:
    """Linear→Linear junction: Γ = C_{l+1}ᵀ W C_l⁺ᵀ is constant, so E = Γ² · Λ_l (exact), and
    the tie moments follow from ``E[f̂ f̂ᵀ] = diag(Λ_l)`` in closed form."""
    assert section.linear is not None
    gamma = dst.C.T @ section.linear.weight.to(torch.float64) @ src.C_pinv.T
    if ties is not None:
        ties.add_constant(section.key, gamma, src.eigenvalues)
    return gamma.square() * src.eigenvalues[None, :]


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
    src: _LayerTensors,
    dst: _LayerTensors,
    alphas: np.ndarray,
    weights: np.ndarray,
    n_sources: int | None = None,
    gen: torch.Generator | None = None,
    ties: TieSums | None = None,
) -> torch.Tensor:
    """E for a general section by batched VJPs at each α: one per target feature and output
    position (or random-sign combinations of the output positions), in rows space, so that
    ``Σ_s Γ_{t,s} f̂_s`` is a sum over the source rows of one sample."""
    k_next, k = dst.C.shape[1], src.C.shape[1]
    total = torch.zeros((k_next, k), dtype=torch.float64, device=sess.device)
    if k_next == 0 or k == 0:
        return total
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
    for x in sess.batches(f"edges {section.source}", rows):
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
    if ties is not None:
        ties.finish(section.key, max(count, 1))
    return total / max(count, 1)


def compute_edges(
    sess: Session,
    bases: Mapping[str, InteractionBasis],
    *,
    n_alpha: int,
    n_sources: int | None = None,
    seed: int = 0,
    ties: TieSums | None = None,
    only: Iterable[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], np.ndarray]:
    """``E`` for every section (or the sections ``only`` names): one shared pass for the
    elementwise sections with a nonlinearity (per row: a sample at one position), none for
    junctions, one autograd pass per other section (with ``n_sources`` random-sign
    combinations of output positions where a target has several). With ``ties``, the moments
    of the tied pairs are summed into it in the same passes."""
    tensors = {n: _LayerTensors(b, sess.device) for n, b in bases.items()}
    alphas, weights = quadrature(n_alpha)
    sections = sess.plan.sections
    if only is not None:
        wanted = set(only)
        sections = [s for s in sections if (s.source, s.target) in wanted]
    shared = [s for s in sections if s.elementwise and s.activation is not None]
    sums: dict[tuple[str, str], torch.Tensor] = {}
    rows: dict[tuple[str, str], int] = {}
    if shared:
        with torch.no_grad():
            for x in sess.batches("edges (elementwise)"):
                acts = sess.tracer.run(x, record=[s.source for s in shared])
                for s in shared:
                    a, src, dst = acts[s.source], tensors[s.source], tensors[s.target]
                    part = _elementwise_edges_batch(s, a, src, dst, alphas, weights, ties)
                    sums[s.key] = sums[s.key] + part if s.key in sums else part
                    rows[s.key] = rows.get(s.key, 0) + a.shape[0]
    gen = None
    if n_sources is not None:
        gen = torch.Generator(device=sess.device)
        gen.manual_seed(seed)
    out: dict[tuple[str, str], np.ndarray] = {}
    for s in sections:
        key, src, dst = s.key, tensors[s.source], tensors[s.target]
        if s.elementwise and s.activation is None:
            E = _junction_edges(s, src, dst, ties)
        elif s.elementwise:
            E = sums[key] / rows[key]
            if ties is not None:
                ties.finish(key, rows[key])
        else:
            E = _autograd_edges(sess, s, src, dst, alphas, weights, n_sources, gen, ties)
        out[key] = E.cpu().numpy()
    return out


def resolve_ties(
    sess: Session,
    bases: Mapping[str, InteractionBasis],
    options: Options,
    epsilon: float,
) -> tuple[dict[str, InteractionBasis], dict[tuple[str, str], np.ndarray]]:
    """The bases and edges: as fitted (``ties="keep"``), or with tied pairs of features turned
    (``ties="rotate"``, :func:`modgraph.ties.untie`), with this session's edge passes."""
    edge_args = {"n_alpha": options.n_alpha, "n_sources": options.n_random_sources}
    edge_args["seed"] = options.seed
    if options.ties == "keep":
        return dict(bases), compute_edges(sess, bases, **edge_args)

    def measure(current: Mapping[str, InteractionBasis], sums: TieSums, only: Any) -> Any:
        return compute_edges(sess, current, ties=sums, only=only, **edge_args)

    sections = [s.key for s in sess.plan.sections]
    return untie(bases, sections, measure, turn_basis, epsilon)


def _check_bases(bases: Any, where: str) -> list[str]:
    if not isinstance(bases, Mapping) or not bases:
        raise ModgraphValueError(
            f"The 'bases' parameter of {where} must be the dict returned by interaction_basis. "
            f"Got {type(bases).__name__}."
        )
    names = list(bases)
    if not all(isinstance(b, InteractionBasis) for b in bases.values()):
        raise ModgraphValueError(
            f"The 'bases' parameter of {where} must be the dict returned by interaction_basis "
            f"(InteractionBasis values, the model output last). Got keys {names}."
        )
    return names


def graph_epsilon(bases: Mapping[str, InteractionBasis], options: Options) -> float:
    """ε of the graph: ``options.epsilon``, or ``τ · tr Cov(output)`` (checked to be > 0)."""
    epsilon = options.epsilon
    eps = default_epsilon(bases, options.tau) if epsilon is None else float(epsilon)
    if eps <= 0:
        raise ModgraphValueError(
            "The default epsilon τ · tr Cov(output) is 0: the model output is constant on the "
            "data, so no interaction matters. Pass epsilon=<float> or use more varied data."
        )
    return eps


def build_graph(
    bases: Mapping[str, InteractionBasis],
    edges: Mapping[tuple[str, str], np.ndarray],
    options: Options,
) -> InteractionGraph:
    eps = graph_epsilon(bases, options)
    if options.epsilon is None:
        _warn_if_constant_output(list(bases.values())[-1], eps)
    return InteractionGraph(
        layers=tuple(bases),
        edges=dict(edges),
        importance={n: b.eigenvalues for n, b in bases.items()},
        epsilon=eps,
        tau=None if options.epsilon is not None else options.tau,
        n_alpha=options.n_alpha,
        bases=bases,
    )


def _warn_if_constant_output(output: InteractionBasis, eps: float) -> None:
    """The default ε is a share of the output variance: say so when that variance is tiny
    next to the output's size (a near-constant output, e.g. an untrained or saturated model,
    or inputs far from what it expects), since every interaction then looks large."""
    variance = float(output.gram_eigenvalues.sum())
    size = variance + float(output.mean @ output.mean)
    if 0 < variance <= 1e-8 * size or 0 < variance < 1e-15:
        warnings.warn(
            f"the model output barely varies on the data (tr Cov(output) = {variance:.3g}, "
            f"E‖output‖² = {size:.3g}), so the default ε = τ · tr Cov(output) = {eps:.3g} is "
            "tiny and every interaction counts. Check that the data are what the model "
            "expects (scale, normalisation), or pass epsilon=<float>.",
            UserWarning,
            stacklevel=4,
        )


def measure_graph(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None,
    bases: Mapping[str, InteractionBasis] | None,
    options: Options,
) -> InteractionGraph:
    """The interaction graph of ``model`` on ``data`` with validated ``options``: in ``bases``
    (checked against the model), or in bases fitted here in the same session."""
    with session(model, data, layers, options) as sess:
        if bases is None:
            bases = fit_bases(sess, measure_statistics(sess, options), options)
        else:
            if list(bases) != list(sess.plan.names):
                raise ModgraphValueError(
                    f"The 'bases' parameter of {options.caller} has layers {list(bases)}, but "
                    f"the model's node layers are {list(sess.plan.names)} (the model output "
                    "last); compute bases on this model with interaction_basis."
                )
            for name, b in bases.items():
                if b.d != sess.plan.dims[name]:
                    raise ModgraphValueError(
                        f"bases[{name!r}] has width {b.d} but the model's layer has "
                        f"{sess.plan.dims[name]}; compute bases on this model."
                    )
        bases, edges = resolve_ties(sess, bases, options, graph_epsilon(bases, options))
    return build_graph(bases, edges, options)


_WHERE = "interaction_graph"


def interaction_graph(
    model: nn.Module,
    data: Any,
    bases: Mapping[str, InteractionBasis] | None = None,
    *,
    layers: Iterable[str] | None = None,
    n_alpha: int = 1,
    epsilon: float | None = None,
    tau: float = 1e-4,
    ties: str = "keep",
    variant: str = "local",
    basis: str = "interaction",
    rtol: float = 1e-10,
    batch_size: int = 256,
    n_random_sources: int | None = None,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    output_basis: str = "identity",
    seed: int = 0,
    progress: bool | None = None,
    positions: Sequence[int] | None = None,
) -> InteractionGraph:
    """Interaction strengths between the features of adjacent node layers.

    Parameters
    ----------
    model, data
        As for :func:`interaction_basis`.
    bases : dict of str to InteractionBasis, optional
        Bases from :func:`interaction_basis` on the same model (their layers are used). Default:
        computed here with ``layers``, ``variant``, ``basis``, ``rtol``, ``n_random_sources``,
        ``seed``, ``output_basis`` (see :func:`interaction_basis`; ``basis="pca"`` or
        ``"neuron"`` gives the same graph in a baseline basis, for comparisons). These six
        options only apply then: passing one of them with a value other than its default
        together with ``bases`` raises a ``ModgraphValueError``.
    n_alpha : int
        1: gradient × input at α = 1 (default, as in all published runs); more: Gauss–Legendre
        quadrature of the integrated gradient from the mean.
    epsilon : float, optional
        Interaction tolerance ``ε`` of the degeneracy cost. Default ``τ · tr Cov(output)``.
    tau : float
        ``τ`` of the default ε.
    ties : {"keep", "rotate"}
        ``"keep"`` (default): the bases as fitted. ``"rotate"``: features whose importances Λ
        tie within sampling error are fixed by noise, not by the network, and features of
        independent parts mix on finite data; each tied pair is turned by the exact angle that
        minimises the degeneracy cost of its edges (:func:`modgraph.ties.untie`: up to 8
        sweeps, one edge pass each). The graph's bases are then the turned ones
        (``tie_pairs``, ``tie_angles``). Effect and cost: ``docs/method.md`` §6.
    batch_size, dtype, device, output, progress, positions
        As for :func:`interaction_basis`.

    Returns
    -------
    InteractionGraph
        ``edges[(l, l_next)]`` of shape ``(k_next, k)``: rows are targets, columns sources.

    Notes
    -----
    ``E[i, j] = E_x[(∫₀¹ ∂f̂_{l+1,i}/∂f̂_{l,j}|_{μ+αã} dα · f̂_{l,j})²]``, arXiv 2405.10927 §3.

    Examples
    --------
    >>> import torch
    >>> from modgraph import interaction_graph
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> g = interaction_graph(model, torch.randn(256, 4), progress=False)
    >>> g.edges[("0", "2")].shape[1] == g.sizes[0]
    True
    """
    check_model(model, _WHERE)
    options = Options.from_arguments(locals(), _WHERE)
    if bases is not None:
        names = _check_bases(bases, _WHERE)
        ignored = options.changed_basis_options()
        if ignored:
            raise ModgraphValueError(
                f"{_WHERE}: {', '.join(f'{n}={getattr(options, n)!r}' for n in ignored)} "
                "only apply when the bases are computed here, but bases= was given. Pass these "
                "options to interaction_basis instead, or leave out bases=."
            )
        if layers is not None:
            given = list(layers)
            if given not in (names, names[:-1]):
                raise ModgraphValueError(
                    f"layers={given} disagrees with the layers of bases {names}; pass one of them."
                )
        layers = names
    return measure_graph(model, data, layers, bases, options)
