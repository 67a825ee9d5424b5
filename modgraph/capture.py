"""Capture: node layers, data streaming and forward passes with hooks.

A *node layer* is named by a submodule of the model (a name from ``model.named_modules()``) and
means the input to that submodule; ``"output"`` is the model output and is always the last node
layer. This module turns ``(model, data, layers)`` into a :class:`Plan` (which node layers, in
execution order, and which sections between them are *elementwise*: ``Linear`` followed by an
elementwise nonlinearity or nothing) and runs forward passes that record, substitute or stop at node
layers. The user's model is never left changed: :func:`preserved` restores train/eval mode,
``requires_grad`` and ``.grad`` of every parameter, and hooks live only inside :class:`Tracer`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validate import check_progress
from .errors import ModgraphTypeError, ModgraphValueError

__all__ = [
    "OUTPUT",
    "Plan",
    "Section",
    "Session",
    "Tracer",
    "iter_batches",
    "make_plan",
    "preserved",
    "session",
]

logger = logging.getLogger("modgraph")

OUTPUT = "output"
"""Name of the last node layer: the model output."""

#: Modules that act elementwise (``y_i = σ(z_i)``) in eval mode; exact types only, so a subclass
#: that overrides ``forward`` is never mistaken for one.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LogSigmoid, nn.Tanhshrink, nn.Identity, nn.Dropout,
)  # fmt: skip


class _StopForward(BaseException):
    """Raised by a hook to end a forward pass early (a BaseException so user code cannot eat it)."""


# --------------------------------------------------------------------------------------------
# Model state
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode with frozen parameters; restore everything on exit.

    Restores, also when the body raises (``KeyboardInterrupt`` included): every submodule's
    ``training`` flag, every parameter's ``requires_grad`` and ``.grad``.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def compute_model(
    model: nn.Module, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[nn.Module, torch.dtype, torch.device]:
    """The module to run: ``model`` itself, or a converted copy when dtype or device differ.

    The copy is made in the caller's :func:`preserved` block, so it starts in eval mode.
    """
    tensors = [*model.parameters(), *model.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    model_dtype = floating[0].dtype if floating else torch.get_default_dtype()
    model_device = tensors[0].device if tensors else torch.device("cpu")
    want_dtype = dtype or model_dtype
    want_device = torch.device(device) if device is not None else model_device
    mixed = any(t.dtype != want_dtype for t in floating) or any(
        t.device != want_device for t in tensors
    )
    if not mixed:
        return model, want_dtype, want_device
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # pragma: no cover - depends on user models
        raise ModgraphTypeError(
            f"modgraph needs a {want_dtype} copy of the model on {want_device} but could not "
            f"copy it ({type(exc).__name__}: {exc}). Convert the model yourself "
            f"(model.to({want_dtype})) or pass dtype=None."
        ) from exc
    clone = clone.to(device=want_device, dtype=want_dtype)
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone, want_dtype, want_device


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Plan: node layers and sections
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """The map from node layer ``source`` to the next node layer ``target``.

    ``linear`` is set when the section is *elementwise*: ``target = σ(linear(source))`` exactly,
    with ``activation`` the elementwise module σ (``None`` for a Linear→Linear junction). Such a
    section's Jacobian is ``diag(σ'(z)) W``, which admits exact shortcuts (no autograd).
    """

    source: str
    target: str
    linear: nn.Linear | None = None
    activation: nn.Module | None = None

    @property
    def elementwise(self) -> bool:
        return self.linear is not None


@dataclass(frozen=True)
class Plan:
    """Node layers in execution order (``names[-1] == "output"``) and the sections between them."""

    names: tuple[str, ...]
    modules: dict[str, nn.Module]
    dims: dict[str, int]
    sections: tuple[Section, ...]
    select_output: Callable[[Any], torch.Tensor] | None
    input_shape: tuple[int, ...] = ()


def _select(output: Any, select_output: Callable[[Any], torch.Tensor] | None) -> torch.Tensor:
    if select_output is not None:
        output = select_output(output)
    if not isinstance(output, torch.Tensor):
        raise ModgraphTypeError(
            f"The model returned a {type(output).__name__}, not a Tensor. Pass output=<callable> "
            "that picks the Tensor to analyse, e.g. output=lambda out: out[0] or "
            "output=lambda out: out['logits']."
        )
    return output


def _check_2d(t: torch.Tensor, name: str) -> None:
    if t.ndim != 2:
        what = "the model output" if name == OUTPUT else f"the input of node layer {name!r}"
        raise ModgraphValueError(
            f"{what} has shape {tuple(t.shape)}; modgraph needs (batch, features). Sequence "
            "models (batch, positions, features) are not supported yet: flatten positions into "
            "the batch in a wrapper module, or choose layers whose inputs are 2-d."
        )


def make_plan(
    model: nn.Module,
    probe: torch.Tensor,
    layers: Iterable[str] | None,
    select_output: Callable[[Any], torch.Tensor] | None,
    where: str,
) -> Plan:
    """Run one probe forward pass to fix node layers, their order, widths and section kinds."""
    named = dict(model.named_modules())
    del named[""]
    if layers is not None:
        if isinstance(layers, str) or not isinstance(layers, Iterable):
            raise ModgraphTypeError(
                f"The 'layers' parameter of {where} must be a list of module names or None. "
                f"Got {type(layers).__name__}."
            )
        requested = list(layers)
        for name in requested:
            if not isinstance(name, str):
                raise ModgraphTypeError(
                    f"layers must hold module names (str); got {name!r} of type "
                    f"{type(name).__name__}."
                )
        if OUTPUT in requested:
            if requested[-1] != OUTPUT or requested.count(OUTPUT) > 1:
                raise ModgraphValueError(
                    f"{OUTPUT!r} names the model output and must come last (once) in layers; "
                    f"got {requested}."
                )
            requested = requested[:-1]
        dupes = sorted({n for n in requested if requested.count(n) > 1})
        if dupes:
            raise ModgraphValueError(f"layers names {dupes} more than once; name each layer once.")
        unknown = [n for n in requested if n not in named]
        if unknown:
            raise ModgraphValueError(
                f"layer {unknown[0]!r} not found in the model; available: {sorted(named)}. "
                "Pass names from model.named_modules()."
            )
        watch = {n: named[n] for n in requested}
    else:
        requested = None
        watch = {n: m for n, m in named.items() if isinstance(m, nn.Linear)}
        if not watch:
            raise ModgraphValueError(
                "The model has no nn.Linear submodule, so there is no default node layer. Pass "
                "layers=[...] with names from model.named_modules()."
            )

    # Record every module call: order, the identity/version of its first input and its output.
    calls: list[tuple[str, int, int, int, int]] = []  # name, in id, in version, out id, out version
    pre_inputs: dict[str, torch.Tensor] = {}
    keep: list[Any] = []  # keep tensors alive so ids are not reused during the probe
    pending: dict[int, tuple[int, int]] = {}
    handles = []

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            a = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if name in watch:
                if a is None:
                    raise ModgraphValueError(
                        f"node layer {name!r} receives no Tensor as its first positional input, "
                        "so it has no activation to analyse; choose another module."
                    )
                if name in pre_inputs:
                    raise ModgraphValueError(
                        f"module {name!r} runs more than once in forward (shared weights or a "
                        "loop); a node layer must run exactly once. Choose another module."
                    )
                pre_inputs[name] = a
            keep.append(a)
            pending[id(module)] = (id(a), a._version) if a is not None else (0, -1)

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            in_id, in_version = pending.pop(id(module), (0, -1))
            if isinstance(output, torch.Tensor):
                keep.append(output)
                calls.append((name, in_id, in_version, id(output), output._version))
            else:
                calls.append((name, in_id, in_version, 0, -1))

        return hook

    try:
        for name, module in named.items():
            handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook(name)))
        with torch.no_grad():
            try:
                raw = model(probe)
            except ModgraphValueError:
                raise
            except Exception as exc:
                raise ModgraphValueError(
                    f"The model could not run on the first batch of data (shape "
                    f"{tuple(probe.shape)}, dtype {probe.dtype}): {type(exc).__name__}: {exc}. "
                    "Check that data yields inputs the model accepts (float inputs for a float "
                    "model: convert with x.float())."
                ) from exc
        out = _select(raw, select_output)
        _check_2d(out, OUTPUT)
    finally:
        for h in handles:
            h.remove()

    missing = [n for n in watch if n not in pre_inputs]
    if missing:
        raise ModgraphValueError(
            f"layer {missing[0]!r} never runs in the model's forward, so it has no activation. "
            "Choose modules that forward actually calls."
        )
    order = {n: i for i, n in enumerate(pre_inputs)}
    if requested is None:
        names = sorted(watch, key=order.__getitem__)
    else:
        names = requested
        executed = sorted(requested, key=order.__getitem__)
        if executed != requested:
            raise ModgraphValueError(
                f"layers must be given in execution order; forward runs them as {executed}, "
                f"got {requested}."
            )
    for n in names:
        _check_2d(pre_inputs[n], n)
    dims = {n: int(pre_inputs[n].shape[-1]) for n in names}
    dims[OUTPUT] = int(out.shape[-1])

    # Elementwise sections: the target's input is exactly σ(Linear(source)).
    by_name = {c[0]: c for c in calls}
    target_tensor = {n: pre_inputs[n] for n in names}
    target_tensor[OUTPUT] = out
    sections = []
    all_names = (*names, OUTPUT)
    for src, dst in zip(all_names[:-1], all_names[1:]):
        linear = named[src]
        section = Section(src, dst)
        t = target_tensor[dst]
        if type(linear) is nn.Linear and src in by_name:
            _, _, _, z_id, z_version = by_name[src]
            if id(t) == z_id and t._version == z_version:
                section = Section(src, dst, linear, None)
            else:
                for name, in_id, in_version, out_id, out_version in calls:
                    act = named[name]
                    if (
                        type(act) in ELEMENTWISE
                        and in_id == z_id
                        and in_version == z_version
                        and out_id == id(t)
                        and out_version == t._version
                    ):
                        section = Section(src, dst, linear, act)
                        break
        sections.append(section)
    logger.debug(
        "node layers %s; elementwise sections %s",
        all_names,
        [f"{s.source}->{s.target}" for s in sections if s.elementwise],
    )
    return Plan(
        names=all_names,
        modules={n: named[n] for n in names},
        dims=dims,
        sections=tuple(sections),
        select_output=select_output,
        input_shape=tuple(probe.shape[1:]),
    )


# --------------------------------------------------------------------------------------------
# Forward passes with hooks
# --------------------------------------------------------------------------------------------


class Tracer:
    """Hooks on the node-layer modules of a plan, removed on exit (also on error).

    :meth:`run` executes one forward pass that can *record* node-layer inputs, *substitute* the
    input of one node layer (e.g. by a leaf tensor that requires grad, which also detaches
    everything upstream) and *stop* right after recording a given node layer.
    """

    def __init__(self, model: nn.Module, plan: Plan) -> None:
        self.model = model
        self.plan = plan
        self._handles: list[Any] = []
        self._record: frozenset[str] = frozenset()
        self._substitute: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self._replace_output: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.originals: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._stop: str | None = None
        self._detach = True
        self._store: dict[str, torch.Tensor] = {}

    def __enter__(self) -> Tracer:
        try:
            for name, module in self.plan.modules.items():
                self._handles.append(
                    module.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                )
                self._handles.append(module.register_forward_hook(self._output_hook(name)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._store = {}

    def _output_hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            replace = self._replace_output.get(name)
            if replace is None:
                return None
            self.outputs[name] = replace(output)
            return self.outputs[name]

        return hook

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            a = args[0]
            result = None
            replace = self._substitute.get(name)
            if replace is not None:
                self.originals[name] = a
                a = replace(a)
                result = ((a, *args[1:]), kwargs)
            if name in self._record:
                self._store[name] = a.detach() if self._detach else a
            if name == self._stop:
                raise _StopForward
            return result

        return hook

    def run(
        self,
        x: torch.Tensor,
        *,
        record: Iterable[str] = (),
        substitute: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        stop: str | None = None,
        detach: bool = True,
        replace_output: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One forward pass; returns the recorded node-layer inputs (``"output"`` included).

        ``substitute[name](a)`` replaces the input of node layer ``name`` for its module only (other
        uses of the same tensor in ``forward``, such as a residual branch, still see ``a``); the
        replaced inputs are kept in :attr:`originals` until the next run. ``replace_output[name]``
        likewise replaces the *output* of a node module (kept in :attr:`outputs`).
        """
        self._record = frozenset(record)
        self._substitute = dict(substitute or {})
        self._replace_output = dict(replace_output or {})
        self._stop, self._detach, self._store = stop, detach, {}
        self.originals, self.outputs = {}, {}
        try:
            raw = self.model(x)
        except _StopForward:
            pass
        else:
            if OUTPUT in self._record:
                out = _select(raw, self.plan.select_output)
                self._store[OUTPUT] = out.detach() if detach else out
        finally:
            self._substitute, self._replace_output = {}, {}
            self._stop = None
        store, self._store = self._store, {}
        return store


