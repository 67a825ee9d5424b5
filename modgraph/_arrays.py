"""Small numeric helpers shared by the rooms that fit and report (one definition each)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Machine epsilon of float64.
EPS64 = float(np.finfo(np.float64).eps)


def readonly(a: np.ndarray | torch.Tensor, dtype: Any = np.float64) -> np.ndarray:
    """A read-only numpy copy of ``a`` (a Tensor is detached and moved to the CPU first)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu").numpy()
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


def eigh_desc(sym: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a symmetric matrix ``(n, n)``, eigenvalues descending.

    The matrix is symmetrised first (``(S + Sᵀ)/2``), so rounding asymmetry does no harm.
    """
    sym = 0.5 * (sym + sym.T)
    values, vectors = torch.linalg.eigh(sym)
    return values.flip(0), vectors.flip(1)


def eigvals_desc(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric numpy matrix ``(n, n)``, descending (symmetrised first)."""
    return np.linalg.eigvalsh(0.5 * (m + m.T))[::-1].copy()
