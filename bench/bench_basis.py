"""Speed of ``interaction_basis`` (issue 2): MLP 784-512-512-10, 20,000 random inputs, CPU, float64.

``python -m bench.bench_basis`` (or ``python bench/bench_basis.py``) times the two stages of
:func:`modgraph.interaction_basis` (the means/Gram pass and the basis Jacobian stage) on the
elementwise shortcut (``nn.Sequential`` with ``nn.ReLU``) and on the autograd path (the same
function with ``F.relu`` in a custom ``forward``), then the public call end to end, and prints
seconds, peak memory (RSS above the process's memory before the stage) and the achieved FLOP rate
against the float64 matmul rate measured in the same run (before and after each path).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import modgraph
from bench.jobs import ROOT, warm_up
from bench.meter import Meter, matmul_rate
from bench.models import make_data, make_model, stage_flops, totals
from bench.pipeline import FLOP_KEYS, run_pipeline, stage_table
from bench.run import STAGE_HEADERS, format_table, machine_info, stage_rows

__all__ = ["basis_benchmark", "main"]


def basis_benchmark(
    widths: Sequence[int] = (784, 512, 512, 10),
    n: int = 20_000,
    *,
    paths: Sequence[str] = ("shortcut", "autograd"),
    batch_size: int = 256,
    autograd_n: int | None = None,
) -> dict[str, Any]:
    """Time ``interaction_basis`` per stage on each path; returns a JSON-able dict.

    ``autograd_n``: number of inputs on the autograd path (default ``n``); its cost is linear in
    N and about 1,600 times the shortcut's Jacobian stage at 784-512-512-10.
    """
    out: dict[str, Any] = {"widths": list(widths), "n": n, "batch_size": batch_size}
    for path in paths:
        n_path = autograd_n or n if path == "autograd" else n
        x = make_data(n_path, widths[0], seed=1)
        model = make_model(widths, path)
        meter = Meter(("gram", "basis"))
        rate_before = matmul_rate()
        # the library's first two stages, timed one by one (graphml=None stops after "basis")
        res = run_pipeline(model, x, batch_size=batch_size, meter=meter)
        t0 = time.perf_counter()
        public = modgraph.interaction_basis(model, x, batch_size=batch_size, progress=False)
        end_to_end = time.perf_counter() - t0
        rate = 0.5 * (rate_before + matmul_rate())
        bases = res["bases"]
        flops = totals(stage_flops(*(res[key] for key in FLOP_KEYS), n_path, batch_size))
        same = all(
            public[m].eigenvalues.shape == b.eigenvalues.shape
            and abs(public[m].eigenvalues - b.eigenvalues).max() <= 1e-10 * abs(b.eigenvalues).max()
            for m, b in bases.items()
        )
        out[path] = {
            "n": n_path,
            "matmul_gflops": rate,
            "stages": stage_table(meter.records, flops, rate),
            "interaction_basis_seconds": end_to_end,
            "public_call_agrees": bool(same),
            **{key: res[key] for key in ("dims", "ks", "kinds")},
        }
    return out


def report(res: dict[str, Any]) -> str:
    rows = []
    for path in ("shortcut", "autograd"):
        if path in res:
            r = res[path]
            total = ["interaction_basis()", r["interaction_basis_seconds"], "", "", "",
                     r["matmul_gflops"], ""]  # fmt: skip
            rows += stage_rows([path, r["n"]], r["stages"], total)
    return format_table(["path", "N", *STAGE_HEADERS], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_basis", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--widths", default="784,512,512,10")
    parser.add_argument("--paths", default="shortcut,autograd")
    parser.add_argument(
        "--autograd-n",
        type=int,
        default=2_500,
        help="inputs on the autograd path (default 2,500: it costs ~20 TFLOP at N=20,000)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "basis.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    print(f"interaction_basis on MLP {args.widths}, N={args.n}: {machine_info(args.threads)}")
    warm_up()
    res = basis_benchmark(
        widths, args.n, paths=paths, batch_size=args.batch_size, autograd_n=args.autograd_n
    )
    res["machine"] = machine_info(args.threads)
    print(report(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
