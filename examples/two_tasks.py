"""Planted modules in a trained MLP: do the modules modgraph finds match the two tasks?

An MLP 80-64-64-12 is trained on two independent tasks at once (``modgraph.toy.two_task_digits``):
the class of an 8×8 digit (inputs 0..63, outputs 0..9) and the parity of a second digit,
downsampled to 4×4 (inputs 64..79, outputs 10..11). Nothing in the architecture separates the
tasks; only training (with an L1 penalty) can. ``find_modules`` then partitions the features of
every layer, and the script compares that partition with the ground truth:

- every feature is assigned the task whose inputs drive it: resample one input block across the
  data (shuffle its columns across rows, hold the other block fixed) and measure the feature's
  mean squared change; the block with the larger change is the feature's task;
- homogeneity (scikit-learn's ``homogeneity_score``) of the tasks within the modules: 1 when no
  module mixes features of both tasks;
- which module(s) hold the class logits (``output:0..9``) and the parity logits
  (``output:10..11``).

Run::

    python examples/two_tasks.py [--out out/examples/two_tasks] [--quick] [--seed 0]

The same report follows for ``n_modules=2``: the coarsest partition into two modules, which
should be the two tasks.

Writes ``modules.png`` (the layered module graph at resolution 1.0), ``modules_res0.5.png`` (at
resolution 0.5), ``modules_2.png`` (with ``n_modules=2``) and ``module_map.png`` (features per
module and layer at resolution 1.0).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _cli import run_example  # examples/_cli.py: the shared options
from sklearn.metrics import homogeneity_score
from torch import nn

from modgraph import ModuleResult, find_modules
from modgraph.plot import plot_module_map, plot_modules
from modgraph.toy import accuracy, node_inputs, train_mlp, two_task_digits

TASKS = ("class", "parity")


def task_of_features(
    model: nn.Sequential, result: ModuleResult, x: torch.Tensor, n_first: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: the task (0: class, 1: parity) of every feature in node order, and the share
    of the feature's change that comes from that task's inputs.

    For each input block, shuffle that block's columns across rows (the other block fixed) and
    measure each interaction-basis feature's mean squared change."""
    rng = np.random.default_rng(seed)
    base = node_inputs(model, x)
    change = []
    for cols in (slice(0, n_first), slice(n_first, None)):
        shuffled = x.clone()
        shuffled[:, cols] = x[rng.permutation(len(x))][:, cols]
        alt = node_inputs(model, shuffled)
        change.append(
            np.concatenate(
                [
                    ((b.transform(a) - b.transform(c)) ** 2).mean(0)
                    for b, a, c in zip(result.bases.values(), base, alt)
                ]
            )
        )
    dep = np.stack(change, 1)
    return dep.argmax(1), dep.max(1) / (dep.sum(1) + 1e-300)


def report(name: str, result: ModuleResult, truth: np.ndarray, n_second_outputs: int) -> None:
    """Print the modules, the tasks of their features, and the modules of each task's outputs."""
    print(f"\n=== {name} ===")
    print(result.summary())
    m = result.partition.membership
    print("module composition (features driven by the class inputs / by the parity inputs):")
    for k in range(result.n_modules):
        n_class, n_parity = np.bincount(truth[m == k], minlength=2)
        print(f"  module {k:>2}: {n_class:>3} class, {n_parity:>3} parity")
    inside = m >= 0
    homogeneity = float(homogeneity_score(truth[inside], m[inside])) if inside.any() else 0.0
    print(f"homogeneity of tasks within modules: {homogeneity:.3f}  (1 = no module mixes tasks)")
    class_out = sorted({result.module_of[f"output:{i}"] for i in range(10)})
    parity_out = sorted({result.module_of[f"output:{i}"] for i in range(10, 10 + n_second_outputs)})
    print(f"modules of the class outputs  (output:0..9):   {class_out}  (-1: in no module)")
    print(f"modules of the parity outputs (output:10..11): {parity_out}")
    separated = not set(class_out) & set(parity_out) and -1 not in class_out + parity_out
    print(f"class and parity outputs in different modules: {'yes' if separated else 'no'}")


def main(argv: list[str] | None = None) -> int:
    return run_example(__doc__, "two_tasks", run, argv, quick_help="less data and training (tests)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()

    n, epochs = (1000, 250) if args.quick else (2000, 400)
    data = two_task_digits(n, seed=args.seed)
    model = train_mlp(data, seed=args.seed, epochs=epochs)
    acc_class, acc_parity = accuracy(model, data)
    print(
        f"two-task MLP {data.x.shape[1]}-64-64-{10 + data.n_second_outputs} trained on {n} "
        f"samples, {epochs} epochs: training accuracy {acc_class:.3f} (class), {acc_parity:.3f} (parity)"
    )

    results = {}
    for resolution in (1.0, 0.5):
        results[resolution] = find_modules(
            model, data.x, resolution=resolution, seed=args.seed, progress=False
        )
    # the coarsest partition into two modules (small fragments attached)
    two = find_modules(model, data.x, n_modules=2, seed=args.seed, progress=False)
    truth, purity = task_of_features(
        model, results[1.0], data.x, data.n_first_inputs, seed=args.seed
    )
    print(
        f"ground truth: {np.count_nonzero(truth == 0)} features driven by the class inputs, "
        f"{np.count_nonzero(truth == 1)} by the parity inputs (median purity {np.median(purity):.3f})"
    )
    for resolution, result in results.items():
        report(f"resolution {resolution:g}", result, truth, data.n_second_outputs)
    report(
        f"n_modules=2 (found resolution {two.resolution:.3g})", two, truth, data.n_second_outputs
    )

    one, half = results[1.0], results[0.5]
    for result, name, setting in [
        (one, "modules.png", f"γ = 1: {one.n_modules} modules, "),
        (half, "modules_res0.5.png", f"γ = 0.5: {half.n_modules} modules, "),
        (two, "modules_2.png", "n_modules=2: "),
    ]:
        plot_modules(
            result.interaction_graph,
            result.partition,
            path=args.out / name,
            title=f"Two-task MLP (digit class + parity), {setting}"
            f"{100 * result.cross_fraction:.1f}% of the cost between them",
        )
    plot_module_map(one.interaction_graph, one.partition, path=args.out / "module_map.png")
    print(f"\nfigures in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
