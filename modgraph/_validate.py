"""Parameter checks shared by every public function (validation once, at the boundary)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from .errors import ModgraphTypeError, ModgraphValueError


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(
    value: Any, name: str, where: str, *, minimum: int | None = None, allow_none: bool = False
) -> int | None:
    """Return ``value`` as an int, or raise with a message naming the parameter."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ModgraphTypeError(
            f"The {name!r} parameter of {where} must be an int"
            f"{' or None' if allow_none else ''}. Got {_got(value)} of type {type(value).__name__}."
        )
    value = int(value)
    if minimum is not None and value < minimum:
        raise ModgraphValueError(
            f"The {name!r} parameter of {where} must be an int >= {minimum}. Got {value} instead."
        )
    return value


def check_float(
    value: Any,
    name: str,
    where: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = True,
    high_open: bool = True,
) -> float:
    """Return ``value`` as a finite float inside the given interval, or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModgraphTypeError(
            f"The {name!r} parameter of {where} must be a real number. "
            f"Got {_got(value)} of type {type(value).__name__}."
        )
    value = float(value)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = (
        f"{lo}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{hi}"
    )
    bad = not math.isfinite(value)
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        raise ModgraphValueError(
            f"The {name!r} parameter of {where} must be a finite float in {interval}. "
            f"Got {value!r} instead."
        )
    return value


def check_choice(value: Any, name: str, where: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ModgraphValueError(
            f"The {name!r} parameter of {where} must be one of {list(choices)}. Got {_got(value)}."
        )
    return value


def check_seed(value: Any, where: str) -> int:
    """Seeds are non-negative ints below 2**63 (recorded on results so a run can be replayed)."""
    seed = check_int(value, "seed", where, minimum=0)
    assert seed is not None
    if seed >= 2**63:
        raise ModgraphValueError(f"The 'seed' parameter of {where} must be < 2**63. Got {seed}.")
    return seed


def check_model(model: Any, where: str) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise ModgraphTypeError(
            f"The 'model' parameter of {where} must be a torch.nn.Module. "
            f"Got {type(model).__name__} instead."
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise ModgraphTypeError(
            f"The 'model' parameter of {where} is a TorchScript module "
            f"({type(model).__name__}: scripted, traced or frozen). modgraph records node layers "
            "with forward hooks, which TorchScript does not run. Pass the Python nn.Module the "
            "script was made from (load its state_dict into the Python class)."
        )
    return model


def check_device(value: Any, where: str) -> torch.device | None:
    """``None`` or a device torch knows and this machine has."""
    if value is None:
        return None
    if not isinstance(value, (str, int, torch.device)) or isinstance(value, bool):
        raise ModgraphTypeError(
            f"The 'device' parameter of {where} must be a torch.device, a str such as 'cpu' or "
            f"'cuda:0', or None (the model's device). Got {_got(value)}."
        )
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModgraphValueError(
            f"The 'device' parameter of {where} is not a device torch knows: {_got(value)} "
            f"({exc}). Use e.g. 'cpu', 'cuda' or 'cuda:1'."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModgraphValueError(
                f"The 'device' parameter of {where} asks for {str(device)!r}, but CUDA is not "
                "available here (torch.cuda.is_available() is False). Use device='cpu'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModgraphValueError(
                f"The 'device' parameter of {where} asks for {str(device)!r}, but this machine "
                f"has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ModgraphValueError(
            f"The 'device' parameter of {where} asks for 'mps', which is not available here."
        )
    return device


def check_progress(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ModgraphTypeError(
            f"The 'progress' parameter of {where} must be True, False or None (bars when stderr "
            f"is a terminal). Got {_got(value)}."
        )
    return value


def check_dtype(value: Any, where: str, *, allow_none: bool = True) -> torch.dtype | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ModgraphTypeError(
            f"The 'dtype' parameter of {where} must be a floating torch.dtype such as "
            f"torch.float64{' or None (the model dtype)' if allow_none else ''}. Got {_got(value)}."
        )
    return value
