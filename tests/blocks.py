"""Planted-module helpers: product data over two input blocks and per-feature ground truth."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def product_data(n1: int, n2: int, d1: int, d2: int, seed: int = 0) -> torch.Tensor:
    """Every pair (x1_i, x2_j): the empirical distribution is exactly a product, so functions of
    block 1 and of block 2 are exactly uncorrelated on the data. Shape (n1·n2, d1 + d2), rows
    ordered with block 1 outer and block 2 inner."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n1, d1, generator=gen, dtype=torch.float64)
    b = torch.randn(n2, d2, generator=gen, dtype=torch.float64)
    return torch.cat([a.repeat_interleave(n2, 0), b.repeat(n1, 1)], 1)


def grid_dependence(features: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """(k, 2) variance of each feature due to block 1 (block 2 held fixed) and to block 2."""
    f = features.reshape(n1, n2, -1)
    dep1 = f.var(axis=0).mean(axis=0)  # vary block 1, block 2 fixed
    dep2 = f.var(axis=1).mean(axis=0)
    return np.stack([dep1, dep2], axis=1)


def sequential_node_inputs(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """Inputs of every Linear of a Sequential, then the output."""
    out, h = [], x
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                out.append(h.numpy())
            h = m(h)
    return [*out, h.numpy()]


def feature_blocks(bases, acts, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth block (0/1) of every feature in node order, and its purity (share of the
    feature's variance explained by its block)."""
    labels, purity = [], []
    for b, a in zip(bases.values(), acts):
        dep = grid_dependence(b.transform(a), n1, n2)
        total = dep.sum(1) + 1e-300
        labels.append(dep.argmax(1))
        purity.append(dep.max(1) / total)
    return np.concatenate(labels), np.concatenate(purity)


def match_features(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every column of f, the index of the column of g with the largest |correlation|, and
    that |correlation|."""
    fz = (f - f.mean(0)) / (f.std(0) + 1e-300)
    gz = (g - g.mean(0)) / (g.std(0) + 1e-300)
    corr = np.abs(fz.T @ gz) / f.shape[0]
    return corr.argmax(1), corr.max(1)
