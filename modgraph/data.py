"""Data: check what the user passed, and stream it in batches, as often as needed.

modgraph takes data as a Tensor (or numpy array) of inputs, a ``Dataset``, a ``DataLoader`` or any
re-iterable of batches; a batch is a Tensor or a tuple/list whose first element is the input.
Every analysis streams the data several times (never holding it whole), so one-shot iterators
are refused before any work is done.

In a distributed run each process streams its own :class:`Shard` (``docs/distributed.md``):
the data's batches are dealt out in turn, process ``r`` of ``W`` taking batches ``r, r + W,
r + 2W, ...``, where a batch is one of an iterable's own batches, or a block of ``block`` rows
of a Tensor, an array or a Dataset; a ``DataLoader`` whose sampler is a
``DistributedSampler`` is already sharded and is streamed as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from .errors import ModgraphTypeError, ModgraphValueError

__all__ = [
    "Shard",
    "check_data",
    "data_rows",
    "iter_batches",
    "progress_bar",
    "sampler_sharded",
    "unsharded",
]


class Shard(NamedTuple):
    """This process's part of the data: batches ``rank, rank + size, ...``; a Tensor, an array
    or a Dataset is cut into batches of ``block`` rows first (the same in every pass, whatever
    the pass's own batch size, so that every pass streams the same rows)."""

    rank: int
    size: int
    block: int


def _first_input(batch: Any, index: int) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ModgraphValueError(f"Batch {index} of data is an empty {type(batch).__name__}.")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = _as_tensor(batch)
    if not isinstance(batch, torch.Tensor):
        raise ModgraphTypeError(
            f"Batch {index} of data is a {type(batch).__name__}; each batch must be a Tensor, or a "
            "tuple/list whose first element is the input Tensor (e.g. (inputs, targets))."
        )
    return batch


def check_data(data: Any, where: str) -> None:
    """Reject data that cannot be streamed several times, before any work is done."""
    if isinstance(data, (torch.Tensor, np.ndarray, torch.utils.data.Dataset)):
        return
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise ModgraphTypeError(
            f"The 'data' parameter of {where} must be a Tensor of inputs, a Dataset, a DataLoader "
            f"or an iterable of batches. Got {type(data).__name__}."
        )
    if iter(data) is data:
        raise ModgraphTypeError(
            f"The 'data' parameter of {where} is a one-shot iterator ({type(data).__name__}); "
            "modgraph streams the data several times. Pass a list of batches, a Tensor, a Dataset "
            "or a DataLoader instead."
        )


def _as_tensor(value: np.ndarray) -> torch.Tensor:
    """A numpy array as a Tensor; negative or odd strides (a reversed view) are copied first."""
    try:
        return torch.from_numpy(value)
    except (ValueError, TypeError):
        return torch.from_numpy(np.ascontiguousarray(value))


def _loader(dataset: torch.utils.data.Dataset, batch_size: int) -> torch.utils.data.DataLoader:
    """A DataLoader over a Dataset in order. It gets its own generator, so iterating it leaves
    the caller's global torch RNG untouched (a DataLoader draws a base seed at every pass)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()
    )


def _sparse_rows(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Row blocks of a sparse Tensor (COO, or any layout ``to_sparse`` turns into COO)."""
    coo = data if data.layout == torch.sparse_coo else data.to_sparse()
    for lo in range(0, int(coo.shape[0]), batch_size):
        rows = torch.arange(lo, min(lo + batch_size, int(coo.shape[0])), device=coo.device)
        yield coo.index_select(0, rows)


def sampler_sharded(data: Any) -> bool:
    """Whether ``data`` is a ``DataLoader`` sharded by a ``DistributedSampler`` (streamed as
    given in a distributed run)."""
    if not isinstance(data, torch.utils.data.DataLoader):
        return False
    from torch.utils.data.distributed import DistributedSampler

    inner = data.batch_sampler.sampler if data.batch_sampler is not None else None
    return isinstance(data.sampler, DistributedSampler) or isinstance(inner, DistributedSampler)


def unsharded(data: Any, batch_size: int) -> Any:
    """The whole data, for probes every process must see alike (the first rows): the dataset
    of a ``DataLoader`` sharded by a ``DistributedSampler``, read in order in batches of
    ``batch_size`` with the loader's collate function; ``data`` itself otherwise."""
    if not sampler_sharded(data):
        return data
    batched = data.batch_sampler is not None
    return torch.utils.data.DataLoader(
        data.dataset,
        batch_size=batch_size if batched else None,
        shuffle=False,
        collate_fn=data.collate_fn,
        generator=torch.Generator(),
    )


def _block_loader(dataset: torch.utils.data.Dataset, shard: Shard) -> torch.utils.data.DataLoader:
    """This shard's blocks of a map-style Dataset (with a length), loading only its rows."""
    n = len(dataset)  # type: ignore[arg-type]
    blocks = [
        list(range(lo, min(lo + shard.block, n)))
        for lo in range(shard.rank * shard.block, n, shard.size * shard.block)
    ]
    return torch.utils.data.DataLoader(dataset, batch_sampler=blocks, generator=torch.Generator())


def _dealt(source: Iterable[Any], shard: Shard | None) -> Iterator[tuple[int, Any]]:
    """(index, batch) of the batches of ``source`` that are this shard's."""
    for index, batch in enumerate(source):
        if shard is None or index % shard.size == shard.rank:
            yield index, batch


def _to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` on ``device`` (floating inputs in ``dtype``). To CUDA from the CPU, through pinned
    memory with a non-blocking copy (the cast runs on the GPU, after the copy)."""
    if device.type == "cuda" and x.device.type == "cpu":
        x = (x if x.is_pinned() else x.pin_memory()).to(device, non_blocking=True)
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


def data_rows(data: Any) -> int | None:
    """Rows ``data`` yields per pass when known without a pass (a Tensor, an array, a map-style
    Dataset); ``None`` for DataLoaders (samplers may pick any subset) and iterables."""
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return int(data.shape[0]) if data.ndim else None
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(
        data, torch.utils.data.IterableDataset
    ):
        try:
            return len(data)  # type: ignore[arg-type]
        except TypeError:
            return None
    return None


def iter_batches(
    data: Any,
    batch_size: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
    shard: Shard | None = None,
) -> Iterator[torch.Tensor]:
    """Yield non-empty input batches of at most ``batch_size`` rows on ``device``.

    Floating inputs are cast to ``dtype``; integer inputs (token ids) are left as they are; a
    sparse batch is made dense; empty batches are skipped. A Dataset (map-style or iterable)
    is read through an internal DataLoader that leaves the global RNG alone. With ``shard``,
    only this process's batches (:class:`Shard`; none is fine); a ``DataLoader`` sharded by
    a ``DistributedSampler`` is streamed whole. CPU batches for a CUDA ``device`` are copied
    through pinned memory without blocking.

    Parameters
    ----------
    data : Tensor (N, ...), ndarray, Dataset, DataLoader or re-iterable of batches
    batch_size : int
        Largest batch yielded.
    device, dtype
        Where the batches go, and the dtype of floating inputs.
    shard : Shard, optional
        This process's part of the data in a distributed run.

    Yields
    ------
    Tensor, shape (b, ...) with 1 <= b <= batch_size
    """
    if shard is not None and sampler_sharded(data):
        shard = None  # already this process's part
    if isinstance(data, np.ndarray):
        data = _as_tensor(data)
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ModgraphValueError("data is a 0-d Tensor; pass a Tensor of shape (N, ...).")
        block = batch_size if shard is None else shard.block
        source: Iterable[Any] = (
            data.split(block) if data.layout == torch.strided else _sparse_rows(data, block)
        )
    elif isinstance(data, torch.utils.data.Dataset):
        if shard is not None and data_rows(data) is not None:
            source, shard = _block_loader(data, shard), None  # its rows alone are loaded
        else:
            source = _loader(data, batch_size if shard is None else shard.block)
    else:
        source = data
    for index, batch in _dealt(source, shard):
        x = _first_input(batch, index)
        if x.ndim == 0:
            raise ModgraphValueError(f"Batch {index} of data is a 0-d Tensor; batches need rows.")
        if x.layout != torch.strided:  # sparse inputs: the model gets dense batches
            x = x.to_dense()
        x = _to_device(x, device, dtype)
        for part in x.split(batch_size):
            if part.shape[0]:
                yield part


def progress_bar(
    batches: Iterable[torch.Tensor], *, enabled: bool | None, desc: str, rows: int | None = None
) -> Iterable[torch.Tensor]:
    """Wrap in a tqdm bar counting rows, with a total and an ETA when ``rows`` is known;
    ``enabled=None`` shows it only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield from batches
        return
    from tqdm.auto import tqdm

    with tqdm(total=rows, desc=desc, unit="row", unit_scale=True, leave=False) as bar:
        for x in batches:
            yield x
            bar.update(int(x.shape[0]))