# --------------------------------------------------------------------------------------------
# Session: everything one analysis needs, set up and torn down in one place
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    """A model prepared for analysis: compute copy, plan, hooks and a data streamer."""

    model: nn.Module
    plan: Plan
    tracer: Tracer
    data: Any
    batch_size: int
    device: torch.device
    dtype: torch.dtype
    progress: bool | None

    def batches(self, desc: str, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Stream the data once (a fresh pass), with a progress bar when enabled."""
        size = batch_size or self.batch_size
        stream = iter_batches(self.data, size, device=self.device, dtype=self.dtype)
        for index, x in enumerate(progress_bar(stream, enabled=self.progress, desc=desc)):
            if tuple(x.shape[1:]) != self.plan.input_shape:
                raise ModgraphValueError(
                    f"data has inputs of shape {tuple(x.shape)} in batch {index}, but "
                    f"(batch, {', '.join(map(str, self.plan.input_shape))}) in the first batch: "
                    "all batches must have the same input shape."
                )
            yield x


@contextlib.contextmanager
def session(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None,
    *,
    batch_size: int,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
    output: Callable[[Any], torch.Tensor] | None,
    progress: bool | None,
    where: str,
) -> Iterator[Session]:
    """Prepare ``model`` for analysis; restore it on exit, whatever happens inside."""
    check_data(data, where)
    check_progress(progress, where)
    if output is not None and not callable(output):
        raise ModgraphTypeError(
            f"The 'output' parameter of {where} must be a callable that maps the model's return "
            f"value to a Tensor, or None. Got {type(output).__name__}."
        )
    with preserved(model):
        run_model, run_dtype, run_device = compute_model(model, dtype, device)
        first = next(iter(iter_batches(data, batch_size, device=run_device, dtype=run_dtype)), None)
        if first is None or first.shape[0] == 0:
            raise ModgraphValueError(
                "data yielded no batch (it is empty); pass at least one input row."
            )
        plan = make_plan(run_model, first[:16], layers, output, where)
        with Tracer(run_model, plan) as tracer:
            yield Session(
                model=run_model,
                plan=plan,
                tracer=tracer,
                data=data,
                batch_size=batch_size,
                device=run_device,
                dtype=run_dtype,
                progress=progress,
            )
