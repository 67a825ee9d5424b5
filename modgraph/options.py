"""Every setting of an analysis, in one value validated once, at the public entry.

Each public function (:func:`~modgraph.interaction_basis`, :func:`~modgraph.interaction_graph`,
:func:`~modgraph.leiden_modules`, :func:`~modgraph.degeneracy_report`,
:func:`~modgraph.find_modules`) takes its settings as explicit keywords (no ``**kwargs`` to hide a
typo) and, as its first statement, turns them into one validated :class:`Options` with
``Options.from_arguments(locals(), "<its name>")`` before any work is done. Everything below the entry receives that validated value and trusts it: nothing is
checked twice, and an error names the function the user called and the parameter they passed.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._validate import (
    check_choice,
    check_device,
    check_dtype,
    check_float,
    check_int,
    check_progress,
    check_seed,
)
from .errors import ModgraphTypeError, ModgraphValueError

__all__ = ["Options"]

#: The options that only matter while bases are fitted (``interaction_graph`` with ``bases=``
#: given has no use for them).
#: (``seed`` is not one: it also draws the subsample of ``edge_samples``.)
BASIS_FIELDS = ("variant", "basis", "rtol", "n_random_sources", "output_basis")

#: ``loss_tolerance`` of ``epsilon="ablation"`` when none is given: cutting a layer pair's weak
#: interactions may change the output by at most 1 % of its variance (the ablated network
#: still explains 99 % of it; see docs/faithfulness.md for what that does to accuracy).
DEFAULT_LOSS_TOLERANCE = 1e-2

#: ``epsilon`` spelled as a word: ε per layer pair from edge ablations (``find_modules`` only).
ABLATION = "ablation"


@dataclass(frozen=True)
class Options:
    """The settings of one analysis (see the public functions for their meaning).

    Attributes
    ----------
    batch_size, dtype, device, output, progress
        How the model is run and the data streamed.
    variant, basis, rtol, n_random_sources, output_basis, seed
        How the bases are fitted (``seed`` also seeds the Leiden restarts and random sources).
    n_alpha, epsilon, tau, ties, precision, edge_samples
        How interaction strengths and their tolerance are measured (``epsilon="ablation"``,
        in ``find_modules`` only: ε per layer pair from edge ablations, see
        :mod:`modgraph.faithfulness`).
    loss_tolerance
        With ``epsilon="ablation"``: the largest mean squared change of the model output that
        cutting a layer pair's edges below ε may cause, as a share of ``tr Cov(output)``
        (None: :data:`DEFAULT_LOSS_TOLERANCE`; raises without ``epsilon="ablation"``).
    resolution, n_restarts, n_modules, min_module_share
        How the Leiden search runs.
    hamming_tol, attention_tol
        How the degeneracy report groups synchronised units and attention heads.
    positions
        Which positions of node layers with positions are analysed (flat indices; None: all).
    distributed
        Whether sums are taken over the processes of a ``torch.distributed`` run (None: when a
        process group is initialised).
    cache_mb
        Memory (MiB) a session may use to keep node-layer records between passes (0: none).
    caller
        The public function that validated these options ("" before validation); errors raised
        below it name this function.
    """

    batch_size: int = 256
    dtype: torch.dtype | None = torch.float64
    device: torch.device | str | None = None
    output: Callable[[Any], torch.Tensor] | None = None
    progress: bool | None = None
    variant: str = "local"
    basis: str = "interaction"
    rtol: float = 1e-10
    n_random_sources: int | None = None
    output_basis: str = "identity"
    seed: int = 0
    n_alpha: int = 1
    epsilon: float | str | None = None
    tau: float = 1e-4
    ties: str = "keep"
    precision: str = "float64"
    edge_samples: int | None = None
    loss_tolerance: float | None = None
    resolution: float = 1.0
    n_restarts: int = 8
    n_modules: int | None = None
    min_module_share: float | None = None
    hamming_tol: int | float = 0
    attention_tol: float = 1e-6
    positions: tuple[int, ...] | None = None
    distributed: bool | None = None
    cache_mb: float = 0.0
    caller: str = ""

    def validated(self, where: str) -> Options:
        """Check every option; return a copy with plain Python values and ``caller=where``.

        Raises
        ------
        ModgraphTypeError, ModgraphValueError
            "The 'rtol' parameter of interaction_basis must be ..." for the first bad option.
        """
        check_int(self.batch_size, "batch_size", where, minimum=1)
        check_dtype(self.dtype, where)
        device = check_device(self.device, where)
        if self.output is not None and not callable(self.output):
            raise ModgraphTypeError(
                f"The 'output' parameter of {where} must be a callable that maps the model's "
                f"return value to a Tensor, or None. Got {type(self.output).__name__}."
            )
        check_progress(self.progress, where)
        check_choice(self.variant, "variant", where, ("local", "global"))
        check_choice(self.basis, "basis", where, ("interaction", "pca", "neuron"))
        check_choice(self.ties, "ties", where, ("keep", "rotate"))
        check_choice(self.precision, "precision", where, ("float64", "float32", "tf32"))
        edge_samples = check_int(
            self.edge_samples, "edge_samples", where, minimum=2, allow_none=True
        )
        rtol = check_float(self.rtol, "rtol", where, low=0.0, high=1.0)
        check_int(self.n_random_sources, "n_random_sources", where, minimum=1, allow_none=True)
        check_choice(self.output_basis, "output_basis", where, ("identity", "pca"))
        seed = check_seed(self.seed, where)
        n_alpha = check_int(self.n_alpha, "n_alpha", where, minimum=1)
        epsilon = _check_epsilon(self.epsilon, where)
        loss_tolerance = self.loss_tolerance
        measures_epsilon = epsilon == ABLATION or where == "ablation_epsilon"
        if loss_tolerance is not None:
            if not measures_epsilon:
                raise ModgraphValueError(
                    f"The 'loss_tolerance' parameter of {where} applies only with "
                    "epsilon='ablation' (it bounds the output change of the edge ablations that "
                    "choose ε). Pass epsilon='ablation' too, or leave loss_tolerance out."
                )
            loss_tolerance = check_float(loss_tolerance, "loss_tolerance", where, low=0.0)
        elif measures_epsilon:
            loss_tolerance = DEFAULT_LOSS_TOLERANCE
        tau = check_float(self.tau, "tau", where, low=0.0)
        # above 1e9 every feature is alone on any graph, and Q_deg's terms overflow near 1e308
        resolution = check_float(
            self.resolution, "resolution", where, low=0.0, high=1e9, high_open=False
        )
        n_restarts = check_int(self.n_restarts, "n_restarts", where, minimum=1)
        n_modules = check_int(self.n_modules, "n_modules", where, minimum=1, allow_none=True)
        share = self.min_module_share
        if share is not None:
            share = check_float(share, "min_module_share", where, low=0.0, high=1.0, low_open=False)
        if n_modules is not None and resolution != 1.0:
            raise ModgraphValueError(
                f"The 'resolution' parameter of {where} cannot be combined with n_modules: the "
                f"search finds the resolution that gives {n_modules} modules. Pass one of them."
            )
        if share is not None and n_modules is None:
            raise ModgraphValueError(
                f"The 'min_module_share' parameter of {where} applies only with n_modules (it "
                "decides which modules count towards n_modules). Pass n_modules too, or leave "
                "min_module_share out."
            )
        return dataclasses.replace(
            self,
            batch_size=int(self.batch_size),
            device=device,
            rtol=rtol,
            n_random_sources=None if self.n_random_sources is None else int(self.n_random_sources),
            seed=seed,
            n_alpha=n_alpha,
            edge_samples=edge_samples,
            epsilon=epsilon,
            tau=tau,
            loss_tolerance=loss_tolerance,
            resolution=resolution,
            n_restarts=n_restarts,
            n_modules=n_modules,
            min_module_share=share,
            hamming_tol=_check_hamming(self.hamming_tol, where),
            attention_tol=check_float(
                self.attention_tol, "attention_tol", where, low=0.0, low_open=False
            ),
            positions=_check_positions(self.positions, where),
            distributed=_check_optional_bool(self.distributed, "distributed", where),
            cache_mb=check_float(self.cache_mb, "cache_mb", where, low=0.0, low_open=False),
            caller=where,
        )

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], where: str) -> Options:
        """The validated options of a public function's call.

        ``arguments`` is the function's ``locals()`` taken as its first statement, i.e. its
        parameters: those that name an option are used, the others (``model``, ``data``,
        ``layers``, ``bases``, ``graph``) are left alone.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"caller"}
        return cls(**{k: v for k, v in arguments.items() if k in names}).validated(where)

    def changed_basis_options(self) -> list[str]:
        """Names of the basis-fitting options that differ from their defaults."""
        default = Options()
        return [f for f in BASIS_FIELDS if getattr(self, f) != getattr(default, f)]


