"""Leiden at scale (issue 16): the restart search of ``cluster.leiden_modules``, today's and before.

One graph (``synthetic_matrices``: layered, 8 planted modules), one process, rows run back to
back; every row calls today's ``cluster.leiden_modules`` with its private settings switched
(``_PARALLEL_MIN_EDGES``, ``_STOP_AFTER``, ``_N_ITERATIONS``):

- ``before``: the behaviour before issue 16, restarts one after another in this process, all of
  them, ``n_iterations=-1`` (the yardstick of every ``x before`` ratio);
- ``early stop``: in this process, stopping once the best partition has been found twice;
- ``workers``: every restart, in worker processes (one per core, at most one per restart);
- ``library``: today's defaults (workers where the graph has ``_PARALLEL_MIN_EDGES`` edges or
  more, early stop);
- ``n_iterations=2``: as ``before`` with leidenalg's ``n_iterations=2`` (not the default: see
  README "Leiden at scale").

The ``breakeven`` job times one search in this process and in workers on graphs of several sizes
(with the early stop, as the library runs them): where the workers' start and graph build cost
less than the restarts they run side by side save.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

import modgraph
from modgraph import cluster

from .meter import patched

__all__ = ["ROWS", "breakeven_job", "leiden_job"]

#: Row name → the private settings of ``cluster`` it runs with (None: the library's value).
ROWS: dict[str, dict[str, Any]] = {
    "before": {"_PARALLEL_MIN_EDGES": 10**15, "_STOP_AFTER": 0, "_N_ITERATIONS": -1},
    "early stop": {"_PARALLEL_MIN_EDGES": 10**15},
    "workers": {"_PARALLEL_MIN_EDGES": 0, "_STOP_AFTER": 0},
    "library": {},
    "n_iterations=2": {"_PARALLEL_MIN_EDGES": 10**15, "_STOP_AFTER": 0, "_N_ITERATIONS": 2},
}


class _Restarts(logging.Handler):
    """Collects the seconds of each restart from the library's INFO lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Leiden restart"):
            self.seconds.append(float(record.args[3]))  # type: ignore[index]


def _search(graph: Any, n_restarts: int, settings: dict[str, Any]) -> dict[str, Any]:
    logger = logging.getLogger("modgraph")
    handler, level = _Restarts(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with patched(cluster, settings):
            t0 = time.perf_counter()
            part = cluster.leiden_modules(graph, n_restarts=n_restarts, seed=0)
            seconds = time.perf_counter() - t0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    times = handler.seconds
    return {
        "seconds": seconds,
        "restarts_run": len(times),
        "s_per_restart": float(np.mean(times)) if times else 0.0,
        "score": part.score,
        "membership": part.membership,
    }


def _graph(n_edges: int) -> Any:
    from .models import synthetic_matrices

    return modgraph.InteractionGraph.from_matrices(synthetic_matrices(n_edges), epsilon=1.0)


def leiden_job(job: dict[str, Any]) -> dict[str, Any]:
    """Every row of :data:`ROWS` on one graph of about ``n_edges`` edges."""
    graph = _graph(job["n_edges"])
    n_restarts = job.get("n_restarts", 8)
    rows = {name: _search(graph, n_restarts, ROWS[name]) for name in job.get("rows", ROWS)}
    memberships = {name: r.pop("membership") for name, r in rows.items()}
    if "before" in rows:
        before = rows["before"]
        for name, r in rows.items():
            r["x_before"] = before["seconds"] / r["seconds"]
            r["score_minus_before"] = r["score"] - before["score"]
            r["same_partition"] = bool(np.array_equal(memberships[name], memberships["before"]))
    return {
        "n_edges": int(graph.undirected_edges()[0].shape[0]),
        "n_nodes": graph.n_nodes,
        "n_restarts": n_restarts,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "workers": cluster.worker_count(n_restarts),
        "rows": rows,
    }


def breakeven_job(job: dict[str, Any]) -> dict[str, Any]:
    """One search (early stop on) here and in workers, per graph size; ``x here`` > 1: the
    workers are faster."""
    out = []
    for n_edges in job["sizes"]:
        graph = _graph(n_edges)
        here = _search(graph, job.get("n_restarts", 8), {"_PARALLEL_MIN_EDGES": 10**15})
        there = _search(graph, job.get("n_restarts", 8), {"_PARALLEL_MIN_EDGES": 0})
        out.append(
            {
                "n_edges": int(graph.undirected_edges()[0].shape[0]),
                "here_s": here["seconds"],
                "workers_s": there["seconds"],
                "x_here": here["seconds"] / there["seconds"],
                "restarts_run": here["restarts_run"],
                "s_per_restart": here["s_per_restart"],
                "same": here["score"] == there["score"],
            }
        )
    return {"sizes": out, "threshold": cluster._PARALLEL_MIN_EDGES}
