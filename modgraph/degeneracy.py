"""The degeneracy report: the three sources of free parameter directions, measured (METHOD §1).

A parameter direction is *free* when moving along it leaves the network's outputs on the data
unchanged. :func:`degeneracy_report` measures, on a user's model and data, the three sources the
method starts from (arXiv 2405.10927 §1):

1. **Activations span a subspace.** ``G_l = Cov(a_l)`` of rank ``r_G < d``: the weights of the
   ``nn.Linear`` that reads layer ``l`` have ``d_next · (d − r_G)`` free directions.
2. **Gradients passed back span a subspace.** ``M'_l = E[J_lᵀ J_l]``, ``J_l = ∂out/∂a_l``, of rank
   ``r_M``: weights writing into ``ker M'_l`` are free to first order (so to second order in the
   loss). Reported separately, never subtracted from the parameter count.
3. **Synchronised ReLU-like units.** The firing matrix ``B[x, i] = 1[z_i(x) > 0]`` groups units
   that switch on the same data points (Hamming distance ``≤ hamming_tol``); on the data such a
   group is one linear block whose input rows and output columns can be mixed. Dead units free
   their weights, always-on units are linear and merge with their neighbours.

Everything is computed from streaming float64 sums: one pass records the node layers (the same
:class:`~modgraph.basis.Moments` accumulator as the interaction basis) together with the firing
counts ``n_i = Σ_x B[x, i]`` and the co-firing Gram ``K = BᵀB`` (``Hamming(i, j) = n_i + n_j −
2 K_ij``); a second pass is :func:`~modgraph.basis.global_jacobian_grams`. Source-3 directions are
counted *beyond* source 1, so that ``parameters − (source 1 + source 3)`` is an upper bound on the
effective parameter count. See ``docs/degeneracy.md`` for every formula.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_dtype, check_float, check_int, check_model
from .basis import (
    Moments,
    add_layer_moments,
    count_kept,
    covariance_cut,
    global_jacobian_grams,
)
from .capture import OUTPUT, Section, Session, iter_batches, session
from .errors import ModgraphTypeError, ModgraphValueError
from .io import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DegeneracyReport", "LayerDegeneracy", "UnitSetDegeneracy", "degeneracy_report"]

logger = logging.getLogger("modgraph")

_WHERE = "degeneracy_report"
_EPS64 = float(np.finfo(np.float64).eps)
#: Relative singular-value cut for the ranks of (small) weight matrices: the weights are exact,
#: so only rounding is cut here; the data tolerance ``rtol`` enters through the input span.
_RANK_TOL = math.sqrt(_EPS64)
#: Work allowed for restricting the input span of every group to its firing points (flops).
_RESTRICT_FLOPS = 4e9
#: Rows of the probe batch used to check which modules consume a Linear's output.
_PROBE_ROWS = 256
#: Modules that are the identity in eval mode (a section through them is a Linear junction).
_IDENTITY = (nn.Identity, nn.Dropout)
#: File suffixes :meth:`DegeneracyReport.plot_spectra` writes, and the matplotlib format of each.
_SAVE_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def _readonly(a: np.ndarray | torch.Tensor, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu").numpy()
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def _is_plain_linear(module: nn.Module | None) -> bool:
    """An ``nn.Linear`` (or subclass) whose forward is ``nn.Linear.forward``: ``y = W a + b``."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LayerDegeneracy:
    """Sources 1 and 2 at one node layer.

    Attributes
    ----------
    name : str
        Node-layer name (a module name, or ``"output"``).
    width : int
        ``d``, the number of neurons.
    reader : str or None
        The weight-bearing module that reads the layer (the node module itself when it is an
        ``nn.Linear``), e.g. ``"Linear(10→8)"``; ``None`` when there is none.
    reader_width : int or None
        ``d_next``: output width of ``reader``.
    reader_note : str
        Empty, or why the layer is not followed by a weight-bearing module.
    activation_rank : int
        ``r_G``: eigenvalues of ``G = Cov(a)`` above ``rtol × largest``.
    free_activation : int
        Source 1: ``d_next · (d − r_G)`` exactly free directions in ``reader``'s weights and bias
        (``d_next · (d − rank E[a aᵀ])`` when it has no bias); 0 without a reader.
    jacobian_rank : int
        ``r_M``: eigenvalues of ``M' = E[Jᵀ J]`` (``J = ∂out/∂a``) above ``rtol × largest``. For
        ``"output"``, ``M' = I``.
    free_second_order : int or None
        Source 2: directions of the weights writing into this layer that are free to first order
        and not already counted by source 1 of the layer they read; ``None`` when no
        ``nn.Linear`` writes the layer directly (see ``second_order_note``).
    second_order_note : str
        How ``free_second_order`` was counted, or why it was not.
    gram_eigenvalues : ndarray, shape (d,)
        All eigenvalues of ``G``, descending (read-only).
    jacobian_eigenvalues : ndarray, shape (d,)
        All eigenvalues of ``M'``, descending (read-only).
    """

    name: str
    width: int
    reader: str | None
    reader_width: int | None
    reader_note: str
    activation_rank: int
    free_activation: int
    jacobian_rank: int
    free_second_order: int | None
    second_order_note: str
    gram_eigenvalues: np.ndarray
    jacobian_eigenvalues: np.ndarray

    @property
    def activation_deficit(self) -> int:
        """``d − r_G``: directions of activation space with no variance on the data."""
        return self.width - self.activation_rank

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "reader": self.reader,
            "reader_width": self.reader_width,
            "reader_note": self.reader_note,
            "activation_rank": self.activation_rank,
            "free_activation": self.free_activation,
            "jacobian_rank": self.jacobian_rank,
            "free_second_order": self.free_second_order,
            "second_order_note": self.second_order_note,
            "gram_eigenvalues": [float(v) for v in self.gram_eigenvalues],
            "jacobian_eigenvalues": [float(v) for v in self.jacobian_eigenvalues],
        }


