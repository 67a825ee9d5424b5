"""Exceptions raised by modgraph.

Every exception is also a builtin one, so ``except ValueError`` keeps working for callers who do
not know modgraph: :class:`ModgraphValueError` is a :class:`ValueError`, :class:`ModgraphTypeError`
is a :class:`TypeError`.
"""

from __future__ import annotations

__all__ = ["ModgraphError", "ModgraphTypeError", "ModgraphValueError"]


class ModgraphError(Exception):
    """Base class of every error modgraph raises on purpose."""


class ModgraphValueError(ModgraphError, ValueError):
    """An argument has the right type but a value modgraph cannot use."""


class ModgraphTypeError(ModgraphError, TypeError):
    """An argument has a type modgraph cannot use."""
