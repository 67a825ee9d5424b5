"""The plan of an analysis: which node layers, in which order, and what lies between them.

A *node layer* is named by a submodule of the model (a name from ``model.named_modules()``) and
means the input to that submodule; ``"output"`` is the model output and is always the last node
layer. One probe forward pass turns ``(model, layers)`` into a :class:`Plan`: the node layers in
execution order, their widths, and the :class:`Section` between each adjacent pair.

This module is the one place that says what a section *is*:

- a **plain Linear** (:func:`is_plain_linear`): an ``nn.Linear`` whose forward is
  ``nn.Linear.forward``, i.e. ``y = W a + b``;
- an **identity** module (:data:`IDENTITY`): ``nn.Identity`` and ``nn.Dropout`` (in eval mode);
- an **elementwise** module (:data:`ELEMENTWISE`): ``y_i = σ(z_i)``;
- an **elementwise section** (:attr:`Section.elementwise`): ``target = σ(linear(source))``
  exactly, a plain Linear followed by an elementwise module or by nothing; a **Linear junction**
  (:attr:`Section.linear_junction`) is one whose σ is nothing or the identity.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ModgraphTypeError, ModgraphValueError
from .io import check_graphml_name
from .layout import Layout, layout_of, select_positions

__all__ = [
    "ELEMENTWISE",
    "IDENTITY",
    "OUTPUT",
    "Plan",
    "Section",
    "is_plain_linear",
    "make_plan",
    "output_name",
    "select_tensor",
]

logger = logging.getLogger("modgraph")

OUTPUT = "output"
"""Name of the last node layer, the model output (``"<output>"`` when a submodule is named
``"output"``: see :func:`output_name` and :attr:`Plan.output`)."""

#: Modules that are the identity in eval mode (exact types).
IDENTITY: tuple[type[nn.Module], ...] = (nn.Identity, nn.Dropout)

#: Modules that act elementwise (``y_i = σ(z_i)``) in eval mode; exact types only, so a subclass
#: that overrides ``forward`` is never mistaken for one.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LogSigmoid, nn.Tanhshrink, *IDENTITY,
)  # fmt: skip


#: Convolutions whose output is linear in their input (a junction of two of them has a constant
#: Jacobian); exact types, so a subclass that overrides ``forward`` is never mistaken for one.
CONVOLUTIONS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_plain_linear(module: nn.Module | None) -> bool:
    """An ``nn.Linear`` (or subclass) whose forward is ``nn.Linear.forward``: ``y = W a + b``."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


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
    constant: bool = False
    """The Jacobian does not depend on the data: ``target = conv(source)`` exactly (a
    convolution junction, 1×1 convolutions included), or a Linear junction."""
    conv: nn.Module | None = None
    """Set when ``target = σ(conv(source))`` exactly, with ``activation`` the elementwise σ: the
    Jacobian is ``J_{t,s} = diag(σ'(z_t)) K_{t−s}``, which admits the co-activation shortcut."""

    @property
    def key(self) -> tuple[str, str]:
        """``(source, target)``: the key of this section's edges."""
        return (self.source, self.target)

    @property
    def elementwise(self) -> bool:
        return self.linear is not None

    @property
    def linear_junction(self) -> bool:
        """An elementwise section whose σ is nothing or the identity: ``target = linear(source)``."""
        return self.linear is not None and (
            self.activation is None or type(self.activation) in IDENTITY
        )


@dataclass(frozen=True)
class Plan:
    """Node layers in execution order (the model output last, :attr:`output`) and the sections
    between them."""

    names: tuple[str, ...]
    modules: dict[str, nn.Module]
    dims: dict[str, int]
    sections: tuple[Section, ...]
    select_output: Callable[[Any], torch.Tensor] | None
    input_shape: tuple[int, ...] = ()
    layouts: dict[str, Layout] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """Name of the model-output node layer (``"output"`` unless a submodule has that name;
        see :func:`output_name`)."""
        return self.names[-1]


def select_tensor(output: Any, select_output: Callable[[Any], torch.Tensor] | None) -> torch.Tensor:
    """The Tensor to analyse from the model's return value: ``select_output(output)`` or the
    value itself (for a Hugging Face model, ``output=lambda o: o.logits``)."""
    if select_output is not None:
        output = select_output(output)
    if not isinstance(output, torch.Tensor):
        raise ModgraphTypeError(
            f"The model returned a {type(output).__name__}, not a Tensor. Pass output=<callable> "
            "that picks the Tensor to analyse, e.g. output=lambda out: out[0] or "
            "output=lambda out: out['logits']."
        )
    return output