def _check_epsilon(value: Any, where: str) -> float | str | None:
    """``epsilon``: None, a float > 0, or ``"ablation"`` where :func:`find_modules` is called."""
    if value is None:
        return None
    if isinstance(value, str) and value == ABLATION:
        if where != "find_modules":
            raise ModgraphValueError(
                f"The 'epsilon' parameter of {where} can be 'ablation' only in find_modules "
                "(which measures the edge ablations that choose ε per layer pair). Pass a "
                "float > 0 or None here."
            )
        return value
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        hint = " or 'ablation'" if where == "find_modules" else ""
        raise ModgraphTypeError(
            f"The 'epsilon' parameter of {where} must be a float > 0{hint} or None (then "
            f"ε = τ · tr Cov(output)). Got {value!r}."
        )
    return check_float(value, "epsilon", where, low=0.0)


def _check_positions(value: Any, where: str) -> tuple[int, ...] | None:
    """``positions``: None, or a non-empty sequence of ints (flat position indices)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ModgraphTypeError(
            f"The 'positions' parameter of {where} must be a non-empty list of ints (flat "
            f"position indices, negative allowed, e.g. [-1] for the last token) or None. "
            f"Got {value!r}."
        )
    for p in value:
        if isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise ModgraphTypeError(
                f"The 'positions' parameter of {where} must hold ints; got {p!r} of type "
                f"{type(p).__name__}."
            )
    return tuple(int(p) for p in value)


def _check_optional_bool(value: Any, name: str, where: str) -> bool | None:
    """A flag that may be left to its automatic choice: True, False or None."""
    if value is not None and not isinstance(value, bool):
        raise ModgraphTypeError(
            f"The '{name}' parameter of {where} must be True, False or None (automatic). Got "
            f"{value!r} of type {type(value).__name__}."
        )
    return value


def _check_hamming(value: Any, where: str) -> int | float:
    """``hamming_tol``: an int >= 0 (data points) or a float in [0, 1) (a share of them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModgraphTypeError(
            f"The 'hamming_tol' parameter of {where} must be an int >= 0 (points) or a float in "
            f"[0, 1) (a fraction of the points). Got {value!r} of type {type(value).__name__}."
        )
    if isinstance(value, numbers.Integral):
        checked = check_int(value, "hamming_tol", where, minimum=0)
        assert checked is not None
        return checked
    return check_float(value, "hamming_tol", where, low=0.0, high=1.0, low_open=False)
