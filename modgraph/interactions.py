"""The interaction graph: edges between the features of adjacent node layers (arXiv 2405.10927 §3).

The edges ``E`` are summed by :mod:`modgraph.kernels`; here they become an
:class:`~modgraph.graph.InteractionGraph` with the tolerance ``ε`` of the degeneracy cost, after
tied features are turned where asked (``ties="rotate"``, :mod:`modgraph.ties`), and
:func:`interaction_graph` is the public stage.
"""

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
from .kernels import Subsample, compute_edges
from .options import Options
from .ties import TieSums, untie

__all__ = ["default_epsilon", "interaction_graph"]

logger = logging.getLogger("modgraph")


def default_epsilon(bases: Mapping[str, InteractionBasis], tau: float) -> float:
    """``ε = τ · tr Cov(output)``: interactions below a fraction τ of output variance are free."""
    output = list(bases.values())[-1]  # the model output is the last node layer
    return float(tau * output.gram_eigenvalues.sum())


def resolve_ties(
    sess: Session,
    bases: Mapping[str, InteractionBasis],
    options: Options,
    epsilon: float,
) -> tuple[dict[str, InteractionBasis], dict[tuple[str, str], np.ndarray], Any]:
    """The bases, the edges and their standard errors (None unless ``edge_samples``): as
    fitted (``ties="keep"``), or with tied pairs of features turned (``ties="rotate"``,
    :func:`modgraph.ties.untie`), with this session's edge passes."""
    edge_args: dict[str, Any] = {"n_alpha": options.n_alpha, "seed": options.seed}
    edge_args |= {"n_sources": options.n_random_sources, "precision": options.precision}
    if options.edge_samples is not None:
        if options.ties == "rotate":
            raise ModgraphValueError(
                f"{options.caller}: edge_samples cannot be combined with ties='rotate' (the "
                "turned edges follow from moments, whose error is not measured). Use one of them."
            )
        if sess.rows is None:  # bases given: count the data points once
            for _ in sess.batches("counting the data"):
                pass
        assert sess.rows is not None
        sample = Subsample(options.edge_samples, sess.rows, sess.stream_seed(options.seed))
        stderr: dict[tuple[str, str], np.ndarray] = {}
        edges = compute_edges(sess, bases, subsample=sample, stderr=stderr, **edge_args)
        return dict(bases), edges, stderr
    if options.ties == "keep":
        return dict(bases), compute_edges(sess, bases, **edge_args), None

    def measure(current: Mapping[str, InteractionBasis], sums: TieSums, only: Any) -> Any:
        return compute_edges(sess, current, ties=sums, only=only, **edge_args)

    sections = [s.key for s in sess.plan.sections]
    return (*untie(bases, sections, measure, turn_basis, epsilon), None)


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
    stderr: Mapping[tuple[str, str], np.ndarray] | None = None,
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
        edge_stderr=stderr,
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
        bases, edges, stderr = resolve_ties(sess, bases, options, graph_epsilon(bases, options))
    return build_graph(bases, edges, options, stderr)


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
    precision: str = "float64",
    edge_samples: int | None = None,
    cache_mb: float = 0.0,
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
        ``"neuron"`` gives the same graph in a baseline basis, for comparisons). All but
        ``seed`` (which also draws the subsample of ``edge_samples``) only apply then: passing
        one of them with a value other than its default together with ``bases`` raises a
        ``ModgraphValueError``.
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
    precision : {"float64", "float32", "tf32"}
        Precision of the elementwise edge kernel's products (the wall of the run time):
        ``"float32"`` builds each chunk's ``Γ`` and squares in float32 and keeps every sum over
        chunks in float64 (measured 3–6× faster on one thread at widths 256–1,024, relative error
        of ``E`` about 1e-7); ``"tf32"`` allows TensorFloat-32 products on CUDA (float32
        elsewhere). Autograd sections run in ``dtype``.
    edge_samples : int, optional
        Estimate the edges from a random subsample of about this many rows (each row kept with
        probability ``edge_samples / N``, seeded by ``seed``) instead of all ``N``: the graph
        then carries the standard error of every edge (``edge_stderr``), from the same streamed
        sums. Default: every row, no error bar.
    cache_mb : float
        Memory (MiB) the run may use to keep the node-layer records of the first pass, so that
        the elementwise edge pass reads them instead of running the model again (same sums, bit
        for bit; batches kept in order until the budget is spent). Default 0: nothing is kept,
        activations are only streamed.
    batch_size, dtype, device, output, progress, positions, distributed
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