@dataclass(frozen=True, eq=False)
class UnitSetDegeneracy:
    """Source 3 for the units of one section ``layer = σ(linear(previous layer))``.

    Unit ``i`` is coordinate ``i`` of ``layer``'s input and of ``linear``'s output
    (preactivation ``z_i``).

    Attributes
    ----------
    layer : str
        Node layer whose input the units are (``"output"`` for a final activation).
    linear : str
        Name of the ``nn.Linear`` computing the preactivations ``z``.
    activation : str
        ``"ReLU"``, ``"LeakyReLU(α)"``, ``"ReLU6"``, ``"relu (functional)"`` (detected
        numerically), ``"linear"`` (a Linear→Linear junction), or the type of a
        nonlinearity that is not analysed.
    width : int
        Number of units ``h``.
    analysable : bool
        Whether firing statistics were computed.
    note : str
        Why the set is not analysable, or what limited the count.
    firing_counts : ndarray of int64, shape (h,)
        ``n_i``: points where unit ``i`` is on (``0 < z_i``; ``0 < z_i < 6`` for ReLU6). Empty
        when not measured.
    groups : tuple of tuple of int
        Synchronised groups: connected components of the graph ``Hamming(i, j) ≤ hamming_tol``
        among units that are neither dead nor always on; only groups of size ≥ 2.
    dead : tuple of int
        Units never on (``n_i = 0``).
    always_on : tuple of int
        Units on at every point (``n_i = N``).
    excluded : tuple of int
        Units not counted for source 3: a preactivation exactly on a kink (``z = 0``, or 6 for
        ReLU6) at some point, or a ReLU6 unit that saturates.
    mixing_directions : int
        ``Σ (k² − k)`` over ``groups`` (METHOD §1.3: invertible mixings beyond rescalings).
    dead_outgoing : int
        ``d_next`` per dead unit with a constant output: its outgoing weights are free. They are
        zero-variance directions of ``layer``, so source 1 of ``layer`` already counts them.
    free_groups : int
        Directions of the groups (singletons included: one rescaling each), beyond source 1.
    free_linear : int
        Directions of the linear units (always on; a LeakyReLU unit never on; every unit of a
        junction), beyond source 1.
    free_dead : int
        Incoming weights and bias of dead units, beyond source 1.
    free_directions : int
        ``free_groups + free_linear + free_dead``: what source 3 adds to source 1.
    """

    layer: str
    linear: str
    activation: str
    width: int
    analysable: bool
    note: str
    firing_counts: np.ndarray
    groups: tuple[tuple[int, ...], ...]
    dead: tuple[int, ...]
    always_on: tuple[int, ...]
    excluded: tuple[int, ...]
    mixing_directions: int
    dead_outgoing: int
    free_groups: int
    free_linear: int
    free_dead: int

    @property
    def free_directions(self) -> int:
        return self.free_groups + self.free_linear + self.free_dead

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(len(g) for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "linear": self.linear,
            "activation": self.activation,
            "width": self.width,
            "analysable": self.analysable,
            "note": self.note,
            "firing_counts": [int(v) for v in self.firing_counts],
            "groups": [list(g) for g in self.groups],
            "group_sizes": list(self.group_sizes),
            "dead": list(self.dead),
            "always_on": list(self.always_on),
            "excluded": list(self.excluded),
            "mixing_directions": self.mixing_directions,
            "dead_outgoing": self.dead_outgoing,
            "free_groups": self.free_groups,
            "free_linear": self.free_linear,
            "free_dead": self.free_dead,
            "free_directions": self.free_directions,
        }


