"""Loading a state dict for the command line's ``--weights``: ``.pt``/``.pth`` through
``torch.load(..., weights_only=True)`` (refused when it would unpickle objects), ``.npz`` as
plain numeric arrays (never unpickled); every problem is one :class:`ModgraphValueError` that
says what was found and how to save the weights instead.
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ModgraphError, ModgraphValueError

__all__ = ["load_weights", "one_line", "one_line_error"]


def one_line(text: object) -> str:
    """The lines of ``str(text)`` joined into one."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def one_line_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, in one line."""
    message = one_line(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


_NPZ_HINT = (
    "Save the weights with numpy.savez(FILE, **{k: v.cpu().numpy() for k, v in "
    "model.state_dict().items()}), or as a .pt file with torch.save(model.state_dict(), FILE)."
)
_PT_HINT = (
    "Save them with torch.save(model.state_dict(), FILE), or as an .npz of named numeric arrays."
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive: a member first, or empty


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    """The arrays of an ``.npz`` as tensors; nothing is ever unpickled."""
    name = repr(str(path))
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_ZIP_MAGIC):
        if head.startswith(b"\x93NUMPY"):
            kind = "a single .npy array, not an .npz archive of named arrays"
        elif head[:1] == b"\x80":
            kind = "a Python pickle, not an .npz archive (modgraph never unpickles weights)"
        else:
            kind = "not an .npz archive (it does not start with the zip signature)"
        raise ModgraphValueError(f"--weights: {name} is {kind}. {_NPZ_HINT}")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as f:
            for key in f.files:
                try:
                    arrays[key] = f[key]
                except ValueError as exc:
                    if "pickle" not in str(exc):
                        raise
                    raise ModgraphValueError(
                        f"--weights: {name} holds an object array {key!r}, which cannot be "
                        f"read without unpickling (modgraph never unpickles weights). {_NPZ_HINT}"
                    ) from None
    except ModgraphError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, a bad .npy header, ...
        raise ModgraphValueError(
            f"--weights: {name} is a damaged .npz archive ({one_line_error(exc)}); it "
            f"may be truncated or only partly copied. {_NPZ_HINT}"
        ) from exc
    state = {}
    for key, array in arrays.items():
        if array.dtype.kind not in "biufc":
            raise ModgraphValueError(
                f"--weights: {name} holds array {key!r} of dtype {array.dtype}, which is not "
                f"numeric. {_NPZ_HINT}"
            )
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        state[key] = torch.from_numpy(array)
    return state


def _read_torch(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers, no other objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        npz = False
        with contextlib.suppress(Exception), zipfile.ZipFile(path) as z:
            npz = bool(z.namelist()) and all(n.endswith(".npy") for n in z.namelist())
        if npz:
            raise ModgraphValueError(
                f"--weights: {str(path)!r} is an .npz archive of numpy arrays; rename it to end "
                "in .npz."
            ) from exc
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's advice to unpickle is left out
        lines = text.split("WeightsUnpickler error:")[-1].strip().splitlines() or [""]
        reason = lines[0].split(". ")[0].removesuffix(".")[:300]
        raise ModgraphValueError(
            f"--weights: {str(path)!r} is not a state dict that loads with weights_only=True "
            f"({type(exc).__name__}: {reason}): it is damaged, or holds objects other than "
            f"tensors, which modgraph never unpickles. {_PT_HINT}"
        ) from exc


def _check_state(state: Any, path: Path, hint: str) -> dict[str, torch.Tensor]:
    name = repr(str(path))
    if not isinstance(state, dict):
        raise ModgraphValueError(
            f"--weights: {name} holds a {type(state).__name__}, not a state dict. {hint}"
        )
    for key, value in state.items():
        if not isinstance(key, str):
            raise ModgraphValueError(
                f"--weights: {name} has key {key!r} ({type(key).__name__}), not a string: not "
                f"a state dict. {hint}"
            )
        if not isinstance(value, torch.Tensor):
            nested = " (a checkpoint? save the state dict alone)" if isinstance(value, dict) else ""
            raise ModgraphValueError(
                f"--weights: {name}: the value of {key!r} is of type {type(value).__name__}, "
                f"not a tensor{nested}. {hint}"
            )
    return state


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict without unpickling arbitrary objects (``.npz`` or a torch file)."""
    path = Path(path)
    if not path.is_file():
        raise ModgraphValueError(f"--weights: no file at {str(path)!r}.")
    npz = path.suffix.lower() == ".npz"
    hint = _NPZ_HINT if npz else _PT_HINT
    if path.stat().st_size == 0:
        raise ModgraphValueError(f"--weights: {str(path)!r} is empty. {hint}")
    state = _check_state(_read_npz(path) if npz else _read_torch(path), path, hint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        shapes = {k: tuple(v.shape) for k, v in expected.items()}
        raise ModgraphValueError(
            f"--weights: {str(path)!r} does not match the model. Missing keys: {missing}; "
            f"unexpected keys: {unexpected}; wrong shapes: {wrong}. Expected keys and shapes: "
            f"{shapes}."
        )
    try:
        model.load_state_dict(state)  # copies, casting to each tensor's dtype
    except Exception as exc:
        raise ModgraphValueError(
            f"--weights: {str(path)!r} does not load into the model ({one_line_error(exc)})."
        ) from exc
