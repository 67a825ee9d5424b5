"""Independent float64 brute-force references for the tests (all activations stored).

Nothing here imports modgraph's internals: sections are written by hand per test model, per-sample
Jacobians come from ``torch.func.jacrev``, eigen-decompositions from numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Section = Callable[[torch.Tensor], torch.Tensor]


def activations(x: torch.Tensor, sections: Sequence[Section]) -> list[torch.Tensor]:
    """Node-layer activations [a_0 = x, a_1, ..., a_L] for a chain of section functions."""
    acts = [x.to(torch.float64)]
    with torch.no_grad():
        for f in sections:
            acts.append(f(acts[-1]))
    return acts


def per_sample_jacobian(f: Section, a: torch.Tensor) -> np.ndarray:
    """(N, d_out, d_in) Jacobians of f at each row of a (f maps (d_in,) to (d_out,))."""
    jac = torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(a)
    return jac.detach().numpy()


def _eigh_desc(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w, v = np.linalg.eigh(0.5 * (m + m.T))
    return w[::-1], v[:, ::-1]


def brute_basis(
    x: torch.Tensor,
    sections: Sequence[Section],
    *,
    variant: str = "local",
    rtol: float = 1e-10,
    output_basis: str = "identity",
) -> list[dict[str, np.ndarray]]:
    """Interaction basis of every node layer by the formulas of METHOD §2, brute force."""
    acts = activations(x, sections)
    L = len(sections)
    out = acts[L].numpy()
    mu = out.mean(0)
    cov = np.cov(out.T, bias=True).reshape(out.shape[1], out.shape[1])
    if output_basis == "identity":
        C_next = np.eye(out.shape[1])
        lam = np.diag(cov).copy()
    else:
        d, u = _eigh_desc(cov)
        keep = d > rtol * d[0]
        C_next, lam = u[:, keep], d[keep]
    result: list[dict[str, np.ndarray]] = [{"mean": mu, "C": C_next, "eigenvalues": lam}]
    for l in range(L - 1, -1, -1):
        a = acts[l].numpy()
        mu = a.mean(0)
        G = (a - mu).T @ (a - mu) / a.shape[0]
        D, U = _eigh_desc(G)
        keep = D > rtol * D[0]
        U, D = U[:, keep], D[keep]
        if variant == "local":
            J = per_sample_jacobian(sections[l], acts[l])  # (N, d_next, d)
            Jf = np.einsum("ik,nid->nkd", C_next, J)
        else:

            def chain(v: torch.Tensor, l: int = l) -> torch.Tensor:
                for f in sections[l:]:
                    v = f(v)
                return v

            Jf = per_sample_jacobian(chain, acts[l])
        Jt = Jf @ (U * np.sqrt(D))
        M = np.einsum("nkr,nks->rs", Jt, Jt) / a.shape[0]
        Lam, V = _eigh_desc(M)
        keep = Lam > rtol * Lam[0]
        Lam, V = Lam[keep], V[:, keep]
        C = (U / np.sqrt(D)) @ V * np.sqrt(Lam)
        result.append({"mean": mu, "C": C, "eigenvalues": Lam})
        C_next = C
    return result[::-1]


def brute_edges(
    x: torch.Tensor,
    sections: Sequence[Section],
    bases: Sequence[dict[str, np.ndarray]],
    *,
    n_alpha: int = 1,
) -> list[np.ndarray]:
    """E[i, j] = E_x[(∫ ∂f̂_{l+1,i}/∂f̂_{l,j} dα · f̂_{l,j})²] for every adjacent pair (METHOD §3)."""
    acts = activations(x, sections)
    if n_alpha == 1:
        alphas, weights = np.array([1.0]), np.array([1.0])
    else:
        t, w = np.polynomial.legendre.leggauss(n_alpha)
        alphas, weights = (t + 1) / 2, w / 2
    edges = []
    for l, f in enumerate(sections):
        mu, C = bases[l]["mean"], bases[l]["C"]
        C_next = bases[l + 1]["C"]
        # pseudo-inverse on the kept subspace: C⁺ = (Cᵀ G C)^{-1} Cᵀ G = Λ^{-1} Cᵀ G
        a = acts[l].numpy()
        G = (a - mu).T @ (a - mu) / a.shape[0]
        C_pinv = np.linalg.solve(C.T @ G @ C, C.T @ G)
        feats = (a - mu) @ C
        grad = 0.0
        for alpha, w in zip(alphas, weights):
            point = torch.from_numpy(mu + alpha * (a - mu))
            J = per_sample_jacobian(f, point)
            grad = grad + w * np.einsum("ik,nid,jd->nkj", C_next, J, C_pinv)
        edges.append(np.mean((grad * feats[:, None, :]) ** 2, axis=0))
    return edges


def match_up_to_sign(f: np.ndarray, g: np.ndarray) -> float:
    """Largest relative column mismatch between feature matrices, each column up to sign."""
    worst = 0.0
    for j in range(f.shape[1]):
        scale = np.linalg.norm(f[:, j]) + 1e-300
        err = min(np.linalg.norm(f[:, j] - g[:, j]), np.linalg.norm(f[:, j] + g[:, j]))
        worst = max(worst, err / scale)
    return worst


# ---------------------------------------------------------------------------------------------
# Node layers with positions (issue 13): activations (N, P, d) (features last) or (N, C, *spatial)
# (channels first: the features are the channels, the spatial sites the positions).
#
# A position section is a hand-written function of a whole batch of raw activations, ``f(a)`` or,
# when ``context[l] = j`` (j < l), ``f(a, acts[j])``: a residual branch that carries an earlier node
# layer's value around the source (held fixed for derivatives w.r.t. layer l). Jacobians are
# ``torch.func.jacrev`` per sample of the full (P, d) → (P', d') map, in rows: positions in
# row-major order of the position axes, features last.
# ---------------------------------------------------------------------------------------------


def to_rows(a: torch.Tensor, channels_first: bool = False) -> torch.Tensor:
    """Raw activations → (N, P, d): (N, d) → (N, 1, d); (N, *pos, d) → (N, P, d);
    channels first (N, C, *spatial) → (N, P, C) with the channel axis moved last first."""
    if a.ndim == 2:
        return a[:, None, :]
    if channels_first:
        a = a.movedim(1, -1)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def _from_rows(r: torch.Tensor, raw: Sequence[int], channels_first: bool) -> torch.Tensor:
    """One sample's rows (P, d) → its raw shape ``raw`` (no batch axis)."""
    if len(raw) == 1:
        return r.reshape(tuple(raw))
    if channels_first:
        return r.reshape(*raw[1:], raw[0]).movedim(-1, 0)
    return r.reshape(tuple(raw))


