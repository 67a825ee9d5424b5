"""Command line: ``modgraph demo``, ``modgraph run`` and ``modgraph report``.

``modgraph run --model PKG.MODULE:FACTORY --data PKG.MODULE:FUNCTION --out DIR`` imports
``FACTORY()`` (a ``torch.nn.Module``) and ``FUNCTION()`` (data as ``find_modules`` takes it),
optionally loads weights (``torch.load(..., weights_only=True)`` or a ``.npz`` without pickle),
finds the modules and writes ``modules.graphml``, ``modules.json`` and ``modules.png``.

Bad input ends in one line on stderr and exit status 2, before anything is computed where it
can be checked first (``--out``, the specs, the weights file). ``--threads N`` sets torch's thread
count for the command and restores it afterwards (the demo uses 1 unless told; the library never
changes it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ._weights import load_weights, one_line, one_line_error
from .errors import ModgraphError, ModgraphValueError

__all__ = ["main"]

logger = logging.getLogger("modgraph")

_FIGURE_FILES = ("modules.graphml", "modules.json", "modules.png")


def _describe(exc: BaseException, *, where: bool = True) -> str:
    """``Type: message (at file.py:line)`` of an exception raised by the user's code, one line."""
    text = one_line_error(exc)
    if isinstance(exc, SyntaxError) or not where:
        return text  # a SyntaxError names its file and line itself
    skip = (os.path.dirname(importlib.__file__), __file__)
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(("<", *skip))
    ]
    return f"{text} (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else text


def _import(spec: str, what: str) -> Callable[[], Any]:
    """``"pkg.module:name"`` → the callable ``name`` (the caller calls it, see :func:`_call`).

    The current folder is searched first, and only the entry added for that is removed again:
    whatever the imported module did to ``sys.path`` itself stays, as after any import."""
    module_name, colon, attr = spec.partition(":")
    parts = [attr, *module_name.split(".")]
    if not (colon and all(part.isidentifier() for part in parts)):
        raise ModgraphValueError(
            f"--{what} must look like PKG.MODULE:NAME (a dotted module path, one colon, a "
            f"function name; e.g. mypkg.models:make_model); got {spec!r}."
        )
    entry = str(Path.cwd())
    sys.path.insert(0, entry)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        name = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if name and (module_name + ".").startswith(name + "."):
            problem = f"cannot find module {module_name!r} (looked in the current folder too)"
        else:
            problem = f"importing module {module_name!r} raised {_describe(exc)}"
        raise ModgraphValueError(f"--{what} {spec!r}: {problem}") from exc
    finally:  # remove the entry added, not whatever is first now
        for i, path in enumerate(sys.path):
            if path is entry:
                del sys.path[i]
                break
    try:
        found = getattr(module, attr)
    except Exception as exc:
        problem = (
            f"module {module_name!r} has no attribute {attr!r}."
            if isinstance(exc, AttributeError)
            else f"reading {attr!r} from module {module_name!r} raised {_describe(exc)}"
        )
        raise ModgraphValueError(f"--{what} {spec!r}: {problem}") from exc
    if not callable(found):
        raise ModgraphValueError(
            f"--{what} {spec!r}: {attr!r} is a {type(found).__name__}, not callable; name a "
            "function that takes no arguments."
        )
    return found


def _call(spec: str, what: str, function: Callable[[], Any]) -> Any:
    name = spec.partition(":")[2]
    try:
        return function()
    except (Exception, SystemExit) as exc:
        raise ModgraphValueError(f"--{what} {spec!r}: {name}() raised {_describe(exc)}") from exc


def _check_out(out: str, names: Sequence[str]) -> Path:
    """Fail now, before anything is computed, when ``names`` cannot be written in folder ``out``:
    create it and a probe file in it, then remove what was created (made again when writing)."""
    path, shown = Path(out), repr(out)
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing.is_file() else "not a folder"
        then = "give a folder (created if missing)" if existing == path else "no folder fits there"
        raise ModgraphValueError(f"--out {shown}: {str(existing)!r} is {what}; {then}.")
    for name in names:
        target = path / name
        if os.path.lexists(target) and not target.is_file():
            what = "a folder" if target.is_dir() else "not a regular file"
            raise ModgraphValueError(
                f"--out {shown}: {str(target)!r} is {what}, so it cannot be written."
            )
    created = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".modgraph-probe-"):
            pass
    except OSError as exc:
        problem = exc.strerror or exc
        raise ModgraphValueError(f"--out {shown}: cannot write there ({problem}).") from exc
    finally:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
    return path


