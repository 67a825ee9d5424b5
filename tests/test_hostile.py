"""Issue 12, hostile inputs met by the measuring core: each class ends in a clear error or a
correct result (docs/robustness.md lists them). Every test here failed on main before the fix."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgraph import (
    ModgraphTypeError,
    ModgraphValueError,
    find_modules,
    interaction_basis,
)
from modgraph.toy import mlp
from tests.zoo import correlated_inputs

X = correlated_inputs(300, 6, seed=0)
f64 = torch.float64


# ------------------------------------------------------------------ names and default layers
class NamedOutput(nn.Module):
    """A model whose last Linear is called ``output``, as many models do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 7, dtype=f64)
        self.output = nn.Linear(7, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.tanh(self.fc1(x)))


def test_a_submodule_named_output_is_not_the_model_output(caplog):
    model = NamedOutput()
    with caplog.at_level(logging.WARNING, logger="modgraph"):
        default = interaction_basis(model, X, progress=False)
    assert list(default) == ["fc1", "output", "<output>"]
    assert "submodule named 'output'" in caplog.text
    assert default["output"].d == 7 and default["<output>"].d == 3  # its input; the model output
    named = interaction_basis(model, X, layers=["fc1", "output"], progress=False)
    assert list(named) == ["fc1", "output", "<output>"]
    np.testing.assert_array_equal(named["output"].mean, default["output"].mean)
    with torch.no_grad():
        hidden = torch.tanh(model.fc1(X))
    np.testing.assert_allclose(named["output"].mean, hidden.mean(0).numpy(), rtol=1e-12)
    result = find_modules(model, X, progress=False)
    assert "<output>:0" in result.module_of


def test_layers_must_be_ordered():
    with pytest.raises(ModgraphTypeError, match=r"ordered list .* not a set"):
        interaction_basis(mlp([6, 5, 2]), X, layers={"0", "2"}, progress=False)


class Attention(nn.Module):
    """An nn.MultiheadAttention (its out_proj never runs as a module), an unused head and a
    Linear that runs twice: the default node layers are the Linears that run once."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8, dtype=f64)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True, dtype=f64)
        self.shared = nn.Linear(8, 8, dtype=f64)
        self.head = nn.Linear(8, 3, dtype=f64)
        self.unused = nn.Linear(8, 3, dtype=f64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)[:, None, :]
        a, _ = self.att(h, h, h)
        h = self.shared(F.relu(self.shared(a[:, 0])))
        return self.head(torch.relu(h))


def test_default_layers_are_the_linears_that_run_once(caplog):
    with caplog.at_level(logging.INFO, logger="modgraph"), pytest.warns(UserWarning, match="att"):
        bases = interaction_basis(Attention(), X, progress=False)
    assert list(bases) == ["inp", "head", "output"]
    assert "att.out_proj (never runs as a module" in caplog.text
    assert "unused (never runs as a module" in caplog.text
    assert "shared (runs more than once, 2 times" in caplog.text


def test_a_squeezed_output_gets_a_hint():
    model = nn.Sequential(nn.Linear(6, 1, dtype=f64), nn.Flatten(0))
    with pytest.raises(ModgraphValueError, match=r"output=lambda o: o\[:, None\]"):
        find_modules(model, X, progress=False)
    result = find_modules(model, X, output=lambda o: o[:, None], progress=False)
    assert result.interaction_graph.sizes[-1] == 1
