"""Command line: ``modgraph demo``, ``modgraph run`` and ``modgraph report``.

``modgraph run --model PKG.MODULE:FACTORY --data PKG.MODULE:FUNCTION --out DIR`` imports
``FACTORY()`` (a ``torch.nn.Module``) and ``FUNCTION()`` (data as ``find_modules`` takes it),
optionally loads weights (``torch.load(..., weights_only=True)`` or a ``.npz`` without pickle),
finds the modules and writes ``modules.graphml``, ``modules.json`` and ``modules.png``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModgraphError, ModgraphValueError

__all__ = ["main"]

logger = logging.getLogger("modgraph")


def _import(spec: str, what: str) -> Any:
    """``"pkg.module:attr"`` → the attribute (called by the caller)."""
    if ":" not in spec:
        raise ModgraphValueError(
            f"--{what} must look like PKG.MODULE:NAME (e.g. mypkg.models:make_model); got {spec!r}."
        )
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModgraphValueError(f"--{what}: cannot import module {module_name!r}: {exc}") from exc
    finally:
        sys.path.pop(0)
    if not hasattr(module, attr):
        raise ModgraphValueError(f"--{what}: module {module_name!r} has no attribute {attr!r}.")
    return getattr(module, attr)


def _load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict without unpickling arbitrary objects (``.npz`` or a torch file)."""
    path = Path(path)
    if not path.is_file():
        raise ModgraphValueError(f"--weights: no file at {str(path)!r}.")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            state = {k: torch.from_numpy(np.array(f[k])) for k in f.files}
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModgraphValueError(
                f"--weights: {str(path)!r} is not a state dict that loads with "
                f"weights_only=True ({type(exc).__name__}: {exc}). Save it with "
                "torch.save(model.state_dict(), path)."
            ) from exc
    if not isinstance(state, dict):
        raise ModgraphValueError(
            f"--weights: {str(path)!r} holds a {type(state).__name__}, not a state dict."
        )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        shapes = {k: tuple(v.shape) for k, v in expected.items()}
        raise ModgraphValueError(
            f"--weights: {str(path)!r} does not match the model. Missing keys: {missing}; "
            f"unexpected keys: {unexpected}; wrong shapes: {wrong}. Expected keys and shapes: "
            f"{shapes}."
        )
    dtype = next(iter(expected.values())).dtype if expected else torch.float32
    model.load_state_dict(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    )


def _write_outputs(result: Any, out: Path, *, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.to_graphml(out / "modules.graphml")
    result.to_json(out / "modules.json")
    from .plot import plot_modules

    plot_modules(result.interaction_graph, result.partition, path=out / "modules.png", title=title)
    logger.info(
        "wrote %s",
        ", ".join(str(out / n) for n in ("modules.graphml", "modules.json", "modules.png")),
    )


def _demo(args: argparse.Namespace) -> int:
    from .api import find_modules
    from .toy import accuracy, train_mlp, two_task_digits

    data = two_task_digits(1000 if args.quick else 2000, seed=args.seed)
    logger.info("training a two-task MLP (digit class + parity of a second digit) ...")
    model = train_mlp(data, (64, 64), epochs=150 if args.quick else 400, seed=args.seed)
    acc = accuracy(model, data)
    print(f"trained: class accuracy {acc[0]:.3f}, parity accuracy {acc[1]:.3f}")
    result = find_modules(model, data.x, seed=args.seed, progress=not args.quiet)
    print(result.summary())
    parity = {result.module_of[f"output:{i}"] for i in range(10, 10 + data.n_second_outputs)}
    classes = {result.module_of[f"output:{i}"] for i in range(10)}
    print(
        f"module(s) of the class outputs: {sorted(classes)}; of the parity outputs: {sorted(parity)}"
    )
    _write_outputs(result, Path(args.out), title="Modules of a two-task MLP")
    print(f"wrote {args.out}/modules.graphml, modules.json, modules.png")
    return 0


def _load_user(args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    factory = _import(args.model, "model")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ModgraphValueError(
            f"--model {args.model} returned a {type(model).__name__}, not a torch.nn.Module."
        )
    if args.weights:
        _load_weights(model, args.weights)
    data = _import(args.data, "data")()
    return model, data


def _run(args: argparse.Namespace) -> int:
    from .api import find_modules

    model, data = _load_user(args)
    result = find_modules(
        model,
        data,
        args.layers,
        resolution=args.resolution,
        n_modules=args.n_modules,
        min_module_share=args.min_module_share,
        epsilon=args.epsilon,
        tau=args.tau,
        variant=args.variant,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(result.summary())
    _write_outputs(result, Path(args.out), title=f"Modules of {args.model}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .degeneracy import degeneracy_report

    model, data = _load_user(args)
    report = degeneracy_report(
        model,
        data,
        args.layers,
        rtol=args.rtol,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report.to_json(out / "degeneracy.json")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modgraph",
        description="Find the modules inside a trained neural network (arXiv 2405.10927).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")

    demo = sub.add_parser("demo", help="train a two-task MLP on the spot and find its modules")
    demo.add_argument("--out", default="out", help="output folder (default: out)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="smaller data and training")
    common(demo)
    demo.set_defaults(func=_demo)

    def user(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="PKG.MODULE:FACTORY returning an nn.Module")
        p.add_argument("--weights", help="state dict: .pt/.pth (weights_only) or .npz")
        p.add_argument("--data", required=True, help="PKG.MODULE:FUNCTION returning the data")
        p.add_argument("--layers", nargs="+", help="module names (default: every nn.Linear)")
        p.add_argument("--batch-size", type=int, default=256)
        common(p)

    run = sub.add_parser("run", help="find the modules of your model")
    user(run)
    run.add_argument("--resolution", type=float, default=1.0)
    run.add_argument(
        "--n-modules",
        type=int,
        default=None,
        help="the coarsest partition into this many modules (not with --resolution)",
    )
    run.add_argument(
        "--min-module-share",
        type=float,
        default=None,
        help="with --n-modules: modules below this share of the interaction strength are "
        "fragments (default 0.1 / n-modules)",
    )
    run.add_argument("--epsilon", type=float, default=None)
    run.add_argument("--tau", type=float, default=1e-4)
    run.add_argument("--variant", choices=["local", "global"], default="local")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="output folder")
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="measure the three sources of degeneracy")
    user(report)
    report.add_argument("--rtol", type=float, default=1e-10)
    report.add_argument("--out", help="also write degeneracy.json here")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modgraph`` console script."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `modgraph run ... | head`: the reader left, nothing to report
        return 0
    except (ModgraphError, OSError) as exc:
        print(f"modgraph {args.command}: error: {exc}", file=sys.stderr)
        return 2
