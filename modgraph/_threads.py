"""Torch's thread count on a busy machine: measured, named once, never changed (issue 16)."""

from __future__ import annotations

import logging
import os

import torch

__all__ = ["warn_if_threads_contend"]

logger = logging.getLogger("modgraph")

_THREADS_WARNED = False


def warn_if_threads_contend() -> None:
    """Log once per process when torch runs several threads on a machine already busier than
    its cores. Measured (pretrained MNIST MLP, 1,797 digits, 2 cores at load 3): 1 thread
    0.5–0.9 s; 2 threads 2.2–5.9 s with OpenMP's default wait policy (up to 18.5 s with
    ``OMP_WAIT_POLICY=ACTIVE``), 0.4–1.2 s with ``PASSIVE``. The thread count stays the user's:
    modgraph never changes it (the CLI's ``--threads`` is the user's own choice)."""
    global _THREADS_WARNED
    threads = torch.get_num_threads()
    if _THREADS_WARNED or threads < 2:
        return
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no load average or affinity on this platform
        return
    if load >= cores:
        _THREADS_WARNED = True
        logger.warning(
            "torch uses %d threads on a machine whose load average (%.1f) already fills its %d "
            "cores: waiting threads then spin against the other work and a run can be several "
            "times slower (docs/robustness.md). Consider torch.set_num_threads(1) or "
            "OMP_WAIT_POLICY=PASSIVE.",
            threads,
            load,
            cores,
        )
