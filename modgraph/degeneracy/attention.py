"""Attention heads that attend alike: synchronised nonlinearities of attention (issue 13).

Heads whose attention patterns ``A_h(x) (L, S)`` agree on every data point act, on the data, as
one head with a summed value–output map, so mixing their OV circuits is free, as mixing the
units of a synchronised ReLU group is (METHOD §1.3). One pass records, for every
``nn.MultiheadAttention`` of the model, the largest difference ``max_x |A_h − A_h'|`` of every
pair of heads; heads within the tolerance are grouped (connected components).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._arrays import readonly
from ..capture import Session

__all__ = ["AttentionDegeneracy", "attention_patterns", "combine_heads", "group_heads"]


@dataclass(frozen=True, eq=False)
class AttentionDegeneracy:
    """Heads of one attention module whose patterns agree on the data.

    Attributes
    ----------
    module : str
        Name of the ``nn.MultiheadAttention`` module.
    n_heads : int
    groups : tuple of tuple of int
        Heads whose patterns differ by at most ``tolerance`` everywhere on the data (connected
        components; groups of two or more heads).
    max_difference : ndarray, shape (n_heads, n_heads)
        ``max_x max_{l,s} |A_h(x)[l, s] − A_h'(x)[l, s]|`` (read-only).
    tolerance : float
    """

    module: str
    n_heads: int
    groups: tuple[tuple[int, ...], ...]
    max_difference: np.ndarray
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "n_heads": self.n_heads,
            "groups": [list(g) for g in self.groups],
            "max_difference": self.max_difference.tolist(),
            "tolerance": self.tolerance,
        }


@contextlib.contextmanager
def attention_patterns(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While active, every forward of an ``nn.MultiheadAttention`` of ``model`` also computes
    its per-head attention weights and keeps the running ``(H, H)`` maximum of their pairwise
    differences in the yielded dict (module name → Tensor); hooks removed on exit."""
    found: dict[str, torch.Tensor] = {}
    busy: set[int] = set()
    handles = []

    def hook(name: str) -> Any:
        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if id(module) in busy:  # the call made below
                return
            busy.add(id(module))
            try:
                kw = {**kwargs, "need_weights": True, "average_attn_weights": False}
                with torch.no_grad():
                    _, weights = module(*args, **kw)
            finally:
                busy.discard(id(module))
            w = weights if weights.ndim == 4 else weights[None]  # (B, H, L, S)
            w = w.to(torch.float64).flatten(2)  # (B, H, L·S)
            diff = (w[:, :, None] - w[:, None]).abs().amax(dim=(0, 3))  # (H, H), all pairs
            found[name] = torch.maximum(found[name], diff) if name in found else diff

        return pre

    try:
        for name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                handles.append(module.register_forward_pre_hook(hook(name), with_kwargs=True))
        yield found
    finally:
        for h in handles:
            h.remove()


def combine_heads(sess: Session, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The largest differences of :func:`attention_patterns` over every process of a
    distributed run (``found`` itself on one process), for every attention module that ran in
    some process, in the order of ``sess.model.named_modules()``."""
    if not sess.distributed:
        return found
    modules = [
        (name, int(m.num_heads))
        for name, m in sess.model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
    ]
    parts = [
        found.get(name, torch.full((h, h), -1.0, dtype=torch.float64, device=sess.device))
        for name, h in modules
    ]
    done = sess.reduce_all(parts, "max")
    return {name: d for (name, _), d in zip(modules, done) if float(d[0, 0]) >= 0}


def group_heads(name: str, diff: torch.Tensor, tolerance: float) -> AttentionDegeneracy:
    """The groups of heads of one module from its ``(H, H)`` maximal differences."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    d = diff.detach().cpu().numpy()
    _, labels = connected_components(csr_matrix(d <= tolerance), directed=False)
    groups = tuple(
        tuple(int(h) for h in np.flatnonzero(labels == g))
        for g in np.unique(labels)
        if int((labels == g).sum()) >= 2
    )
    return AttentionDegeneracy(
        module=name,
        n_heads=int(d.shape[0]),
        groups=groups,
        max_difference=readonly(d),
        tolerance=float(tolerance),
    )
