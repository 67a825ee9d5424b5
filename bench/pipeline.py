"""The pipeline job: modgraph's stages, timed one by one, on both paths, against the baseline.

The stages call the library's own internal stage functions, the ones its public functions
(``find_modules``, ``interaction_basis``, ``interaction_graph``) run, because each public function
runs several stages at once:

- ``gram``: ``capture.session`` (plan, hooks) + ``basis.measure_statistics`` (one pass: means,
  covariances and the co-activation Grams ``E[σ'σ'ᵀ]`` that the elementwise shortcut needs);
- ``basis``: ``basis.fit_bases`` (the Jacobian stage and the eigen-decompositions);
- ``edges``: ``kernels.compute_edges``;
- ``graph``: ``interactions.build_graph`` and ``InteractionGraph.edge_list``;
- ``leiden``: ``cluster.leiden_modules`` (igraph build + Leiden restarts);
- ``graphml``: ``InteractionGraph.to_graphml``.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modgraph import basis as mg_basis
from modgraph import capture, cluster, interactions, kernels
from modgraph.options import Options

from .baseline import BaselineResult, mlp_sections, run_baseline
from .meter import Meter, matmul_rate, profiled, top_ops, trim
from .models import (
    NUMERIC_STAGES,
    baseline_flops,
    make_data,
    make_model,
    section_kinds,
    stage_flops,
    totals,
)

__all__ = ["FLOP_KEYS", "N_RESTARTS", "pipeline_job", "relative_gap", "run_pipeline", "stage_table"]

N_RESTARTS = 8  # leiden_modules' default
#: What :func:`run_pipeline` returns that :func:`~bench.models.stage_flops` takes.
FLOP_KEYS = ("dims", "ks", "ranks", "kinds")


def run_pipeline(
    model: nn.Module,
    x: torch.Tensor,
    *,
    batch_size: int,
    meter: Meter,
    graphml: Path | None = None,
    n_restarts: int = N_RESTARTS,
    profile: bool = False,
    layers: Sequence[str] | None = None,
    n_sources: int | None = None,
) -> dict[str, Any]:
    """The stages of ``find_modules(model, x, layers=layers, n_random_sources=n_sources)``,
    each under ``meter``; only ``gram`` and ``basis`` when ``graphml`` is ``None``."""
    profiles: dict[str, Any] = {}

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        with meter(name), profiled(profile) as prof:
            yield
        if prof is not None:
            profiles[name] = top_ops(prof)

    options = Options(batch_size=batch_size, progress=False, n_random_sources=n_sources)
    options = options.validated("bench")
    out: dict[str, Any] = {"profiles": profiles}
    meter.start()
    with contextlib.ExitStack() as stack:
        with stage("gram"):
            sess = stack.enter_context(capture.session(model, x, layers, options))
            stats = mg_basis.measure_statistics(sess, options)
        with stage("basis"):
            bases = mg_basis.fit_bases(sess, stats, options)
        names = list(bases)
        out.update(
            bases=bases,
            layers=names,
            dims=[sess.plan.dims[n] for n in names],
            ks=[bases[n].k for n in names],
            ranks=[bases[n].gram_rank for n in names],
            kinds=section_kinds(sess),
            positions=[sess.plan.layouts[n].n_positions for n in names],
        )
        if graphml is None:
            return out
        with stage("edges"):
            edges = kernels.compute_edges(
                sess, bases, n_alpha=options.n_alpha, n_sources=n_sources, seed=options.seed
            )
    with stage("graph"):
        graph = interactions.build_graph(bases, edges, options)
        n_edges = int(graph.edge_list()["weight"].shape[0])
    with stage("leiden"):
        partition = cluster.leiden_modules(graph, n_restarts=n_restarts, seed=0)
    with stage("graphml"):
        graph.to_graphml(graphml, partition.membership)
    out.update(edges=edges, n_edges=n_edges, n_modules=len(partition.modules))
    return out


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a − b| / max |b|`` (inf when the shapes differ)."""
    if a.shape != b.shape:
        return math.inf
    scale = float(np.abs(b).max()) if b.size else 0.0
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max(initial=0))


