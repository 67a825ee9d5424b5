"""A straightforward float64 reference for the benchmarks, the way the companion paper's code does it.

This is the yardstick modgraph's speed is measured against, kept out of the library on purpose. It
follows the reference implementation of arXiv 2405.10928 (ApolloResearch ``rib``:
``calc_basis_jacobian`` and ``calc_edge_squared``): per node layer, **one**
``torch.autograd.grad`` call per output feature, with the sum-over-batch trick (the gradient of
``Σ_batch f̂_{l+1,i}`` w.r.t. the batch of inputs is every sample's gradient at once), a Python loop
over the output features, the per-sample Jacobian stored for the batch, then contracted. The
formulas are those of ``../shared/METHOD.md`` §2 (basis, local variant, identity output basis) and
§3 (edges, gradient × input at α = 1), so the results must agree with modgraph's to rounding.

The model is given as a chain of *section* callables ``a_{l+1} = sections[l](a_l)`` between node
layers (``a_0`` = the input of the first ``Linear``, the last one = the model output):
:func:`mlp_sections` splits an ``nn.Sequential`` MLP that way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "BaselineBasis",
    "BaselineResult",
    "baseline_bases",
    "baseline_edges",
    "baseline_moments",
    "mlp_sections",
    "run_baseline",
]

Section = Callable[[torch.Tensor], torch.Tensor]


def mlp_sections(model: nn.Sequential) -> list[Section]:
    """Split a Sequential into sections from the input of one ``Linear`` to the input of the next
    (the last section ends at the model output)."""
    mods = list(model)
    starts = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)] + [len(mods)]
    sections: list[Section] = []
    for s, e in zip(starts[:-1], starts[1:]):
        sections.append(nn.Sequential(*mods[s:e]))
    return sections


def _activations(x: torch.Tensor, sections: Sequence[Section], upto: int) -> list[torch.Tensor]:
    """``[a_0, ..., a_upto]`` for one batch, without autograd."""
    acts = [x]
    with torch.no_grad():
        for f in sections[:upto]:
            acts.append(f(acts[-1]))
    return acts


@dataclass
class BaselineBasis:
    """Interaction basis of one node layer (``C (d, k)``, ``C_pinv (k, d)``, ``Λ (k,)``)."""

    mean: torch.Tensor
    C: torch.Tensor
    C_pinv: torch.Tensor
    eigenvalues: torch.Tensor


@dataclass
class BaselineResult:
    """Bases, edges and the seconds spent in each stage."""

    bases: list[BaselineBasis]
    edges: list[torch.Tensor]
    seconds: dict[str, float] = field(default_factory=dict)


def baseline_moments(
    x: torch.Tensor, sections: Sequence[Section], batch_size: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Means and covariances of every node layer: one pass accumulating ``Σa`` and ``Σ a aᵀ``."""
    L = len(sections)
    sums: list[torch.Tensor] = []
    outers: list[torch.Tensor] = []
    for xb in x.split(batch_size):
        acts = _activations(xb, sections, L)
        for l, a in enumerate(acts):
            if len(sums) <= l:
                sums.append(torch.zeros(a.shape[1], dtype=torch.float64))
                outers.append(torch.zeros(a.shape[1], a.shape[1], dtype=torch.float64))
            sums[l] += a.sum(0)
            outers[l] += torch.einsum("bi,bj->ij", a, a)
    n = x.shape[0]
    means = [s / n for s in sums]
    covs = [o / n - torch.outer(m, m) for o, m in zip(outers, means)]
    return means, covs


