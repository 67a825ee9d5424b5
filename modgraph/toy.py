"""Small models and data for examples, the demo and the tests (all made on the spot, offline).

- :func:`obfuscate`: a function-identical reparameterisation of an MLP (hidden units permuted,
  dense invertible maps at Linear→Linear junctions, duplicated and dead ReLU units).
- :func:`block_diagonal_mlp`: independent sub-networks on independent input blocks.
- :func:`two_task_digits` and :func:`train_mlp`: an MLP trained on two independent tasks built from
  scikit-learn's bundled digits (scikit-learn is a dependency of modgraph, so `modgraph demo`
  works after a plain `pip install`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "MnistMLP",
    "TwoTaskData",
    "accuracy",
    "block_diagonal_mlp",
    "digits_as_mnist",
    "load_mnist_mlp",
    "mlp",
    "node_inputs",
    "obfuscate",
    "train_mlp",
    "two_task_digits",
]


def mlp(
    widths: Sequence[int],
    activation: type[nn.Module] = nn.ReLU,
    *,
    seed: int = 0,
    linear_at: Sequence[int] = (),
) -> nn.Sequential:
    """``Linear → activation → ... → Linear`` with the given widths, float64, seeded.

    Hidden layers listed in ``linear_at`` (1 = the first hidden layer) get no activation, so a
    Linear→Linear junction sits there.
    """
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(w_in, w_out, dtype=torch.float64)
        with torch.no_grad():
            bound = 1.0 / np.sqrt(w_in)
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        layers.append(lin)
        if i < len(widths) - 2 and i + 1 not in linear_at:
            layers.append(activation())
    return nn.Sequential(*layers)


def node_inputs(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """The node layers of ``find_modules`` for a Sequential MLP, evaluated on ``x (N, d)``: the
    input of every ``nn.Linear`` in order, then the output; arrays of shape (N, width)."""
    acts, h = [], x
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                acts.append(h.numpy())
            h = layer(h)
    return [*acts, h.numpy()]


def _linears(model: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]


def _is_relu_between(model: nn.Sequential, i: int, j: int) -> bool:
    between = list(model)[i + 1 : j]
    return len(between) == 1 and type(between[0]) is nn.ReLU


def obfuscate(
    model: nn.Sequential,
    *,
    seed: int = 0,
    n_duplicate: int = 2,
    n_dead: int = 2,
    condition: float = 4.0,
) -> nn.Sequential:
    """A function-identical copy of ``model`` with its parameters scrambled.

    For each hidden layer between two Linears: units are permuted; at a Linear→Linear junction a
    dense random invertible map ``R`` (condition number about ``condition``) is applied,
    ``W_a ← R W_a, b_a ← R b_a, W_b ← W_b R⁻¹``; after a ReLU, ``n_duplicate`` units are split in two
    copies sharing their outgoing weight (half each) and ``n_dead`` units that never fire are added
    (with random outgoing weights). The input and output are untouched.
    """
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(model)
    idx = _linears(model)
    for i, j in zip(idx[:-1], idx[1:]):
        a: nn.Linear = model[i]
        b: nn.Linear = model[j]
        Wa, ba, Wb = a.weight.detach().clone(), a.bias.detach().clone(), b.weight.detach().clone()
        dtype = Wa.dtype
        width = Wa.shape[0]
        if j == i + 1:  # Linear→Linear junction: dense invertible map
            q1, _ = np.linalg.qr(rng.standard_normal((width, width)))
            q2, _ = np.linalg.qr(rng.standard_normal((width, width)))
            s = np.exp(np.linspace(0, np.log(condition), width))
            R = torch.tensor(q1 @ np.diag(s) @ q2, dtype=dtype)
            Wa, ba, Wb = R @ Wa, R @ ba, Wb @ torch.linalg.inv(R)
        perm = torch.from_numpy(rng.permutation(width))
        Wa, ba, Wb = Wa[perm], ba[perm], Wb[:, perm]
        if _is_relu_between(model, i, j):
            dup = torch.from_numpy(rng.choice(width, size=min(n_duplicate, width), replace=False))
            Wb = Wb.clone()
            Wb[:, dup] *= 0.5
            dead_w = torch.zeros((n_dead, Wa.shape[1]), dtype=dtype)
            dead_b = -torch.ones(n_dead, dtype=dtype)
            dead_out = torch.tensor(rng.standard_normal((Wb.shape[0], n_dead)), dtype=dtype)
            Wa = torch.cat([Wa, Wa[dup], dead_w])
            ba = torch.cat([ba, ba[dup], dead_b])
            Wb = torch.cat([Wb, Wb[:, dup], dead_out], dim=1)
        new_a = nn.Linear(Wa.shape[1], Wa.shape[0], dtype=dtype)
        new_b = nn.Linear(Wb.shape[1], Wb.shape[0], dtype=dtype)
        with torch.no_grad():
            new_a.weight.copy_(Wa)
            new_a.bias.copy_(ba)
            new_b.weight.copy_(Wb)
            new_b.bias.copy_(b.bias)
        model[i], model[j] = new_a, new_b
    return model


def block_diagonal_mlp(
    blocks: Sequence[Sequence[int]],
    activation: type[nn.Module] = nn.ReLU,
    *,
    seed: int = 0,
    linear_at: Sequence[int] = (),
) -> nn.Sequential:
    """An MLP made of independent sub-networks: block ``b`` has widths ``blocks[b]`` and reads
    only its own slice of the input; the weights are block-diagonal. ``linear_at`` as in
    :func:`mlp`."""
    depth = len(blocks[0])
    if any(len(b) != depth for b in blocks):
        raise ValueError("every block needs the same number of widths")
    subnets = [
        mlp(b, activation, seed=seed + 17 * k, linear_at=linear_at) for k, b in enumerate(blocks)
    ]
    widths = [sum(b[i] for b in blocks) for i in range(depth)]
    model = mlp(widths, activation, seed=seed, linear_at=linear_at)
    for li in _linears(model):
        W = torch.block_diag(*[s[li].weight.detach() for s in subnets])
        bias = torch.cat([s[li].bias.detach() for s in subnets])
        with torch.no_grad():
            model[li].weight.copy_(W)
            model[li].bias.copy_(bias)
    return model


@dataclass(frozen=True)
class TwoTaskData:
    """Inputs ``x (N, 64 + 16)``: a digit image (8×8) and a second digit downsampled to 4×4;
    targets: ``y_first (N,)`` the class of the first, ``y_second (N,)`` the parity of the second.
    ``same_task=True`` replaces the second input by a full 8×8 digit and its target by its class
    (the identical-task limitation; then ``x (N, 128)``); ``one_task=True`` makes both targets depend on the first digit
    (the non-modular control)."""

    x: torch.Tensor
    y_first: torch.Tensor
    y_second: torch.Tensor
    n_first_inputs: int
    n_second_outputs: int


def _pool4(images: np.ndarray) -> np.ndarray:
    return images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)


def two_task_digits(
    n: int = 2000, *, seed: int = 0, same_task: bool = False, one_task: bool = False
) -> TwoTaskData:
    """Two independent tasks on concatenated digit inputs (scikit-learn's bundled digits)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.reshape(-1, 64) / 16.0
    labels = digits.target
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(labels), n)
    j = rng.integers(0, len(labels), n)
    first = images[i]
    if same_task:
        second = images[j]
        y2 = labels[j]
        n_out2 = 10
    else:
        second = _pool4(images[j].reshape(-1, 8, 8))
        y2 = labels[j] % 2
        n_out2 = 2
    y1 = labels[i]
    if one_task:
        y2 = labels[i] % 2
    x = np.concatenate([first, second], axis=1)
    return TwoTaskData(
        x=torch.tensor(x, dtype=torch.float64),
        y_first=torch.tensor(y1),
        y_second=torch.tensor(y2),
        n_first_inputs=64,
        n_second_outputs=n_out2,
    )


