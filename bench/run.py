"""modgraph benchmarks (issue 6): stages, baseline, scaling and graph scale, as ratios in one run.

``python -m bench [--quick] [--out bench/results/bench.json]`` prints tables and writes them as JSON.
Every configuration runs in a fresh subprocess (``python -m bench.run --job '<json>'``) so that
its peak memory is its own; inside it the float64 matrix-multiply rate is measured right before
and after the timed stages, and modgraph and the baseline run back to back, so every ratio printed
(achieved FLOP rate / matmul rate, baseline / modgraph) comes from one process on one machine state.

Stages (seconds, peak resident memory above the process's memory before the stage ran, FLOPs):

- ``gram``: one pass over the data, means and covariances of every node layer (and the
  co-activation Grams ``E[σ'σ'ᵀ]`` that the elementwise shortcut needs);
- ``basis``: the Jacobian stage, ``M' = E[Jᵀ A J]`` and the eigen-decompositions (no data pass on
  the elementwise shortcut, one autograd pass per section otherwise);
- ``edges``: the interaction strengths, one pass;
- ``graph``: building the :class:`~modgraph.InteractionGraph` and its edge list;
- ``leiden``: :func:`modgraph.leiden_modules` (igraph build + Leiden restarts);
- ``graphml``: :meth:`~modgraph.InteractionGraph.to_graphml`.

The minimal FLOP count of each stage is in :func:`stage_flops` (formulas in ``bench/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import modgraph
from modgraph import basis as mg_basis
from modgraph import capture, cluster, interactions
from modgraph.toy import mlp

from .baseline import mlp_sections, run_baseline

__all__ = [
    "SIZES",
    "FunctionalMLP",
    "Meter",
    "fit_exponent",
    "main",
    "matmul_rate",
    "run_job",
    "stage_flops",
    "synthetic_matrices",
]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "bench.json"
NUMERIC_STAGES = ("gram", "basis", "edges")
GRAPH_STAGES = ("graph", "leiden", "graphml")
STAGES = NUMERIC_STAGES + GRAPH_STAGES

#: Problem sizes per mode. ``tiny`` is for the test suite only.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "input_dim": 784,
        "n": 10_000,
        "widths": (256, 512),
        "baseline_widths": (256,),
        "scaling_width": 256,
        "scaling_n": (2_500, 10_000, 40_000),
        "scaling_widths": (128, 256, 512),
        "graph_edges": (10_000, 100_000, 1_000_000),
        "big_graph": 1_000_000,
        "kernel_rows": 4_000,
        "rate": {"n": 1024, "repeats": 5, "min_seconds": 0.2},
        "isolate": True,
    },
    "quick": {
        "input_dim": 784,
        "n": 500,
        "widths": (128,),
        "baseline_widths": (128,),
        "scaling_width": 128,
        "scaling_n": (500, 1_000, 2_000),
        "scaling_widths": (64, 128, 256),
        "graph_edges": (10_000, 100_000),
        "big_graph": 100_000,
        "kernel_rows": 500,
        "rate": {"n": 1024, "repeats": 3, "min_seconds": 0.1},
        "isolate": False,
    },
    "tiny": {
        "input_dim": 24,
        "n": 200,
        "widths": (12,),
        "baseline_widths": (12,),
        "scaling_width": 12,
        "scaling_n": (100, 200),
        "scaling_widths": (8, 12),
        "graph_edges": (300,),
        "big_graph": 1_000_000,
        "kernel_rows": 50,
        "rate": {"n": 128, "repeats": 1, "min_seconds": 0.001},
        "isolate": False,
    },
}
OUTPUT_DIM = 10
BATCH_SIZE = 256  # modgraph's default
N_RESTARTS = 8  # leiden_modules' default; 1 on the largest graph (cfg "big_graph")
BIG_GRAPH = 1_000_000  # the size of the Leiden + build target


# --------------------------------------------------------------------------------------------
# Machine: matmul rate, memory
# --------------------------------------------------------------------------------------------


#: How :func:`matmul_rate` measures by default (a job may override it with its "rate" entry).
RATE = {"n": 1024, "repeats": 5, "min_seconds": 0.2}


def matmul_rate(
    dtype: torch.dtype = torch.float64,
    n: int | None = None,
    repeats: int | None = None,
    min_seconds: float | None = None,
) -> float:
    """Float matrix-multiply rate in GFLOP/s (``n × n`` by ``n × n``), median of ``repeats``."""
    n = n or RATE["n"]
    repeats = repeats or RATE["repeats"]
    min_seconds = min_seconds or RATE["min_seconds"]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, dtype=dtype, generator=gen)
    b = torch.randn(n, n, dtype=dtype, generator=gen)
    a @ b  # warm-up
    rates = []
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        rates.append(2.0 * n**3 * count / elapsed / 1e9)
    return float(np.median(rates))


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim(collect: bool = False) -> None:
    """Give freed heap back to the OS so that RSS before a stage is what is really in use."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:  # pragma: no cover - non-Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def peak_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # pragma: no cover - non-Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


