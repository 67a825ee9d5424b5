"""A small CNN on scikit-learn's digits: which channels form modules?

The 1797 8×8 digit images of ``sklearn.datasets.load_digits`` (scaled to [0, 1], one channel) are
split into a training and a held-out test set; a CNN

    conv1 Conv2d(1→8, 3×3, padding 1) → ReLU → conv2 Conv2d(8→8, 3×3, padding 1) → ReLU
    → MaxPool2d(2) → flatten (8 channels × 4×4 = 128) → fc1 Linear(128→32) → ReLU
    → fc2 Linear(32→10)

is trained on the training set (Adam, mini-batches of 64, float32, then converted to float64 for
the analysis) and tested on the held-out set. ``find_modules`` then analyses it on training images
at the node layers ``conv1``, ``conv2``, ``fc1``, ``fc2`` and ``output``. A node layer is the
*input* of its module: at ``conv1`` the image (1 channel), at ``conv2`` the 8 channels of conv1
after the ReLU; their features are channels (the 8×8 sites are positions: means and covariances
run over images and positions, interactions sum over input positions and average over output
positions). ``fc1``'s input is the flattened pooled map (128 neurons), ``fc2``'s the 32 hidden
units, the output the 10 class logits (``output:3`` is the logit of digit 3).

An interaction-basis feature of a convolution layer is a combination of channels (a column of
``C``), so "which channels form a module" is read off ``C``: for every module and conv layer, the
share of each channel in the module's features there, the average over the module's features of
``|C[c, j]| / Σ_c' |C[c', j]|`` (each row sums to 1).

Run::

    python examples/cnn.py [--out out/examples/cnn] [--quick] [--seed 0] [--threads 1]

``--quick`` trains for 15 epochs instead of 40 and analyses 300 training images instead of all
1347. Writes ``modules.png`` (``result.plot``: the layered module graph), ``module_map.png``
(features per module and layer), ``features.png`` (one row per node layer, one cell per feature,
coloured by module; the output row is labelled by digit) and ``channels.png`` (per conv layer,
each channel's share of each module).

Measured on a 2-core machine shared with other work (load average 4 to 6), one thread:

- ``--quick``, seed 0: held-out test accuracy 0.967 (train 0.983); 5 modules over 47 features
  (14 in none); 8.8 to 13.7 s inside ``main`` (training 3.8 to 5.6 s, ``find_modules`` 3.7 to
  4.8 s, the rest figures; 5 runs), 16 to 23 s with Python's start and imports. Seeds 1 and 2: test
  accuracy 0.982 and 0.973, 5 and 4 modules. (On the same machine less loaded, 20 epochs of
  training took 1.2 s and ``find_modules`` on 300 images 2.6 s.)
- full, seed 0: held-out test accuracy 0.980 (train 0.999); 5 modules over 47 features
  (14 in none); 25.7 s inside ``main`` (training 7.4 s, ``find_modules`` 16.7 s).

What the modules say (the four runs above): no subset of channels forms a module. The image's
single feature and the two leading conv2 features (three for seed 1) are one module together with
leading features of fc1 and fc2 (for seed 1 also the logits of digits 2 and 4); the other conv2
features have smaller Λ (at most 1.0% of the largest for seed 0 ``--quick``, 8% for seed 1),
interact with nothing above ε (at most 0.99 ε) and are in no module. That module's conv2 features
draw on all 8 of conv1's channels about evenly (7 to 17% each against an even 12.5%;
``channels.png``): the convolutions act as one shared front end. The class logits split into
three or four modules, each a group of digits with its own fc1 and fc2 features; which digits
group together changes from one training run to the next ({0, 5, 9}, {2, 7}, {1, 8}, {3, 4, 6}
for ``--quick``; {0, 1, 8}, {2, 3, 4}, {5, 9}, {6, 7} for the full run).
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from _cli import run_example  # examples/_cli.py: the shared options
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from modgraph import ModuleResult, find_modules
from modgraph.plot import NO_MODULE_COLOR, module_colors, plot_module_map

LAYERS = ["conv1", "conv2", "fc1", "fc2"]  # convolutions are no default node layers: name them
CONV_LAYERS = ("conv1", "conv2")
CHANNELS_OF = {"conv1": "the image", "conv2": "conv1's channels after the ReLU"}


def make_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 8, 3, padding=1),
            relu2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flat=nn.Flatten(),
            fc1=nn.Linear(8 * 4 * 4, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )
    )


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, seed: int
) -> nn.Module:
    """Mini-batch Adam on the cross-entropy in float32; returns the model in float64, eval mode,
    parameters frozen."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    x32 = x.float()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x32), generator=gen)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            loss_fn(model(x32[batch]), y[batch]).backward()
            opt.step()
    model.double().eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def layer_membership(result: ModuleResult) -> dict[str, np.ndarray]:
    """Module of every feature (-1: none), per node layer, in feature order."""
    g = result.interaction_graph
    m = result.membership
    return {name: m[o : o + k] for name, o, k in zip(g.layers, g.offsets, g.sizes)}


