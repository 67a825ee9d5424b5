"""Measuring: the float matmul rate of this machine, resident memory, and the stage meter.

Every ratio the benchmarks print is measured inside one process: :func:`matmul_rate` right before
and after the timed stages, :class:`Meter` for each stage's seconds and peak resident memory
(Linux ``VmRSS``/``VmHWM``; ``tracemalloc`` does not see torch's allocations), and optionally
torch.profiler's top operators (:func:`profiled`, :func:`top_ops`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import time
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch

__all__ = ["RATE", "Meter", "matmul_rate", "profiled", "top_ops", "trim"]

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


def _status_mb(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status`` (``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim(collect: bool = False) -> None:
    """Give freed heap back to the OS so that RSS before a stage is what is really in use."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


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
        trim(collect=True)
        self.origin = _status_mb("VmRSS")

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time ``stage``; for the ``rate_stages``, also measure the matmul rate right before and
        after it (outside the timed and peak-measured span) and record their mean."""
        before = matmul_rate() if stage in self.rate_stages else None
        trim()
        self.exact_peaks &= _reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self.records[stage] = {
                "seconds": seconds,
                "peak_mb": max(0.0, _status_mb("VmHWM") - self.origin),
            }
            if before is not None:
                self.records[stage]["matmul_gflops"] = 0.5 * (before + matmul_rate())


def profiled(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """torch.profiler on the CPU when ``enabled`` (memory figures are then inflated)."""
    if not enabled:
        return contextlib.nullcontext()
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU])


def top_ops(prof: Any, rows: int = 8) -> list[dict[str, Any]]:
    """The ``rows`` operators with the most self CPU time in a finished profile."""
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


@contextlib.contextmanager
def patched(module: ModuleType, values: dict[str, Any]) -> Iterator[None]:
    """Set ``module``'s attributes to ``values`` while inside, and restore them after."""
    saved = {k: getattr(module, k) for k in values}
    try:
        for k, v in values.items():
            setattr(module, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
