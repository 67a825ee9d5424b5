"""Node-layer records kept between passes over the data, within a memory budget (issue 16).

The first pass (the moments) runs the model on every batch; the edge pass of the elementwise
sections runs it again only to read the same node layers. With ``cache_mb=`` a session keeps
each batch's records from the first pass, in order, until the budget is spent, and the later
pass reads them instead of running the model: the same tensors, so the same sums bit for bit.
The default budget is 0: activations are never stored whole unless the user asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["ActivationCache"]


class ActivationCache:
    """Records ``name → (rows, d)`` per batch index of a pass, up to ``budget`` bytes.

    Batches are filled in order; the first that does not fit ends the filling, so a later pass
    finds the first batches here and runs the model for the rest.
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.used = 0
        self.full = budget <= 0
        self.batches: dict[int, dict[str, torch.Tensor]] = {}

    def get(self, index: int, names: Iterable[str]) -> dict[str, torch.Tensor] | None:
        """The records of batch ``index`` for every name, or None when any is missing."""
        held = self.batches.get(index)
        if held is None:
            return None
        names = list(names)
        if not all(n in held for n in names):
            return None
        return {n: held[n] for n in names}

    def put(self, index: int, records: Mapping[str, torch.Tensor]) -> None:
        """Keep batch ``index``'s records if they fit in what is left of the budget."""
        if self.full or index in self.batches:
            return
        size = sum(t.numel() * t.element_size() for t in records.values())
        if self.used + size > self.budget:
            self.full = True
            return
        self.batches[index] = dict(records)
        self.used += size
