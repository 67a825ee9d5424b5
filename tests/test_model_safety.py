"""The user's model is never left changed: parameters, hooks, modes, requires_grad, .grad."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from modgraph import find_modules, interaction_basis, interaction_graph
from tests.zoo import Custom, correlated_inputs

X = correlated_inputs(96, 6, seed=0)


def snapshot(model: nn.Module):
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
    }


def assert_unchanged(model: nn.Module, before) -> None:
    after = snapshot(model)
    for k, v in before["params"].items():
        assert torch.equal(v, after["params"][k]) and v.dtype == after["params"][k].dtype, k
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for n, g in before["grad"].items():
        assert (g is None and after["grad"][n] is None) or torch.equal(g, after["grad"][n]), n
    for name, m in model.named_modules():
        assert not m._forward_pre_hooks and not m._forward_hooks, name
        assert not m._backward_hooks and not m._backward_pre_hooks, name


def prepared_model(dtype=torch.float64) -> nn.Module:
    model = Custom().to(dtype)
    model.train()
    model.fc2.eval()  # mixed modes must come back as they were
    model.head.weight.requires_grad_(False)  # mixed flags too
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 0.5)  # an existing gradient
    return model


CALLS = {
    "interaction_basis": lambda m, d: interaction_basis(m, d, batch_size=16, progress=False),
    "global": lambda m, d: interaction_basis(m, d, variant="global", batch_size=16, progress=False),
    "interaction_graph": lambda m, d: interaction_graph(
        m, d, n_alpha=2, batch_size=16, progress=False
    ),
    "find_modules": lambda m, d: find_modules(m, d, batch_size=16, progress=False),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normal_call_leaves_model_unchanged(call, dtype):
    model = prepared_model(dtype)
    before = snapshot(model)
    call(model, X.to(dtype))
    assert_unchanged(model, before)


class Interrupting:
    """Re-iterable data whose pass number `fail_pass` raises `exc` at batch `fail_batch`."""

    def __init__(self, x, exc, fail_pass, fail_batch=1):
        self.x, self.exc, self.fail_pass, self.fail_batch = x, exc, fail_pass, fail_batch
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for i, batch in enumerate(self.x.split(16)):
            if self.passes == self.fail_pass and i == self.fail_batch:
                raise self.exc
            yield batch


class ExplodingForward(nn.Module):
    """Wraps a model; the forward call number `at` raises KeyboardInterrupt (mid-backward pass
    setup, inside hooks' reach)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner(x)


@functools.cache
def data_passes(name: str) -> int:
    """How many times CALLS[name] streams the data (iterations started) when nothing interrupts
    it."""
    data = Interrupting(X, KeyboardInterrupt(), fail_pass=0)  # pass 0 never comes: no interrupt
    CALLS[name](prepared_model(), data)
    return data.passes


def pass_number(role: str, n: int) -> int | None:
    """The pass `role` ("second", "middle", "last") of `n` passes; None when there is no such pass
    distinct from the others (no middle pass strictly between the second and the last)."""
    if role == "second":
        return 2 if n >= 2 else None
    if role == "last":
        return n if n > 2 else None
    middle = (n + 2) // 2
    return middle if 2 < middle < n else None


@pytest.mark.parametrize("name", CALLS.keys())
@pytest.mark.parametrize("role", ["second", "middle", "last"])
def test_interrupted_data_pass_leaves_model_unchanged(name, role):
    n = data_passes(name)
    fail_pass = pass_number(role, n)
    if fail_pass is None:
        pytest.skip(f"{name} streams the data {n} times: no {role} pass distinct from the others")
    model = prepared_model()
    before = snapshot(model)
    data = Interrupting(X, KeyboardInterrupt(), fail_pass)
    with pytest.raises(KeyboardInterrupt):
        CALLS[name](model, data)
    assert data.passes == fail_pass  # the interrupt came inside the pass meant, not after it
    assert_unchanged(model, before)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("at", [3, 9, 12])
def test_interrupt_inside_forward_leaves_model_unchanged(call, at):
    inner = prepared_model()
    model = ExplodingForward(inner, at)
    before = snapshot(inner)
    with pytest.raises(KeyboardInterrupt):
        call(model, X)
    assert_unchanged(inner, before)


def test_error_raised_by_validation_leaves_model_unchanged():
    model = prepared_model()
    before = snapshot(model)
    with pytest.raises(ValueError):
        interaction_basis(model, X, layers=["nope"], progress=False)
    with pytest.raises(ValueError):
        interaction_basis(model, X * float("nan"), progress=False)
    assert_unchanged(model, before)