def _write_outputs(result: Any, out: Path, *, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.to_graphml(out / "modules.graphml")
    result.to_json(out / "modules.json")
    from .plot import plot_modules

    plot_modules(result.interaction_graph, result.partition, path=out / "modules.png", title=title)
    print(f"wrote {', '.join(str(out / n) for n in _FIGURE_FILES)}")


def _demo(args: argparse.Namespace) -> int:
    from .api import find_modules
    from .toy import accuracy, train_mlp, two_task_digits

    out = _check_out(args.out, _FIGURE_FILES)
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
    _write_outputs(result, out, title="Modules of a two-task MLP")
    return 0


def _load_user(args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    """Both specs are imported (and so checked) before either is called."""
    factory = _import(args.model, "model")
    loader = _import(args.data, "data")
    model = _call(args.model, "model", factory)
    if not isinstance(model, torch.nn.Module):
        raise ModgraphValueError(
            f"--model {args.model!r}: {args.model.partition(':')[2]}() returned a "
            f"{type(model).__name__}, not a torch.nn.Module."
        )
    if args.weights:
        load_weights(model, args.weights)
    return model, _call(args.data, "data", loader)


def _run(args: argparse.Namespace) -> int:
    from .api import find_modules

    out = _check_out(args.out, _FIGURE_FILES)
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
        ties=args.ties,
        precision=args.precision,
        edge_samples=args.edge_samples,
        cache_mb=args.cache_mb,
        loss_tolerance=args.loss_tolerance,
        progress=not args.quiet,
    )
    print(result.summary())
    from .plot._figure import plain  # the user's spec, drawn literally in the CLI's own title

    _write_outputs(result, out, title=f"Modules of {plain(args.model, None)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .degeneracy import degeneracy_report

    out = None if args.out is None else _check_out(args.out, ["degeneracy.json"])
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
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        report.to_json(out / "degeneracy.json")
        print(f"wrote {out / 'degeneracy.json'}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _epsilon(text: str) -> float | str:
    if text == "ablation":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number > 0 or 'ablation', got {text!r}"
        ) from None


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="modgraph",
        description="Find the modules inside a trained neural network (arXiv 2405.10927).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"modgraph {__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="demo, run or report"
    )

    def common(p: argparse.ArgumentParser, *, threads: str) -> None:
        p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
        p.add_argument(
            "--threads",
            type=_positive_int,
            default=1 if threads == "1" else None,
            metavar="N",
            help=f"torch threads for this command, restored afterwards (default: {threads}; "
            "on a busy or small machine 1 is often much faster)",
        )

    demo = sub.add_parser("demo", help="train a two-task MLP on the spot and find its modules")
    demo.add_argument("--out", default="out", help="output folder (default: out)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data, training and Leiden")
    demo.add_argument("--quick", action="store_true", help="smaller data and training")
    common(demo, threads="1")
    demo.set_defaults(func=_demo)

    def user(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True, help="PKG.MODULE:FACTORY returning an nn.Module")
        p.add_argument("--weights", help="state dict: .pt/.pth (weights_only) or .npz")
        p.add_argument("--data", required=True, help="PKG.MODULE:FUNCTION returning the data")
        p.add_argument("--layers", nargs="+", help="module names (default: every nn.Linear)")
        p.add_argument(
            "--batch-size",
            type=_positive_int,
            default=256,
            help="rows per forward pass (default 256)",
        )
        common(p, threads="torch's, usually the number of cores")

    run = sub.add_parser("run", help="find the modules of your model")
    user(run)
    run.add_argument(
        "--resolution",
        type=float,
        default=1.0,
        help="resolution γ > 0 of Q_deg: larger gives more, smaller modules (default 1)",
    )
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
    run.add_argument(
        "--epsilon",
        type=_epsilon,
        default=None,
        help="interaction tolerance ε > 0, or 'ablation': one ε per layer pair from ablations "
        "(default: tau × trace of the output covariance)",
    )
    run.add_argument(
        "--loss-tolerance",
        type=float,
        default=None,
        help="with --epsilon ablation: the loss allowed, relative to tr Cov(output) (default 0.01)",
    )
    run.add_argument(
        "--ties",
        choices=["keep", "rotate"],
        default="keep",
        help="near-degenerate features kept as fitted (default) or turned to cut fewer edges",
    )
    run.add_argument(
        "--precision",
        choices=["float64", "float32", "tf32"],
        default="float64",
        help="products of the elementwise edge kernel (sums stay float64; default float64)",
    )
    run.add_argument(
        "--edge-samples",
        type=_positive_int,
        default=None,
        help="edges from this many random data points, with standard errors (default: all)",
    )
    run.add_argument(
        "--cache-mb",
        type=float,
        default=0.0,
        help="MB of first-pass activations kept for the edge pass (default 0: none kept)",
    )
    run.add_argument("--tau", type=float, default=1e-4, help="τ of the default ε (default 1e-4)")
    run.add_argument(
        "--variant",
        choices=["local", "global"],
        default="local",
        help="Jacobian to the next layer's features (local, default) or to the output (global)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the Leiden restarts (default 0)")
    run.add_argument("--out", required=True, help="output folder (created if missing)")
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="measure the three sources of degeneracy")
    user(report)
    report.add_argument(
        "--rtol",
        type=float,
        default=1e-10,
        help="an eigenvalue counts as zero below rtol × the largest (default 1e-10)",
    )
    report.add_argument("--out", help="also write degeneracy.json in this folder")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``modgraph`` console script."""
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    threads = torch.get_num_threads()
    if args.threads is not None:  # the CLI owns the process; the library never sets this
        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `modgraph run ... | head`: the reader left, nothing to report
        return 0
    except (ModgraphError, OSError) as exc:
        print(f"modgraph {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    finally:
        if args.threads is not None:
            torch.set_num_threads(threads)
