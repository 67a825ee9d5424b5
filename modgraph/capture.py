"""Capture: forward passes over a prepared model, with hooks at the node layers.

:func:`session` prepares everything one analysis needs, and undoes it on exit whatever happens:
the user's model is put in eval mode with frozen parameters by :func:`preserved` (which restores
train/eval mode, ``requires_grad`` and ``.grad`` of every parameter, also on
``KeyboardInterrupt``), a converted copy runs when another dtype or device is asked for, the
:class:`~modgraph.plan.Plan` is made from the first batch, and the hooks of :class:`Tracer` live
only inside the session.

In a distributed run (``docs/distributed.md``) the session holds the process group: each
process streams its own shard of the data (:meth:`Session.batches`), every float64 sum is
combined by :meth:`Session.reduce`, and the plan and the first row are read from the unsharded
data, so that every process (one with no data included) builds the same plan.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._threads import warn_if_threads_contend
from .cache import ActivationCache
from .data import Shard, check_data, data_rows, iter_batches, progress_bar, unsharded
from .distributed import Group, resolve
from .errors import ModgraphTypeError, ModgraphValueError
from .options import Options
from .plan import Plan, make_plan, select_tensor

logger = logging.getLogger("modgraph")

__all__ = ["DISTRIBUTED_CALLERS", "Session", "Tracer", "preserved", "session"]

#: The public functions whose passes combine every sum over the processes of a distributed
#: run. A session for any other caller (the faithfulness functions) streams the whole data in
#: every process, so that its results are right, and the same everywhere, without collectives.
DISTRIBUTED_CALLERS = frozenset(
    {"interaction_basis", "interaction_graph", "find_modules", "degeneracy_report"}
)


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


def _compute_model(
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
    # dtype=None runs the model in its own dtypes (a mixed-precision model stays mixed; inputs
    # get the dtype of its first floating parameter): only the device may call for a copy
    wrong_dtype = dtype is not None and any(t.dtype != want_dtype for t in floating)
    if not wrong_dtype and not any(t.device != want_device for t in tensors):
        return model, want_dtype, want_device
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:  # pragma: no cover - depends on user models
        raise ModgraphTypeError(
            f"modgraph needs a {want_dtype} copy of the model on {want_device} but could not "
            f"copy it ({type(exc).__name__}: {exc}). Convert the model yourself "
            f"(model.to({want_dtype})) or pass dtype=None."
        ) from exc
    clone = clone.to(device=want_device, dtype=want_dtype if dtype is not None else None)
    clone.eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone, want_dtype, want_device


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
        self.original_values: dict[str, torch.Tensor] = {}
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

    def _rows(self, name: str, a: torch.Tensor) -> torch.Tensor:
        """A detached copy of node layer ``name``'s activations as rows ``(batch · P, d)``: one
        row per sample and analysed position (:class:`~modgraph.plan.Layout`)."""
        layout = self.plan.layouts.get(name)
        a = a.detach()
        if layout is None or (not layout.positions and a.ndim == 2):
            return a.clone()
        return layout.rows(a).reshape(-1, self.plan.dims[name]).clone()

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            a = args[0]
            result = None
            replace = self._substitute.get(name)
            if replace is not None:
                self.originals[name] = a
                self.original_values[name] = a.detach().clone()
                a = replace(a)
                # the module gets a copy: an in-place op in it (ReLU(inplace=True)) must not
                # change the tensor that gradients are taken with respect to
                result = ((a.clone(), *args[1:]), kwargs)
            if name in self._record:
                # a copy, not the live tensor, which forward may still change in place
                self._store[name] = self._rows(name, a) if self._detach else a
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
        """One forward pass; returns the recorded node-layer inputs (``"output"`` included):
        with ``detach`` as rows ``(batch · P, d)`` (one per sample and analysed position),
        otherwise the live tensors in the model's own layout.

        ``substitute[name](a)`` replaces the input of node layer ``name`` for its module only (other
        uses of the same tensor in ``forward``, such as a residual branch, still see ``a``); the
        replaced inputs are kept in :attr:`originals` (the live tensors, for gradients) and
        :attr:`original_values` (copies) until the next run. ``replace_output[name]`` likewise
        replaces the *output* of a node module (kept in :attr:`outputs`). Recorded activations
        are copies, and the model runs on a copy of ``x``, so a forward that changes a tensor in
        place changes neither the statistics nor the caller's data.
        """
        self._record = frozenset(record)
        self._substitute = dict(substitute or {})
        self._replace_output = dict(replace_output or {})
        self._stop, self._detach, self._store = stop, detach, {}
        self.originals, self.original_values, self.outputs = {}, {}, {}
        try:
            raw = self.model(x.clone())  # forward may change its input in place: not the data
        except _StopForward:
            pass
        else:
            if self.plan.output in self._record:
                out = select_tensor(raw, self.plan.select_output)
                name = self.plan.output
                self._store[name] = self._rows(name, out) if detach else out
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

    rows: int | None = None
    """Rows of a whole pass over all the data (every process's shard): known from the data's
    size, or counted on the first full pass."""
    first_row: torch.Tensor | None = None
    """The first input row ``(1, ...)`` of the whole data, read when the session started (for
    quantities that do not depend on the data, so that they need no pass)."""
    group: Group | None = None
    """The process group of a distributed run; ``None`` on one process."""
    cache: ActivationCache | None = None
    """Records kept between passes (``cache_mb``); None: none kept."""
    constant_sections: dict[tuple[str, str], bool] = field(default_factory=dict)
    """Which sections have a data-independent Jacobian, once read (by the bases and edges)."""
    shard: Shard | None = None
    """This process's part of the data in a distributed run."""
    shard_rows: int | None = None
    """Rows this process streams per pass (on one process, :attr:`rows`): known from the data's
    size on one process, else counted on the first full pass."""

    @property
    def distributed(self) -> bool:
        """Whether the sums are combined over several processes."""
        return self.group is not None

    def stream_seed(self, seed: int) -> int:
        """``seed`` for this process's random draws (random sources, subsamples): ``seed``
        itself on one process and on rank 0, a different stream on every other rank (the
        same seed on every rank would give each rank's k-th batch the same draws)."""
        if self.group is None or self.group.rank == 0:
            return seed
        return (seed ^ (self.group.rank * 0x9E3779B97F4A7C15)) & 0x7FFFFFFFFFFFFFFF

    def run(self, index: int, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The records of ``names`` for batch ``index`` of a pass: kept ones when the session's
        :class:`~modgraph.cache.ActivationCache` holds them, else by running the model."""
        held = None if self.cache is None else self.cache.get(index, names)
        if held is not None:
            return held
        records = self.tracer.run(x, record=names)
        if self.cache is not None:
            self.cache.put(index, records)
        return records

    def reduce(self, total: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """A float64 sum over this process's data, summed over every process of a distributed
        run; on one process, ``total`` itself.

        Parameters
        ----------
        total : Tensor, any shape
            This process's sum (zeros where its shard is empty), a count or a flag.
        op : {"sum", "max", "min"}
            How the processes' parts combine.

        Returns
        -------
        Tensor, same shape
            float64 on ``total``'s device, bit for bit the same in every process.

        Raises
        ------
        ModgraphDistributedError
            Another process failed, or did not arrive within the process group's timeout.
        """
        if self.group is None:
            return total
        return self.group.all_reduce(total, op)

    def reduce_all(self, parts: Sequence[torch.Tensor], op: str = "sum") -> list[torch.Tensor]:
        """:meth:`reduce` of several tensors (on one device) in one collective.

        Parameters
        ----------
        parts : sequence of Tensor, any shapes
            This process's sums, all on the same device.
        op : {"sum", "max", "min"}

        Returns
        -------
        list of Tensor
            float64, the shapes of ``parts``; ``parts`` themselves on one process.
        """
        if self.group is None or not parts:
            return list(parts)
        flat = torch.cat([p.reshape(-1).to(torch.float64) for p in parts])
        pieces = self.group.all_reduce(flat, op).split([p.numel() for p in parts])
        return [piece.reshape(p.shape) for piece, p in zip(pieces, parts)]

    def combine(
        self, sums: Sequence[torch.Tensor], count: int, flags: Sequence[bool] = ()
    ) -> tuple[list[torch.Tensor], int, list[bool]]:
        """Sums, their count of rows and flags ("seen in some batch") over every process, in one
        collective; the arguments themselves on one process."""
        if self.group is None:
            return list(sums), count, list(flags)
        extra = torch.tensor([float(count), *map(float, flags)], dtype=torch.float64)
        *done, tail = self.reduce_all([*sums, extra.to(self.device)])
        return done, int(tail[0]), [bool(v > 0) for v in tail[1:].tolist()]

    def reduce_count(self, count: int | float) -> int:
        """A count of rows (or points) over every process."""
        if self.group is None:
            return int(count)
        return int(self.reduce(torch.tensor(float(count), dtype=torch.float64)))

    def batches(
        self, desc: str, batch_size: int | None = None, *, first_row_only: bool = False
    ) -> Iterator[torch.Tensor]:
        """Stream the data once (a fresh pass), with a progress bar when enabled.

        Every pass must yield the same rows: a pass that yields a different number than the
        first raises (a one-shot or shrinking source would bias every sum silently); in a
        distributed run, each process's shard is compared with its own first pass.
        ``first_row_only`` yields the first row alone (for data-independent quantities)."""
        size = batch_size or self.batch_size
        if first_row_only:  # no pass: the first row, kept from the session's first batch
            yield self.first_row
            return
        stream = iter_batches(
            self.data, size, device=self.device, dtype=self.dtype, shard=self.shard
        )
        count = 0
        for index, x in enumerate(
            progress_bar(stream, enabled=self.progress, desc=desc, rows=self.shard_rows)
        ):
            if tuple(x.shape[1:]) != self.plan.input_shape:
                raise ModgraphValueError(
                    f"data has inputs of shape {tuple(x.shape)} in batch {index}, but "
                    f"(batch, {', '.join(map(str, self.plan.input_shape))}) in the first batch: "
                    "all batches must have the same input shape."
                )
            count += int(x.shape[0])
            yield x
        if self.shard_rows is None:
            self.shard_rows = count
            if self.rows is None:
                self.rows = self.reduce_count(count)
        elif count != self.shard_rows:
            where = "" if self.group is None else f" on rank {self.group.rank}"
            raise ModgraphValueError(
                f"data yielded {count} rows{where} in this pass ({desc}) but {self.shard_rows} "
                "in the first: "
                "modgraph streams the data several times, and every pass must yield the same "
                "data. Pass a Tensor, a Dataset, or a re-iterable that restarts from the "
                "beginning each time."
            )


@contextlib.contextmanager
def _attention_fast_path(enabled: bool) -> Iterator[None]:
    """Set torch's fused fast path of nn.MultiheadAttention / nn.TransformerEncoderLayer (it
    skips submodule calls, so node layers inside would never be seen); restore it on exit."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def session(
    model: nn.Module, data: Any, layers: Iterable[str] | None, options: Options
) -> Iterator[Session]:
    """Prepare ``model`` for analysis with validated ``options``; restore it on exit, whatever
    happens inside. Errors about the data or the layers name ``options.caller``."""
    where = options.caller
    check_data(data, where)
    warn_if_threads_contend()
    # The analysis sets the autograd modes it needs, whatever the caller's context (inference
    # mode, anomaly detection, no_grad); the context managers restore the caller's on exit.
    inference = [
        n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_inference()
    ]
    if inference:
        raise ModgraphValueError(
            f"The model's tensors {inference[:3]} were made under torch.inference_mode(): "
            "autograd cannot differentiate through inference tensors. Create or load the model "
            "outside inference mode (calling modgraph inside inference mode is fine)."
        )
    with (
        preserved(model),  # outermost: restores the model in the caller's own modes
        torch.inference_mode(False),
        torch.autograd.set_detect_anomaly(False),
        torch.no_grad(),
        _attention_fast_path(False),
    ):
        run_model, run_dtype, run_device = _compute_model(model, options.dtype, options.device)
        group = None
        if options.caller in DISTRIBUTED_CALLERS:
            group = resolve(options.distributed, run_device, where)
        whole = unsharded(data, options.batch_size)  # the same first rows in every process
        batches = iter_batches(whole, options.batch_size, device=run_device, dtype=run_dtype)
        first = next(iter(batches), None)
        if first is None or first.shape[0] == 0:
            raise ModgraphValueError(
                "data yielded no batch (it is empty); pass at least one input row."
            )
        plan = make_plan(run_model, first[:16], layers, options.output, where, options.positions)
        with Tracer(run_model, plan) as tracer:
            yield Session(
                model=run_model,
                plan=plan,
                tracer=tracer,
                data=data,
                batch_size=options.batch_size,
                device=run_device,
                dtype=run_dtype,
                progress=options.progress,
                rows=data_rows(data),
                first_row=first[:1].clone(),
                group=group,
                shard=None if group is None else Shard(group.rank, group.size, options.batch_size),
                shard_rows=data_rows(data) if group is None else None,
                cache=ActivationCache(int(options.cache_mb * 2**20)) if options.cache_mb else None,
            )
