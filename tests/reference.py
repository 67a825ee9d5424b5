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