def _eigh_desc(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(0.5 * (m + m.T))
    return values.flip(0), vectors.flip(1)


def _jacobian_gram(
    x: torch.Tensor,
    sections: Sequence[Section],
    l: int,
    mean_next: torch.Tensor,
    C_next: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """``M' = E[Jᵀ J]`` with ``J = ∂f̂_{l+1}/∂a_l`` (k_{l+1} × d_l per sample), rib style."""
    gram: torch.Tensor | None = None
    k_next = C_next.shape[1]
    for xb in x.split(batch_size):
        a = _activations(xb, sections, l)[-1].clone().requires_grad_(True)
        d = a.shape[1]
        f_next = (sections[l](a) - mean_next) @ C_next
        jac = torch.zeros(a.shape[0], k_next, d, dtype=torch.float64)
        for i in range(k_next):
            # sum over the batch: one call gives the gradient of every sample
            (g,) = torch.autograd.grad(f_next[:, i].sum(), a, retain_graph=True)
            jac[:, i, :] = g
        part = torch.einsum("bid,bie->de", jac, jac)
        gram = part if gram is None else gram + part
    assert gram is not None
    return gram / x.shape[0]


def baseline_bases(
    x: torch.Tensor,
    sections: Sequence[Section],
    means: Sequence[torch.Tensor],
    covs: Sequence[torch.Tensor],
    *,
    batch_size: int,
    rtol: float = 1e-10,
) -> list[BaselineBasis]:
    """Local interaction bases of every node layer, from the output backwards (METHOD §2)."""
    L = len(sections)
    out_cov = covs[L]
    eye = torch.eye(out_cov.shape[0], dtype=torch.float64)
    bases: list[BaselineBasis] = [
        BaselineBasis(means[L], eye, eye.clone(), torch.diagonal(out_cov).clone())
    ]
    C_next = eye
    for l in range(L - 1, -1, -1):
        D, U = _eigh_desc(covs[l])
        keep = D > rtol * D[0]
        U, D = U[:, keep], D[keep]
        Mprime = _jacobian_gram(x, sections, l, means[l + 1], C_next, batch_size)
        half = U * D.sqrt()
        lam, V = _eigh_desc(half.T @ Mprime @ half)
        keep = lam > rtol * lam[0]
        lam, V = lam[keep], V[:, keep]
        C = (U / D.sqrt()) @ V * lam.sqrt()
        C_pinv = (V / lam.sqrt()).T @ half.T  # Λ^{-1/2} Vᵀ D^{1/2} Uᵀ
        bases.append(BaselineBasis(means[l], C, C_pinv, lam))
        C_next = C
    return bases[::-1]


def baseline_edges(
    x: torch.Tensor,
    sections: Sequence[Section],
    bases: Sequence[BaselineBasis],
    *,
    batch_size: int,
) -> list[torch.Tensor]:
    """``E[i, j] = E_x[(∂f̂_{l+1,i}/∂f̂_{l,j} · f̂_{l,j})²]`` per section (METHOD §3, α = 1), as
    ``rib.linalg.calc_edge_squared``: the section runs in feature coordinates
    ``f̂_l → μ_l + f̂_l C_l⁺ → sections[l] → (· − μ_{l+1}) C_{l+1}``."""
    edges = []
    for l, section in enumerate(sections):
        src, dst = bases[l], bases[l + 1]
        k, k_next = src.C.shape[1], dst.C.shape[1]
        E = torch.zeros(k_next, k, dtype=torch.float64)
        for xb in x.split(batch_size):
            a = _activations(xb, sections, l)[-1]
            f = ((a - src.mean) @ src.C).requires_grad_(True)
            f_next = (section(src.mean + f @ src.C_pinv) - dst.mean) @ dst.C
            jac_hat = torch.zeros(f.shape[0], k_next, k, dtype=torch.float64)
            for i in range(k_next):
                (g,) = torch.autograd.grad(f_next[:, i].sum(), f, retain_graph=True)
                jac_hat[:, i, :] = g * f.detach()
            E += (jac_hat**2).sum(0)
        edges.append(E / x.shape[0])
    return edges


def run_baseline(
    x: torch.Tensor,
    sections: Sequence[Section],
    *,
    batch_size: int = 256,
    rtol: float = 1e-10,
    meter: Callable[[str], AbstractContextManager[object]] | None = None,
) -> BaselineResult:
    """The three numeric stages (``"gram"``, ``"basis"``, ``"edges"``), each timed.

    ``meter(stage)`` may supply a context manager wrapped around each stage (the benchmarks pass
    their time/peak-memory meter); the seconds are recorded in any case.
    """
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        with meter(name) if meter is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            yield
            seconds[name] = time.perf_counter() - t0

    x = x.to(torch.float64)
    with stage("gram"):
        means, covs = baseline_moments(x, sections, batch_size)
    with stage("basis"):
        bases = baseline_bases(x, sections, means, covs, batch_size=batch_size, rtol=rtol)
    with stage("edges"):
        edges = baseline_edges(x, sections, bases, batch_size=batch_size)
    return BaselineResult(bases=bases, edges=edges, seconds=seconds)
