"""scikit-learn's bundled digits: an MLP trained on them, its modules and its degeneracy report.

The 1797 8×8 digit images of ``sklearn.datasets.load_digits`` (64 inputs scaled to [0, 1]) are
split into a training and a held-out test set; an MLP 64-48-48-10 (ReLU) is trained on the
training set (full batch, Adam, cross-entropy) and tested on the held-out set. Then, on the
training inputs:

- ``find_modules``: the interaction basis of every layer, the interaction graph and its modules;
- ``degeneracy_report``: how many parameter directions are free on the data (activations that
  span a subspace, gradients that span a subspace, ReLUs that fire in sync or never).

Run::

    python examples/digits.py [--out out/examples/digits] [--quick] [--seed 0]

Writes ``modules.png`` (the layered module graph) and ``spectra.png`` (eigenvalue spectra of the
activation and Jacobian Gram matrices per layer, from the degeneracy report).
"""

from __future__ import annotations

import argparse
import time

import torch
from _cli import run_example  # examples/_cli.py: the shared options
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from modgraph import find_modules
from modgraph.degeneracy import degeneracy_report
from modgraph.plot import plot_modules, plot_spectra

WIDTHS = (64, 48, 48, 10)


def make_mlp(widths: tuple[int, ...], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(w_in, w_out, dtype=torch.float64))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    """Full-batch Adam on the cross-entropy; the model is left in eval mode, without grads."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def main(argv: list[str] | None = None) -> int:
    return run_example(__doc__, "digits", run, argv, quick_help="less training (tests)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    digits = load_digits()
    x = digits.data / 16.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    x_train, x_test = torch.tensor(x_train), torch.tensor(x_test)
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

    epochs = 150 if args.quick else 400
    model = make_mlp(WIDTHS, args.seed)
    train(model, x_train, y_train, epochs=epochs, lr=3e-3)
    print(
        f"MLP {'-'.join(map(str, WIDTHS))} trained on {len(x_train)} digits for {epochs} "
        f"full-batch epochs: train accuracy {accuracy(model, x_train, y_train):.3f}, "
        f"held-out test accuracy {accuracy(model, x_test, y_test):.3f} ({len(x_test)} digits)"
    )

    result = find_modules(model, x_train, seed=args.seed, progress=False)
    print("\n=== modules (find_modules on the training inputs) ===")
    print(result.summary())
    print(
        "interaction-basis features per node layer (kept/neurons): "
        + ", ".join(f"{name}: {b.k}/{b.d}" for name, b in result.bases.items())
    )

    report = degeneracy_report(model, x_train, progress=False)
    print("\n=== degeneracy report ===")
    print(report)

    plot_modules(
        result.interaction_graph,
        result.partition,
        path=args.out / "modules.png",
        title=f"MLP on scikit-learn digits: {result.n_modules} modules "
        f"(Q_deg = {result.score:.3f}, {100 * result.cross_fraction:.1f}% of the cost between them)",
    )
    plot_spectra(report, path=args.out / "spectra.png")
    print(f"\nfigures in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