class Meter:
    """Seconds and peak resident memory of named stages.

    ``peak_mb`` of a stage is the process's peak RSS during the stage minus its RSS when
    :meth:`start` was called (after the model and the data were made), so it is the working memory
    of the computation, without the inputs the caller holds anyway. On Linux the kernel's peak
    counter is reset before each stage; elsewhere ``ru_maxrss`` (monotone) is used, and a fresh
    process per configuration keeps it meaningful.
    """

    def __init__(self, rate_stages: Sequence[str] = ()) -> None:
        self.records: dict[str, dict[str, float]] = {}
        self.origin = 0.0
        self.exact_peaks = True
        self.rate_stages = frozenset(rate_stages)

    def start(self) -> None:
        _trim(collect=True)
        self.origin = rss_mb()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time ``stage``; for the ``rate_stages``, also measure the matmul rate right before and
        after it (outside the timed and peak-measured span) and record their mean."""
        before = matmul_rate() if stage in self.rate_stages else None
        _trim()
        self.exact_peaks &= _reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self.records[stage] = {
                "seconds": seconds,
                "peak_mb": max(0.0, peak_mb() - self.origin),
            }
            if before is not None:
                self.records[stage]["matmul_gflops"] = 0.5 * (before + matmul_rate())


# --------------------------------------------------------------------------------------------
# Models, data and the FLOP model
# --------------------------------------------------------------------------------------------


class FunctionalMLP(nn.Module):
    """The function of a Sequential ReLU MLP, with ``F.relu`` in ``forward``.

    modgraph cannot see a functional nonlinearity as a module, so the sections between hidden
    layers take its general path (batched autograd VJPs) instead of the elementwise shortcut.
    """

    def __init__(self, sequential: nn.Sequential) -> None:
        super().__init__()
        self.linears = nn.ModuleList(
            copy.deepcopy(m) for m in sequential if isinstance(m, nn.Linear)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.linears
        for lin in hidden:
            x = F.relu(lin(x))
        return last(x)


def make_model(widths: Sequence[int], path: str, seed: int = 0) -> nn.Module:
    """``nn.Sequential`` ReLU MLP (``path="shortcut"``) or its :class:`FunctionalMLP` twin."""
    seq = mlp(list(widths), nn.ReLU, seed=seed)
    return seq if path == "shortcut" else FunctionalMLP(seq)


def make_data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=torch.float64, generator=gen)


def _eigh_flops(n: int) -> float:
    """Symmetric eigen-decomposition with vectors: tridiagonal reduction 4/3 n³ plus
    back-transformation 2 n³ (a lower bound; the tridiagonal solver is not counted)."""
    return (4 / 3 + 2) * n**3


def stage_flops(
    dims: Sequence[int],
    ks: Sequence[int],
    ranks: Sequence[int],
    kinds: Sequence[str],
    n: int,
) -> dict[str, float]:
    """Minimal FLOPs of the numeric stages for a chain of sections.

    ``dims[l]``, ``ks[l]``, ``ranks[l]``: width, kept features and covariance rank of node layer
    ``l`` (``l = 0..L``, the output last); ``kinds[l]`` is the kind of section ``l → l+1``:
    ``"elementwise"`` (Linear + elementwise nonlinearity), ``"junction"`` (Linear alone) or
    ``"autograd"`` (anything else, run through batched VJPs). Multiply-adds count as 2 FLOPs.
    """
    L = len(kinds)
    fwd = [2.0 * n * dims[l] * dims[l + 1] for l in range(L)]  # forward of each section
    flops = dict.fromkeys(NUMERIC_STAGES, 0.0)
    # gram: the forward, then one Gram 2·N·d² per node layer (+ E[σ'σ'ᵀ] per elementwise section)
    flops["gram"] = sum(fwd) + sum(2.0 * n * d * d for d in dims)
    flops["gram"] += sum(2.0 * n * dims[l + 1] ** 2 for l in range(L) if kinds[l] == "elementwise")
    last_source = max((l for l in range(L) if kinds[l] != "junction"), default=-1)
    flops["edges"] = sum(fwd[: last_source + 1])  # the edge pass runs the forward once
    for l in range(L):
        d, dn, k, kn, r = dims[l], dims[l + 1], ks[l], ks[l + 1], ranks[l]
        # basis: M = D^½UᵀM'UD^½, two eigh, C and C⁺
        flops["basis"] += 2.0 * d * d * r + 2.0 * d * r * r + _eigh_flops(d) + _eigh_flops(r)
        flops["basis"] += 2.0 * d * r * k + 4.0 * k * d * r
        if kinds[l] == "autograd":
            # recompute the forward up to l+1, one VJP per next feature, Gram of the VJPs
            flops["basis"] += sum(fwd[: l + 1]) + 2.0 * n * kn * dn * d + 2.0 * n * kn * d * d
            # edges: VJPs (2·N·k'·d'·d), to feature coordinates (2·N·k'·d·k), (Γ·f)² summed
            flops["edges"] += 2.0 * n * kn * dn * d + 2.0 * n * kn * d * k
            flops["edges"] += 2.0 * n * d * k + 3.0 * n * kn * k
        else:
            # shortcut M' = Wᵀ(A ∘ S)W with A = C_{l+1}C_{l+1}ᵀ
            flops["basis"] += 2.0 * dn * dn * kn + 2.0 * d * dn * dn + 2.0 * d * d * dn
            if kinds[l] == "elementwise":
                # Γ(x) = P diag(σ'(z)) Q: 2·N·k'·d'·k, features 2·N·d·k, (Γ·f)² summed 3·N·k'·k
                flops["edges"] += 2.0 * n * kn * dn * k + 2.0 * n * d * k + 3.0 * n * kn * k
            else:  # junction: E = (C_{l+1}ᵀ W C_l⁺ᵀ)² Λ, no data pass
                flops["edges"] += 2.0 * kn * dn * d + 2.0 * kn * d * k
    return flops


def section_kinds(plan: capture.Plan) -> list[str]:
    return [
        "autograd" if not s.elementwise else ("junction" if s.activation is None else "elementwise")
        for s in plan.sections
    ]


# --------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------


def _profiled(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if not enabled:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU])


def _top_ops(prof: Any, rows: int = 8) -> list[dict[str, Any]]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "calls": int(e.count),
            "self_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:rows]
    ]


def run_pipeline(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int,
    meter: Meter,
    graphml: Path,
    n_restarts: int = N_RESTARTS,
    profile: bool = False,
) -> dict[str, Any]:
    """All stages of ``find_modules`` on ``model`` and ``x``, each under ``meter``."""
    profiles: dict[str, Any] = {}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        with meter(name), _profiled(profile) as prof:
            yield
        if prof is not None:
            profiles[name] = _top_ops(prof)

    options = mg_basis.BasisOptions(batch_size=batch_size, progress=False)
    meter.start()
    with contextlib.ExitStack() as stack:
        with stage("gram"):
            sess = stack.enter_context(options.session(model, x, None, "bench"))
            stats = options.statistics(sess)
        with stage("basis"):
            bases = options.fit(sess, stats)
        with stage("edges"):
            edges = interactions.compute_edges(sess, bases, n_alpha=1)
        plan = sess.plan
    with stage("graph"):
        graph = interactions.build_graph(bases, edges, epsilon=None, tau=1e-4, n_alpha=1)
        n_edges = int(graph.edge_list()["weight"].shape[0])
    with stage("leiden"):
        partition = cluster.leiden_modules(graph, n_restarts=n_restarts, seed=0)
    with stage("graphml"):
        graph.to_graphml(graphml, partition.membership)
    names = list(bases)
    return {
        "bases": bases,
        "edges": edges,
        "layers": names,
        "dims": [plan.dims[n] for n in names],
        "ks": [bases[n].k for n in names],
        "ranks": [bases[n].gram_rank for n in names],
        "kinds": section_kinds(plan),
        "n_edges": n_edges,
        "n_modules": len(partition.modules),
        "profiles": profiles,
    }


def _relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a − b| / max |b|`` (inf when the shapes differ)."""
    if a.shape != b.shape:
        return math.inf
    scale = float(np.abs(b).max()) if b.size else 0.0
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max(initial=0))


