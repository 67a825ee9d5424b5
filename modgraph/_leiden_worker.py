"""One Leiden restart, run in this process or in a worker process.

The worker processes of :mod:`modgraph.cluster` run this file as a script (``python -c`` with
``runpy.run_path``), so that a worker imports numpy, igraph and leidenalg only: not modgraph, not
torch, and never the caller's ``__main__`` (which multiprocessing's ``spawn`` and ``forkserver``
re-run in every worker, and which ``fork`` would copy with torch's threads). The protocol, over
the worker's stdin and stdout, in NumPy ``.npy`` arrays (read with ``allow_pickle=False``: nothing
is unpickled), each framed by its length in bytes (8, little-endian: ``np.load`` reads whole
records from a buffer, since NumPy 2.4 seeks back in the stream it reads, which a pipe cannot):
the graph once (``n``, ``src``, ``dst``, ``cost``), then tasks, each ``[resolution]`` and
``[seed, n_iterations]``, each answered by ``membership`` and ``[seconds]``; end of input ends
the worker.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["Workers", "build", "restart", "serve", "worker_count"]

_WORKER = Path(__file__).with_name("_leiden_worker.py")
#: What a worker runs: the worker file as a script, without the caller's directory on sys.path.
_WORKER_CODE = (
    "import runpy, sys; del sys.path[0]; runpy.run_path(sys.argv[1], run_name='__main__')"
)


def worker_count(n_restarts: int) -> int:
    """Worker processes for a search: one per core this process may run on (the affinity mask
    where the OS has one, else ``os.cpu_count()``), at most one per restart."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, n_restarts))


class Workers:
    """Worker processes (``_leiden_worker.py``), each holding its own copy of the graph; a
    restart goes to whichever is free, through one thread per worker."""

    def __init__(self, count: int, graph: tuple[int, np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(_WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for _ in range(count)
        ]
        self.idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads = ThreadPoolExecutor(count, thread_name_prefix="modgraph-leiden")
        n, src, dst, cost = graph
        payload = _arrays(np.array([n], dtype=np.int64), src, dst, cost)
        for proc in self.procs:  # first in the queue: the graph goes out before any restart
            self.threads.submit(self._send, proc, payload)

    def _send(self, proc: subprocess.Popen, payload: bytes) -> None:
        try:
            proc.stdin.write(payload)
            proc.stdin.flush()
        finally:  # a worker that failed here fails again at its first restart
            self.idle.put(proc)

    def _call(self, task: tuple[float, int, int]) -> tuple[np.ndarray, float]:
        proc = self.idle.get()
        try:
            if proc is None:  # closed
                raise RuntimeError("the Leiden workers were closed")
            proc.stdin.write(_task(*task))
            proc.stdin.flush()
            membership = _read(proc.stdout)
            return membership, float(_read(proc.stdout)[0])
        finally:
            self.idle.put(proc)

    def submit(self, task: tuple[float, int, int]) -> Future:
        return self.threads.submit(self._call, task)

    def close(self) -> None:
        """Stop the workers at once (a restart still running after an early stop is dropped)."""
        for proc in self.procs:
            proc.kill()
            self.idle.put(None)
        self.threads.shutdown(wait=True, cancel_futures=True)
        for proc in self.procs:
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):  # a dead worker's unread input
                    pipe.close()


def build(n: int, src: np.ndarray, dst: np.ndarray, cost: np.ndarray) -> Any:
    """The undirected igraph graph with edge attribute ``cost`` (each edge once, in order)."""
    import igraph as ig

    g = ig.Graph(n=n, edges=np.column_stack([src, dst]), directed=False)
    g.es["cost"] = cost
    return g


def restart(g: Any, resolution: float, seed: int, n_iterations: int) -> tuple[np.ndarray, float]:
    """leidenalg's membership of one seeded run on ``Q_deg`` (RBConfiguration with weights
    ``cost``) and its seconds."""
    import leidenalg as la

    t0 = time.perf_counter()
    part = la.find_partition(
        g,
        la.RBConfigurationVertexPartition,
        weights="cost",
        resolution_parameter=resolution,
        n_iterations=n_iterations,
        seed=seed,
    )
    return np.asarray(part.membership, dtype=np.int64), time.perf_counter() - t0


def _arrays(*arrays: np.ndarray) -> bytes:
    """Arrays as consecutive ``.npy`` records, each after its length (8 bytes, little-endian)."""
    frames = []
    for a in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(a), allow_pickle=False)
        record = buffer.getvalue()
        frames += [len(record).to_bytes(8, "little"), record]
    return b"".join(frames)


def _task(resolution: float, seed: int, n_iterations: int) -> bytes:
    return _arrays(
        np.array([resolution], dtype=np.float64), np.array([seed, n_iterations], dtype=np.int64)
    )


def _read(stream: BinaryIO) -> np.ndarray:
    """The next framed ``.npy`` record of ``stream``; EOFError at its end."""
    size = int.from_bytes(_exactly(stream, 8), "little")
    return np.load(io.BytesIO(_exactly(stream, size)), allow_pickle=False)


def _exactly(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes of ``stream`` (a pipe may return fewer per read); EOFError before them."""
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the stream ended inside a record" if left < n else "end of stream")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer tasks until end of input."""
    n, src, dst, cost = (_read(inp) for _ in range(4))
    graph = build(int(n[0]), src, dst, cost)
    while True:
        try:
            resolution, (seed, n_iterations) = _read(inp), _read(inp)
        except EOFError:
            return
        membership, seconds = restart(graph, float(resolution[0]), int(seed), int(n_iterations))
        out.write(_arrays(membership, np.array([seconds], dtype=np.float64)))
        out.flush()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    answers = os.fdopen(os.dup(1), "wb")  # the protocol's own copy of stdout
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the protocol
    serve(sys.stdin.buffer, answers)
