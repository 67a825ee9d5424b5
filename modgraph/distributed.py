"""Distributed sums: the process group of a ``torch.distributed`` run, and its collectives.

Every expectation modgraph takes is a float64 sum over the data, so a data-parallel run is one
``all_reduce(SUM)`` of each sum before it is divided by the (also summed) number of rows. This
room decides whether a call is distributed (:func:`resolve`), starts a process group from the
``torchrun`` environment when asked to, and wraps the collectives modgraph uses
(:class:`Group`), so that a failed or stuck process ends in a clear
:class:`ModgraphDistributedError` after the process group's timeout, never in a silent hang.
See ``docs/distributed.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from .errors import ModgraphError, ModgraphValueError

__all__ = ["TIMEOUT_VARIABLE", "Group", "ModgraphDistributedError", "resolve"]

logger = logging.getLogger("modgraph")

#: Environment variable: seconds a collective waits for the other processes, when modgraph
#: starts the process group itself (``distributed=True`` under ``torchrun``).
TIMEOUT_VARIABLE = "MODGRAPH_DIST_TIMEOUT"

#: What ``torchrun`` (``env://``) sets in every process.
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


class ModgraphDistributedError(ModgraphError, RuntimeError):
    """A collective of a distributed run failed: another process raised, died or is stuck
    (and the process group's timeout passed), or the processes disagree."""


@dataclass(frozen=True)
class Group:
    """The default process group as modgraph uses it.

    Attributes
    ----------
    rank : int
        This process's rank in ``range(size)``.
    size : int
        Number of processes (the world size).
    device : torch.device
        Where collectives run: the CPU for gloo, a CUDA device for NCCL.
    """

    rank: int
    size: int
    device: torch.device

    def all_reduce(self, total: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``total`` combined over every process (a new float64 tensor on ``total``'s device).

        Parameters
        ----------
        total : Tensor, any shape
            This process's part (a float64 sum, a count, a flag); left unchanged.
        op : {"sum", "max", "min"}
            How the parts combine.

        Returns
        -------
        Tensor, same shape as ``total``, float64
            The same on every process, bit for bit.
        """
        import torch.distributed as dist

        out = total.detach().to(device=self.device, dtype=torch.float64, copy=True)
        self._run("all_reduce", lambda: dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS[op])))
        return out.to(total.device)

    def broadcast(self, value: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``value`` on every process (same shape and dtype on every process)."""
        import torch.distributed as dist

        out = value.detach().to(self.device, copy=True)
        self._run("broadcast", lambda: dist.broadcast(out, src=0))
        return out.to(value.device)

    def broadcast_text(self, text: str) -> str:
        """Rank 0's ``text`` (UTF-8, no pickling) on every process."""
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        length = int(self.broadcast(torch.tensor([raw.size], dtype=torch.int64))[0])
        buffer = torch.zeros(length, dtype=torch.uint8)
        if self.rank == 0:
            buffer = torch.from_numpy(raw.copy())
        data = self.broadcast(buffer).numpy().tobytes()
        return data.decode("utf-8", errors="replace")

    def _run(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except RuntimeError as exc:  # DistBackendError, timeouts and closed connections
            raise ModgraphDistributedError(
                f"rank {self.rank} of {self.size}: the {what} that combines modgraph's sums "
                f"failed ({type(exc).__name__}: {str(exc).strip()[:300]}). Another process "
                "probably raised or died (see its own error), or did not reach this collective "
                "within the process group's timeout: set it with "
                "torch.distributed.init_process_group(timeout=...), or with the environment "
                f"variable {TIMEOUT_VARIABLE} (seconds) when modgraph starts the group."
            ) from exc


def _timeout() -> timedelta | None:
    """The timeout from :data:`TIMEOUT_VARIABLE`, or ``None`` (torch's default)."""
    raw = os.environ.get(TIMEOUT_VARIABLE)
    if raw is None or raw.strip() == "":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ModgraphValueError(
            f"The environment variable {TIMEOUT_VARIABLE}={raw!r} must be a number of seconds "
            "> 0 (how long a collective waits for the other processes)."
        )
    return timedelta(seconds=seconds)


def _initialise(device: torch.device, where: str) -> None:
    """Start the default process group from the ``torchrun`` environment (``env://``): NCCL
    when modgraph runs on CUDA, gloo otherwise."""
    import torch.distributed as dist

    missing = [v for v in _TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise ModgraphValueError(
            f"distributed=True was passed to {where}, but no process group is initialised and "
            f"the torchrun environment is missing ({', '.join(missing)} not set). Launch with "
            "`torchrun --nproc_per_node=N script.py`, call "
            "torch.distributed.init_process_group(...) first, or pass distributed=None/False."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(device if device.index is not None else local)
    timeout = _timeout()
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend, init_method="env://", **kwargs)
    logger.info(
        "modgraph started a %s process group: rank %d of %d (timeout %s)",
        backend,
        dist.get_rank(),
        dist.get_world_size(),
        "torch's default" if timeout is None else f"{timeout.total_seconds():g} s",
    )


def resolve(flag: bool | None, device: torch.device, where: str) -> Group | None:
    """The process group a call sums over, or ``None`` (this process alone).

    Parameters
    ----------
    flag : bool or None
        ``options.distributed``: ``False``, never; ``None``, when ``torch.distributed`` is
        available and initialised; ``True``, always, initialising the default process group
        from the ``torchrun`` environment when needed (the group then stays for later calls;
        the script destroys it, ``torch.distributed.destroy_process_group()``).
    device : torch.device
        Where modgraph computes: it picks the backend modgraph starts, and the device of the
        collectives of an NCCL group.
    where : str
        The public function called, for error messages.

    Returns
    -------
    Group or None
        ``None`` as well for a world of one process.

    Raises
    ------
    ModgraphValueError
        ``distributed=True`` without ``torch.distributed``, or with neither a process group
        nor the ``torchrun`` environment.
    """
    if flag is False:
        return None
    import torch.distributed as dist

    available = dist.is_available()
    if flag is None and not (available and dist.is_initialized()):
        return None
    if not available:
        raise ModgraphValueError(
            f"distributed=True was passed to {where}, but this build of PyTorch has no "
            "torch.distributed. Pass distributed=False."
        )
    if not dist.is_initialized():
        _initialise(device, where)
    size = dist.get_world_size()
    if size == 1:
        return None
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and device.type == "cuda":
        on = device
    elif "nccl" in backend and "gloo" not in backend:  # NCCL alone: collectives on CUDA
        on = torch.device("cuda", torch.cuda.current_device())
    else:
        on = torch.device("cpu")
    return Group(rank=dist.get_rank(), size=size, device=on)
