"""Near-degenerate features: which features tie, and the rotation that resolves each tie.

On ``N`` data points two features whose importances ``Λ_a ≈ Λ_b`` nearly coincide are not
fixed by the network: the eigen-decomposition that defines them turns them into each other by
an angle of order ``1/(√N · gap)``, set by sampling noise. Features of two independent parts of
the network then mix, and the graph gains edges between modules that the network does not have.
Any rotation of the pair ``(f̂_a, f̂_b)`` is then as valid as the one ``eigh`` returned, so we take
the rotation the network supports best: the one that minimises the total degeneracy cost
``Σ ½ max(0, ln(E/ε))`` of the edges it touches (the basis in which the network is most
degenerate, the paper's own criterion). It is computed from invariant quantities only, so a
reparameterised model gets the same rotation.

Exact angles from moments
    Rotate a source pair by ``θ``: ``f̂'_a = c f̂_a + s f̂_b`` (``c = cos θ``, ``s = sin θ``) and
    the attribution to target ``j`` becomes ``c² P + cs Q + s² S`` with, per data point,
    ``P = Γ_ja f̂_a``, ``Q = Γ_ja f̂_b + Γ_jb f̂_a``, ``S = Γ_jb f̂_b`` (summed over source
    positions). So ``E'_ja(θ)`` is a quartic in ``(c, s)`` whose coefficients are the six second
    moments of ``(P, Q, S)``, and ``E'_jb(θ) = E'_ja(θ + π/2)``. For a target pair,
    ``E'_ka(θ) = c² E_ka + 2cs X_k + s² E_kb`` with ``X_k = E[A_ka A_kb]``. The moments are
    summed in the same pass as the edges; the cost is then evaluated exactly on a fine grid of
    angles without touching the data again.

Which features tie
    Pairs of features whose importances differ by less than ``κ`` sampling errors: for an
    eigenvalue estimated from ``N`` points the relative standard error is about ``√(2/N)``
    (exact for covariance eigenvalues of Gaussian data), so ``|Λ_a − Λ_b| ≤ κ √(2/N) ·
    max(Λ_a, Λ_b)``. The pairs are matched greedily, closest first, each feature in one pair.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np
import torch

logger = logging.getLogger("modgraph")

__all__ = [
    "DEFAULT_KAPPA",
    "TieSums",
    "pair_moments",
    "rotation",
    "solve_angles",
    "tied_pairs",
    "turn_columns",
    "turned_edges",
    "untie",
]

#: Ties are pairs of importances within this many relative standard errors ``√(2/N)``.
DEFAULT_KAPPA = 20.0

#: Sweeps of pairings: each pairs every feature with a new tied partner (one edge pass each).
N_SWEEPS = 8

#: Angles tried per pair: a grid on ``[−π/4, π/4]`` (beyond it the pair only swaps names).
N_ANGLES = 721


def tied_pairs(
    eigenvalues: np.ndarray,
    n_samples: int,
    kappa: float = DEFAULT_KAPPA,
    exclude: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
    window: int = 8,
) -> np.ndarray:
    """Disjoint pairs of features whose importances are within sampling error of each other.

    Parameters
    ----------
    eigenvalues : ndarray, shape (k,)
        Importances ``Λ`` (any order).
    n_samples : int
        Data points the importances were estimated from.
    kappa : float
        How many relative standard errors ``√(2/N)`` still count as a tie.
    exclude : set of (int, int)
        Pairs ``(a, b)``, ``a < b``, not to pair again (those of earlier sweeps).
    window : int
        Each feature is paired only with one of its ``window`` neighbours in rank.

    Returns
    -------
    ndarray of int, shape (m, 2)
        Feature index pairs ``(a, b)`` with ``a < b``, closest importances matched first.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    k = lam.size
    if k < 2 or n_samples < 2 or kappa <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(-lam, kind="stable")
    ranked = lam[order]
    limit = kappa * np.sqrt(2.0 / n_samples)
    cand_i, cand_j, cand_gap = [], [], []
    for step in range(1, min(window, k - 1) + 1):
        hi, lo = ranked[:-step], ranked[step:]
        gap = (hi - lo) / np.where(hi > 0, hi, 1.0)
        ok = np.flatnonzero((gap <= limit) & (hi > 0))
        cand_i.append(ok)
        cand_j.append(ok + step)
        cand_gap.append(gap[ok])
    gaps = np.concatenate(cand_gap)
    first, second = np.concatenate(cand_i), np.concatenate(cand_j)
    used = np.zeros(k, dtype=bool)
    pairs = []
    for n in np.argsort(gaps, kind="stable"):
        a, b = int(order[first[n]]), int(order[second[n]])
        pair = (min(a, b), max(a, b))
        if not (used[a] or used[b]) and pair not in exclude:
            used[a] = used[b] = True
            pairs.append(pair)
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def pair_moments(
    gamma: torch.Tensor,
    f: torch.Tensor,
    source_pairs: torch.Tensor | None,
    target_pairs: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Sums over data points of the moments that give the edges of rotated pairs.

    Parameters
    ----------
    gamma : Tensor, shape (T, M, B, S, k)
        ``Γ = ∂f̂_{l+1}/∂f̂_l`` per target feature ``T``, copy ``M`` of each target (output
        positions or random sources), data point ``B`` and source position ``S``.
    f : Tensor, shape (B, S, k)
        Source features.
    source_pairs, target_pairs : Tensor of int, shape (m, 2), or None
        Tied pairs of the source and of the target layer.

    Returns
    -------
    out : Tensor, shape (6, T, m_source), or None
        Sums of ``PP, PQ, PS, QQ, QS, SS`` (see the module notes).
    into : Tensor, shape (m_target, k), or None
        Sums of ``A_ka A_kb`` with ``A = Σ_S Γ f̂``.
    """
    out = into = None
    if source_pairs is not None and len(source_pairs):
        a, b = source_pairs[:, 0], source_pairs[:, 1]
        ga, gb, fa, fb = gamma[..., a], gamma[..., b], f[..., a], f[..., b]
        p = (ga * fa).sum(3)
        q = (ga * fb + gb * fa).sum(3)
        s = (gb * fb).sum(3)
        out = torch.stack(
            [(x * y).sum((1, 2)) for x, y in ((p, p), (p, q), (p, s), (q, q), (q, s), (s, s))]
        )
    if target_pairs is not None and len(target_pairs):
        A = (gamma * f).sum(3)  # (T, M, B, k)
        into = (A[target_pairs[:, 0]] * A[target_pairs[:, 1]]).sum((1, 2))
    return out, into


class TieSums:
    """The moments of the tied pairs of every section, summed during the edge passes.

    ``out[(source, target)]`` (6, k', m) for the tied pairs of the source layer and
    ``into[(source, target)]`` (m', k) for those of the target layer: sums until
    :meth:`finish` divides them by the rows the edges were averaged over.
    """

    def __init__(self, pairs: Mapping[str, np.ndarray], device: torch.device) -> None:
        self.pairs = {
            n: torch.as_tensor(p, dtype=torch.long, device=device) for n, p in pairs.items()
        }
        self.out: dict[tuple[str, str], torch.Tensor] = {}
        self.into: dict[tuple[str, str], torch.Tensor] = {}

    def _store(
        self, key: tuple[str, str], out: torch.Tensor | None, into: torch.Tensor | None
    ) -> None:
        if out is not None:
            self.out[key] = self.out[key] + out if key in self.out else out
        if into is not None:
            self.into[key] = self.into[key] + into if key in self.into else into

    def add(self, key: tuple[str, str], gamma: torch.Tensor, f: torch.Tensor) -> None:
        """Add one chunk of the section ``key = (source, target)``: ``gamma`` (k', M, B, S, k),
        ``f`` (B, S, k)."""
        out, into = pair_moments(gamma, f, self.pairs.get(key[0]), self.pairs.get(key[1]))
        self._store(key, out, into)

    def add_constant(
        self, key: tuple[str, str], gamma: torch.Tensor, moments: torch.Tensor
    ) -> None:
        """A section with a constant ``Γ (k', k)`` over features with second moments
        ``E[f̂ f̂ᵀ] = moments`` (k, k): ``diag(Λ)`` for an interaction basis, with cross moments
        where earlier sweeps turned pairs. The moments of a source pair ``(a, b)`` need only its
        2 × 2 block, which two pseudo-points reproduce exactly (its Cholesky factor, ``√k``
        times); a pair's points are zero outside it, and the pairs of a sweep are disjoint."""
        k = moments.shape[0]
        lam = torch.diagonal(moments)
        src, dst = self.pairs.get(key[0]), self.pairs.get(key[1])
        out = into = None
        if src is not None and len(src):
            a, b = src[:, 0], src[:, 1]
            l11 = lam[a].clamp(min=0).sqrt()
            l21 = torch.where(l11 > 0, moments[a, b] / torch.where(l11 > 0, l11, 1), 0)
            l22 = (lam[b] - l21.square()).clamp(min=0).sqrt()
            m, rows = len(src), torch.arange(len(src), device=gamma.device)
            f = torch.zeros((2 * m, 1, k), dtype=gamma.dtype, device=gamma.device)
            f[rows, 0, a], f[rows, 0, b], f[m + rows, 0, b] = l11, l21, l22
            out, _ = pair_moments(gamma[:, None, None, None, :], f * k**0.5, src, None)
            out = out / k
        if dst is not None and len(dst):
            into = gamma[dst[:, 0]] * gamma[dst[:, 1]] * lam[None, :]
        self._store(key, out, into)

    def finish(
        self,
        key: tuple[str, str],
        count: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ) -> None:
        """Turn the sums of the section ``key`` into means over its ``count`` rows (``count``
        of every process; ``reduce`` sums a tensor over the processes of a distributed run)."""
        for store in (self.out, self.into):
            if key in store:
                store[key] = reduce(store[key]) / count


def _cost(E: np.ndarray, epsilon: float) -> np.ndarray:
    """``½ ln(1 + E/ε)``: the degeneracy cost ``½ ln(E/ε)`` for ``E ≫ ε``, without the clip
    at ``ε`` (which would reward spreading weak edges below ``ε``: it is not subadditive)."""
    return 0.5 * np.log1p(np.maximum(E, 0.0) / epsilon)


def _outgoing(moments: np.ndarray, c: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, ...]:
    """``E'_ja`` and ``E'_jb`` (T, m, n) of a turned source pair at angles ``(c, s)`` (n,),
    from the moments ``PP, PQ, PS, QQ, QS, SS`` (6, T, m)."""
    pp, pq, ps, qq, qs, ss = (moments[i][..., None] for i in range(6))

    def quartic(c: np.ndarray, s: np.ndarray) -> np.ndarray:
        return (
            c**4 * pp
            + 2 * c**3 * s * pq
            + c**2 * s**2 * (2 * ps + qq)
            + 2 * c * s**3 * qs
            + s**4 * ss
        )

    return quartic(c, s), quartic(-s, c)  # f̂'_b is f̂'_a at θ + π/2


def _incoming(
    pairs: np.ndarray, X: np.ndarray, E: np.ndarray, c: np.ndarray, s: np.ndarray
) -> tuple[np.ndarray, ...]:
    """``E'_ka`` and ``E'_kb`` (m, K, n) of a turned target pair at angles ``(c, s)`` (n,),
    from the cross moments ``X`` (m, K) and the edges ``E`` (k, K)."""
    ea, eb = E[pairs[:, 0]][..., None], E[pairs[:, 1]][..., None]
    x = X[..., None]
    return c**2 * ea + 2 * c * s * x + s**2 * eb, s**2 * ea - 2 * c * s * x + c**2 * eb


def solve_angles(
    pairs: np.ndarray,
    outgoing: tuple[np.ndarray, np.ndarray] | None,
    incoming: tuple[np.ndarray, np.ndarray] | None,
    epsilon: float,
) -> np.ndarray:
    """The rotation angle of every tied pair that minimises the cost of the edges it touches.

    Parameters
    ----------
    pairs : ndarray of int, shape (m, 2)
        Tied pairs of one layer.
    outgoing : (moments (6, T, m), E (T, k)) or None
        Mean moments ``PP, PQ, PS, QQ, QS, SS`` of the edges to the next layer, and those edges.
    incoming : (X (m, K), E (k, K)) or None
        Mean cross moments ``E[A_ka A_kb]`` of the edges from the previous layer, and those
        edges (rows: this layer's features).
    epsilon : float
        Interaction tolerance of the degeneracy cost.

    Returns
    -------
    ndarray, shape (m,)
        Angles on a grid of :data:`N_ANGLES` in ``[−π/4, π/4]``; 0 where no angle lowers the
        cost.
    """
    m = len(pairs)
    theta = np.linspace(-np.pi / 4, np.pi / 4, N_ANGLES)
    c, s = np.cos(theta), np.sin(theta)
    total = np.zeros((m, N_ANGLES))
    if outgoing is not None:
        for E in _outgoing(outgoing[0], c, s):
            total += _cost(E, epsilon).sum(0)
    if incoming is not None:
        for E in _incoming(pairs, incoming[0], incoming[1], c, s):
            total += _cost(E, epsilon).sum(1)
    best = total.argmin(1)
    zero = N_ANGLES // 2
    chosen = total[np.arange(m), best]
    keep = chosen < total[:, zero] - 1e-9 * np.maximum(total[:, zero], 1.0)
    return np.where(keep, theta[best], 0.0)


def turned_edges(
    pairs: np.ndarray,
    angles: np.ndarray,
    outgoing: tuple[np.ndarray, np.ndarray] | None,
    incoming: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The edges after turning the pairs of one layer (its neighbours unchanged), exactly,
    from the same moments as :func:`solve_angles`: the outgoing edges ``(T, k)`` with the
    pairs' columns replaced, and the incoming ``(k, K)`` with their rows replaced."""
    c, s = np.cos(angles), np.sin(angles)
    a, b = pairs[:, 0], pairs[:, 1]
    out = into = None
    if outgoing is not None:
        out = np.array(outgoing[1], dtype=np.float64, copy=True)
        ea, eb = _outgoing(outgoing[0], c[:, None], s[:, None])  # (T, m, 1)
        out[:, a], out[:, b] = ea[..., 0], eb[..., 0]
    if incoming is not None:
        into = np.array(incoming[1], dtype=np.float64, copy=True)
        X, E = incoming
        ea, eb = _incoming(pairs, X, E, c[:, None, None], s[:, None, None])  # (m, K, 1)
        into[a], into[b] = ea[..., 0], eb[..., 0]
    return out, into


def turn_columns(M: np.ndarray, pairs: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``M R`` for ``M (..., k)``: each pair of columns ``(a, b)`` turned by its angle,
    ``(c M_a + s M_b, −s M_a + c M_b)``, without forming ``R`` (pairs are disjoint)."""
    out = np.array(M, dtype=np.float64, copy=True)
    a, b = pairs[:, 0], pairs[:, 1]
    c, s = np.cos(angles), np.sin(angles)
    ma, mb = out[..., a], out[..., b]
    out[..., a], out[..., b] = c * ma + s * mb, c * mb - s * ma
    return out


def rotation(k: int, pairs: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """The orthogonal ``R (k, k)`` with ``f̂' = Rᵀ f̂``: each pair turned by its angle."""
    return turn_columns(np.eye(k), pairs, angles)


class _Basis(Protocol):
    kind: str
    eigenvalues: np.ndarray
    n_samples: int


B = TypeVar("B", bound=_Basis)
Edges = dict[tuple[str, str], np.ndarray]


def untie(
    bases: Mapping[str, B],
    sections: Sequence[tuple[str, str]],
    measure: Callable[[Mapping[str, B], TieSums, set[tuple[str, str]] | None], Edges],
    turn: Callable[[B, np.ndarray, np.ndarray], B],
    epsilon: float,
    kappa: float = DEFAULT_KAPPA,
) -> tuple[dict[str, B], Edges]:
    """Turn every tied pair of features by the angle that minimises the degeneracy cost of
    the edges it touches; return the bases and their edges.

    Sweeps alternate between the even and the odd node layers, so that a layer turns while its
    neighbours hold still. Each pairs the features anew (not the pairs of its layer's last
    sweep) and takes one edge pass, ``measure(bases, sums, only)``, over the sections next to
    its layers (``only=None``: every section, the first time), which measures their edges and
    sums the pairs' moments. The edges of a turned layer then follow from the moments exactly
    (:func:`turned_edges`), so no pass is needed after the last sweep. At most
    :data:`N_SWEEPS`; stops when two sweeps in a row turn nothing.

    Parameters
    ----------
    bases : mapping of str to InteractionBasis
        Node layers in order, the model output last (never turned: its features are the
        outputs). Only bases of kind ``"interaction"`` turn.
    sections : sequence of (str, str)
        The adjacent layer pairs.
    measure : callable
        The edge pass: ``(bases, sums, only) → edges`` of the sections ``only``.
    turn : callable
        ``(basis, pairs, angles) → basis`` turned (:func:`modgraph.basis.turn_basis`).
    epsilon : float
        ε of the degeneracy cost.
    kappa : float
        Ties: importances within ``kappa`` relative standard errors ``√(2/N)``.
    """
    names = list(bases)
    candidates = [n for n in names[:-1] if bases[n].kind == "interaction"]
    current = dict(bases)
    previous: dict[str, set[tuple[int, int]]] = {n: set() for n in candidates}
    edges: Edges = {}
    idle = 0
    for sweep in range(N_SWEEPS):
        pairs = {}
        for name in candidates:
            if names.index(name) % 2 != sweep % 2:
                continue
            b = current[name]
            found = tied_pairs(b.eigenvalues, b.n_samples, kappa, exclude=previous[name])
            previous[name] = {(int(a), int(c)) for a, c in found}
            if len(found):
                pairs[name] = found
        turned_now = []
        if pairs:
            sums = TieSums(pairs, torch.device("cpu"))
            need = {(s, t) for s, t in sections if s in pairs or t in pairs}
            edges.update(measure(current, sums, need if edges else None))
            for i, name in enumerate(names[:-1]):
                if name not in pairs:
                    continue
                out_key = (name, names[i + 1])
                outgoing = (sums.out[out_key].cpu().numpy(), edges[out_key])
                in_key = (names[i - 1], name) if i else None
                incoming = (sums.into[in_key].cpu().numpy(), edges[in_key]) if in_key else None
                angles = solve_angles(pairs[name], outgoing, incoming, epsilon)
                if not np.any(angles != 0):
                    continue
                current[name] = turn(current[name], pairs[name], angles)
                turned_now.append(name)
                # its neighbours held still in this sweep: the moments give the new edges
                new_out, new_in = turned_edges(pairs[name], angles, outgoing, incoming)
                assert new_out is not None
                edges[out_key] = new_out
                if in_key is not None and new_in is not None:
                    edges[in_key] = new_in
            logger.info(
                "ties, sweep %d: %s; turned %s",
                sweep + 1,
                ", ".join(f"{n}: {len(p)} pairs" for n, p in pairs.items()),
                turned_now,
            )
        idle = 0 if turned_now else idle + 1
        if idle == 2:  # neither parity turned anything: converged
            break
    if not edges:  # nothing tied anywhere
        edges = measure(current, TieSums({}, torch.device("cpu")), None)
    return current, edges
