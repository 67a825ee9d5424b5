"""A model and a function-identical obfuscated copy: the neuron basis differs, the modules do not.

The model is an MLP 9-24-20-5 made of two independent sub-networks (``block_diagonal_mlp``:
block 1 reads inputs 0..4 and writes outputs 0..2, block 2 reads inputs 5..8 and writes outputs
3..4). Its copy (``obfuscate``) computes exactly the same function with scrambled parameters:
hidden units permuted, two units per hidden layer split into two half-weight copies, and two dead
units per hidden layer whose outgoing weights are random and couple the two blocks.

- In the neuron basis the two models look different: the weights between the hidden layers are
  block-diagonal in the original, a scrambled sparse matrix with dense (dead-unit) columns in the
  copy; a graph of neurons weighted by ``|W|`` links the two blocks in the copy.
- In the interaction basis the two models are the same: ``find_modules`` finds the same features
  (matched one to one by their activations on the data), the same modules and the same ``Q_deg``.

Run::

    python examples/invariance.py [--out out/examples/invariance] [--quick] [--seed 0]

Writes ``invariance.png``: 2×2 panels, the neuron-basis weights of both models on top, the modules
of both models (interaction basis) below.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _cli import run_example  # examples/_cli.py: the shared options
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score
from torch import nn

from modgraph import ModuleResult, find_modules
from modgraph.plot import plot_modules
from modgraph.toy import block_diagonal_mlp, node_inputs, obfuscate

BLOCKS = [[5, 12, 10, 3], [4, 12, 10, 2]]


def product_data(n1: int, n2: int, d1: int, d2: int, seed: int) -> torch.Tensor:
    """Every pair ``(x1_i, x2_j)`` of ``n1`` points of block 1 and ``n2`` points of block 2.

    Why product data: on a finite sample, two independent Gaussian blocks are still slightly
    correlated by chance, and the interaction basis (built from covariances on the data) would mix
    the two blocks' features a little. On the set of all pairs, the empirical distribution is
    exactly the product of the two blocks' empirical distributions, so every function of block 1
    is exactly uncorrelated with every function of block 2 on the data: the planted modules are
    exact, and the two models' partitions can be compared exactly.
    """
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n1, d1, generator=gen, dtype=torch.float64)
    b = torch.randn(n2, d2, generator=gen, dtype=torch.float64)
    return torch.cat([a.repeat_interleave(n2, 0), b.repeat(n1, 1)], 1)


def match_features(f: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every column of ``f``, the column of ``g`` with the largest |correlation|, and that
    |correlation|."""
    fz = (f - f.mean(0)) / (f.std(0) + 1e-300)
    gz = (g - g.mean(0)) / (g.std(0) + 1e-300)
    corr = np.abs(fz.T @ gz) / f.shape[0]
    return corr.argmax(1), corr.max(1)


def matched_partitions(
    a: ModuleResult, b: ModuleResult, acts_a: list[np.ndarray], acts_b: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Both memberships in ``a``'s feature order (``b``'s features matched to ``a``'s by their
    activations on the data), and the smallest matched |correlation|."""
    if a.interaction_graph.sizes != b.interaction_graph.sizes:
        raise SystemExit(
            f"the two models have different feature counts per layer: "
            f"{a.interaction_graph.sizes} vs {b.interaction_graph.sizes}"
        )
    mapping, worst = [], 1.0
    for basis_a, basis_b, x_a, x_b, offset in zip(
        a.bases.values(), b.bases.values(), acts_a, acts_b, b.interaction_graph.offsets
    ):
        idx, corr = match_features(basis_a.transform(x_a), basis_b.transform(x_b))
        mapping.append(offset + idx)
        worst = min(worst, float(corr.min(initial=1.0)))
    order = np.concatenate(mapping)
    return a.partition.membership, b.partition.membership[order], worst


def neuron_components(model: nn.Sequential) -> int:
    """Connected components of the neuron graph (an edge wherever a weight is nonzero; inputs,
    hidden units and outputs are nodes)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols, offset = [], [], 0
    for layer in model:
        if isinstance(layer, nn.Linear):
            r, c = np.nonzero(layer.weight.detach().numpy())
            rows.append(offset + layer.in_features + r)
            cols.append(offset + c)
            offset += layer.in_features
            n = offset + layer.out_features
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size), (r, c)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def weight_panel(fig: Figure, ax, weight: torch.Tensor, title: str, vmax: float) -> None:
    from matplotlib.ticker import MaxNLocator

    W = weight.detach().abs().numpy()
    im = ax.imshow(W, cmap="Greys", aspect="auto", interpolation="nearest", vmin=0.0, vmax=vmax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"first hidden layer: neuron ({W.shape[1]})")
    ax.set_ylabel(f"second hidden layer: neuron ({W.shape[0]})")
    cax = ax.inset_axes((1.02, 0.0, 0.025, 1.0))
    fig.colorbar(im, cax=cax, label="|W|, same scale in both panels")