def _stage_table(
    records: dict[str, dict[str, float]], flops: dict[str, float], rate: float
) -> dict:
    out = {}
    for name, rec in records.items():
        row = dict(rec)
        if name in flops:
            achieved = flops[name] / max(rec["seconds"], 1e-12) / 1e9
            reference = rec.get("matmul_gflops", rate)  # the stage's own rate when measured
            row.update(gflop=flops[name] / 1e9, gflops=achieved, frac_matmul=achieved / reference)
        out[name] = row
    return out


def pipeline_job(job: dict[str, Any]) -> dict[str, Any]:
    """modgraph on both paths (and the baseline) for one MLP and one data size, back to back."""
    widths, n = job["widths"], job["n"]
    x = make_data(n, widths[0], seed=1)
    result: dict[str, Any] = {"widths": widths, "n": n, "batch_size": job["batch_size"]}
    pipelines: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="modgraph-bench-"))
    for path in job["paths"]:
        model = make_model(widths, path)
        meter = Meter(NUMERIC_STAGES)
        rate_before = matmul_rate()
        out = run_pipeline(
            model,
            x,
            batch_size=job["batch_size"],
            meter=meter,
            graphml=workdir / f"{path}.graphml",
            profile=job.get("profile", False),
        )
        rate = 0.5 * (rate_before + matmul_rate())
        flops = stage_flops(out["dims"], out["ks"], out["ranks"], out["kinds"], n)
        pipelines[path] = out
        result[path] = {
            "matmul_gflops": rate,
            "matmul_gflops_before_after": [rate_before, 2 * rate - rate_before],
            "stages": _stage_table(meter.records, flops, rate),
            "total_seconds": sum(r["seconds"] for r in meter.records.values()),
            "peak_mb": max(r["peak_mb"] for r in meter.records.values()),
            "exact_peaks": meter.exact_peaks,
            "layers": out["layers"],
            "dims": out["dims"],
            "ks": out["ks"],
            "kinds": out["kinds"],
            "n_edges": out["n_edges"],
            "n_modules": out["n_modules"],
            "profiles": out["profiles"],
        }
        del out, model, meter
        _trim()
    if job.get("baseline"):
        model = make_model(widths, "shortcut")
        meter = Meter(NUMERIC_STAGES)
        rate_before = matmul_rate()
        meter.start()
        base = run_baseline(x, mlp_sections(model), batch_size=job["batch_size"], meter=meter)
        rate = 0.5 * (rate_before + matmul_rate())
        ref = next(iter(pipelines.values()))
        flops = stage_flops(ref["dims"], ref["ks"], ref["ranks"], ["autograd"] * len(widths[1:]), n)
        agreement = {}
        for path, out in pipelines.items():
            bases = list(out["bases"].values())
            eig = max(
                _relative_gap(b.eigenvalues.numpy(), m.eigenvalues)
                for b, m in zip(base.bases, bases)
            )
            edge = max(
                _relative_gap(b.numpy(), m) for b, m in zip(base.edges, out["edges"].values())
            )
            total_base = sum(base.seconds.values())
            total_mg = sum(result[path]["stages"][s]["seconds"] for s in NUMERIC_STAGES)
            # matmul-seconds (seconds × the rate measured around each stage): the comparison
            # corrected for a machine whose speed drifts (other processes on shared cores)
            work_base = sum(rec["seconds"] * rec["matmul_gflops"] for rec in meter.records.values())
            work_mg = sum(
                result[path]["stages"][s]["seconds"] * result[path]["stages"][s]["matmul_gflops"]
                for s in NUMERIC_STAGES
            )
            agreement[path] = {
                "eigenvalues_rel": eig,
                "edges_rel": edge,
                "agree_1e-8": bool(eig <= 1e-8 and edge <= 1e-8),
                "speedup": {
                    s: base.seconds[s] / result[path]["stages"][s]["seconds"]
                    for s in NUMERIC_STAGES
                },
                "speedup_numeric": total_base / total_mg,
                "speedup_numeric_rate_normalised": work_base / work_mg,
            }
        result["baseline"] = {
            "matmul_gflops": rate,
            "stages": _stage_table(meter.records, flops, rate),
            "total_seconds": sum(base.seconds.values()),
            "peak_mb": max(r["peak_mb"] for r in meter.records.values()),
            "vs": agreement,
        }
    return result