@dataclass(frozen=True, eq=False)
class DegeneracyReport:
    """Free parameter directions of a model on a dataset, per source and in total.

    Attributes
    ----------
    layers : tuple of LayerDegeneracy
        Sources 1 and 2, one entry per node layer (``"output"`` last).
    unit_sets : tuple of UnitSetDegeneracy
        Source 3, one entry per section between node layers (except a final ``Linear`` readout).
    n_parameters : int
        Number of scalar parameters of the model (``Σ p.numel()``).
    n_samples : int
        Number of data points.
    rtol : float
        Relative eigenvalue tolerance of every rank.
    hamming_tol : int or float
        As given: points (int) or a fraction of the points (float).
    hamming_points : int
        The Hamming tolerance in points.
    """

    layers: tuple[LayerDegeneracy, ...]
    unit_sets: tuple[UnitSetDegeneracy, ...]
    n_parameters: int
    n_samples: int
    rtol: float
    hamming_tol: int | float
    hamming_points: int

    # ---------------------------------------------------------------- totals
    @property
    def free_activation(self) -> int:
        """Source 1, all layers: exactly free directions."""
        return sum(layer.free_activation for layer in self.layers)

    @property
    def free_second_order(self) -> int:
        """Source 2, all layers: free to first order in the outputs (second order in the loss),
        beyond source 1; not subtracted from the parameter count."""
        return sum(layer.free_second_order or 0 for layer in self.layers)

    @property
    def free_synchronised(self) -> int:
        """Source 3, all unit sets, beyond source 1."""
        return sum(u.free_directions for u in self.unit_sets)

    @property
    def free_directions(self) -> int:
        """Sources 1 and 3 (linearly independent by construction)."""
        return self.free_activation + self.free_synchronised

    @property
    def effective_parameters_bound(self) -> int:
        """Upper bound on the effective parameter count: ``n_parameters − free_directions``."""
        return self.n_parameters - self.free_directions

    @property
    def mixing_directions(self) -> int:
        """``Σ (k² − k)`` over every synchronised group."""
        return sum(u.mixing_directions for u in self.unit_sets)

    def layer(self, name: str) -> LayerDegeneracy:
        """The entry of node layer ``name``."""
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise ModgraphValueError(
            f"no node layer {name!r} in this report; layers: {[e.name for e in self.layers]}."
        )

    def unit_set(self, layer: str) -> UnitSetDegeneracy:
        """The unit set whose units are the input of node layer ``layer``."""
        for entry in self.unit_sets:
            if entry.layer == layer:
                return entry
        raise ModgraphValueError(
            f"no unit set feeds node layer {layer!r}; unit sets feed "
            f"{[u.layer for u in self.unit_sets]}."
        )

    # ---------------------------------------------------------------- export
    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-serialisable built-in types (``json.dumps`` works on it)."""
        return {
            "n_parameters": self.n_parameters,
            "n_samples": self.n_samples,
            "rtol": self.rtol,
            "hamming_tol": self.hamming_tol,
            "hamming_points": self.hamming_points,
            "totals": {
                "free_activation": self.free_activation,
                "free_synchronised": self.free_synchronised,
                "free_directions": self.free_directions,
                "effective_parameters_bound": self.effective_parameters_bound,
                "free_second_order": self.free_second_order,
                "mixing_directions": self.mixing_directions,
            },
            "layers": [layer.to_dict() for layer in self.layers],
            "unit_sets": [u.to_dict() for u in self.unit_sets],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def __repr__(self) -> str:
        return (
            f"DegeneracyReport(n_parameters={self.n_parameters}, "
            f"free_directions={self.free_directions}, "
            f"effective_parameters_bound={self.effective_parameters_bound})"
        )

    def __str__(self) -> str:
        return _render(self)

    # ---------------------------------------------------------------- figure
    def plot_spectra(
        self, path: str | os.PathLike[str] | None = None, ax: Axes | None = None
    ) -> Figure:
        """Eigenvalue spectra of ``G`` and ``M'`` per node layer, on a log scale.

        Each spectrum is divided by its largest eigenvalue, so the tolerance is the same line
        ``rtol`` for all of them; eigenvalues below it count as zero. Values below ``rtol·1e-6``
        (zeros included) are drawn at that floor.

        Parameters
        ----------
        path : str or PathLike, optional
            Save the figure there (``.png``, ``.svg`` or ``.pdf``, by suffix), atomically.
        ax : matplotlib Axes, optional
            Draw every layer into this axes; default: a new figure with one panel per layer.

        Returns
        -------
        matplotlib.figure.Figure
            Not registered with pyplot: nothing needs closing and nothing pops up.
        """
        fmt = _save_format(path)
        from matplotlib.figure import Figure

        floor = self.rtol * 1e-6
        if ax is None:
            n = len(self.layers)
            cols = min(n, 3)
            rows = math.ceil(n / cols)
            fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
            axes = fig.subplots(rows, cols, squeeze=False).ravel()
            for extra in axes[n:]:
                extra.set_visible(False)
            for panel, layer in zip(axes, self.layers):
                _draw_spectra(panel, [layer], floor, self.rtol)
                panel.set_title(
                    f"{layer.name}: d={layer.width}, r_G={layer.activation_rank}, "
                    f"r_M={layer.jacobian_rank}",
                    fontsize=9,
                )
        else:
            fig = ax.get_figure()
            if fig is None:
                raise ModgraphValueError("plot_spectra: ax must belong to a matplotlib figure.")
            _draw_spectra(ax, list(self.layers), floor, self.rtol)
        if path is not None and fmt is not None:
            with atomic_open(path, "wb", where="DegeneracyReport.plot_spectra") as handle:
                fig.savefig(handle, format=fmt, dpi=150)
            logger.info("plot_spectra: wrote %s", os.fspath(path))
        return fig  # type: ignore[return-value]


def _save_format(path: Any) -> str | None:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise ModgraphTypeError(
            f"plot_spectra: path must be a str or PathLike; got {type(path).__name__}."
        )
    suffix = Path(path).suffix.lower()
    if suffix not in _SAVE_FORMATS:
        raise ModgraphValueError(
            f"plot_spectra: cannot save {os.fspath(path)!r}: the suffix {suffix or '(none)'!r} is "
            f"not one of {sorted(_SAVE_FORMATS)}; name the file e.g. 'spectra.png'."
        )
    return _SAVE_FORMATS[suffix]


def _draw_spectra(ax: Axes, layers: list[LayerDegeneracy], floor: float, rtol: float) -> None:
    colors = [f"C{i % 10}" for i in range(len(layers))]
    several = len(layers) > 1
    for color, layer in zip(colors, layers):
        for values, style, label in (
            (layer.gram_eigenvalues, "-", "G (activations)"),
            (layer.jacobian_eigenvalues, "--", "M' (Jacobian)"),
        ):
            if values.size == 0 or values[0] <= 0:
                continue
            y = np.maximum(values / values[0], floor)
            x = np.arange(1, values.size + 1)
            name = f"{layer.name}: {label}" if several else label
            ax.plot(x, y, style, marker=".", color=color if several else None, label=name)
    ax.axhline(rtol, color="0.3", linestyle=":", linewidth=1.0, label=f"rtol = {rtol:g}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2, top=2.0)
    ax.set_xlabel("eigenvalue number")
    ax.set_ylabel("eigenvalue / largest")
    ax.legend(fontsize=7)


def _render(report: DegeneracyReport) -> str:
    """The text table of ``str(report)``."""
    tol = (
        f"{report.hamming_tol}"
        if isinstance(report.hamming_tol, int)
        else f"{report.hamming_tol:g} ({report.hamming_points} points)"
    )
    lines = [
        f"Degeneracy report: {report.n_parameters:,} parameters, {report.n_samples:,} samples, "
        f"rtol={report.rtol:g}, hamming_tol={tol}",
        f"  free directions, source 1 (activations span a subspace):  {report.free_activation:,}",
        f"  free directions, source 3 (synchronised units, beyond 1): {report.free_synchronised:,}",
        f"  upper bound on the effective parameter count:             "
        f"{report.effective_parameters_bound:,}",
        f"  free to second order only, source 2 (not in the bound):   {report.free_second_order:,}",
        "",
    ]
    head = ("layer", "width", "rank G", "read by", "free (1)", "rank M'", "free (2)")
    rows = []
    notes = []
    for layer in report.layers:
        reader = layer.reader or "-"
        free2 = "n/a" if layer.free_second_order is None else str(layer.free_second_order)
        rows.append(
            (
                layer.name,
                str(layer.width),
                str(layer.activation_rank),
                reader,
                str(layer.free_activation),
                str(layer.jacobian_rank),
                free2,
            )
        )
        if layer.reader_note:
            notes.append(f"  {layer.name}: {layer.reader_note}")
    lines += _table(head, rows)
    if notes:
        lines += ["", "Notes on layers:", *notes]
    if report.unit_sets:
        lines.append("")
        head = (
            "units of",
            "activation",
            "width",
            "dead",
            "always on",
            "groups (sizes)",
            "Σ(k²−k)",
            "free (3)",
        )
        rows = []
        notes = []
        for u in report.unit_sets:
            if u.analysable:
                sizes = ",".join(str(s) for s in u.group_sizes) or "-"
                rows.append(
                    (
                        u.layer,
                        u.activation,
                        str(u.width),
                        str(len(u.dead)),
                        str(len(u.always_on)),
                        f"{len(u.groups)} ({sizes})",
                        str(u.mixing_directions),
                        str(u.free_directions),
                    )
                )
            elif u.activation == "linear":
                rows.append(
                    (u.layer, "linear", str(u.width), "-", "-", "-", "-", str(u.free_directions))
                )
            else:
                rows.append((u.layer, u.activation, str(u.width), "-", "-", "-", "-", "n/a"))
            if u.note:
                notes.append(f"  {u.layer}: {u.note}")
        lines += _table(head, rows)
        if notes:
            lines += ["", "Notes on units:", *notes]
    return "\n".join(lines)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(r) for r in rows)]


# --------------------------------------------------------------------------------------------
# Streaming firing statistics
# --------------------------------------------------------------------------------------------


@dataclass
class _Firing:
    """Streaming firing statistics of one ReLU-like unit set (float64 counts, exact to 2**53)."""

    section: Section
    linear: nn.Linear
    kind: str  # "relu", "leaky" or "relu6"
    label: str
    functional: bool
    matched: bool = True
    n: int = 0
    on: torch.Tensor | None = None  # n_i
    co: torch.Tensor | None = None  # K = BᵀB
    kinks: torch.Tensor | None = None  # points with z exactly on a kink
    saturated: torch.Tensor | None = None  # ReLU6: points with z ≥ 6
    zmin: torch.Tensor | None = None
    zmax: torch.Tensor | None = None
    support: torch.Tensor | None = None  # Bᵀ 1[a_src ≠ 0]: source units active while i fires

    def add(self, a_src: torch.Tensor, a_dst: torch.Tensor) -> None:
        if not self.matched:
            return
        z = F.linear(a_src, self.linear.weight, self.linear.bias)
        if self.functional and not torch.equal(a_dst, torch.relu(z)):
            self.matched = False
            return
        if self.kind == "relu6":
            fire = (z > 0) & (z < 6)
            kink = (z == 0) | (z == 6)
            sat = (z >= 6).to(torch.float64).sum(0)
        else:
            fire = z > 0
            kink = z == 0
            sat = None
        b = fire.to(torch.float64)
        if self.on is None:
            h = z.shape[1]
            zeros = b.new_zeros(h)
            self.on, self.co = zeros.clone(), b.new_zeros((h, h))
            self.kinks, self.saturated = zeros.clone(), zeros.clone()
            self.zmin, self.zmax = z.amin(0).to(torch.float64), z.amax(0).to(torch.float64)
            self.support = b.new_zeros((h, a_src.shape[1]))
        assert self.co is not None and self.kinks is not None and self.saturated is not None
        assert self.zmin is not None and self.zmax is not None and self.support is not None
        self.on += b.sum(0)
        self.co += b.T @ b
        self.support += b.T @ (a_src != 0).to(torch.float64)
        self.kinks += kink.to(torch.float64).sum(0)
        if sat is not None:
            self.saturated += sat
        self.zmin = torch.minimum(self.zmin, z.amin(0).to(torch.float64))
        self.zmax = torch.maximum(self.zmax, z.amax(0).to(torch.float64))
        self.n += z.shape[0]


def _relu_like(act: nn.Module) -> tuple[str, str] | None:
    """(kind, label) of a ReLU-like module, else None. A LeakyReLU with slope α ≠ 0 is linear
    (slope α) where it is off, so a unit never on is linear, not dead."""
    if type(act) is nn.ReLU:
        return "relu", "ReLU"
    if type(act) is nn.ReLU6:
        return "relu6", "ReLU6"
    if type(act) is nn.LeakyReLU:
        slope = float(act.negative_slope)
        return ("relu", "LeakyReLU(0)") if slope == 0.0 else ("leaky", f"LeakyReLU({slope:g})")
    return None


@dataclass
class _SetPlan:
    """What to do with one section: measure firing, treat as linear, or say why not."""

    section: Section
    linear: nn.Linear | None
    label: str
    status: str  # "firing", "linear", "skip"
    note: str = ""
    firing: _Firing | None = None


def _plan_unit_sets(sess: Session) -> list[_SetPlan]:
    plan = sess.plan
    out: list[_SetPlan] = []
    for s in plan.sections:
        src_module = plan.modules[s.source]
        if not _is_plain_linear(src_module):
            out.append(
                _SetPlan(
                    s,
                    None,
                    "-",
                    "skip",
                    f"node layer {s.source!r} is read by {type(src_module).__name__}, not "
                    "nn.Linear, so the units of this section have no preactivations to analyse",
                )
            )
            continue
        assert isinstance(src_module, nn.Linear)
        act = s.activation
        if s.elementwise and (act is None or type(act) in _IDENTITY):
            if s.target == OUTPUT:
                continue  # the final readout: its units are the model outputs
            out.append(_SetPlan(s, src_module, "linear", "linear"))
            continue
        if s.elementwise:
            assert act is not None
            kind = _relu_like(act)
            if kind is None:
                out.append(
                    _SetPlan(
                        s,
                        src_module,
                        type(act).__name__,
                        "skip",
                        f"{type(act).__name__} is not ReLU-like (ReLU, LeakyReLU, ReLU6): not "
                        "analysable for synchronised units",
                    )
                )
                continue
            firing = _Firing(s, src_module, kind[0], kind[1], functional=False)
            out.append(_SetPlan(s, src_module, kind[1], "firing", firing=firing))
            continue
        # Not matched to an activation module: maybe a functional relu (checked on every batch).
        firing = _Firing(s, src_module, "relu", "relu (functional)", functional=True)
        out.append(_SetPlan(s, src_module, "relu (functional)", "firing", firing=firing))
    return out


def _first_pass(sess: Session, sets: list[_SetPlan]) -> dict[str, Moments]:
    """Moments of every node layer and firing statistics of every ReLU-like set, one pass."""
    plan = sess.plan
    moments: dict[str, Moments] = {}
    firings = [p.firing for p in sets if p.firing is not None]
    with torch.no_grad():
        for b, x in enumerate(sess.batches("degeneracy: moments and firing")):
            acts = sess.tracer.run(x, record=plan.names)
            add_layer_moments(moments, acts, plan, b)
            for f in firings:
                f.add(acts[f.section.source], acts[f.section.target])
    return moments


def _probe(sess: Session) -> torch.Tensor:
    size = min(sess.batch_size, _PROBE_ROWS)
    return next(iter(iter_batches(sess.data, size, device=sess.device, dtype=sess.dtype)))


def _consumed_only_by(sess: Session, linear: nn.Linear, dst: str, probe: torch.Tensor) -> bool:
    """Whether ``linear``'s output reaches the model output only through node module ``dst``.

    Perturbs the Linear's output while feeding ``dst`` its unperturbed input: the model output
    stays the same exactly when nothing else (a residual branch, a second head) uses the Linear's
    output or the activations made from it.
    """
    with torch.no_grad():
        ref = sess.tracer.run(probe, record=(dst, OUTPUT))
        kept, out0 = ref[dst], ref[OUTPUT]
        gen = torch.Generator().manual_seed(0)

        def perturb(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            scale = float(output.detach().abs().mean()) + 1.0
            noise = torch.randn(output.shape, generator=gen, dtype=torch.float64)
            return output + scale * noise.to(dtype=output.dtype, device=output.device)

        handle = linear.register_forward_hook(perturb)
        try:
            moved = sess.tracer.run(probe, record=(OUTPUT,), substitute={dst: lambda a: kept})
        finally:
            handle.remove()
        out1 = moved[OUTPUT]
    eps = torch.finfo(out0.dtype).eps if out0.is_floating_point() else _EPS64
    tol = 1e3 * eps * (float(out0.abs().max()) + 1e-30)
    return bool(out1.shape == out0.shape and float((out1 - out0).abs().max()) <= tol)


# --------------------------------------------------------------------------------------------
# Linear algebra of the counts
# --------------------------------------------------------------------------------------------


@dataclass
class _Span:
    """The data span the weights of the Linear reading a layer see.

    Coordinates ``ã = [a; 1]`` when that Linear has a bias, else ``a``. ``Q`` (orthonormal
    columns) spans ``{ã(x)}``, ``Qc`` the centred directions (the kept eigenvectors of ``G``).
    """

    Q: np.ndarray
    Qc: np.ndarray
    bias: bool

    @property
    def s(self) -> int:
        return int(self.Q.shape[1])

    @property
    def r(self) -> int:
        return int(self.Qc.shape[1])


#: ``covariance_cut`` of a node layer: (all eigenvalues, kept U (d, r), kept D (r,)).
_Cut = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _span(moments: Moments, cut: _Cut, rtol: float, bias: bool) -> _Span:
    _, U_t, _ = cut
    U = U_t.detach().cpu().numpy().astype(np.float64)
    mu = moments.mean.detach().cpu().numpy().astype(np.float64)
    d, r = U.shape
    if bias:
        Qc = np.vstack([U, np.zeros((1, r))])
        raw = np.hstack([Qc, np.r_[mu, 1.0][:, None]])
        Q, _ = np.linalg.qr(raw)
        return _Span(Q=Q, Qc=Qc, bias=True)
    # No bias: span{a(x)} = span(U) + span(μ); μ adds a direction when its part outside span(U)
    # carries more than rtol of the second moment E[a aᵀ] = G + μμᵀ.
    G = moments.cov.detach().cpu().numpy()
    top = max(float(np.linalg.eigvalsh(0.5 * (G + G.T))[-1]) if d else 0.0, float(mu @ mu))
    perp = mu - U @ (U.T @ mu)
    floor = 64 * _EPS64 * moments.square_norm / max(moments.n, 1)
    if float(perp @ perp) > max(rtol * top, floor) and top > 0:
        Q = np.hstack([U, (perp / np.linalg.norm(perp))[:, None]])
    else:
        Q = U
    return _Span(Q=Q, Qc=U, bias=False)


def _augmented_weight(linear: nn.Linear, bias: bool) -> np.ndarray:
    W = linear.weight.detach().cpu().to(torch.float64).numpy()
    if not bias:
        return W
    b = linear.bias.detach().cpu().to(torch.float64).numpy()
    return np.hstack([W, b[:, None]])


def _rank(m: np.ndarray, reference: float) -> int:
    """Number of singular values of ``m`` above ``_RANK_TOL × reference``."""
    if m.size == 0 or reference <= 0:
        return 0
    sv = np.linalg.svd(m, compute_uv=False)
    return int(np.sum(sv > _RANK_TOL * reference))


def _block_free(W_rows: np.ndarray, C: np.ndarray | None, basis: np.ndarray, s: int) -> int:
    """First-order free directions of one block of units, beyond source 1.

    On the data the block enters the next layer only through ``C W̃ ã`` (times a fixed mask), so
    its directions are the kernel of ``(δC, δW̃) ↦ (δC W̃ + C δW̃) basis``; without the parts
    source 1 counts, that leaves ``k·s − r_C·(dim basis − r_W)`` with ``r_C = rank C`` and
    ``r_W = rank W̃·basis``. ``C = None`` (no weights can absorb a change) gives 0.
    """
    k = W_rows.shape[0]
    if C is None:
        return 0
    r_C = _rank(C, float(np.linalg.norm(C, 2)) if C.size else 0.0)
    r_W = _rank(W_rows @ basis, float(np.linalg.norm(W_rows, 2)) if W_rows.size else 0.0)
    return k * s - r_C * (basis.shape[1] - r_W)


def _restrict(Q: np.ndarray, zero_rows: np.ndarray) -> np.ndarray:
    """Orthonormal basis of ``span(Q) ∩ {v : v[zero_rows] = 0}`` (``Q`` orthonormal)."""
    if zero_rows.size == 0 or Q.shape[1] == 0:
        return Q
    _, sv, vt = np.linalg.svd(Q[zero_rows], full_matrices=True)
    rank = int(np.sum(sv > _RANK_TOL))
    return Q @ vt[rank:].T


def _components(on: np.ndarray, co: np.ndarray, units: np.ndarray, tol: int) -> list[np.ndarray]:
    """Connected components of ``Hamming(i, j) ≤ tol`` among ``units`` (all sizes)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    if units.size == 0:
        return []
    n = on[units]
    hamming = n[:, None] + n[None, :] - 2.0 * co[np.ix_(units, units)]
    adjacency = csr_matrix(hamming <= tol + 0.5)
    count, labels = connected_components(adjacency, directed=False)
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    comps = [units[np.sort(part)] for part in np.split(order, cuts)]
    assert len(comps) == count
    return sorted(comps, key=lambda c: int(c[0]))


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