def train_mlp(
    data: TwoTaskData,
    hidden: Sequence[int] = (64, 64),
    *,
    l1: float = 3e-4,
    shrink: float = 1.0,
    epochs: int = 400,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Sequential:
    """Train an MLP on both tasks: full batch, Adam, float64, an L1 penalty on the weights.

    The loss is the cross-entropy of each output head plus ``l1 · Σ|W|``. Adam alone keeps
    penalised weights oscillating at about its step size instead of reaching zero, so after each
    step the weights are also soft-thresholded by ``shrink × (current learning rate)`` (the
    proximal step of the L1 penalty; ``shrink=0`` disables it), and the learning rate decays
    linearly to zero. Outputs: the 10 logits of the first task, then the second task's.
    """
    torch.manual_seed(seed)
    n_out = 10 + data.n_second_outputs
    model = mlp([data.x.shape[1], *hidden, n_out], seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 - epoch / epochs)
    loss_fn = nn.CrossEntropyLoss()
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    for _ in range(epochs):
        opt.zero_grad()
        out = model(data.x)
        loss = loss_fn(out[:, :10], data.y_first) + loss_fn(out[:, 10:], data.y_second)
        if l1:
            loss = loss + l1 * sum(w.abs().sum() for w in weights)
        loss.backward()
        opt.step()
        if shrink:
            threshold = shrink * schedule.get_last_lr()[0]
            with torch.no_grad():
                for w in weights:
                    w.copy_(w.sign() * (w.abs() - threshold).clamp(min=0.0))
        schedule.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


def accuracy(model: nn.Module, data: TwoTaskData) -> tuple[float, float]:
    """Accuracy on each task."""
    with torch.no_grad():
        out = model(data.x)
    a1 = (out[:, :10].argmax(1) == data.y_first).double().mean().item()
    a2 = (out[:, 10:].argmax(1) == data.y_second).double().mean().item()
    return a1, a2


MNIST_MLP_PATH = Path(__file__).resolve().parent.parent / "examples" / "data" / "mnist_mlp.npz"


class MnistMLP(nn.Module):
    """MLP 784-100-100-10 with ReLU, laid out as the checkpoint stores it (``layers.{i}``)."""

    def __init__(self, widths: Sequence[int] = (784, 100, 100, 10)) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b, dtype=torch.float64) for a, b in zip(widths[:-1], widths[1:])
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.relu(x)
        return x


def load_mnist_mlp(path: str | os.PathLike[str] | None = None) -> MnistMLP:
    """The pretrained MNIST MLP of ``examples/data/mnist_mlp.npz`` (no pickle involved)."""
    path = MNIST_MLP_PATH if path is None else Path(path)
    with np.load(path, allow_pickle=False) as weights:
        state = {k: torch.from_numpy(weights[k].astype(np.float64)) for k in weights.files}
    model = MnistMLP()
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def digits_as_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits as 28×28 MNIST-like images: ``x (1797, 784)`` in [0, 1], ``y``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images / 16.0
    big = images.repeat(3, axis=1).repeat(3, axis=2)  # 24×24
    padded = np.pad(big, ((0, 0), (2, 2), (2, 2)))
    return torch.tensor(padded.reshape(-1, 784)), torch.tensor(digits.target)
