"""The graph-scale and edge-kernel jobs, and how any job runs (here or in a fresh subprocess).

A job is a JSON-able dict with a ``"kind"`` (``pipeline``, ``positions``, ``graph``,
``kernel``, ``leiden``, ``leiden_breakeven`` or ``speed``), the thread count and the matmul-rate
settings; :func:`run_job` runs it in a fresh
``python -m bench.run --job '<json>'`` process so that its peak memory is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import modgraph
from modgraph import basis as mg_basis
from modgraph import capture, cluster, elementwise, kernels
from modgraph.options import Options

from .baseline import mlp_sections, run_baseline
from .leiden import breakeven_job, leiden_job
from .meter import RATE, Meter, matmul_rate
from .models import make_data, make_model, synthetic_matrices
from .pipeline import pipeline_job, relative_gap, run_pipeline
from .positions import positions_job
from .speed import speed_job

__all__ = ["ROOT", "execute", "graph_job", "kernel_job", "run_job", "synthetic_matrices"]

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Graph scale
# --------------------------------------------------------------------------------------------


def graph_job(job: dict[str, Any]) -> dict[str, Any]:
    """Graph build, Leiden and GraphML export on a synthetic graph of about ``n_edges`` edges."""
    n_restarts = job["n_restarts"]
    mats = synthetic_matrices(job["n_edges"])
    workdir = Path(tempfile.mkdtemp(prefix="modgraph-bench-"))
    meter = Meter()
    meter.start()
    with meter("build"):
        graph = modgraph.InteractionGraph.from_matrices(mats, epsilon=1.0)
    with meter("edge_list"):
        n_edges = int(graph.edge_list()["weight"].shape[0])
    with meter("to_igraph"):
        graph.to_igraph()
    with meter("leiden"):
        partition = cluster.leiden_modules(graph, n_restarts=n_restarts, seed=0)
    with meter("graphml"):
        graph.to_graphml(workdir / "graph.graphml", partition.membership)
    size = (workdir / "graph.graphml").stat().st_size
    rec = meter.records
    return {
        "n_edges": n_edges,
        "n_nodes": graph.n_nodes,
        "n_restarts": n_restarts,
        "n_modules": len(partition.modules),
        "stages": rec,
        "build_plus_leiden_s": rec["build"]["seconds"] + rec["leiden"]["seconds"],
        "graphml_mb": size / 2**20,
        "peak_mb": max(r["peak_mb"] for r in rec.values()),
    }


# --------------------------------------------------------------------------------------------
# The elementwise edge kernel: the library's, and experiments beside it
# --------------------------------------------------------------------------------------------

#: Edge-kernel variants: ``library`` is modgraph's own function, the others are experiments.
KERNEL_VARIANTS = ("library", "matmul_only", "chunks_64mb", "einsum_64mb", "float32")


def _experiment(variant: str, a: torch.Tensor, lin: torch.nn.Linear, src: Any, dst: Any) -> Any:
    """One batch of the edge kernel ``Σ_x (P diag(s_x) Q)² ∘ f_x²`` written out by hand, as an
    experiment beside the library's ``elementwise.elementwise_edges`` (the same per-batch
    work: ``z``, ``s = σ'(z)`` for ReLU, features, ``Q = W C⁺ᵀ``; then the kernel):

    - ``matmul_only``: the library's chunks, the Γ GEMM alone (the floor of its layout);
    - ``chunks_64mb``: the library's operations in 64 MB chunks (out of cache);
    - ``einsum_64mb``: the kernel before issue 6 (``gamma *= f``, then
      ``einsum("bij,bij->ij")``, which torch runs as a batched matmul over permuted copies);
    - ``float32``: the library's chunks with the GEMM and squares in float32, sums in float64.
    """
    W = lin.weight.to(torch.float64)
    P, Q = dst.C.T, W @ src.C_pinv.T  # (k', d'), (d', k)
    centred = a - src.mean
    f = centred @ src.C
    s = (torch.nn.functional.linear(a, lin.weight, lin.bias) > 0).to(torch.float64)
    k_next, d_next, k = P.shape[0], P.shape[1], Q.shape[1]
    elements = 2**23 if variant.endswith("64mb") else elementwise.CACHE_ELEMENTS
    rows = max(1, elements // max(1, k_next * max(d_next, k)))
    dtype = torch.float32 if variant == "float32" else torch.float64
    P, Q, s, f = (t.to(dtype) for t in (P, Q, s, f))
    total = torch.zeros((k_next, k), dtype=torch.float64)
    for sc, fc in zip(s.split(rows), f.split(rows)):
        gamma = ((P[None] * sc[:, None, :]).reshape(-1, d_next) @ Q).reshape(-1, k_next, k)
        if variant == "einsum_64mb":
            gamma *= fc[:, None, :]
            total += torch.einsum("bij,bij->ij", gamma, gamma)
        elif variant != "matmul_only":
            gamma.square_()
            gamma *= fc.square()[:, None, :]
            total += gamma.sum(0, dtype=torch.float64)
    return total


def kernel_job(job: dict[str, Any]) -> dict[str, Any]:
    """The elementwise edge kernel on the first section of a ``d-w-w-10`` ReLU MLP.

    The ``library`` row calls ``modgraph.elementwise.elementwise_edges`` (what
    ``compute_edges`` calls for every batch) on the library's own inputs: bases fitted by
    ``basis.fit_bases`` on ``rows`` inputs, source activations recorded by the session's
    tracer, batch by batch. The other rows are experiments (:func:`_experiment`). All give the
    same ``E``; "of f64 matmul" counts the Γ GEMM alone, ``2·rows·k'·d'·k``.
    """
    rows, w, d_in = job["rows"], job["width"], job.get("input_dim", 784)
    options = Options(batch_size=job.get("batch_size", 256), progress=False).validated("bench")
    model = make_model([d_in, w, w, 10], "shortcut")
    with capture.session(model, make_data(rows, d_in, seed=1), None, options) as sess:
        bases = mg_basis.fit_bases(sess, mg_basis.measure_statistics(sess, options), options)
        section = sess.plan.sections[0]
        src = elementwise.LayerTensors(bases[section.source], sess.device)
        dst = elementwise.LayerTensors(bases[section.target], sess.device)
        alphas, weights = kernels.quadrature(1)
        assert section.linear is not None and section.activation is not None
        lin = section.linear
        with torch.no_grad():
            acts = [
                sess.tracer.run(x, record=[section.source])[section.source]
                for x in sess.batches("bench")
            ]

            def kernel(variant: str) -> tuple[float, torch.Tensor]:
                t0 = time.perf_counter()
                if variant == "library":
                    parts = [
                        elementwise.elementwise_edges(section, a, src, dst, alphas, weights)
                        for a in acts
                    ]
                else:
                    parts = [_experiment(variant, a, lin, src, dst) for a in acts]
                return time.perf_counter() - t0, torch.stack(parts).sum(0)

            kernel("library")  # warm-up
            seconds, results = {}, {}
            rate64 = matmul_rate(torch.float64)
            for v in KERNEL_VARIANTS:
                seconds[v], results[v] = kernel(v)
    rate32 = matmul_rate(torch.float32)
    rate64 = 0.5 * (rate64 + matmul_rate(torch.float64))
    k_next, d_next, k = dst.C.shape[1], lin.out_features, src.C.shape[1]
    mm_flops = 2.0 * rows * k_next * d_next * k
    ref = results["library"].numpy()
    return {
        "rows": rows,
        "width": w,
        "shape": {"k_next": k_next, "d_next": d_next, "k": k},
        "matmul_gflops": {"float64": rate64, "float32": rate32},
        "gemm_gflop": mm_flops / 1e9,
        "seconds": seconds,
        "frac_matmul": {v: mm_flops / t / 1e9 / rate64 for v, t in seconds.items()},
        "rel_error": {
            v: relative_gap(r.numpy(), ref) for v, r in results.items() if v != "matmul_only"
        },
    }


# --------------------------------------------------------------------------------------------
# Running a job
# --------------------------------------------------------------------------------------------

JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": pipeline_job,
    "graph": graph_job,
    "kernel": kernel_job,
    "positions": positions_job,
    "leiden": leiden_job,
    "leiden_breakeven": breakeven_job,
    "speed": speed_job,
}

_WARM = False


def warm_up() -> None:
    """Pay one-off costs (lazy imports, first calls of torch.func and leidenalg) before timing."""
    global _WARM
    if _WARM:
        return
    _WARM = True
    widths = [8, 6, 6, 3]
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("shortcut", "autograd"):
            model = make_model(widths, path)
            graphml = Path(tmp) / "w.xml"
            run_pipeline(model, make_data(64, 8), batch_size=32, meter=Meter(), graphml=graphml)
    run_baseline(make_data(64, 8), mlp_sections(make_model(widths, "shortcut")))
    matmul_rate(n=256, repeats=1, min_seconds=0.01)


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process (with the job's thread count), after a warm-up."""
    threads, rate = torch.get_num_threads(), dict(RATE)
    try:
        RATE.update(job.get("rate") or {})
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        warm_up()
        t0 = time.perf_counter()
        out = JOBS[job["kind"]](job)
    finally:
        torch.set_num_threads(threads)
        RATE.update(rate)
    out["job"] = dict(job)
    out["wall_seconds"] = time.perf_counter() - t0
    return out


def run_job(job: dict[str, Any], *, in_process: bool = False) -> dict[str, Any]:
    """Run one job in a fresh ``python -m bench.run --job`` subprocess (or here)."""
    if in_process:
        return execute(job)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--job", json.dumps(job)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark job {job} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len("RESULT ") :])