@dataclass
class _Context:
    sess: Session
    moments: dict[str, Moments]
    cuts: dict[str, _Cut]
    spans: dict[str, _Span]
    grams: dict[str, np.ndarray]
    rtol: float
    tol_points: int
    exclusive: dict[str, bool] = field(default_factory=dict)


def _reader(module: nn.Module) -> tuple[str | None, int | None, str]:
    if _is_plain_linear(module):
        assert isinstance(module, nn.Linear)
        bias = "" if module.bias is not None else ", no bias"
        return f"Linear({module.in_features}→{module.out_features}{bias})", module.out_features, ""
    return (
        None,
        None,
        f"not followed by a weight-bearing module (read by {type(module).__name__}): "
        "source 1 counts 0 here",
    )


def _next_weights(ctx: _Context, dst: str) -> tuple[nn.Linear | None, str]:
    """The Linear that reads ``dst`` and can absorb a change of its input, or why there is none."""
    if dst == OUTPUT:
        return None, "these units are the model output (no weights read them)"
    module = ctx.sess.plan.modules[dst]
    if not _is_plain_linear(module):
        return None, (
            f"node layer {dst!r} is read by {type(module).__name__}, not nn.Linear: mixings and "
            "rescalings are not counted"
        )
    if not ctx.exclusive.get(dst, False):
        return None, (
            f"the activations of these units (or their preactivations) are also used outside "
            f"{dst!r} (e.g. a residual branch): nothing is counted as free"
        )
    assert isinstance(module, nn.Linear)
    return module, ""