# --------------------------------------------------------------------------------------------
# Graph scale
# --------------------------------------------------------------------------------------------


def synthetic_matrices(
    n_edges: int,
    *,
    n_layers: int = 11,
    density: float = 0.1,
    n_modules: int = 8,
    mixing: float = 0.2,
    epsilon: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Layered interaction matrices with about ``n_edges`` entries above ``epsilon``.

    ``n_layers`` node layers of equal width ``w ≈ sqrt(n_edges / ((n_layers − 1) · density))``;
    each feature belongs to one of ``n_modules`` planted modules (contiguous blocks); a fraction
    ``mixing`` of the entries above ε join different modules. Above ε: ``E = ε·exp(2·Exp(1))``
    (cost ``½ ln(E/ε)`` exponential with mean 1); below: ``E = ε·U(0, 1)``.
    """
    rng = np.random.default_rng(seed)
    pairs = n_layers - 1
    w = max(2, round(math.sqrt(n_edges / (pairs * density))))
    p_in = min(1.0, (1 - mixing) * density * n_modules)
    p_out = mixing * density / (1 - 1 / n_modules)
    labels = np.arange(w) * n_modules // w
    same = labels[:, None] == labels[None, :]
    prob = np.where(same, p_in, p_out)
    mats = []
    for _ in range(pairs):
        above = rng.random((w, w)) < prob
        E = epsilon * rng.random((w, w))
        E[above] = epsilon * np.exp(2.0 * rng.exponential(1.0, int(above.sum())) + 1e-9)
        mats.append(E)
    return mats


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
# The edge kernel in float32 (a measurement for the float32 question of issue 6)
# --------------------------------------------------------------------------------------------


def kernel_job(job: dict[str, Any]) -> dict[str, Any]:
    """The elementwise edge kernel ``Σ_x (P diag(s_x) Q ⊙ f_x)²`` of a ``784-w-w-10`` first section.

    ``P (k', d')``, ``Q (d', k)``, ``s (N, d')`` (ReLU slopes), ``f (N, k)`` features, with
    ``k' = d' = k = w``. Variants (all give the same ``E``):

    - ``library``: modgraph's current code (64 MB chunks; ``gamma *= f``, then
      ``einsum("bij,bij->ij")``, which torch runs as a batched matmul over permuted copies);
    - ``matmul_only``: the chunked GEMM alone (the floor of the library layout);
    - ``square_sum``: the same GEMM, then ``(gamma * f).square_().sum(0)``;
    - ``square_sum_small``: as ``square_sum`` in 2 MB chunks, so the elementwise passes stay in cache;
    - ``float32``: ``square_sum_small`` with the GEMM in float32, sums accumulated in float64.
    """
    rows, w = job["rows"], job["width"]
    gen = torch.Generator().manual_seed(0)
    P = torch.randn(w, w, dtype=torch.float64, generator=gen)
    Q = torch.randn(w, w, dtype=torch.float64, generator=gen) / w**0.5
    s = (torch.rand(rows, w, generator=gen) > 0.5).to(torch.float64)
    f = torch.randn(rows, w, dtype=torch.float64, generator=gen)

    def kernel(variant: str) -> tuple[float, torch.Tensor]:
        dtype = torch.float32 if variant == "float32" else torch.float64
        elements = 2**18 if variant in ("square_sum_small", "float32") else 2**23
        chunk = max(1, elements // (w * w))
        P_, Q_, s_, f_ = (t.to(dtype) for t in (P, Q, s, f))
        total = torch.zeros(w, w, dtype=torch.float64)
        t0 = time.perf_counter()
        for sc, fc in zip(s_.split(chunk), f_.split(chunk)):
            gamma = ((P_[None] * sc[:, None, :]).reshape(-1, w) @ Q_).reshape(-1, w, w)
            if variant == "library":
                gamma *= fc[:, None, :]
                total += torch.einsum("bij,bij->ij", gamma, gamma)
            elif variant != "matmul_only":
                gamma *= fc[:, None, :]
                total += gamma.square_().sum(0, dtype=torch.float64)
        return time.perf_counter() - t0, total

    kernel("library")  # warm-up
    variants = ["library", "matmul_only", "square_sum", "square_sum_small", "float32"]
    seconds, results = {}, {}
    rate64 = matmul_rate(torch.float64)
    for v in variants:
        seconds[v], results[v] = kernel(v)
    rate32 = matmul_rate(torch.float32)
    rate64 = 0.5 * (rate64 + matmul_rate(torch.float64))
    mm_flops = 2.0 * rows * w * w * w
    ref = results["library"].numpy()
    return {
        "rows": rows,
        "width": w,
        "matmul_gflops": {"float64": rate64, "float32": rate32},
        "gemm_gflop": mm_flops / 1e9,
        "seconds": seconds,
        "frac_matmul": {v: mm_flops / t / 1e9 / rate64 for v, t in seconds.items()},
        "rel_error": {
            v: _relative_gap(r.numpy(), ref) for v, r in results.items() if v != "matmul_only"
        },
    }


# --------------------------------------------------------------------------------------------
# Jobs in subprocesses
# --------------------------------------------------------------------------------------------

JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pipeline": pipeline_job,
    "graph": graph_job,
    "kernel": kernel_job,
}


_WARM = False


def warm_up() -> None:
    """Pay one-off costs (lazy imports, first calls of torch.func and leidenalg) before timing."""
    global _WARM
    if _WARM:
        return
    _WARM = True
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("shortcut", "autograd"):
            model = make_model([8, 6, 6, 3], path)
            run_pipeline(
                model, make_data(64, 8), batch_size=32, meter=Meter(), graphml=Path(tmp) / "w.xml"
            )
    run_baseline(make_data(64, 8), mlp_sections(make_model([8, 6, 6, 3], "shortcut")))
    matmul_rate(n=256, repeats=1, min_seconds=0.01)


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in this process (with the job's thread count), after a warm-up."""
    threads, rate = torch.get_num_threads(), dict(RATE)
    try:
        RATE.update(job.get("rate") or {})
        if job.get("threads"):
            torch.set_num_threads(int(job["threads"]))
        with warnings.catch_warnings():
            # modgraph.interactions wraps read-only arrays with torch.as_tensor (harmless here)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.maximum(np.asarray(ys, float), 1e-12))
    return float(np.polyfit(lx, ly, 1)[0])


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v == 0 or 0.01 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
            return f"{v:.2e}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in text]
    return "\n".join(lines)