def position_activations(
    x: torch.Tensor,
    sections: Sequence[Callable[..., torch.Tensor]],
    context: Sequence[int | None] | None = None,
) -> list[torch.Tensor]:
    """Raw node-layer activations [a_0 = x, a_1, ..., a_L] of a chain of position sections."""
    acts = [x.to(torch.float64)]
    with torch.no_grad():
        for l, f in enumerate(sections):
            c = None if context is None else context[l]
            acts.append(f(acts[-1]) if c is None else f(acts[-1], acts[c]))
    return acts


def position_jacobian(
    acts: Sequence[torch.Tensor],
    sections: Sequence[Callable[..., torch.Tensor]],
    start: int,
    stop: int,
    *,
    channels_first: Sequence[bool],
    context: Sequence[int | None] | None = None,
    point: torch.Tensor | None = None,
) -> np.ndarray:
    """(N, P_stop, d_stop, P_start, d_start): ∂a_stop[t, :] / ∂a_start[s, :] per sample, through
    sections start..stop-1, at the raw activations ``point`` of layer ``start`` (default: acts).
    Contexts from layers before ``start`` are held at their values; later ones follow ``v``."""
    shapes = [tuple(a.shape[1:]) for a in acts]

    def g(v: torch.Tensor, *fixed: torch.Tensor) -> torch.Tensor:
        vals = {start: _from_rows(v, shapes[start], channels_first[start])}
        for m in range(start, stop):
            c = None if context is None else context[m]
            if c is None:
                out = sections[m](vals[m][None])
            else:
                arg = vals[c] if c >= start else fixed[c]
                out = sections[m](vals[m][None], arg[None])
            vals[m + 1] = out[0]
        return to_rows(vals[stop][None], channels_first[stop])[0]

    at = acts[start] if point is None else point
    rows = to_rows(at, channels_first[start])
    jac = torch.func.vmap(torch.func.jacrev(g))(rows, *acts[:start])
    return jac.detach().numpy()


def _selected(rows: Sequence[torch.Tensor], positions: Sequence[int] | None) -> list[np.ndarray]:
    """Selected flat positions of every layer: ``positions`` (mod P) for the layers with P > 1
    (all with the same P), every position (the single one) otherwise."""
    counts = [int(r.shape[1]) for r in rows]
    if positions is None:
        return [np.arange(P) for P in counts]
    multi = {P for P in counts if P > 1}
    assert len(multi) == 1, counts
    P = multi.pop()
    chosen = np.array(sorted({int(p) % P for p in positions}))
    return [chosen if n > 1 else np.arange(n) for n in counts]


