"""Faithfulness: do the features a basis drops and the interactions a graph cuts matter?

For two networks, the pretrained MNIST MLP 784-100-100-10 (``modgraph.toy.load_mnist_mlp``, on
upsampled scikit-learn digits, see examples/mnist.py) and the two-task MLP 80-64-64-12 trained
here (``modgraph.toy.two_task_digits``, see examples/two_tasks.py), in three bases (the
interaction basis, PCA and the neurons), the script measures:

- **feature ablation**: the behavioural loss (mean squared output change, as a share of
  ``tr Cov(output)``) when a node layer keeps only its top-``n`` features, against ``n``;
- **edge ablation**: the same when a layer pair keeps only its top-``n`` interactions;
- the **sparsity report**: the edges that carry 50 / 90 / 99 % of each pair's edge weight;
- **ε from ablation**: ``find_modules(epsilon="ablation")`` on half the data, and the loss of
  cutting every edge below each pair's ε on the other half.

Run::

    python examples/faithfulness.py [--out out/examples/faithfulness] [--quick] [--seed 0]

Writes ``{mnist,two_tasks}_{features,edges}.png`` (the curves, one line per basis) and
``mnist_accuracy.png`` (the MNIST model's accuracy against the features kept).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _cli import run_example  # examples/_cli.py: the shared options
from torch import nn

from modgraph import find_modules, interaction_graph
from modgraph.faithfulness import (
    AblationCurve,
    ablation_curve,
    edge_ablation_curve,
    sparsity_report,
)
from modgraph.plot import plot_ablation
from modgraph.toy import digits_as_mnist, load_mnist_mlp, train_mlp, two_task_digits

TOLERANCE = 1e-2
BASES = ("interaction", "pca", "neuron")


def both_tasks(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean accuracy of the two tasks per row (class logits 0..9, parity logits 10..11)."""
    first = output[:, :10].argmax(1) == labels[:, 0]
    second = output[:, 10:].argmax(1) == labels[:, 1]
    return (first.double() + second.double()) / 2


def summarise(curves: tuple[AblationCurve, ...], what: str) -> None:
    """Per layer (pair): how many features (edges) each basis keeps within the tolerance."""
    groups: dict[tuple[str, ...], list[AblationCurve]] = {}
    for c in curves:
        groups.setdefault(c.layers, []).append(c)
    for layers, group in groups.items():
        parts = []
        for c in group:
            n = c.kept_for(TOLERANCE)
            text = f"{c.basis} {'-' if n is None else n}/{c.total}"
            if c.metric is not None and n is not None:
                text += f" (metric {c.metric[list(c.kept).index(n)]:.3f})"
            parts.append(text)
        print(f"  {what} {'→'.join(layers)}: " + ", ".join(parts))


def analyse(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    metric,
    args: argparse.Namespace,
) -> None:
    print(f"\n=== {name} ===")
    feats = ablation_curve(model, x, BASES, labels=labels, metric=metric, progress=False)
    print(f"reference metric {feats[0].reference_metric:.3f}")
    print(f"features kept for a relative loss <= {TOLERANCE:g} (kept/all):")
    summarise(feats, "features of")
    full = {(c.layers[0], c.basis): float(c.relative_loss[-1]) for c in feats}
    print(
        "relative loss of the dropped directions alone (all features kept): "
        + ", ".join(f"{layer} {basis}: {v:.2g}" for (layer, basis), v in full.items())
    )
    graphs = {b: interaction_graph(model, x, basis=b, progress=False) for b in BASES}
    grid = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 78400]
    edges = edge_ablation_curve(
        model, x, graphs, n_edges=grid if args.quick else None, progress=False
    )
    print(f"edges kept for a relative loss <= {TOLERANCE:g} (kept/all):")
    summarise(edges, "edges")
    print("edges that carry 50 / 90 / 99 % of each pair's edge weight:")
    print(sparsity_report(graphs))
    plot_ablation(
        feats, tolerance=TOLERANCE, path=args.out / f"{name}_features.png",
        title=f"{name}: feature ablation",
    )  # fmt: skip
    plot_ablation(
        edges, tolerance=TOLERANCE, path=args.out / f"{name}_edges.png",
        title=f"{name}: edge ablation",
    )  # fmt: skip
    if name == "mnist":
        plot_ablation(feats, value="metric", path=args.out / "mnist_accuracy.png")

    # ε from ablation on one half, checked on the other
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    fit, held = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
    result = find_modules(
        model, fit, epsilon="ablation", loss_tolerance=TOLERANCE, seed=args.seed, progress=False
    )
    graph = result.interaction_graph
    print(f"epsilon='ablation' (loss_tolerance={TOLERANCE:g}), chosen on {len(fit)} points:")
    for pair, eps in result.pair_epsilon.items():
        E = graph.edges[pair]
        (c,) = edge_ablation_curve(model, held, graph, pair, thresholds=[eps], progress=False)
        print(
            f"  {pair[0]}→{pair[1]}: ε = {eps:.3g} (default {graph.epsilon:.3g}); "
            f"{int((E < eps).sum())} of {E.size} edges below it; held-out relative loss "
            f"{c.relative_loss[0]:.4f}"
        )
    print(f"modules with it: {result.n_modules}, Q_deg = {result.score:.3f}")


def main(argv: list[str] | None = None) -> int:
    return run_example(__doc__, "faithfulness", run, argv, quick_help="less data (tests)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    n, epochs = (600, 250) if args.quick else (2000, 400)
    data = two_task_digits(n, seed=args.seed)
    model = train_mlp(data, seed=args.seed, epochs=epochs)
    labels = torch.stack([data.y_first, data.y_second], 1)
    print(f"two-task MLP 80-64-64-12 trained on {n} samples, {epochs} epochs")
    analyse("two_tasks", model, data.x, labels, both_tasks, args)

    mnist = load_mnist_mlp()
    x, y = digits_as_mnist()
    if args.quick:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:300]
        x, y = x[keep], y[keep]
    print(f"\npretrained MNIST MLP 784-100-100-10 on {len(x)} upsampled digits")
    analyse("mnist", mnist, x, y, "accuracy", args)
    print(f"\nfigures in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