def _weights_of(linear: nn.Linear | None) -> np.ndarray | None:
    if linear is None:
        return None
    return linear.weight.detach().cpu().to(torch.float64).numpy()


def _linear_block(W: np.ndarray, C: np.ndarray, span: _Span, dst_bias: bool) -> int:
    """Free directions of a block of linear units (always on, or a junction), beyond source 1.

    With a bias in the next Linear the constant part of the block's output is absorbed there, so
    the block is measured on the centred directions ``Qc`` only: ``k·s − r_C·(r − r_W)``.
    """
    basis = span.Qc if dst_bias else span.Q
    return _block_free(W, C, basis, span.s)


def _unit_set(ctx: _Context, p: _SetPlan) -> UnitSetDegeneracy:
    s = p.section
    base: dict[str, Any] = dict(
        layer=s.target,
        linear=s.source,
        activation=p.label,
        width=ctx.sess.plan.dims[s.target],
        firing_counts=_readonly(np.zeros(0), np.int64),
        groups=(),
        dead=(),
        always_on=(),
        excluded=(),
        mixing_directions=0,
        dead_outgoing=0,
        free_groups=0,
        free_linear=0,
        free_dead=0,
    )
    if p.status == "skip":
        return UnitSetDegeneracy(analysable=False, note=p.note, **base)
    assert p.linear is not None
    span = ctx.spans[s.source]
    W = _augmented_weight(p.linear, span.bias)
    nxt, why = _next_weights(ctx, s.target)
    C_all = _weights_of(nxt)
    dst_bias = nxt is not None and nxt.bias is not None

    if p.status == "linear":
        free = _linear_block(W, C_all, span, dst_bias) if C_all is not None else 0
        if _is_plain_linear(ctx.sess.plan.modules[s.target]):
            junction = "Linear→Linear junction: every unit is linear, an invertible mixing is free"
            note = "; ".join(filter(None, (junction, why)))
        else:
            note = f"the output of {s.source!r} is the input of {s.target!r} itself; {why}"
        return UnitSetDegeneracy(analysable=False, note=note, **{**base, "free_linear": free})

    f = p.firing
    assert f is not None
    if not f.matched or f.on is None:
        note = (
            f"the input of {s.target!r} is not an elementwise function of the output of "
            f"{s.source!r} (no activation module between them, and not relu(z) on the data): "
            "not analysable"
        )
        return UnitSetDegeneracy(analysable=False, note=note, **{**base, "activation": "-"})
    assert f.co is not None and f.kinks is not None and f.saturated is not None
    assert f.zmin is not None and f.zmax is not None

    N = f.n
    on = f.on.cpu().numpy()
    co = f.co.cpu().numpy()
    kinks = f.kinks.cpu().numpy() > 0
    saturating = f.saturated.cpu().numpy() > 0
    zmin, zmax = f.zmin.cpu().numpy(), f.zmax.cpu().numpy()
    dead = on == 0
    always = on == N
    alive = ~dead & ~always
    excluded = kinks | (saturating & ~dead)
    comps = _components(on, co, np.flatnonzero(alive), ctx.tol_points)
    groups = tuple(tuple(int(i) for i in c) for c in comps if c.size >= 2)

    # Constant output (ReLU: dead) frees the outgoing weights: zero-variance directions of the
    # next layer, counted by its source 1. Inert units (slope 0 at every point, strictly off a
    # kink) free their incoming weights. Linear units (constant slope) merge with neighbours.
    if f.kind == "leaky":
        constant = np.zeros_like(dead)
        inert = np.zeros_like(dead)
        linear_units = (always | dead) & ~kinks
    else:
        constant = dead & ((zmax <= 0) | (zmin >= 6)) if f.kind == "relu6" else dead
        inert = dead & ~kinks
        linear_units = always & ~kinks
    reader = ctx.sess.plan.modules.get(s.target)
    reader_width = reader.out_features if _is_plain_linear(reader) else 0  # type: ignore[union-attr]
    dead_outgoing = int(constant.sum()) * int(reader_width)

    exclusive = s.target == OUTPUT or ctx.exclusive.get(s.target, False)
    free_dead = int(inert.sum()) * span.s if exclusive else 0
    free_groups = free_linear = 0
    restricted = True
    if C_all is not None:
        support = f.support.cpu().numpy() if f.support is not None else np.zeros((0, 0))
        budget = _RESTRICT_FLOPS
        for c in comps:
            members = c[~excluded[c]]
            if not members.size:
                continue
            # On its firing points a block sees only the source units active there: its input
            # span is span(Q) with those coordinates zero (the bias coordinate is never zero).
            silent = np.flatnonzero(support[members].sum(0) == 0)
            cost = float(silent.size) * span.s * min(silent.size, span.s)
            if cost > budget:
                silent, restricted = silent[:0], False  # conservative: the full span
            budget -= cost if silent.size else 0.0
            if members.size == 1:
                # An alive unit is nonzero on its span (z > 0 where it fires): r_W = 1.
                r_C = int(bool(np.any(C_all[:, members[0]] != 0)))
                s_F = span.s - _rank(span.Q[silent], 1.0)
                free_groups += span.s - r_C * (s_F - 1)
            else:
                basis = _restrict(span.Q, silent)
                free_groups += _block_free(W[members], C_all[:, members], basis, span.s)
        members = np.flatnonzero(linear_units)
        if members.size:
            free_linear = _linear_block(W[members], C_all[:, members], span, dst_bias)

    notes = []
    if f.functional:
        notes.append("relu detected numerically (the input equals relu(linear(·)) on all data)")
    if why:
        notes.append(why)
    if excluded.any():
        extra = ", or saturating at 6" if f.kind == "relu6" else ""
        notes.append(
            f"{int(excluded.sum())} unit(s) not counted (preactivation exactly on a kink{extra})"
        )
    if not restricted:
        notes.append(
            "layer too wide to restrict every group's input span to its firing points: the "
            "group count is a lower bound"
        )
    if not exclusive and inert.any():
        notes.append("dead units' incoming weights not counted (preactivations used elsewhere)")
    if f.kind == "leaky" and dead.any():
        notes.append("LeakyReLU units that are never on are linear (slope α), not dead")
    logger.debug(
        "units of %s: %d dead, %d always on, groups %s", s.target, dead.sum(), always.sum(), groups
    )
    return UnitSetDegeneracy(
        analysable=True,
        note="; ".join(notes),
        **{
            **base,
            "firing_counts": _readonly(np.rint(on), np.int64),
            "groups": groups,
            "dead": tuple(int(i) for i in np.flatnonzero(dead)),
            "always_on": tuple(int(i) for i in np.flatnonzero(always)),
            "excluded": tuple(int(i) for i in np.flatnonzero(excluded)),
            "mixing_directions": sum(len(g) ** 2 - len(g) for g in groups),
            "dead_outgoing": dead_outgoing,
            "free_groups": free_groups,
            "free_linear": free_linear,
            "free_dead": free_dead,
        },
    )


