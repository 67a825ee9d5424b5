"""Result types of the degeneracy report: per node layer, per unit set, and the totals."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModgraphValueError
from ..io import write_json
from .attention import AttentionDegeneracy
from .render import render_report

__all__ = ["DegeneracyReport", "LayerDegeneracy", "UnitSetDegeneracy"]


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
    attention : tuple of AttentionDegeneracy
        Per ``nn.MultiheadAttention`` of the model, the heads whose attention patterns agree on
        the data (synchronised, like the units of source 3); reported, not counted.
    """

    layers: tuple[LayerDegeneracy, ...]
    unit_sets: tuple[UnitSetDegeneracy, ...]
    n_parameters: int
    n_samples: int
    rtol: float
    hamming_tol: int | float
    hamming_points: int
    attention: tuple[AttentionDegeneracy, ...] = ()

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
            "attention": [a.to_dict() for a in self.attention],
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically (as ``ModuleResult.to_json``)."""
        write_json(path, self.to_dict())

    def __repr__(self) -> str:
        return (
            f"DegeneracyReport(n_parameters={self.n_parameters}, "
            f"free_directions={self.free_directions}, "
            f"effective_parameters_bound={self.effective_parameters_bound})"
        )

    def __str__(self) -> str:
        return render_report(self.to_dict())