def stage_table(
    records: dict[str, dict[str, float]], flops: dict[str, float], rate: float
) -> dict[str, dict[str, float]]:
    """The meter's records with, for the stages in ``flops``, GFLOP, GFLOP/s and the fraction of
    the matmul rate (the one measured around the stage, else ``rate``)."""
    out = {}
    for name, rec in records.items():
        row = dict(rec)
        if name in flops:
            achieved = flops[name] / max(rec["seconds"], 1e-12) / 1e9
            reference = rec.get("matmul_gflops", rate)
            row.update(gflop=flops[name] / 1e9, gflops=achieved, frac_matmul=achieved / reference)
        out[name] = row
    return out


def _versus(base: BaselineResult, records: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Agreement and speed-ups of one modgraph path (``out``, its stage table ``records``)
    against the baseline (``base``, whose stage records carry their matmul rates)."""
    eig = max(
        relative_gap(b.eigenvalues.numpy(), m.eigenvalues)
        for b, m in zip(base.bases, out["bases"].values())
    )
    edge = max(relative_gap(b.numpy(), m) for b, m in zip(base.edges, out["edges"].values()))
    return {
        "eigenvalues_rel": eig,
        "edges_rel": edge,
        "agree_1e-8": bool(eig <= 1e-8 and edge <= 1e-8),
        "speedup": {s: base.seconds[s] / records[s]["seconds"] for s in NUMERIC_STAGES},
        "speedup_numeric": sum(base.seconds.values())
        / sum(records[s]["seconds"] for s in NUMERIC_STAGES),
    }


def _matmul_seconds(records: dict[str, dict[str, float]]) -> float:
    """Σ seconds × the matmul rate measured around each numeric stage: work in units that stay
    comparable when the machine's speed drifts (other processes on shared cores)."""
    return sum(records[s]["seconds"] * records[s]["matmul_gflops"] for s in NUMERIC_STAGES)


def pipeline_job(job: dict[str, Any]) -> dict[str, Any]:
    """modgraph on both paths (and the baseline) for one MLP and one data size, back to back."""
    widths, n, batch_size = job["widths"], job["n"], job["batch_size"]
    x = make_data(n, widths[0], seed=1)
    result: dict[str, Any] = {"widths": widths, "n": n, "batch_size": batch_size}
    pipelines: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="modgraph-bench-"))
    for path in job["paths"]:
        model = make_model(widths, path)
        meter = Meter(NUMERIC_STAGES)
        rate_before = matmul_rate()
        out = run_pipeline(
            model,
            x,
            batch_size=batch_size,
            meter=meter,
            graphml=workdir / f"{path}.graphml",
            profile=job.get("profile", False),
        )
        rate = 0.5 * (rate_before + matmul_rate())
        flops = totals(stage_flops(*(out[key] for key in FLOP_KEYS), n, batch_size))
        pipelines[path] = out
        result[path] = {
            "matmul_gflops": rate,
            "matmul_gflops_before_after": [rate_before, 2 * rate - rate_before],
            "stages": stage_table(meter.records, flops, rate),
            "total_seconds": sum(r["seconds"] for r in meter.records.values()),
            "peak_mb": max(r["peak_mb"] for r in meter.records.values()),
            "exact_peaks": meter.exact_peaks,
            **{
                key: out[key]
                for key in ("layers", "dims", "ks", "ranks", "kinds", "n_edges", "n_modules")
            },
            "profiles": out["profiles"],
        }
        del out, model, meter
        trim()
    if job.get("baseline"):
        meter = Meter(NUMERIC_STAGES)
        rate_before = matmul_rate()
        meter.start()
        sections = mlp_sections(make_model(widths, "shortcut"))
        base = run_baseline(x, sections, batch_size=batch_size, meter=meter)
        rate = 0.5 * (rate_before + matmul_rate())
        ref = next(iter(pipelines.values()))
        flops = totals(baseline_flops(ref["dims"], ref["ks"], ref["ranks"], n))
        versus = {}
        for path, out in pipelines.items():
            records = result[path]["stages"]
            versus[path] = _versus(base, records, out)
            versus[path]["speedup_numeric_rate_normalised"] = _matmul_seconds(
                meter.records
            ) / _matmul_seconds(records)
        result["baseline"] = {
            "matmul_gflops": rate,
            "stages": stage_table(meter.records, flops, rate),
            "total_seconds": sum(base.seconds.values()),
            "peak_mb": max(r["peak_mb"] for r in meter.records.values()),
            "vs": versus,
        }
    return result
