"""Render the figures of the documentation into ``docs/images/`` (about half a minute on a CPU).

Trains the two-task MLP of :mod:`modgraph.toy` and builds a block-diagonal MLP with planted
modules, finds their modules and draws them::

    python docs/make_figures.py [--out docs/images] [--n-modules 2 | --resolution 0.5]

The two-task MLP is split into two modules by default (``n_modules=2``, the coarsest partition
into two modules): they are the two tasks, the figure's point. ``--resolution``
partitions it at a fixed ``γ`` instead (finer: several modules per task).

Writes ``modules.png`` (layered module graph of the two-task MLP), ``module_map.png`` (features
per module and layer) and ``interactions.png`` (an interaction matrix of the planted model, sorted
by module), plus ``planted_modules.png`` (the layered graph of the planted model).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

import modgraph
from modgraph.plot import plot_interactions, plot_module_map, plot_modules
from modgraph.toy import accuracy, block_diagonal_mlp, train_mlp, two_task_digits

logger = logging.getLogger("make_figures")


def two_task_result(resolution: float, n_modules: int | None, epochs: int) -> modgraph.ModuleResult:
    data = two_task_digits(n=2000)
    model = train_mlp(data, l1=3e-4, epochs=epochs)
    logger.info("two-task MLP accuracy (class, parity): %.3f, %.3f", *accuracy(model, data))
    result = modgraph.find_modules(
        model, data.x, resolution=resolution, n_modules=n_modules, progress=False
    )
    g = result.interaction_graph
    out = result.partition.membership[g.offsets[-2] :]
    logger.info("modules of the class logits: %s; of the parity logits: %s", out[:10], out[10:])
    return result


def planted_result() -> modgraph.ModuleResult:
    blocks = [[6, 16, 16, 4], [6, 16, 16, 4], [6, 16, 16, 4]]
    model = block_diagonal_mlp(blocks, seed=0)
    x = torch.randn(8192, sum(b[0] for b in blocks), generator=torch.Generator().manual_seed(0))
    return modgraph.find_modules(model, x.double(), n_modules=len(blocks), progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "images")
    parser.add_argument(
        "--n-modules", type=int, default=2, help="modules of the two-task MLP (default 2)"
    )
    parser.add_argument(
        "--resolution", type=float, default=None, help="a fixed γ instead of --n-modules"
    )
    parser.add_argument("--epochs", type=int, default=400, help="training epochs (default 400)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # small models: threads only contend on a shared machine
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    if args.resolution is not None:
        args.n_modules = None
    two = two_task_result(args.resolution or 1.0, args.n_modules, args.epochs)
    logger.info("two-task MLP:\n%s", two.summary())
    title = (
        f"Two-task MLP (digit class + parity), γ = {two.resolution:.3g}: {two.n_modules} "
        f"modules, {100 * two.cross_fraction:.1f}% of the cost between them"
    )
    plot_modules(two.interaction_graph, two.partition, path=args.out / "modules.png", title=title)
    plot_module_map(two.interaction_graph, two.partition, path=args.out / "module_map.png")

    planted = planted_result()
    logger.info("planted modules:\n%s", planted.summary())
    title = (
        f"Block-diagonal MLP with {planted.n_modules} planted modules: "
        f"{100 * planted.cross_fraction:.1f}% of the cost between them"
    )
    plot_modules(
        planted.interaction_graph,
        planted.partition,
        path=args.out / "planted_modules.png",
        title=title,
    )
    layer = planted.interaction_graph.layers[1]
    plot_interactions(
        planted.interaction_graph, planted.partition, layer, path=args.out / "interactions.png"
    )
    logger.info("figures in %s (%.1f s)", args.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
