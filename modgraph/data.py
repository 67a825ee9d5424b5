"""Data: check what the user passed, and stream it in batches, as often as needed.

modgraph takes data as a Tensor (or numpy array) of inputs, a ``Dataset``, a ``DataLoader`` or any
re-iterable of batches; a batch is a Tensor or a tuple/list whose first element is the input.
Every analysis streams the data several times (never holding it whole), so one-shot iterators
are refused before any work is done.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .errors import ModgraphTypeError, ModgraphValueError

__all__ = ["check_data", "data_rows", "iter_batches", "progress_bar"]


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
) -> Iterator[torch.Tensor]:
    """Yield non-empty input batches of at most ``batch_size`` rows on ``device``.

    Floating inputs are cast to ``dtype``; integer inputs (token ids) are left as they are; a
    sparse batch is made dense; empty batches are skipped. A Dataset (map-style or iterable)
    is read through an internal DataLoader that leaves the global RNG alone.
    """
    if isinstance(data, np.ndarray):
        data = _as_tensor(data)
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ModgraphValueError("data is a 0-d Tensor; pass a Tensor of shape (N, ...).")
        source: Iterable[Any] = (
            data.split(batch_size)
            if data.layout == torch.strided
            else _sparse_rows(data, batch_size)
        )
    elif isinstance(data, torch.utils.data.Dataset):
        source = _loader(data, batch_size)
    else:
        source = data
    for index, batch in enumerate(source):
        x = _first_input(batch, index)
        if x.ndim == 0:
            raise ModgraphValueError(f"Batch {index} of data is a 0-d Tensor; batches need rows.")
        if x.layout != torch.strided:  # sparse inputs: the model gets dense batches
            x = x.to_dense()
        if x.is_floating_point():
            x = x.to(device=device, dtype=dtype)
        else:
            x = x.to(device=device)
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