def main(argv: list[str] | None = None) -> int:
    return run_example(__doc__, "invariance", run, argv, quick_help="less data (tests)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = block_diagonal_mlp(BLOCKS, seed=args.seed)
    twin = obfuscate(model, seed=args.seed + 1, n_duplicate=2, n_dead=2)
    n1, n2 = (30, 25) if args.quick else (60, 50)
    d1, d2 = BLOCKS[0][0], BLOCKS[1][0]
    x = product_data(n1, n2, d1, d2, seed=args.seed + 3)
    with torch.no_grad():
        diff = float((model(x) - twin(x)).abs().max())
    widths = [m.out_features for m in model if isinstance(m, nn.Linear)]
    widths_twin = [m.out_features for m in twin if isinstance(m, nn.Linear)]
    print(
        f"model: MLP {d1 + d2}-{'-'.join(map(str, widths))} (two independent blocks); "
        f"obfuscated copy: {d1 + d2}-{'-'.join(map(str, widths_twin))}"
    )
    print(f"data: all {n1}×{n2} = {len(x)} pairs of block-1 and block-2 inputs")
    print(f"max |output difference| between the two models: {diff:.3e}")

    results = {
        "original": find_modules(model, x, seed=args.seed, progress=False),
        "obfuscated": find_modules(twin, x, seed=args.seed, progress=False),
    }
    for name, result in results.items():
        print(f"\n=== {name} ===")
        print(result.summary())
    m, m_twin, worst = matched_partitions(
        results["original"], results["obfuscated"], node_inputs(model, x), node_inputs(twin, x)
    )
    ari = adjusted_rand_score(m, m_twin)
    print("\n=== comparison ===")
    for name, result in results.items():
        print(
            f"{name:>10}: {result.n_modules} modules, Q_deg = {result.score:.6f}, "
            f"features per layer {result.interaction_graph.sizes}"
        )
    print(f"smallest |correlation| of matched features: {worst:.9f}")
    print(f"adjusted Rand index between the two partitions (matched features): {ari:.6f}")
    print(f"same features in no module: {bool(np.array_equal(m < 0, m_twin < 0))}")
    print(
        "neuron basis, for contrast: connected components of the graph of nonzero weights: "
        f"{neuron_components(model)} (original), {neuron_components(twin)} (obfuscated copy)"
    )

    fig = Figure(figsize=(16, 11), layout="constrained")
    axes = fig.subplots(2, 2, height_ratios=[1, 1.25])
    linear = [m for m in model if isinstance(m, nn.Linear)][1]
    linear_twin = [m for m in twin if isinstance(m, nn.Linear)][1]
    vmax = float(linear.weight.detach().abs().max())
    weight_panel(
        fig,
        axes[0, 0],
        linear.weight,
        "original, neuron basis: |W| between the hidden layers\n(block-diagonal)",
        vmax,
    )
    weight_panel(
        fig,
        axes[0, 1],
        linear_twin.weight,
        "obfuscated copy, neuron basis: |W| between the hidden layers\n"
        "(units permuted and duplicated; dead units with dense outgoing weights)",
        vmax,
    )
    for ax, (name, result) in zip(axes[1], results.items()):
        plot_modules(
            result.interaction_graph,
            result.partition,
            ax=ax,
            title=f"{name}, interaction basis: {result.n_modules} modules, "
            f"Q_deg = {result.score:.4f}",
        )
    fig.suptitle(
        f"Same function (max |Δ output| = {diff:.1e}), different neurons, same modules "
        f"(adjusted Rand index {ari:.3f})",
        fontsize=13,
    )
    path = args.out / "invariance.png"
    fig.savefig(path, dpi=120)
    print(f"\nfigure {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
