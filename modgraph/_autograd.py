"""Walking PyTorch's autograd graph: which leaves and nodes a tensor's graph reaches, and
whether every node on the way is linear with a constant Jacobian (sums, copies, views).

Used by :func:`modgraph.jacobian.constant_jacobian` to tell, from one data point, whether a
section's Jacobian depends on the data.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["LINEAR_NODES", "walk_to"]

#: Autograd nodes whose Jacobian does not depend on the data (sums, differences, copies, views).
LINEAR_NODES = frozenset(
    {
        "AddBackward0", "SubBackward0", "NegBackward0", "CloneBackward0", "ViewBackward0",
        "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0", "SqueezeBackward0",
        "SqueezeBackward1", "UnsqueezeBackward0",
    }
)  # fmt: skip


def walk_to(root: Any, z: torch.Tensor, source_node: Any) -> tuple[bool, bool, bool]:
    """Walk the autograd graph below ``root`` (iteratively: deep models exceed Python's
    recursion limit). Returns whether it reaches the leaf ``z``, whether it reaches
    ``source_node`` (a path around the module), and whether every node on a path to ``z`` is a
    sum, difference, copy or view."""
    reaches: dict[int, tuple[bool, bool]] = {}
    linear = True
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if key in reaches and not expanded:
            continue
        if node is source_node:
            reaches[key] = (False, True)
            continue
        if type(node).__name__ == "AccumulateGrad":
            reaches[key] = (node.variable is z, False)
            continue
        children = [n for n, _ in node.next_functions if n is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in reaches)
            continue
        hits = [reaches[id(c)] for c in children]
        to_z, to_source = any(h[0] for h in hits), any(h[1] for h in hits)
        if to_z and type(node).__name__ not in LINEAR_NODES:
            linear = False
        reaches[key] = (to_z, to_source)
    return (*reaches[id(root)], linear)
