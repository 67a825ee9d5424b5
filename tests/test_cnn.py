"""Planted modules in a CNN: two independent channel groups are recovered purely.

The CNN holds two sub-networks that share nothing: input channel 0 (group A) feeds conv1's
channels 0..2, which feed conv2's channels 0..2, which feed the first half of fc1's units and,
through them, outputs 0..2; input channel 1 (group B) the other halves. Every weight between the
groups is zero (dense weights with zero blocks, not ``groups=2``, so that the hidden channels can be
permuted across the groups). Node layers: conv1 and conv2 (channels first, 16 positions each), fc1
and fc2 (no positions), the output.

The data make the groups exactly uncorrelated on the data, also over positions. Product data (every
image of group A with every image of group B) alone are not enough at a convolution: means and
covariances run over batch *and* positions, so the covariance of two channels also holds the
covariance over positions of their per-position means, and those vary with position (zero padding
darkens the border; sampling noise does the rest). Measured on this model and these sizes: with
zero padding and plain product data, conv2's features mix the groups (purity down to 0.912) and
2.1% of the cost runs between the groups; with zero padding and the shifted data below, purity
0.990; with circular padding and plain product data, 0.997. So the convolutions pad circularly
(translation-equivariant) and group A's images come with all 16 cyclic shifts: each group-A
channel then has the same mean at every position, and the cross-group covariance is exactly zero
(purity 1 to 1e-9, no cost between the groups).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, homogeneity_score
from torch import nn

from modgraph import ModuleResult, find_modules, interaction_basis
from tests.blocks import match_features

F64 = torch.float64
SIDE = 4  # images SIDE × SIDE
CHANNELS = 6  # hidden channels of conv1 and conv2, half per group
HIDDEN, OUTPUTS = 12, 6  # fc1's units and the outputs, half per group
N_BASE_A, N_B = 2, 6  # group A: N_BASE_A images × SIDE² cyclic shifts; group B: N_B images
LAYERS = ["conv1", "conv2", "fc1", "fc2"]
# hidden channels of conv1 (= conv2's inputs) permuted across the groups
PERM = [3, 0, 4, 1, 5, 2]


def _block_mask(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in): 1 within the groups (first halves, second halves), 0 between them."""
    mask = torch.zeros(n_out, n_in, dtype=F64)
    mask[: n_out // 2, : n_in // 2] = 1
    mask[n_out // 2 :, n_in // 2 :] = 1
    return mask


def _conv(n_in: int, n_out: int, gen: torch.Generator) -> nn.Conv2d:
    conv = nn.Conv2d(n_in, n_out, 3, padding=1, padding_mode="circular", dtype=F64)
    scale = (9 * n_in / 2) ** -0.5
    with torch.no_grad():
        w = torch.randn(conv.weight.shape, generator=gen, dtype=F64) * scale
        conv.weight.copy_(w * _block_mask(n_out, n_in)[:, :, None, None])
        conv.bias.copy_(0.1 * torch.randn(n_out, generator=gen, dtype=F64))
    return conv


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(n_in, n_out, dtype=F64)
    with torch.no_grad():
        w = torch.randn(n_out, n_in, generator=gen, dtype=F64) * (n_in / 2) ** -0.5
        lin.weight.copy_(w * _block_mask(n_out, n_in))
        lin.bias.copy_(0.1 * torch.randn(n_out, generator=gen, dtype=F64))
    return lin


def planted_cnn(seed: int = 0) -> nn.Sequential:
    """conv1 (2→6) → ReLU → conv2 (6→6) → ReLU → flatten → fc1 (96→12) → ReLU → fc2 (12→6),
    every layer block-diagonal over the two groups; float64, frozen, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=_conv(2, CHANNELS, gen),
            relu1=nn.ReLU(),
            conv2=_conv(CHANNELS, CHANNELS, gen),
            relu2=nn.ReLU(),
            flat=nn.Flatten(),  # channel-major: group A's channels come first
            fc1=_linear(CHANNELS * SIDE * SIDE, HIDDEN, gen),
            relu3=nn.ReLU(),
            fc2=_linear(HIDDEN, OUTPUTS, gen),
        )
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def permuted_twin(model: nn.Sequential, perm: list[int]) -> nn.Sequential:
    """The same function with conv1's output channels permuted (conv2's inputs to match)."""
    twin = planted_cnn()
    twin.load_state_dict(model.state_dict())
    p = torch.tensor(perm)
    with torch.no_grad():
        twin.conv1.weight.copy_(model.conv1.weight[p])
        twin.conv1.bias.copy_(model.conv1.bias[p])
        twin.conv2.weight.copy_(model.conv2.weight[:, p])
    return twin


def planted_data(seed: int = 1) -> tuple[torch.Tensor, int, int]:
    """(N, 2, SIDE, SIDE): channel 0 from group A, channel 1 from group B, every pair once, rows
    ordered with group A outer; group A's images in all cyclic shifts. Returns x, n_a, n_b."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(N_BASE_A, SIDE, SIDE, generator=gen, dtype=F64)
    shifts = [(i, j) for i in range(SIDE) for j in range(SIDE)]
    a = torch.stack([base.roll(s, dims=(1, 2)) for s in shifts], 1).reshape(-1, SIDE, SIDE)
    b = torch.randn(N_B, SIDE, SIDE, generator=gen, dtype=F64)
    n_a, n_b = len(a), len(b)
    x = torch.stack([a.repeat_interleave(n_b, 0), b.repeat(n_a, 1, 1)], 1)
    return x, n_a, n_b


def node_rows(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """The inputs of the node layers, then the output, as rows (N, positions, features):
    channels first (N, C, H, W) → (N, H·W, C); (N, d) → (N, 1, d)."""

    def rows(h: torch.Tensor) -> np.ndarray:
        if h.ndim == 4:
            return h.movedim(1, -1).reshape(h.shape[0], -1, h.shape[1]).numpy()
        return h[:, None, :].numpy()

    out, h = [], x
    with torch.no_grad():
        for name, module in model.named_children():
            if name in LAYERS:
                out.append(rows(h))
            h = module(h)
    return [*out, rows(h)]


def feature_groups(
    result: ModuleResult, acts: list[np.ndarray], n_a: int, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: the group (0: A, 1: B) of every feature in node order, and its purity (the
    share of its variance due to that group). A feature's variance due to group A is its variance
    over group A's images with group B's image (and the position) held fixed, averaged; for B
    the other way round."""
    labels, purity = [], []
    for basis, a in zip(result.bases.values(), acts):
        f = basis.transform(a).reshape(n_a, n_b, a.shape[1], -1)
        dep = np.stack([f.var(axis=0).mean(axis=(0, 1)), f.var(axis=1).mean(axis=(0, 1))], 1)
        labels.append(dep.argmax(1))
        purity.append(dep.max(1) / (dep.sum(1) + 1e-300))
    return np.concatenate(labels), np.concatenate(purity)


@pytest.fixture(scope="module")
def planted():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: more threads only contend
    try:
        model = planted_cnn(seed=0)
        twin = permuted_twin(model, PERM)
        x, n_a, n_b = planted_data(seed=1)
        with torch.no_grad():
            np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)
        kw = {"layers": LAYERS, "seed": 0, "progress": False}
        yield model, twin, x, n_a, n_b, find_modules(model, x, **kw), find_modules(twin, x, **kw)
    finally:
        torch.set_num_threads(threads)


def test_groups_are_uncorrelated_over_batch_and_positions(planted):
    """The premise: every channel of group A is exactly uncorrelated with every channel of group B
    at every node layer, covariances over batch and positions (as modgraph takes them)."""
    model, _, x, *_ = planted
    for name, a in zip([*LAYERS, "output"], node_rows(model, x)):
        rows = a.reshape(-1, a.shape[-1])
        cov = np.cov(rows, rowvar=False)
        half = rows.shape[1] // 2
        cross = np.abs(cov[:half, half:]).max()
        assert cross < 1e-12 * np.abs(cov).max(), (name, cross)


def test_planted_channel_groups_are_recovered_purely(planted):
    model, _, x, n_a, n_b, result, _ = planted
    assert list(result.bases) == [*LAYERS, "output"]
    widths = [2, CHANNELS, CHANNELS * SIDE**2, HIDDEN, OUTPUTS]  # features: channels at convs
    assert [b.d for b in result.bases.values()] == widths
    truth, purity = feature_groups(result, node_rows(model, x), n_a, n_b)
    assert purity.min() > 1 - 1e-9  # every feature is a function of one group
    np.testing.assert_array_equal(truth[-OUTPUTS:], [0, 0, 0, 1, 1, 1])
    m = result.partition.membership
    assert result.n_modules >= 2
    for k in range(result.n_modules):
        groups = set(truth[m == k].tolist())
        assert len(groups) == 1, (k, groups)  # no module mixes the groups
    assert set(truth[m >= 0].tolist()) == {0, 1}  # both groups are in modules
    assert homogeneity_score(truth[m >= 0], m[m >= 0]) >= 0.99
    src, dst, cost = result.interaction_graph.undirected_edges("cost")
    assert cost.sum() > 0
    assert cost[truth[src] != truth[dst]].sum() < 1e-9 * cost.sum()  # no cost between groups
    # the convolution layers take part: their features are in modules
    g = result.interaction_graph
    for name in ("conv1", "conv2"):
        i = g.layers.index(name)
        assert (m[g.offsets[i] : g.offsets[i] + g.sizes[i]] >= 0).any(), name


def test_permuted_hidden_channels_give_the_same_modules(planted):
    """Permuting conv1's output channels across the groups (conv2's inputs to match) gives the same
    Λ in every layer and the same modules up to relabelling, features matched by correlation."""
    model, twin, x, _, _, result, result_twin = planted
    assert not torch.equal(twin.conv1.weight, model.conv1.weight)  # really permuted
    for name, b in result.bases.items():
        np.testing.assert_allclose(
            result_twin.bases[name].eigenvalues, b.eigenvalues, rtol=1e-8, err_msg=name
        )
    g, g_twin = result.interaction_graph, result_twin.interaction_graph
    assert g.sizes == g_twin.sizes
    mapping = []
    for (name, b), b_twin, a, a_twin, offset in zip(
        result.bases.items(),
        result_twin.bases.values(),
        node_rows(model, x),
        node_rows(twin, x),
        g_twin.offsets,
    ):
        f = b.transform(a.reshape(-1, a.shape[-1]))
        f_twin = b_twin.transform(a_twin.reshape(-1, a_twin.shape[-1]))
        idx, corr = match_features(f, f_twin)
        assert corr.min() > 1 - 1e-6, name
        assert len(set(idx.tolist())) == len(idx), name
        mapping.append(offset + idx)
    mapping = np.concatenate(mapping)
    m, m_twin = result.partition.membership, result_twin.partition.membership[mapping]
    assert adjusted_rand_score(m, m_twin) == 1.0
    np.testing.assert_array_equal(m < 0, m_twin < 0)
    assert result_twin.score == pytest.approx(result.score, abs=1e-9)


class _Conv2d(nn.Conv2d):
    """A Conv2d subclass modgraph does not take for a plain convolution: the autograd path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def _twins(net, x: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """``net(nn.Conv2d)`` and ``net(_Conv2d)`` (the autograd path) with the same weights, their
    lazy Linear materialised on ``x[:1]``."""
    fast_net, slow_net = net(nn.Conv2d), net(_Conv2d)
    with torch.no_grad():
        fast_net(x[:1]), slow_net(x[:1])
        slow_net.load_state_dict(fast_net.state_dict())
    return fast_net, slow_net


def _junction_net(conv: type[nn.Conv2d]) -> nn.Module:
    torch.manual_seed(3)
    net = nn.Sequential(
        conv(2, 3, 3, padding=1, dtype=torch.float64),  # conv → conv: a junction
        conv(3, 3, 1, dtype=torch.float64),  # 1×1
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 16, 2, dtype=torch.float64),
    )
    return net


def test_a_convolution_junction_needs_no_pass_over_the_data():
    """conv → conv: the Jacobian does not depend on the data, so M' comes from one data point;
    the result equals the autograd pass over every point."""
    x = torch.randn(200, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    class Counting:
        """Counts the batches read."""

        def __init__(self) -> None:
            self.batches = 0

        def __iter__(self):
            for batch in x.split(50):
                self.batches += 1
                yield batch

    layers = ["0", "1", "4"]
    fast_data, slow_data = Counting(), Counting()
    fast = interaction_basis(_junction_net(nn.Conv2d), fast_data, layers=layers, progress=False)
    slow = interaction_basis(_junction_net(_Conv2d), slow_data, layers=layers, progress=False)
    for name in fast:
        np.testing.assert_allclose(
            fast[name].eigenvalues, slow[name].eigenvalues, rtol=1e-9, err_msg=name
        )
    # the autograd pass over the junction reads all 4 batches; the shortcut none (it uses the
    # first row, kept when the analysis started)
    assert slow_data.batches - fast_data.batches == 4


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {"padding": 1},
        {"padding": 1, "padding_mode": "circular"},
        {"padding": 2, "stride": 2, "dilation": 2},
        {"padding": 0},
    ],
    ids=["zeros", "circular", "strided-dilated", "valid"],
)
def test_the_convolution_coactivation_shortcut_equals_autograd(conv_kwargs):
    """conv → ReLU: M' = Σ_o K_oᵀ (A ∘ S_o) K_o from per-site co-activation Grams and padding
    masks, no autograd pass; equal to the batched VJPs over every point and site."""

    def net(conv: type[nn.Conv2d]) -> nn.Module:
        torch.manual_seed(5)
        return nn.Sequential(
            conv(2, 4, 3, dtype=torch.float64, **conv_kwargs),
            nn.ReLU(),
            nn.Conv2d(4, 3, 1, dtype=torch.float64),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(2, dtype=torch.float64),
        )

    x = torch.randn(150, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fast_net, slow_net = _twins(net, x)
    layers = ["0", "2", "5"]
    fast = interaction_basis(fast_net, x, layers=layers, progress=False)
    slow = interaction_basis(slow_net, x, layers=layers, progress=False)
    for name in fast:
        np.testing.assert_allclose(
            fast[name].eigenvalues, slow[name].eigenvalues, rtol=1e-9, err_msg=name
        )


class _Linear(nn.Linear):
    """A Linear subclass with its own forward: modgraph runs it through the autograd path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


def test_a_linear_before_a_residual_add_needs_no_pass():
    """h' = h + fc2(relu(fc1(h))): the section from fc2's input to h' has the constant
    Jacobian W2 (h does not depend on fc2's input), read off the autograd graph, so M' comes
    from one data point; a ReLU after the add, or a path around fc2, keeps the pass."""

    class Block(nn.Module):
        def __init__(self, linear: type[nn.Linear], relu_after: bool) -> None:
            super().__init__()
            torch.manual_seed(7)
            self.fc1 = nn.Linear(5, 8, dtype=torch.float64)
            self.fc2 = linear(8, 5, dtype=torch.float64)
            self.head = nn.Linear(5, 2, dtype=torch.float64)
            self.relu_after = relu_after

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            h = h + self.fc2(torch.relu(self.fc1(h)))
            return self.head(torch.relu(h) if self.relu_after else h)

    x = torch.randn(160, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    class Counting:
        def __init__(self) -> None:
            self.batches = 0

        def __iter__(self):
            for batch in x.split(40):
                self.batches += 1
                yield batch

    for relu_after in (False, True):
        fast_data, slow_data = Counting(), Counting()
        layers = ["fc1", "fc2", "head"]
        fast = interaction_basis(
            Block(nn.Linear, relu_after), fast_data, layers=layers, progress=False
        )
        slow = interaction_basis(
            Block(_Linear, relu_after), slow_data, layers=layers, progress=False
        )
        for name in fast:
            np.testing.assert_allclose(
                fast[name].eigenvalues, slow[name].eigenvalues, rtol=1e-9, err_msg=name
            )
        # the graph is read on the first row, kept when the analysis started; a constant
        # section then needs no pass (4 batches)
        saved = slow_data.batches - fast_data.batches
        assert saved == (0 if relu_after else 4), (relu_after, saved)


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        {"padding": 1},
        {"padding": 2, "stride": 2, "dilation": 2},
        {"padding": 0},
        {"padding": 1, "groups": 2},
    ],
    ids=["zeros", "strided-dilated", "valid", "groups"],
)
def test_convolution_junction_edges_by_one_forward_pass(monkeypatch, conv_kwargs):
    """conv → conv with positions: E by one grouped convolution of the features per chunk (no
    vector–Jacobian products), equal to a float64 ``jacrev`` brute force in the test and to the
    autograd path (a Conv2d subclass) to 1e-12."""
    from torch.func import jacrev

    from modgraph import interaction_graph, kernels

    def net(conv: type[nn.Conv2d]) -> nn.Module:
        torch.manual_seed(7)
        return nn.Sequential(
            conv(2, 4, 3, dtype=F64, **conv_kwargs),  # node layer "0" → "1": a junction
            nn.Conv2d(4, 3, 1, dtype=F64),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(2, dtype=F64),
        )

    x = torch.randn(120, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    fast_net, slow_net = _twins(net, x)
    layers = ["0", "1", "4"]
    bases = interaction_basis(fast_net, x, layers=layers, progress=False)
    autograd = []
    library = kernels._autograd_edges

    def spy(sess, section, *args, **kwargs):
        autograd.append(section.key)
        return library(sess, section, *args, **kwargs)

    monkeypatch.setattr(kernels, "_autograd_edges", spy)
    fast = interaction_graph(fast_net, x, bases, layers=layers, progress=False).edges
    assert ("0", "1") not in autograd
    slow = interaction_graph(slow_net, x, bases, layers=layers, progress=False).edges
    assert ("0", "1") in autograd
    E, E_slow = fast[("0", "1")], slow[("0", "1")]
    assert np.abs(E - E_slow).max() <= 1e-12 * E_slow.max()

    # brute force: Γ_{t,s} = C'ᵀ J_{t,s} C⁺ᵀ from jacrev, E = mean_{x,t} (Σ_s Γ_{t,s} f̂[s])²
    conv = fast_net[0]
    b0, b1 = bases["0"], bases["1"]
    with torch.no_grad():
        J = jacrev(lambda a: conv(a[None])[0])(x[0])  # (d', H', W', d, H, W)
    d_next, P_next = J.shape[0], J.shape[1] * J.shape[2]
    J = J.reshape(d_next, P_next, J.shape[3], -1).permute(1, 3, 0, 2)  # (t, s, d', d)
    C_next, C, C_pinv = (torch.tensor(v) for v in (b1.C, b0.C, b0.C_pinv))
    gamma = torch.einsum("ci,tscd,jd->tsij", C_next, J, C_pinv)  # (P', P, k', k)
    a = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 2)  # (N, P, d) rows, positions row-major
    f = (a - torch.tensor(b0.mean)) @ C  # (N, P, k)
    ref = torch.einsum("tsij,nsj->ntij", gamma, f).square().mean((0, 1)).numpy()
    np.testing.assert_allclose(E, ref, rtol=1e-10, atol=1e-12 * ref.max())
