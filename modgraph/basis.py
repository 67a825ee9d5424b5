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

This module fits; it measures nothing itself. The sums (``G``, ``E[σ'σ'ᵀ]``) come from
:mod:`modgraph.moments`, the Jacobian Grams ``M'`` from :mod:`modgraph.jacobian` (the exact
elementwise shortcut ``M' = Wᵀ (A ∘ E[σ'σ'ᵀ]) W`` where it applies, batched VJPs elsewhere).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._arrays import eigh_desc, readonly
from ._validate import check_model
from .capture import Session, session
from .errors import ModgraphValueError
from .jacobian import (
    constant_jacobian,
    conv_elementwise_jacobian_gram,
    elementwise_jacobian_gram,
    global_jacobian_grams,
    local_jacobian_gram,
)
from .moments import Moments, Statistics, accumulate_statistics, count_kept, covariance_cut
from .options import Options
from .plan import Section
from .ties import turn_columns

__all__ = ["InteractionBasis", "interaction_basis", "turn_basis"]

logger = logging.getLogger("modgraph")


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
        Where pairs turned, the turned features' second moments (:attr:`feature_moments`).
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
    kind : str
        ``"interaction"`` (the interaction basis), or a baseline for comparison: ``"pca"``
        (``C = U``, the covariance eigenvectors above the cut, unscaled: ``Λ = D``) or
        ``"neuron"`` (``C = I``, every neuron: ``Λ`` the neurons' variances).
    tie_pairs : ndarray of int, shape (m, 2)
        Pairs of features whose Λ tied within sampling error and were turned into each other
        by the graph stage (:mod:`modgraph.ties`); empty for bases straight from
        :func:`interaction_basis`.
    tie_angles : ndarray, shape (m,)
        The angle each pair turned by (0: the pair tied, but no turn lowered the cost).
    turned_moments : ndarray, shape (k, k) or (0, 0)
        Where pairs turned: the turned features' second moments ``E[f̂ f̂ᵀ]``, which are no
        longer diagonal (a turned pair correlates); empty otherwise. Read
        :attr:`feature_moments`.
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
    kind: str = "interaction"
    tie_pairs: np.ndarray = dataclasses.field(
        default_factory=lambda: readonly(np.zeros((0, 2)), np.int64)
    )
    tie_angles: np.ndarray = dataclasses.field(default_factory=lambda: readonly(np.zeros(0)))
    turned_moments: np.ndarray = dataclasses.field(
        default_factory=lambda: readonly(np.zeros((0, 0)))
    )

    @property
    def d(self) -> int:
        """Width of the node layer (number of neurons)."""
        return int(self.C.shape[0])

    @property
    def k(self) -> int:
        """Number of interaction-basis features kept."""
        return int(self.C.shape[1])

    @property
    def feature_moments(self) -> np.ndarray:
        """``E[f̂ f̂ᵀ]`` (k, k): ``diag(Λ)`` for a basis as fitted (its features are uncorrelated;
        for the ``"neuron"`` baseline and the identity output basis, whose units correlate, only
        the diagonal holds), the turned features' second moments where pairs turned
        (:func:`turn_basis`)."""
        if self.turned_moments.size:
            return self.turned_moments
        return np.diag(self.eigenvalues)

    @property
    def gram_rank(self) -> int:
        """Number of covariance directions above tolerance."""
        return count_kept(self.gram_eigenvalues, self.rtol)

    def transform(self, acts: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Map activations ``(..., d)`` to features ``(..., k)``: ``(a − μ) @ C``.

        Returns the same kind (numpy or torch, device and dtype kept for torch) as ``acts``.
        """
        shape = tuple(acts.shape) if isinstance(acts, torch.Tensor) else np.shape(acts)
        if not shape or shape[-1] != self.d:
            raise ModgraphValueError(
                f"transform of layer {self.layer!r} needs activations of shape (..., {self.d}); "
                f"got {shape}."
            )
        if isinstance(acts, torch.Tensor):
            dtype = acts.dtype if acts.is_floating_point() else torch.float64
            mean = torch.tensor(self.mean, dtype=dtype, device=acts.device)
            C = torch.tensor(self.C, dtype=dtype, device=acts.device)
            return (acts.to(dtype) - mean) @ C
        return (np.asarray(acts, dtype=np.float64) - self.mean) @ self.C

    def __repr__(self) -> str:
        return f"InteractionBasis(layer={self.layer!r}, d={self.d}, k={self.k})"


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------


def _column_signs(C: torch.Tensor) -> torch.Tensor:
    """``±1`` per column ``(k,)``: the sign of the column's largest-magnitude entry."""
    if C.shape[1] == 0:
        return C.new_ones(0)
    idx = C.abs().argmax(0)
    signs = torch.sign(C[idx, torch.arange(C.shape[1], device=C.device)])
    signs[signs == 0] = 1
    return signs


def _fix_signs(C: torch.Tensor) -> torch.Tensor:
    """Make the largest-magnitude entry of each column positive (a deterministic sign)."""
    return C * _column_signs(C)


def _fit_layer(
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
        M_eig, V = eigh_desc(M)
        top = float(M_eig[0])
        keep = M_eig > rtol * top if top > 0 else torch.zeros_like(M_eig, dtype=torch.bool)
        lam, V = M_eig[keep], V[:, keep]
    C = (U / sqrt_d) @ V * lam.sqrt() if lam.numel() else U.new_zeros((U.shape[0], 0))
    C = _fix_signs(C)
    # C⁺ = Λ^{-1/2} Vᵀ D^{1/2} Uᵀ; recomputed from the sign-fixed C: C⁺ = Λ^{-1} Cᵀ G.
    C_pinv = (C.T @ (U * D) @ U.T) / lam[:, None] if lam.numel() else C.T.clone()
    arrays = (C, C_pinv, lam, gram_eigenvalues, M_eig)
    return _basis(name, moments, arrays, variant=variant, rtol=rtol), C


def _basis(
    name: str,
    moments: Moments,
    arrays: tuple[torch.Tensor, ...],
    *,
    variant: str,
    rtol: float,
    kind: str = "interaction",
) -> InteractionBasis:
    """The frozen :class:`InteractionBasis` from ``(C, C⁺, Λ, eig G, eig M)`` as tensors."""
    C, C_pinv, lam, gram_eigenvalues, M_eig = (readonly(a) for a in arrays)
    return InteractionBasis(
        layer=name,
        mean=readonly(moments.mean),
        C=C,
        C_pinv=C_pinv,
        eigenvalues=lam,
        gram_eigenvalues=gram_eigenvalues,
        jacobian_eigenvalues=M_eig,
        n_samples=moments.n,
        variant=variant,
        rtol=rtol,
        kind=kind,
    )


def _fit_output(
    name: str, moments: Moments, *, rtol: float, output_basis: str, variant: str
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
    no_jacobian = cov.new_zeros(0)
    arrays = (C, C_pinv, lam, gram_eigenvalues, no_jacobian)
    return _basis(name, moments, arrays, variant=variant, rtol=rtol), C


def _fit_baseline(
    name: str, moments: Moments, *, kind: str, rtol: float, variant: str
) -> InteractionBasis:
    """A baseline basis of a hidden node layer, for comparisons: ``"pca"`` (the covariance
    eigenvectors above the cut, unscaled) or ``"neuron"`` (the identity)."""
    gram_eigenvalues, U, D = covariance_cut(moments, rtol)
    if kind == "pca":
        C = _fix_signs(U)
        lam = D
    else:
        cov = moments.cov
        C = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
        lam = torch.diagonal(cov).clone()
    arrays = (C, C.T.clone(), lam, gram_eigenvalues, gram_eigenvalues.new_zeros(0))
    return _basis(name, moments, arrays, variant=variant, rtol=rtol, kind=kind)


def turn_basis(basis: InteractionBasis, pairs: np.ndarray, angles: np.ndarray) -> InteractionBasis:
    """``basis`` with each tied pair of features turned by its angle (:mod:`modgraph.ties`).

    With ``R`` the rotation (``f̂' = Rᵀ f̂``): ``C' = C R``, ``C'⁺ = Rᵀ C⁺`` (still
    ``C'⁺ C' = I``), signs fixed again as in fitting. The features' second moments turn with
    them, ``E[f̂' f̂'ᵀ] = Rᵀ E[f̂ f̂ᵀ] R`` (:attr:`InteractionBasis.turned_moments`), and the
    importances are their diagonal. A turned pair keeps a cross moment ``E[f̂'_a f̂'_b] =
    sin θ cos θ (Λ_b − Λ_a)``, small because the pair's Λ are within sampling error of each
    other; a later sweep that turns a feature again starts from these moments, not from
    ``diag(Λ)``. The spectra (``jacobian_eigenvalues``) are unchanged.
    """
    C = turn_columns(basis.C, pairs, angles)  # C R
    signs = _column_signs(torch.from_numpy(C)).numpy()
    C_pinv = turn_columns(basis.C_pinv.T, pairs, angles).T  # Rᵀ C⁺
    moments = turn_columns(turn_columns(basis.feature_moments, pairs, angles).T, pairs, angles)
    moments = 0.5 * (moments + moments.T) * signs[:, None] * signs[None, :]  # Rᵀ E[f̂ f̂ᵀ] R
    turned = dataclasses.replace(
        basis,
        C=readonly(C * signs),
        C_pinv=readonly(C_pinv * signs[:, None]),
        eigenvalues=readonly(np.diagonal(moments).copy()),
        tie_pairs=readonly(np.concatenate([basis.tie_pairs, pairs]), np.int64),
        tie_angles=readonly(np.concatenate([basis.tie_angles, angles])),
        turned_moments=readonly(moments),
    )
    return turned


def fit_bases(sess: Session, stats: Statistics, options: Options) -> dict[str, InteractionBasis]:
    """All interaction bases, from the output backwards (one autograd pass per non-elementwise
    section in the local variant; one pass in total in the global variant), after the
    statistics pass ``stats``."""
    plan = sess.plan
    variant, rtol, n_sources = options.variant, options.rtol, options.n_random_sources
    seed, output_basis = options.seed, options.output_basis
    gen = None
    if n_sources is not None:
        gen = torch.Generator(device=sess.device)
        gen.manual_seed(sess.stream_seed(seed))
    out_basis, C_next = _fit_output(
        plan.output,
        stats.moments[plan.output],
        rtol=rtol,
        output_basis=output_basis,
        variant=variant,
    )
    bases = {plan.output: out_basis}
    if options.basis != "interaction":  # a baseline: no Jacobians, every layer on its own
        for name in plan.names[:-1]:
            bases[name] = _fit_baseline(
                name, stats.moments[name], kind=options.basis, rtol=rtol, variant=variant
            )
        return {name: bases[name] for name in plan.names}
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
            elif section.source in stats.site_coactivation:  # convolution → elementwise
                site_grams, rows = stats.site_coactivation[section.source]
                Mprime = conv_elementwise_jacobian_gram(
                    section, site_grams, rows, C_next, plan.layouts[section.source]
                )
            else:  # batched VJPs: over the data, or at one point when J is constant
                constant = section.constant or constant_jacobian(sess, section)
                if 2 * half.shape[1] < half.shape[0]:  # a subspace: project the VJPs first
                    return local_jacobian_gram(
                        sess,
                        section,
                        C_next,
                        n_sources=n_sources,
                        gen=gen,
                        project=half,
                        constant=constant,
                    )
                Mprime = local_jacobian_gram(
                    sess, section, C_next, n_sources=n_sources, gen=gen, constant=constant
                )
            return half.T @ Mprime @ half

        basis, C_next = _fit_layer(
            name, stats.moments[name], jacobian_gram, rtol=rtol, variant=variant
        )
        bases[name] = basis
        logger.info("layer %s: d=%d, rank G=%d, k=%d", name, basis.d, basis.gram_rank, basis.k)
    return {name: bases[name] for name in plan.names}


def measure_statistics(sess: Session, options: Options) -> Statistics:
    """The first pass: moments, and co-activation Grams when the local variant needs them."""
    need = options.variant == "local" and options.basis == "interaction"
    return accumulate_statistics(sess, coactivation=need)


def _measure_bases(
    model: nn.Module, data: Any, layers: Iterable[str] | None, options: Options
) -> dict[str, InteractionBasis]:
    """Every interaction basis of ``model`` on ``data`` with validated ``options``."""
    with session(model, data, layers, options) as sess:
        return fit_bases(sess, measure_statistics(sess, options), options)


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------

_WHERE = "interaction_basis"


def interaction_basis(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None = None,
    *,
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
    distributed: bool | None = None,
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
    basis : {"interaction", "pca", "neuron"}
        ``"interaction"`` (default): the interaction basis. For comparisons, the same graph in
        a baseline basis of every hidden layer: ``"pca"`` (covariance eigenvectors, unscaled) or
        ``"neuron"`` (the neurons themselves); no Jacobian pass is needed for these.
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
    positions : list of int, optional
        Analyse only these positions of node layers with positions (flat indices into the
        positions axes, negative allowed: ``[-1]`` is the last token). Default: all.
    distributed : bool, optional
        Sum over the processes of a ``torch.distributed`` run, each streaming its own shard of
        the data (``None``, the default: when a process group is initialised; ``True``:
        initialise one from the ``torchrun`` environment if needed; ``False``: this process
        alone). See ``docs/distributed.md``.

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
    options = Options.from_arguments(locals(), _WHERE)
    return _measure_bases(model, data, layers, options)
