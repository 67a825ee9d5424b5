"""Layouts of node-layer activations: where the features and the positions are.

A node layer's activations are ``(batch, d)``; ``(batch, *positions, d)`` with the features last
(sequence models); or ``(batch, channels, *spatial)`` for the input of a convolution (or a
pooling or normalisation module that reads channels first), whose features are the channels and
whose spatial sites are positions. The measuring core works on *rows* ``(batch, P, d)``: every
position of every sample (or the selected ones) is a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ModgraphValueError

__all__ = ["CHANNELS_FIRST", "Layout", "layout_of", "select_positions"]


#: Modules whose input holds channels on axis 1 (``(batch, channels, *spatial)``): for them the
#: features of a node layer are the channels and the spatial sites are positions.
CHANNELS_FIRST: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
    nn.InstanceNorm3d, nn.GroupNorm, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """Where the features and the positions of one node layer's activations are.

    ``(batch, d)``: no positions. ``(batch, *positions, d)``: features last (sequence models;
    an ``nn.Linear`` acts per position). ``(batch, channels, *spatial)`` when
    ``channels_first`` (the input of a convolution): the features are the channels and the
    spatial sites the positions. :meth:`rows` turns activations into ``(batch, P, d)`` with the
    positions in row-major order, keeping only ``select`` (flat position indices) when given.
    """

    channels_first: bool = False
    positions: tuple[int, ...] = ()
    select: tuple[int, ...] | None = None

    @property
    def n_positions(self) -> int:
        """Positions analysed per sample (all of them, or the selected ones)."""
        if self.select is not None:
            return len(self.select)
        return int(torch.Size(self.positions).numel())

    def rows(self, a: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """``(*lead_dims, *raw)`` activations (``lead`` leading axes before the raw layout, the
        batch axis included) → ``(*lead_dims, P, d)``."""
        if self.channels_first:
            a = a.movedim(lead, -1)
        a = a.reshape(*a.shape[:lead], -1, a.shape[-1])
        if self.select is not None:
            a = a[..., list(self.select), :]
        return a

    def unrows(self, r: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """The inverse of :meth:`rows` for cotangents: ``(*lead_dims, P, d)`` → raw layout, with
        zeros at the positions not selected."""
        if self.select is not None:
            full = r.new_zeros(
                (*r.shape[:lead], int(torch.Size(self.positions).numel()), r.shape[-1])
            )
            full[..., list(self.select), :] = r
            r = full
        r = r.reshape(*r.shape[:lead], *self.positions, r.shape[-1])
        if self.channels_first:
            r = r.movedim(-1, lead)
        return r


def layout_of(t: torch.Tensor, name: str | None, module: nn.Module | None) -> Layout:
    """The layout of node layer ``name``'s activations ``t`` (``name=None``: the model output)."""
    what = "the model output" if name is None else f"the input of node layer {name!r}"
    if t.ndim == 1:
        hint = (
            " Pass output=lambda o: o[:, None] to analyse it as one feature."
            if name is None
            else " Choose a module whose input has a batch axis and a feature axis."
        )
        raise ModgraphValueError(
            f"{what} has shape {tuple(t.shape)}, one value per sample; modgraph needs (batch, "
            f"features), (batch, positions, features) or (batch, channels, *spatial).{hint}"
        )
    if t.ndim == 2:
        return Layout()
    if 0 in t.shape[1:]:
        raise ModgraphValueError(f"{what} has shape {tuple(t.shape)}: an axis is empty.")
    if module is not None and isinstance(module, CHANNELS_FIRST):
        return Layout(channels_first=True, positions=tuple(int(n) for n in t.shape[2:]))
    return Layout(positions=tuple(int(n) for n in t.shape[1:-1]))


def select_positions(
    layouts: dict[str, Layout], positions: tuple[int, ...] | None, where: str
) -> dict[str, Layout]:
    """Apply ``positions`` (flat indices, negative allowed) to every layout with positions."""
    if positions is None:
        return layouts
    counts = {n: lay.n_positions for n, lay in layouts.items() if lay.n_positions > 1}
    if not counts:
        raise ModgraphValueError(
            f"The 'positions' parameter of {where} selects positions, but no node layer has "
            "any (all activations are (batch, features)). Leave positions out."
        )
    if len(set(counts.values())) > 1:
        raise ModgraphValueError(
            f"The 'positions' parameter of {where} needs node layers that share one positions "
            f"axis; these have different numbers of positions: {counts}. Choose node layers "
            "with the same positions (e.g. the residual stream of a transformer)."
        )
    P = next(iter(counts.values()))
    bad = [p for p in positions if not -P <= p < P]
    if bad:
        raise ModgraphValueError(
            f"The 'positions' parameter of {where} holds {bad}, outside the {P} positions of "
            f"the node layers (indices -{P}..{P - 1})."
        )
    chosen = tuple(sorted({p % P for p in positions}))
    return {
        n: Layout(lay.channels_first, lay.positions, chosen) if n in counts else lay
        for n, lay in layouts.items()
    }