def brute_basis_positions(
    acts: Sequence[torch.Tensor],
    sections: Sequence[Callable[..., torch.Tensor]],
    *,
    channels_first: Sequence[bool] | None = None,
    context: Sequence[int | None] | None = None,
    variant: str = "local",
    rtol: float = 1e-10,
    positions: Sequence[int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Interaction basis of every node layer with positions (issue 13), brute force.

    μ, G over samples and (selected) positions; ``M' = E_{x,t}[Σ_s J_{t,s}ᵀ A J_{t,s}]`` with
    ``A = C_{l+1} C_{l+1}ᵀ`` (local; global: J to the output, A = I), t over the (selected) output
    positions (mean), s over the (selected) input positions (sum). Output basis: identity with
    Λ the per-feature variances over samples and (selected) positions.
    """
    L = len(sections)
    cf = list(channels_first) if channels_first is not None else [False] * (L + 1)
    rows = [to_rows(a, c) for a, c in zip(acts, cf)]
    sel = _selected(rows, positions)
    out = rows[L][:, sel[L]].numpy()
    out = out.reshape(-1, out.shape[-1])
    C_next = np.eye(out.shape[1])
    result: list[dict[str, np.ndarray]] = [
        {"mean": out.mean(0), "C": C_next, "eigenvalues": out.var(0), "positions": sel[L]}
    ]
    for l in range(L - 1, -1, -1):
        a = rows[l][:, sel[l]].numpy()
        N = a.shape[0]
        flat = a.reshape(-1, a.shape[-1])
        mu = flat.mean(0)
        G = (flat - mu).T @ (flat - mu) / flat.shape[0]
        D, U = _eigh_desc(G)
        keep = D > rtol * D[0]
        U, D = U[:, keep], D[keep]
        if variant == "local":
            J = position_jacobian(acts, sections, l, l + 1, channels_first=cf, context=context)
            A_half, t_sel = C_next, sel[l + 1]
        else:
            J = position_jacobian(acts, sections, l, L, channels_first=cf, context=context)
            A_half, t_sel = np.eye(J.shape[2]), sel[L]
        J = J[:, t_sel][:, :, :, sel[l]]  # (N, T, d', S, d)
        Jt = np.einsum("ik,ntisd,dr->ntksr", A_half, J, U * np.sqrt(D))
        M = np.einsum("ntksr,ntksq->rq", Jt, Jt) / (N * len(t_sel))
        Lam, V = _eigh_desc(M)
        keep = Lam > rtol * Lam[0]
        Lam, V = Lam[keep], V[:, keep]
        C = (U / np.sqrt(D)) @ V * np.sqrt(Lam)
        result.append({"mean": mu, "C": C, "eigenvalues": Lam, "positions": sel[l]})
        C_next = C
    return result[::-1]


def brute_edges_positions(
    acts: Sequence[torch.Tensor],
    sections: Sequence[Callable[..., torch.Tensor]],
    bases: Sequence[dict[str, np.ndarray]],
    *,
    channels_first: Sequence[bool] | None = None,
    context: Sequence[int | None] | None = None,
    positions: Sequence[int] | None = None,
    n_alpha: int = 1,
) -> list[np.ndarray]:
    """E[i, j] = E_{x,t}[(Σ_s ∫ Γ_{t,s}[i, j] dα · f̂_{l,j}(x)[s])²], Γ_{t,s} = C_{l+1}ᵀ J_{t,s}
    C_l⁺ᵀ, for every adjacent pair (t over the selected output positions, mean; s over the
    selected input positions, sum). With ``n_alpha > 1`` the Jacobian is taken at μ + α(a − μ)
    at every position of the source layer (Gauss-Legendre on [0, 1])."""
    L = len(sections)
    cf = list(channels_first) if channels_first is not None else [False] * (L + 1)
    rows = [to_rows(a, c) for a, c in zip(acts, cf)]
    sel = _selected(rows, positions)
    if n_alpha == 1:
        alphas, weights = np.array([1.0]), np.array([1.0])
    else:
        tq, wq = np.polynomial.legendre.leggauss(n_alpha)
        alphas, weights = (tq + 1) / 2, wq / 2
    edges = []
    for l in range(L):
        mu, C = bases[l]["mean"], bases[l]["C"]
        C_next = bases[l + 1]["C"]
        a = rows[l][:, sel[l]].numpy()
        flat = a.reshape(-1, a.shape[-1])
        G = (flat - mu).T @ (flat - mu) / flat.shape[0]
        C_pinv = np.linalg.solve(C.T @ G @ C, C.T @ G)
        feats = (a - mu) @ C  # (N, S, k)
        grad = 0.0
        for alpha, w in zip(alphas, weights):
            full = to_rows(acts[l], cf[l]).numpy()
            moved = torch.from_numpy(mu + alpha * (full - mu))
            shape = (acts[l].shape[0], *acts[l].shape[1:])
            raw = torch.stack([_from_rows(r, shape[1:], cf[l]) for r in moved]).reshape(shape)
            J = position_jacobian(
                acts, sections, l, l + 1, channels_first=cf, context=context, point=raw
            )
            J = J[:, sel[l + 1]][:, :, :, sel[l]]
            grad = grad + w * np.einsum("ik,ntisd,jd->ntksj", C_next, J, C_pinv)
        contrib = np.einsum("ntksj,nsj->ntkj", grad, feats)
        edges.append(np.mean(contrib**2, axis=(0, 1)))
    return edges