def channel_shares(result: ModuleResult, layer: str) -> tuple[list[int], np.ndarray]:
    """For one conv layer: the modules with features there (-1 last, for features in no module)
    and their channel composition, rows (modules) × channels, each row summing to 1: the average
    over the module's features j of ``|C[c, j]| / Σ_c' |C[c', j]|``."""
    weights = np.abs(result.bases[layer].C)
    weights = weights / weights.sum(0, keepdims=True)  # each feature's split over the channels
    members = layer_membership(result)[layer]
    modules = sorted(set(members[members >= 0].tolist())) + ([-1] if (members < 0).any() else [])
    shares = np.stack([weights[:, members == k].mean(1) for k in modules])
    return modules, shares


def tint(color: np.ndarray | tuple, amount: float) -> np.ndarray:
    """``color`` mixed with white: 0 white, 1 the full colour."""
    return 1.0 - amount * (1.0 - np.asarray(color)[:3])


def plot_features(result: ModuleResult, title: str, path: Path) -> None:
    """One row per node layer, one cell per feature (by importance, left to right), coloured by
    module, grey for no module; cells hold the feature index (the digit in the output row)."""
    members = layer_membership(result)
    colors = module_colors(result.n_modules)
    width = max(len(m) for m in members.values())
    fig = Figure(figsize=(0.36 * width + 2.8, 0.62 * len(members) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    image = np.ones((len(members), width, 3))
    for row, m in enumerate(members.values()):
        for j, k in enumerate(m):
            image[row, j] = tint(colors[k] if k >= 0 else NO_MODULE_COLOR, 1.0 if k >= 0 else 0.5)
            ax.text(j, row, str(j), ha="center", va="center", fontsize=7, color="0.1")
    ax.imshow(image, aspect="auto", interpolation="nearest")
    units = {name: "channels" if name in CONV_LAYERS else "neurons" for name in members}
    units["output"] = "logits"
    labels = [
        f"{name}  ({len(m)} of {result.bases[name].d} {units[name]})" for name, m in members.items()
    ]
    ax.set_yticks(range(len(members)), labels, fontsize=8)
    ax.set_xticks([])
    ax.set_xticks(np.arange(width + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(members) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="both", length=0)
    ax.set_xlabel("feature (most important first; the output row: the logit of each digit)")
    handles = [Patch(color=colors[k], label=f"module {k}") for k in range(result.n_modules)]
    handles.append(Patch(color=tint(NO_MODULE_COLOR, 0.5), label="no module"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=120)


def plot_channels(result: ModuleResult, path: Path) -> None:
    """Per conv layer: modules (rows) × channels (columns), each cell the channel's share of the
    module's features there, annotated in % and shaded in the module's colour on a common scale:
    half the full colour at an even share (1 / channels), the full colour at twice that (or 1)."""
    colors = module_colors(result.n_modules)
    panels = [(name, *channel_shares(result, name)) for name in CONV_LAYERS]
    widths = [shares.shape[1] + 0.5 for _, _, shares in panels]
    rows = max(len(modules) for _, modules, _ in panels)
    fig = Figure(figsize=(0.55 * sum(widths) + 2.0, 0.5 * rows + 2.0), layout="constrained")
    axes = fig.subplots(1, len(panels), gridspec_kw={"width_ratios": widths})
    for ax, (name, modules, shares) in zip(np.atleast_1d(axes), panels):
        image = np.ones((*shares.shape, 3))
        n_channels = shares.shape[1]
        for r, k in enumerate(modules):
            base = colors[k] if k >= 0 else NO_MODULE_COLOR
            for c, s in enumerate(shares[r]):
                amount = min(1.0, s / min(1.0, 2 / n_channels))
                image[r, c] = tint(base, amount)
                dark = amount > 0.65 and k >= 0
                color = "white" if dark else "0.15"
                ax.text(c, r, f"{100 * s:.0f}", ha="center", va="center", fontsize=7, color=color)
        ax.imshow(image, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(shares.shape[1]), [str(c) for c in range(shares.shape[1])], fontsize=8)
        labels = [f"module {k}" if k >= 0 else "none" for k in modules]
        ax.set_yticks(range(len(modules)), labels, fontsize=8)
        for label, k in zip(ax.get_yticklabels(), modules):
            label.set_color(colors[k] if k >= 0 else NO_MODULE_COLOR)
            label.set_fontweight("bold")
        ax.tick_params(length=0)
        ax.set_xlabel(f"channel of {name}'s input ({CHANNELS_OF[name]})", fontsize=8)
        k = len(layer_membership(result)[name])
        even = f"even share {100 / n_channels:.3g}%" if n_channels > 1 else "one channel"
        ax.set_title(f"{name}: {k} feature{'s' if k != 1 else ''} ({even})", fontsize=9)
    fig.suptitle(
        "Which channels the modules' features are made of (% of |C| weight, rows sum to 100)",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    return run_example(
        __doc__, "cnn", run, argv, quick_help="less training, 300 images analysed (tests)"
    )


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    digits = load_digits()
    x = digits.images[:, None] / 16.0  # (N, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    x_train, x_test = torch.tensor(x_train), torch.tensor(x_test)
    y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

    epochs = 15 if args.quick else 40
    model = train(make_cnn(args.seed), x_train, y_train, epochs=epochs, seed=args.seed)
    trained = time.perf_counter()
    print(
        f"CNN conv(1→8)-conv(8→8)-pool-fc(128→32)-fc(32→10) trained on {len(x_train)} digits for "
        f"{epochs} epochs ({trained - start:.1f} s): train accuracy "
        f"{accuracy(model, x_train, y_train):.3f}, held-out test accuracy "
        f"{accuracy(model, x_test, y_test):.3f} ({len(x_test)} digits)"
    )

    x_analysis = x_train[:300] if args.quick else x_train
    result = find_modules(model, x_analysis, layers=LAYERS, seed=args.seed, progress=False)
    print(
        f"\n=== modules (find_modules on {len(x_analysis)} training images, "
        f"{time.perf_counter() - trained:.1f} s) ==="
    )
    print(result.summary())
    print(
        "interaction-basis features per node layer (kept/channels or neurons): "
        + ", ".join(f"{name}: {b.k}/{b.d}" for name, b in result.bases.items())
    )
    print("\nmodule of every feature (-1: none), most important feature first:")
    for name, m in layer_membership(result).items():
        print(f"  {name:>6}: {' '.join(f'{k:>2}' for k in m)}")
    for name in CONV_LAYERS:
        modules, shares = channel_shares(result, name)
        print(f"\nchannel shares of the modules' {name} features (% of |C| weight):")
        for k, row in zip(modules, shares):
            label = f"module {k}" if k >= 0 else "none"
            print(f"  {label:>9}: {' '.join(f'{100 * s:3.0f}' for s in row)}")

    result.plot(
        path=args.out / "modules.png",
        title=f"CNN on scikit-learn digits: {result.n_modules} modules "
        f"(Q_deg = {result.score:.3f}, {100 * result.cross_fraction:.1f}% of the cost between them)",
    )
    plot_module_map(result.interaction_graph, result.partition, path=args.out / "module_map.png")
    plot_features(
        result,
        f"CNN on digits: the module of every feature ({result.n_modules} modules)",
        args.out / "features.png",
    )
    plot_channels(result, args.out / "channels.png")
    print(f"\nfigures in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
