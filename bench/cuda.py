"""Stages on CUDA (issue 17): ``python -m bench.cuda [--n N] [--width W]``.

On a machine with a CUDA device, times every stage of the library on a CUDA model with the
data on the CPU (the library copies batches from pinned memory, non-blocking): the bases
(``interaction_basis``), the edges (``interaction_graph`` with the bases given), and the Leiden
search (``leiden_modules``, on the CPU), with the edge products in float64 (the default), float32
and TF32 (``precision=``), and the relative error of the edges against float64. Without CUDA it
says so and exits 0 (CI never has a GPU). Every row calls today's public code.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

import modgraph
from modgraph.toy import mlp

__all__ = ["main", "stage_times"]


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def stage_times(n: int, width: int, device: torch.device) -> list[dict[str, Any]]:
    """One row per precision: seconds of each stage and the edges' error against float64."""
    model = mlp([784, width, width, 10], seed=0).to(device)
    x = torch.randn(n, 784, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kwargs = {"progress": False, "device": device}
    modgraph.interaction_basis(model, x[:256], **kwargs)  # warm-up (kernels, allocator)
    bases, t_basis = _timed(lambda: modgraph.interaction_basis(model, x, **kwargs), device)
    rows, reference = [], None
    for precision in ("float64", "float32", "tf32"):
        graph, t_edges = _timed(
            lambda p=precision: modgraph.interaction_graph(model, x, bases, precision=p, **kwargs),
            device,
        )
        _, t_search = _timed(lambda g=graph: modgraph.leiden_modules(g), device)
        if reference is None:
            reference = graph
        error = max(
            float(np.abs(graph.edges[k] - E).max() / max(np.abs(E).max(), 1e-300))
            for k, E in reference.edges.items()
        )
        rows.append(
            {
                "precision": precision,
                "basis_s": t_basis,
                "edges_s": t_edges,
                "search_s": t_search,
                "edge_error": error,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cuda", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n", type=int, default=10_000, help="data points")
    parser.add_argument("--width", type=int, default=512, help="hidden width of 784-w-w-10")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the CUDA stages were not measured (nothing to do on this machine)")
        return 0
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, 784-{args.width}-{args.width}-10, N={args.n}")
    rows = stage_times(args.n, args.width, device)
    base = rows[0]["edges_s"]
    print("precision  basis s  edges s  (x float64)  search s  edge error")
    for r in rows:
        print(
            f"{r['precision']:9}  {r['basis_s']:7.2f}  {r['edges_s']:7.2f}  "
            f"({base / r['edges_s']:5.2f}x)  {r['search_s']:8.2f}  {r['edge_error']:.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