def _eigvals_desc(m: np.ndarray) -> np.ndarray:
    return np.linalg.eigvalsh(0.5 * (m + m.T))[::-1].copy()


def _layer_entry(ctx: _Context, name: str, writer: Section | None) -> LayerDegeneracy:
    plan = ctx.sess.plan
    d = plan.dims[name]
    gram_eigenvalues, _, kept = ctx.cuts[name]
    r_G = int(kept.numel())
    if name == OUTPUT:
        reader, reader_width = None, None
        note = "the model output: not followed by a weight-bearing module"
        free1 = 0
        jacobian = np.ones(d)  # J = ∂out/∂out = I
    else:
        reader, reader_width, note = _reader(plan.modules[name])
        free1 = 0
        if reader_width is not None:
            span = ctx.spans[name]
            free1 = reader_width * (d + int(span.bias) - span.s)
        jacobian = _eigvals_desc(ctx.grams[name])
    r_M = count_kept(jacobian, ctx.rtol)

    free2: int | None = None
    if writer is None:
        note2 = "no nn.Linear writes this layer directly (first node layer, or not elementwise)"
    else:
        s_w = ctx.spans[writer.source].s
        act = writer.activation
        if act is None or type(act) in _IDENTITY:
            free2 = (d - r_M) * s_w
            note2 = f"(d − r_M)·s = ({d} − {r_M})·{s_w}; Linear {writer.source!r} writes here"
        else:
            # Through an elementwise σ only the units the output ignores (M'_ii = 0) are free:
            # a kernel direction of M' mixing several units is bent by σ'(z).
            diag = np.diag(ctx.grams[name]) if name != OUTPUT else np.ones(d)
            top = float(jacobian[0]) if jacobian.size else 0.0
            silent = int(np.sum(diag <= ctx.rtol * top)) if top > 0 else d
            free2 = silent * s_w
            note2 = (
                f"(units with M'_ii = 0)·s = {silent}·{s_w}; {type(act).__name__} lies between "
                f"Linear {writer.source!r} and this layer"
            )
    return LayerDegeneracy(
        name=name,
        width=d,
        reader=reader,
        reader_width=reader_width,
        reader_note=note,
        activation_rank=r_G,
        free_activation=free1,
        jacobian_rank=r_M,
        free_second_order=free2,
        second_order_note=note2,
        gram_eigenvalues=_readonly(gram_eigenvalues),
        jacobian_eigenvalues=_readonly(jacobian),
    )