def _name(widths: Sequence[int]) -> str:
    return "-".join(str(w) for w in widths)


def report_pipeline(res: dict[str, Any]) -> str:
    rows = []
    for path in ("shortcut", "autograd", "baseline"):
        if path not in res:
            continue
        r = res[path]
        for stage, rec in r["stages"].items():
            rows.append(
                [
                    _name(res["widths"]),
                    res["n"],
                    path,
                    stage,
                    rec["seconds"],
                    rec["peak_mb"],
                    rec.get("gflop", ""),
                    rec.get("gflops", ""),
                    rec.get("matmul_gflops", ""),
                    f"{100 * rec['frac_matmul']:.0f}%" if "frac_matmul" in rec else "",
                ]
            )
        rows.append([_name(res["widths"]), res["n"], path, "TOTAL", r["total_seconds"],
                     r["peak_mb"], "", "", r["matmul_gflops"], ""])  # fmt: skip
    headers = ["model", "N", "path", "stage", "seconds", "peak MB", "GFLOP", "GFLOP/s",
               "matmul GF/s", "of matmul"]  # fmt: skip
    return format_table(headers, rows)


def report_baseline(res: dict[str, Any]) -> str:
    rows = []
    for path, v in res["baseline"]["vs"].items():
        rows.append(
            [
                _name(res["widths"]),
                res["n"],
                path,
                *(v["speedup"][s] for s in NUMERIC_STAGES),
                v["speedup_numeric"],
                v["speedup_numeric_rate_normalised"],
                v["eigenvalues_rel"],
                v["edges_rel"],
                "yes" if v["agree_1e-8"] else "NO",
            ]
        )
    headers = ["model", "N", "modgraph path", "x gram", "x basis", "x edges", "x total",
               "x total (rate-norm.)", "Λ rel.err", "E rel.err", "agree 1e-8"]  # fmt: skip
    return format_table(headers, rows)


