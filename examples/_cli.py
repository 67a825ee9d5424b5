"""The command line every example shares: ``--out``, ``--quick``, ``--seed``, ``--threads``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch


def run_example(
    doc: str,
    name: str,
    run: Callable[[argparse.Namespace], int],
    argv: list[str] | None,
    *,
    quick_help: str,
) -> int:
    """Parse the shared options, then call ``run(args)`` with torch's thread count set (and
    restored afterwards, so a calling test process is not affected)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/examples") / name)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: small models)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # small matrices: more threads only contend
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)