def output_name(named: Iterable[str]) -> str:
    """The name of the model-output node layer: ``"output"``, unless a submodule has that name
    (a module name always means that module's input); then ``"<output>"`` (or the first of
    ``"<output>_1"``, ... that no submodule has)."""
    taken = set(named)
    if OUTPUT not in taken:
        return OUTPUT
    candidates = ("<output>", *(f"<output>_{i}" for i in range(1, len(taken) + 2)))
    return next(c for c in candidates if c not in taken)


def _requested_layers(layers: Any, named: dict[str, nn.Module], out: str, where: str) -> list[str]:
    """The node layers the user named (the output excluded), checked against the model."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ModgraphTypeError(
            f"The 'layers' parameter of {where} must be a list of module names or None. "
            f"Got {type(layers).__name__}."
        )
    if isinstance(layers, (Set, Mapping)):
        raise ModgraphTypeError(
            f"The 'layers' parameter of {where} must be an ordered list of module names, not a "
            f"{type(layers).__name__} (its order would depend on hashing). Pass a list."
        )
    requested = list(layers)
    for name in requested:
        if not isinstance(name, str):
            raise ModgraphTypeError(
                f"layers must hold module names (str); got {name!r} of type {type(name).__name__}."
            )
    if out in requested:
        if requested[-1] != out or requested.count(out) > 1:
            raise ModgraphValueError(
                f"{out!r} names the model output and must come last (once) in layers; "
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
    return requested


def _default_layers(
    named: dict[str, nn.Module], calls: dict[str, int], inputs: dict[str, torch.Tensor | None]
) -> list[str]:
    """The default node layers among ``named`` (every submodule): the input of every
    ``nn.Linear`` that runs exactly once with a Tensor input. The Linears left out are logged;
    convolutions, embeddings and attention modules, whose inputs can be named in ``layers``,
    are listed in a warning."""
    chosen, skipped = [], []
    for name, module in named.items():
        if not isinstance(module, nn.Linear):
            continue
        count = calls.get(name, 0)
        if count == 1 and isinstance(inputs.get(name), torch.Tensor):
            chosen.append(name)
        elif count == 0:
            skipped.append(
                f"{name} (never runs as a module: unused, or its weights are used "
                "functionally, as by nn.MultiheadAttention)"
            )
        elif count > 1:
            skipped.append(f"{name} (runs more than once, {count} times: shared weights or a loop)")
        else:
            skipped.append(f"{name} (its first input is not a Tensor)")
    if skipped:
        logger.info("default node layers leave out: %s", "; ".join(skipped))
    other = sorted(
        name
        for name, m in named.items()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Embedding, nn.MultiheadAttention))
    )
    if other:
        shown = ", ".join(other[:8]) + (f" and {len(other) - 8} more" if len(other) > 8 else "")
        warnings.warn(
            f"modgraph analyses the inputs of nn.Linear modules by default; {len(other)} "
            f"convolution, embedding or attention module(s) are not default node layers: "
            f"{shown}. To analyse a convolution's input (channels as features, spatial sites as "
            "positions) or an attention block's input, name it in layers=[...]; wide feature "
            "maps and long contexts want n_random_sources=R or positions=[...].",
            UserWarning,
            stacklevel=2,
        )
    if not chosen:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise ModgraphValueError(
            "The model has no nn.Linear submodule that runs exactly once, so there is no "
            f"default node layer{why}. Pass layers=[...] with names from model.named_modules()."
        )
    return chosen


def make_plan(
    model: nn.Module,
    probe: torch.Tensor,
    layers: Iterable[str] | None,
    select_output: Callable[[Any], torch.Tensor] | None,
    where: str,
    positions: tuple[int, ...] | None = None,
) -> Plan:
    """Run one probe forward pass to fix node layers, their order, widths, layouts (features and
    positions) and section kinds."""
    named = dict(model.named_modules())
    del named[""]
    out_name = output_name(named)
    if out_name != OUTPUT:
        logger.warning(
            "the model has a submodule named %r, so that name means its input; the model "
            "output is the node layer %r",
            OUTPUT,
            out_name,
        )
    requested = None if layers is None else _requested_layers(layers, named, out_name, where)
    if requested is not None:
        watch = {n: named[n] for n in requested}
    else:
        watch = {n: m for n, m in named.items() if isinstance(m, nn.Linear)}
        if not watch:
            raise ModgraphValueError(
                "The model has no nn.Linear submodule, so there is no default node layer. Pass "
                "layers=[...] with names from model.named_modules()."
            )

    # Record every module call: order, the identity/version of its first input and its output.
    calls: list[tuple[str, int, int, int, int]] = []  # name, in id, in version, out id, out version
    counts: dict[str, int] = {}
    pre_inputs: dict[str, torch.Tensor | None] = {}
    seen_version: dict[str, int] = {}  # version of a node input when its module saw it
    keep: list[Any] = []  # keep tensors alive so ids are not reused during the probe
    pending: dict[int, tuple[int, int]] = {}
    handles = []

    def pre_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            a = args[0] if args and isinstance(args[0], torch.Tensor) else None
            counts[name] = counts.get(name, 0) + 1
            if name in watch:
                if requested is not None and a is None:
                    raise ModgraphValueError(
                        f"node layer {name!r} receives no Tensor as its first positional input, "
                        "so it has no activation to analyse; choose another module."
                    )
                if requested is not None and name in pre_inputs:
                    raise ModgraphValueError(
                        f"module {name!r} runs more than once in forward (shared weights or a "
                        "loop); a node layer must run exactly once. Choose another module."
                    )
                pre_inputs.setdefault(name, a)
                seen_version.setdefault(name, a._version if a is not None else -1)
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
                raw = model(probe.clone())  # forward may change its input in place
            except ModgraphValueError:
                raise
            except Exception as exc:
                hint = (
                    " If data holds single samples rather than batches, stack them first "
                    "(torch.stack(samples))."
                    if probe.ndim == 1
                    else ""
                )
                raise ModgraphValueError(
                    f"The model could not run on the first batch of data (shape "
                    f"{tuple(probe.shape)}, dtype {probe.dtype}): {type(exc).__name__}: {exc}. "
                    "Check that data yields inputs the model accepts (float inputs for a float "
                    f"model: convert with x.float()).{hint}"
                ) from exc
        out = select_tensor(raw, select_output)
        if probe.ndim == 1 and out.ndim < 2:
            raise ModgraphValueError(
                f"data yields batches of shape {tuple(probe.shape)}, and the model maps one to "
                f"shape {tuple(out.shape)}: these look like single samples, not batches. Stack "
                "them into one Tensor (torch.stack(samples)) or batch them (a DataLoader)."
            )
        out_layout = layout_of(out, None, None)
    finally:
        for h in handles:
            h.remove()

    if requested is None:
        watch = {n: watch[n] for n in _default_layers(named, counts, pre_inputs)}
    missing = [n for n in watch if n not in pre_inputs]
    if missing:
        raise ModgraphValueError(
            f"layer {missing[0]!r} never runs in the model's forward, so it has no activation. "
            "Choose modules that forward actually calls."
        )
    inputs = {n: pre_inputs[n] for n in watch}
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
    layouts: dict[str, Layout] = {}
    for n in names:
        a = inputs[n]
        assert a is not None
        layouts[n] = layout_of(a, n, named[n])
        # a name that cannot round-trip through GraphML is refused before any pass
        check_graphml_name(n, f"{where}: node layer name")
    layouts[out_name] = out_layout
    layouts = select_positions(layouts, positions, where)
    dims = {
        n: int(inputs[n].shape[1] if layouts[n].channels_first else inputs[n].shape[-1])  # type: ignore[union-attr]
        for n in names
    }
    dims[out_name] = int(out.shape[1] if out_layout.channels_first else out.shape[-1])

    # Elementwise sections: the target's input is exactly σ(Linear(source)).
    by_name = {c[0]: c for c in calls}
    target_tensor: dict[str, Any] = {n: inputs[n] for n in names}
    target_tensor[out_name] = out
    sections = []
    all_names = (*names, out_name)
    for src, dst in zip(all_names[:-1], all_names[1:]):
        linear = named[src]
        section = Section(src, dst)
        t = target_tensor[dst]
        # the version dst's module saw (forward may change the tensor in place afterwards)
        t_version = seen_version.get(dst, t._version)
        if is_plain_linear(linear) and src in by_name:
            _, _, _, z_id, z_version = by_name[src]
            if id(t) == z_id and t_version == z_version:
                section = Section(src, dst, linear, None, constant=True)
            else:
                for name, in_id, in_version, out_id, out_version in calls:
                    act = named[name]
                    if (
                        type(act) in ELEMENTWISE
                        and in_id == z_id
                        and in_version == z_version
                        and out_id == id(t)
                        and out_version == t_version
                    ):
                        section = Section(src, dst, linear, act)
                        break
        elif type(linear) in CONVOLUTIONS and src in by_name:
            _, _, _, z_id, z_version = by_name[src]
            if id(t) == z_id and t_version == z_version:  # target = conv(source), nothing between
                section = Section(src, dst, constant=True)
            else:
                for name, in_id, in_version, out_id, out_version in calls:
                    act = named[name]
                    if (
                        type(act) in ELEMENTWISE
                        and (in_id, in_version) == (z_id, z_version)
                        and (out_id, out_version) == (id(t), t_version)
                    ):
                        section = Section(src, dst, activation=act, conv=linear)
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
        layouts=layouts,
    )
