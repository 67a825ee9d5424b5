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

__all__ = ["check_data", "iter_batches", "progress_bar"]


def _first_input(batch: Any, index: int) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ModgraphValueError(f"Batch {index} of data is an empty {type(batch).__name__}.")
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
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


def iter_batches(
    data: Any,
    batch_size: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Iterator[torch.Tensor]:
    """Yield input batches of at most ``batch_size`` rows on ``device``.

    Floating inputs are cast to ``dtype``; integer inputs (token ids) are left as they are.
    """
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, torch.Tensor):
        if data.ndim == 0:
            raise ModgraphValueError("data is a 0-d Tensor; pass a Tensor of shape (N, ...).")
        source: Iterable[Any] = data.split(batch_size)
    elif isinstance(data, torch.utils.data.Dataset) and not isinstance(
        data, torch.utils.data.IterableDataset
    ):
        source = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        source = data
    for index, batch in enumerate(source):
        x = _first_input(batch, index)
        if x.ndim == 0:
            raise ModgraphValueError(f"Batch {index} of data is a 0-d Tensor; batches need rows.")
        if x.is_floating_point():
            x = x.to(device=device, dtype=dtype)
        else:
            x = x.to(device=device)
        yield from x.split(batch_size)


def progress_bar(iterable: Iterable[Any], *, enabled: bool | None, desc: str) -> Iterable[Any]:
    """Wrap in a tqdm bar; ``enabled=None`` shows it only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="batch", leave=False)