def scaling_summary(results: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """Exponents of time per stage (and of peak memory) against ``key`` ("n" or "width")."""
    xs = [r["n"] if key == "n" else r["widths"][1] for r in results]
    stages = results[0]["shortcut"]["stages"]
    out = {
        "x": xs,
        "seconds": {s: [r["shortcut"]["stages"][s]["seconds"] for r in results] for s in stages},
        "peak_mb": [r["shortcut"]["peak_mb"] for r in results],
    }
    numeric = [sum(r["shortcut"]["stages"][s]["seconds"] for s in NUMERIC_STAGES) for r in results]
    out["seconds"]["numeric"] = numeric
    out["exponents"] = {s: fit_exponent(xs, t) for s, t in out["seconds"].items()}
    out["exponents"]["peak_mb"] = fit_exponent(xs, out["peak_mb"])
    out["peak_ratio_last_first"] = out["peak_mb"][-1] / max(out["peak_mb"][0], 1e-9)
    return out


def report_scaling(summary: dict[str, Any], key: str) -> str:
    stages = list(summary["seconds"])
    rows = []
    for i, x in enumerate(summary["x"]):
        rows.append([x, *(summary["seconds"][s][i] for s in stages), summary["peak_mb"][i]])
    rows.append(["exponent", *(summary["exponents"][s] for s in stages),
                 summary["exponents"]["peak_mb"]])  # fmt: skip
    return format_table([key, *stages, "peak MB"], rows)


def report_graph(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        st = r["stages"]
        rows.append(
            [
                r["n_edges"],
                r["n_nodes"],
                r["n_restarts"],
                *(
                    st[s]["seconds"]
                    for s in ("build", "edge_list", "to_igraph", "leiden", "graphml")
                ),
                r["build_plus_leiden_s"],
                r["n_modules"],
                r["peak_mb"],
            ]
        )
    headers = ["edges", "nodes", "restarts", "build s", "edge_list s", "to_igraph s", "leiden s",
               "graphml s", "build+leiden s", "modules", "peak MB"]  # fmt: skip
    return format_table(headers, rows)


def machine_info(threads: int | None) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads or torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "modgraph": modgraph.__version__,
        "platform": platform.platform(),
    }


def targets(results: dict[str, Any], size: str) -> dict[str, Any]:
    """The four targets of issue 6, measured (``None`` where this run did not measure one)."""
    out: dict[str, Any] = {}
    base = [r for r in results.get("pipeline", []) if "baseline" in r]
    if base:
        v = base[0]["baseline"]["vs"]["shortcut"]
        out["speedup_whole_pipeline"] = {
            "model": _name(base[0]["widths"]),
            "value": v["speedup_numeric"],
            "rate_normalised": v["speedup_numeric_rate_normalised"],
            "target": ">= 10",
            "met": v["speedup_numeric"] >= 10,
        }
    fracs = {}
    for r in results.get("pipeline", []):
        for path in ("shortcut", "autograd"):
            if path in r:
                for s in ("basis", "edges"):
                    fracs[f"{_name(r['widths'])} {path} {s}"] = r[path]["stages"][s]["frac_matmul"]
    if fracs:
        out["jacobian_edges_frac_matmul"] = {
            "values": fracs,
            "target": ">= 0.40",
            "met": {k: v >= 0.4 for k, v in fracs.items()},
        }
    scaling = results.get("scaling_n")
    if scaling:
        ratio = scaling["peak_ratio_last_first"]
        out["peak_memory_ratio"] = {
            "n": [scaling["x"][0], scaling["x"][-1]],
            "value": ratio,
            "target": "<= 1.10",
            "met": ratio <= 1.10,
        }
    graphs = results.get("graph", [])
    if graphs:
        big = max(graphs, key=lambda g: g["n_edges"])
        out["leiden_plus_build"] = {
            "n_edges": big["n_edges"],
            "seconds": big["build_plus_leiden_s"],
            "target": "< 30 s on 1M edges",
            "met": big["build_plus_leiden_s"] < 30 if big["n_edges"] >= 0.9 * BIG_GRAPH else None,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    parser.add_argument(
        "--only",
        default="pipeline,scaling,graph,kernel",
        help="comma-separated parts to run (pipeline, scaling, graph, kernel)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per job")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--profile", action="store_true", help="torch.profiler top ops per stage")
    isolation = parser.add_mutually_exclusive_group()
    isolation.add_argument(
        "--in-process",
        dest="isolate",
        action="store_false",
        default=None,
        help="run every configuration in this process (default with --quick)",
    )
    isolation.add_argument(
        "--subprocess",
        dest="isolate",
        action="store_true",
        help="a fresh subprocess per configuration (default in full mode)",
    )
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.job is not None:  # worker
        print("RESULT " + json.dumps(execute(json.loads(args.job))), flush=True)
        return 0

    size = args.size or ("quick" if args.quick else "full")
    cfg = SIZES[size]
    isolate = cfg["isolate"] if args.isolate is None else args.isolate
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    common = {"threads": args.threads, "batch_size": args.batch_size, "rate": cfg["rate"]}
    t_start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine_info(args.threads), "size": size}

    def say(text: str) -> None:
        print(text, flush=True)

    results["isolation"] = "subprocess per configuration" if isolate else "in process"
    say(f"modgraph benchmarks ({size}, {results['isolation']}): {results['machine']}")
    load = results["machine"]["load_average"]
    cores = results["machine"]["cpu_count"] or 1
    if load and load[0] > 0.5 * cores and (args.threads or torch.get_num_threads()) > 1:
        say(
            f"note: load average {load[0]:.1f} on {cores} cores; with several torch threads, "
            "parallel regions stall while other processes hold the cores (timings become "
            "erratic). --threads 1 gives steadier ratios on a busy machine."
        )
    d_in = cfg["input_dim"]
    if "pipeline" in parts:
        results["pipeline"] = []
        for w in cfg["widths"]:
            job = {
                "kind": "pipeline",
                "widths": [d_in, w, w, OUTPUT_DIM],
                "n": cfg["n"],
                "paths": ["shortcut", "autograd"],
                "baseline": w in cfg["baseline_widths"],
                "profile": args.profile,
                **common,
            }
            res = run_job(job, in_process=not isolate)
            results["pipeline"].append(res)
            say(f"\n== 1. pipeline stages, {_name(job['widths'])}, N={cfg['n']} ==")
            say(report_pipeline(res))
            if "baseline" in res:
                say("\n== 2. speed-up over the baseline (one autograd.grad per output feature) ==")
                say(report_baseline(res))
    if "scaling" in parts:
        w0 = cfg["scaling_width"]
        runs_n = []
        for n in cfg["scaling_n"]:
            job = {"kind": "pipeline", "widths": [d_in, w0, w0, OUTPUT_DIM], "n": n,
                   "paths": ["shortcut"], **common}  # fmt: skip
            runs_n.append(run_job(job, in_process=not isolate))
        results["scaling_n"] = scaling_summary(runs_n, "n")
        say(f"\n== 3a. scaling in N ({_name([d_in, w0, w0, OUTPUT_DIM])}, shortcut path) ==")
        say(report_scaling(results["scaling_n"], "N"))
        runs_w = []
        for w in cfg["scaling_widths"]:
            job = {"kind": "pipeline", "widths": [d_in, w, w, OUTPUT_DIM], "n": cfg["n"],
                   "paths": ["shortcut"], **common}  # fmt: skip
            runs_w.append(run_job(job, in_process=not isolate))
        results["scaling_width"] = scaling_summary(runs_w, "width")
        say(f"\n== 3b. scaling in width ({d_in}-w-w-{OUTPUT_DIM}, N={cfg['n']}, shortcut path) ==")
        say(report_scaling(results["scaling_width"], "width"))
    if "graph" in parts:
        results["graph"] = []
        for m in cfg["graph_edges"]:
            job = {"kind": "graph", "n_edges": m,
                   "n_restarts": 1 if m >= cfg["big_graph"] else N_RESTARTS, **common}  # fmt: skip
            results["graph"].append(run_job(job, in_process=not isolate))
        say("\n== 4. graph scale (synthetic layered graphs, 8 planted modules) ==")
        say(report_graph(results["graph"]))
    if "kernel" in parts:
        w = cfg["widths"][0]
        job = {"kind": "kernel", "rows": cfg["kernel_rows"], "width": w, **common}
        k = run_job(job, in_process=not isolate)
        results["kernel"] = k
        say(f"\n== edge kernel Σ_x (P diag(s_x) Q ⊙ f_x)², k'=d'=k={w}, {k['rows']} rows ==")
        rows = [
            [v, t, k["seconds"]["library"] / t, k["frac_matmul"][v], k["rel_error"].get(v, "")]
            for v, t in k["seconds"].items()
        ]
        say(format_table(["variant", "seconds", "x library", "of f64 matmul", "rel.err"], rows))
        say(f"matmul rate: {k['matmul_gflops']}")
    results["targets"] = targets(results, size)
    results["wall_seconds"] = time.perf_counter() - t_start
    say("\n== targets ==")
    for name, t in results["targets"].items():
        say(f"{name}: {json.dumps(t)}")
    say(f"\nwall time {results['wall_seconds']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float))
    say(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