# --------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------


def _check_hamming(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModgraphTypeError(
            f"The 'hamming_tol' parameter of {_WHERE} must be an int >= 0 (points) or a float in "
            f"[0, 1) (a fraction of the points). Got {value!r} of type {type(value).__name__}."
        )
    if isinstance(value, numbers.Integral):
        checked = check_int(value, "hamming_tol", _WHERE, minimum=0)
        assert checked is not None
        return checked
    return check_float(value, "hamming_tol", _WHERE, low=0.0, high=1.0, low_open=False)


def degeneracy_report(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None = None,
    *,
    rtol: float = 1e-10,
    hamming_tol: int | float = 0,
    batch_size: int = 256,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    progress: bool | None = None,
) -> DegeneracyReport:
    """Measure the three sources of degeneracy of ``model`` on ``data`` (METHOD §1).

    Parameters
    ----------
    model : torch.nn.Module
        The trained model; never modified (mode, ``requires_grad``, ``.grad`` restored, hooks
        removed, also on error).
    data : Tensor (N, ...), Dataset, DataLoader or re-iterable of batches
        Inputs, streamed in batches (twice, plus one probe batch).
    layers : list of str, optional
        Node layers, as for :func:`~modgraph.interaction_basis`. Default: the input of every
        ``nn.Linear`` in execution order, then ``"output"``.
    rtol : float in (0, 1)
        An eigenvalue of ``G`` or ``M'`` counts as zero below ``rtol × largest``.
    hamming_tol : int >= 0 or float in [0, 1)
        Units whose firing patterns differ on at most this many points (an int) or this fraction
        of the points (a float, rounded down) are linked; groups are the connected components.
        0 (default): identical patterns, and the source-3 counts are exact.
    batch_size : int
        Rows per forward pass.
    dtype : torch.dtype or None
        Dtype of the passes (default float64; ``None``: the model's own). Sums are float64.
    device : torch.device or str, optional
        Where to run (default: the model's device).
    output : callable, optional
        Picks the Tensor to analyse from the model's return value.
    progress : bool, optional
        Show progress bars (default: when stderr is a terminal).

    Returns
    -------
    DegeneracyReport
        Per node layer (``report.layers``): width ``d``, ``r_G`` and the source-1 directions
        ``d_next·(d − r_G)``; ``r_M`` and the source-2 directions; both spectra. Per section
        (``report.unit_sets``): dead, always-on and synchronised units, ``Σ (k² − k)`` and the
        source-3 directions. Totals and the bound ``n_parameters − (source 1 + source 3)``.

    Raises
    ------
    ModgraphValueError, ModgraphTypeError
        Bad parameters (the message names the parameter), unknown or misordered layers, empty
        data, inputs the model cannot take, non-finite activations.

    Notes
    -----
    Sources 1 and 3 are counted as linearly independent sets of directions that leave the
    outputs unchanged to first order on the data (exactly, for source 1, for dead units and for
    full-rank groups), so the total is at most the nullity of the behavioural-loss Hessian. See
    ``docs/degeneracy.md`` for the formulas.

    Examples
    --------
    >>> import torch
    >>> from modgraph.degeneracy import degeneracy_report
    >>> from modgraph.toy import mlp, obfuscate
    >>> model = obfuscate(mlp([4, 8, 2]), n_duplicate=2, n_dead=1)
    >>> x = torch.randn(512, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> report = degeneracy_report(model, x, progress=False)
    >>> report.unit_set("2").group_sizes, report.unit_set("2").dead
    ((2, 2), (10,))
    """
    check_model(model, _WHERE)
    rtol = check_float(rtol, "rtol", _WHERE, low=0.0, high=1.0)
    hamming = _check_hamming(hamming_tol)
    check_int(batch_size, "batch_size", _WHERE, minimum=1)
    check_dtype(dtype, _WHERE)
    if progress is not None and not isinstance(progress, bool):
        raise ModgraphTypeError(
            f"The 'progress' parameter of {_WHERE} must be True, False or None. "
            f"Got {type(progress).__name__}."
        )
    n_parameters = sum(p.numel() for p in model.parameters())
    with session(
        model,
        data,
        layers,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        output=output,
        progress=progress,
        where=_WHERE,
    ) as sess:
        plan = sess.plan
        sets = _plan_unit_sets(sess)
        moments = _first_pass(sess, sets)
        grams = {
            name: g.detach().cpu().numpy()
            for name, g in global_jacobian_grams(sess, n_sources=None, gen=None).items()
        }
        n = moments[OUTPUT].n
        tol_points = hamming if isinstance(hamming, int) else math.floor(hamming * n)
        cuts = {name: covariance_cut(moments[name], rtol) for name in plan.names}
        spans = {}
        for name in plan.names[:-1]:
            module = plan.modules[name]
            if _is_plain_linear(module):
                assert isinstance(module, nn.Linear)
                spans[name] = _span(moments[name], cuts[name], rtol, module.bias is not None)
        ctx = _Context(sess, moments, cuts, spans, grams, rtol, tol_points)
        probe = _probe(sess)
        for p in sets:
            measured = p.status == "linear" or (p.firing is not None and p.firing.matched)
            target = p.section.target
            if measured and target != OUTPUT and target not in ctx.exclusive:
                assert p.linear is not None
                ctx.exclusive[target] = _consumed_only_by(sess, p.linear, target, probe)
        unit_sets = tuple(_unit_set(ctx, p) for p in sets)
        writers = {s.target: s for s in plan.sections if s.elementwise}
        entries = tuple(_layer_entry(ctx, name, writers.get(name)) for name in plan.names)
    report = DegeneracyReport(
        layers=entries,
        unit_sets=unit_sets,
        n_parameters=n_parameters,
        n_samples=n,
        rtol=rtol,
        hamming_tol=hamming,
        hamming_points=tol_points,
    )
    logger.info(
        "degeneracy: %d parameters, %d free (source 1: %d, source 3: %d), %d free to second order",
        n_parameters,
        report.free_directions,
        report.free_activation,
        report.free_synchronised,
        report.free_second_order,
    )
    return report
