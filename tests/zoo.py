"""Test models, each with its node-layer sections written out by hand for the references."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modgraph.toy import mlp
from tests.reference import Section


@dataclass
class Case:
    name: str
    model: nn.Module
    sections: list[Section]
    x: torch.Tensor


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64) / d**0.5 + torch.eye(
        d, dtype=torch.float64
    )
    return torch.randn(n, d, generator=gen, dtype=torch.float64) @ mix + 0.3


def sequential_sections(model: nn.Sequential) -> list[Section]:
    """Sections between the inputs of consecutive Linears (then to the output)."""
    mods = list(model)
    starts = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)] + [len(mods)]
    sections = []
    for s, e in zip(starts[:-1], starts[1:]):
        chunk = mods[s:e]

        def f(v: torch.Tensor, chunk: list[nn.Module] = chunk) -> torch.Tensor:
            for m in chunk:
                v = m(v)
            return v

        sections.append(f)
    return sections


class Custom(nn.Module):
    """Not a Sequential: functional ReLU, a residual connection, a tuple-free custom forward."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.fc1 = nn.Linear(6, 9, dtype=torch.float64)
        self.fc2 = nn.Linear(9, 9, dtype=torch.float64)
        self.head = nn.Linear(9, 4, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        h = torch.tanh(self.fc2(h)) + 0.5 * h
        return self.head(h)

    def sections(self) -> list[Section]:
        return [
            lambda x: F.relu(F.linear(x, self.fc1.weight, self.fc1.bias)),
            lambda h: torch.tanh(F.linear(h, self.fc2.weight, self.fc2.bias)) + 0.5 * h,
            lambda h: F.linear(h, self.head.weight, self.head.bias),
        ]


def cases(n: int = 300) -> list[Case]:
    relu = mlp([6, 10, 8, 4], nn.ReLU, seed=1)
    junction = nn.Sequential(
        nn.Linear(6, 8, dtype=torch.float64),
        nn.ReLU(),
        nn.Linear(8, 7, dtype=torch.float64),
        nn.Linear(7, 5, dtype=torch.float64),
        nn.Tanh(),
        nn.Linear(5, 3, dtype=torch.float64),
    )
    torch.manual_seed(2)
    for p in junction.parameters():
        torch.nn.init.normal_(p, std=0.5)
    gelu = mlp([6, 12, 7, 3], nn.GELU, seed=4)
    custom = Custom()
    narrow = Narrow()
    x = correlated_inputs(n, 6, seed=5)
    x8 = correlated_inputs(n, 8, seed=6)
    return [
        Case("relu", relu, sequential_sections(relu), x),
        Case("junction", junction, sequential_sections(junction), x),
        Case("gelu", gelu, sequential_sections(gelu), x),
        Case("custom", custom, custom.sections(), x),
        Case("narrow", narrow, narrow.sections(), x8),
    ]


class Narrow(nn.Module):
    """Narrowing Linears on the autograd path, with a bypass around the first node module."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.fc1 = nn.Linear(8, 5, dtype=torch.float64)
        self.fc2 = nn.Linear(5, 3, dtype=torch.float64)
        self.head = nn.Linear(3, 2, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x)) + 0.3 * x[:, :5]  # a path from fc1's input around fc1
        return self.head(torch.tanh(self.fc2(h)))

    def sections(self) -> list[Section]:
        return [
            lambda x: F.relu(F.linear(x, self.fc1.weight, self.fc1.bias)) + 0.3 * x[:, :5],
            lambda h: torch.tanh(F.linear(h, self.fc2.weight, self.fc2.bias)),
            lambda g: F.linear(g, self.head.weight, self.head.bias),
        ]
