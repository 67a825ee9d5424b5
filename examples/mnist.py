"""A network nobody here trained: the modules of a pretrained MNIST MLP.

``modgraph.toy.load_mnist_mlp()`` loads an MLP 784-100-100-10 trained on MNIST by others (sample
checkpoint of ApolloResearch/rib, MIT License; see ``examples/data/README.md``). MNIST itself cannot
be downloaded here, so ``modgraph.toy.digits_as_mnist()`` stands in: scikit-learn's 8×8 digits
upsampled to 28×28. They are not MNIST (thicker strokes, other centring), so the model's accuracy
on them is far below its MNIST accuracy; they are still digit-like inputs on which its features
can be measured. The script prints that accuracy, finds the model's modules and draws them.

Run::

    python examples/mnist.py [--out out/examples/mnist] [--quick] [--seed 0]

Writes ``modules.png`` (the layered module graph) and ``interactions.png`` (the interaction matrix
from the first node layer, the pixels, to the first hidden layer, sorted by module).
"""

from __future__ import annotations

import argparse
import time

import torch
from _cli import run_example  # examples/_cli.py: the shared options

from modgraph import find_modules
from modgraph.plot import plot_interactions, plot_modules
from modgraph.toy import digits_as_mnist, load_mnist_mlp


def main(argv: list[str] | None = None) -> int:
    return run_example(__doc__, "mnist", run, argv, quick_help="fewer images (tests)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    model = load_mnist_mlp()
    x, y = digits_as_mnist()
    if args.quick:
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[:600]
        x, y = x[keep], y[keep]
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"pretrained MNIST MLP 784-100-100-10 ({n_params:,} parameters), not trained here; "
        f"accuracy on {len(x)} upsampled scikit-learn digits (a stand-in for MNIST): {acc:.3f}"
    )

    result = find_modules(model, x, seed=args.seed, progress=False)
    print(result.summary())
    g = result.interaction_graph
    print(
        "interaction-basis features per node layer (kept/neurons): "
        + ", ".join(f"{name}: {b.k}/{b.d}" for name, b in result.bases.items())
    )
    print(
        "(the stand-in images are upsampled 8×8 digits: their 784 pixels span at most 64 "
        "directions, so the first layer keeps few features)"
    )
    plot_modules(
        result.interaction_graph,
        result.partition,
        path=args.out / "modules.png",
        title=f"Pretrained MNIST MLP on upsampled digits: {result.n_modules} modules "
        f"(Q_deg = {result.score:.3f}, {100 * result.cross_fraction:.1f}% of the cost between them)",
    )
    plot_interactions(
        result.interaction_graph, result.partition, g.layers[0], path=args.out / "interactions.png"
    )
    print(f"\nfigures in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
