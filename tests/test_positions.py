"""Node layers with positions (issue 13) against the independent brute force of tests/reference.py.

Two tiny models, written out by hand for the reference: a transformer block on (N, P, 8) inputs
(features last) and a CNN on 4×4 images (channels first at the convolutions). Every test passes
``layers=[...]`` explicitly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgraph import find_modules, interaction_basis, interaction_graph
from tests.reference import (
    brute_basis,
    brute_basis_positions,
    brute_edges,
    brute_edges_positions,
    match_up_to_sign,
    position_activations,
    to_rows,
)

F64 = torch.float64


def _init(module: nn.Module, seed: int, scale: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * scale)


def _correlated(shape: tuple[int, ...], seed: int, axis: int = -1) -> torch.Tensor:
    """Gaussian data with correlated features on ``axis`` and a nonzero mean."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[axis]
    mix = torch.randn(d, d, generator=gen, dtype=F64) / d**0.5 + torch.eye(d, dtype=F64)
    x = torch.randn(shape, generator=gen, dtype=F64).movedim(axis, -1) @ mix + 0.3
    return x.movedim(-1, axis).contiguous()


# ---------------------------------------------------------------------------------------------
# The models and their sections written out by hand
# ---------------------------------------------------------------------------------------------


class TinyTransformer(nn.Module):
    """Embedding-free causal transformer block: Linear embed, residual stream with single-head
    attention and a GELU MLP, Linear unembed; width 8. Node layers: embed (the input x),
    block_in (the residual stream as it enters), mlp_in (after attention), mlp_out (the MLP's
    hidden units), unembed (after the MLP); the output is (N, P, 4)."""

    LAYERS = ("embed", "block_in", "mlp_in", "mlp_out", "unembed")
    # mlp_out → unembed: the residual carries mlp_in's input (node layer 2) around mlp_out
    CONTEXT = (None, None, None, 2, None)
    CHANNELS_FIRST = (False,) * 6

    def __init__(self, d: int = 8, hidden: int = 12, d_out: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.embed = nn.Linear(d, d, dtype=F64)
        self.block_in = nn.Identity()
        self.q = nn.Linear(d, d, dtype=F64)
        self.k = nn.Linear(d, d, dtype=F64)
        self.v = nn.Linear(d, d, dtype=F64)
        self.o = nn.Linear(d, d, dtype=F64)
        self.mlp_in = nn.Linear(d, hidden, dtype=F64)
        self.act = nn.GELU()
        self.mlp_out = nn.Linear(hidden, d, dtype=F64)
        self.unembed = nn.Linear(d, d_out, dtype=F64)
        _init(self, seed)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(h), self.k(h), self.v(h)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        P = h.shape[-2]
        causal = torch.ones(P, P, dtype=torch.bool, device=h.device).triu(1)
        return self.o(torch.softmax(scores.masked_fill(causal, -math.inf), -1) @ v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block_in(self.embed(x))
        h = h + self.attention(h)
        z = self.act(self.mlp_in(h))
        h = h + self.mlp_out(z)
        return self.unembed(h)

    def sections(self) -> list:
        """The five sections with F.* and the weights, independent of the forward above."""

        def lin(m: nn.Linear, a: torch.Tensor) -> torch.Tensor:
            return F.linear(a, m.weight, m.bias)

        def attend(h: torch.Tensor) -> torch.Tensor:
            q, k, v = lin(self.q, h), lin(self.k, h), lin(self.v, h)
            s = torch.einsum("bti,bsi->bts", q, k) / math.sqrt(q.shape[-1])
            P = h.shape[1]
            mask = torch.arange(P)[None, :] > torch.arange(P)[:, None]
            w = torch.softmax(torch.where(mask, torch.tensor(-math.inf, dtype=F64), s), -1)
            return lin(self.o, torch.einsum("bts,bsi->bti", w, v))

        return [
            lambda x: lin(self.embed, x),
            lambda h: h + attend(h),
            lambda h: F.gelu(lin(self.mlp_in, h)),
            lambda z, h: h + lin(self.mlp_out, z),
            lambda h: lin(self.unembed, h),
        ]


class TinyCNN(nn.Module):
    """Conv2d(3→4) → ReLU → [1×1 mix] → Conv2d(4→2) → flatten → Linear(32→3) on 4×4 images.
    Node layers: conv1 and conv2 (channels first, 16 positions), fc ((N, 32), no positions)."""

    LAYERS = ("conv1", "conv2", "fc")
    CHANNELS_FIRST = (True, True, False, False)

    def __init__(self, seed: int = 0, mix: torch.Tensor | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, dtype=F64)
        self.relu = nn.ReLU()
        self.mix = nn.Identity()
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1, dtype=F64)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(32, 3, dtype=F64)
        _init(self, seed, scale=0.6)
        if mix is not None:
            self.insert_mix(mix)

    def insert_mix(self, A: torch.Tensor) -> None:
        """A dense invertible 1×1 convolution A after the ReLU, A⁻¹ folded into conv2."""
        mix = nn.Conv2d(4, 4, 1, bias=False, dtype=F64)
        with torch.no_grad():
            mix.weight.copy_(A[:, :, None, None])
            self.conv2.weight.copy_(
                torch.einsum("oiyx,ij->ojyx", self.conv2.weight, torch.linalg.inv(A))
            )
        self.mix = mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.conv2(self.mix(self.relu(self.conv1(x))))))

    def sections(self) -> list:
        mix = self.mix.weight if isinstance(self.mix, nn.Conv2d) else None

        def first(x: torch.Tensor) -> torch.Tensor:
            h = F.relu(F.conv2d(x, self.conv1.weight, self.conv1.bias, padding=1))
            return h if mix is None else torch.einsum("oi,bihw->bohw", mix[:, :, 0, 0], h)

        return [
            first,
            lambda h: F.conv2d(h, self.conv2.weight, self.conv2.bias, padding=1).reshape(
                h.shape[0], -1
            ),
            lambda v: F.linear(v, self.fc.weight, self.fc.bias),
        ]


@pytest.fixture(scope="module")
def transformer():
    model = TinyTransformer(seed=0)
    x = _correlated((80, 3, 8), seed=1)
    acts = position_activations(x, model.sections(), model.CONTEXT)
    with torch.no_grad():  # the hand-written sections are the model
        np.testing.assert_allclose(acts[-1].numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)
    return model, x, acts


@pytest.fixture(scope="module")
def cnn():
    model = TinyCNN(seed=2)
    x = _correlated((120, 3, 4, 4), seed=3, axis=1)
    acts = position_activations(x, model.sections())
    with torch.no_grad():
        np.testing.assert_allclose(acts[-1].numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)
    return model, x, acts


def _ref_kwargs(model: nn.Module) -> dict:
    return {
        "channels_first": model.CHANNELS_FIRST,
        "context": getattr(model, "CONTEXT", None),
    }


def _check_bases(bases, ref, acts, channels_first, positions=None) -> None:
    """Library bases against the brute force: k, Λ, μ (1e-8 / 1e-12), features up to sign."""
    assert list(bases) == [*list(bases)[:-1], "output"]
    assert len(bases) == len(ref)
    for (name, b), r, a, cf in zip(bases.items(), ref, acts, channels_first):
        assert b.k == r["C"].shape[1], (name, b.k, r["C"].shape[1])
        np.testing.assert_allclose(b.eigenvalues, r["eigenvalues"], rtol=1e-8, atol=0, err_msg=name)
        np.testing.assert_allclose(b.mean, r["mean"], rtol=1e-12, atol=1e-12, err_msg=name)
        rows = to_rows(a, cf)[:, r["positions"]].numpy()
        rows = rows.reshape(-1, rows.shape[-1])
        f, g = b.transform(rows), (rows - r["mean"]) @ r["C"]
        assert match_up_to_sign(f, g) < 1e-6, name


def _check_edges(graph, ref) -> None:
    assert len(graph.edges) == len(ref)
    for (pair, E), R in zip(graph.edges.items(), ref):
        assert E.shape == R.shape, pair
        np.testing.assert_allclose(E, R, rtol=1e-8, atol=1e-8 * R.max(), err_msg=str(pair))


def _lib_as_ref(bases) -> list[dict[str, np.ndarray]]:
    return [{"mean": b.mean, "C": b.C} for b in bases.values()]


def _distinct(ref) -> None:
    """The brute force's Λ are well separated in every layer (features unique up to sign)."""
    for r in ref:
        lam = np.sort(r["eigenvalues"])[::-1]
        if len(lam) > 1:
            gaps = -np.diff(lam) / lam[:-1]
            assert gaps.min() > 1e-4, lam


# ---------------------------------------------------------------------------------------------
# The reference checks itself: without positions it is the existing 2-d reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["local", "global"])
def test_reference_flattens_to_the_2d_reference(variant):
    """A position-wise MLP on (N, P, d): the positions reference equals the 2-d reference on the
    (N·P, d) rows (bases and edges); no modgraph involved."""
    mlp = _positionwise_mlp(seed=4)
    x = _correlated((40, 3, 5), seed=5)
    secs = _mlp_sections(mlp)
    acts = position_activations(x, secs)
    ref = brute_basis_positions(acts, secs, variant=variant)
    flat = brute_basis(x.reshape(-1, 5), secs, variant=variant)
    for r, q in zip(ref, flat):
        np.testing.assert_allclose(r["eigenvalues"], q["eigenvalues"], rtol=1e-10)
        np.testing.assert_allclose(r["mean"], q["mean"], rtol=1e-12, atol=1e-12)
        assert match_up_to_sign(r["C"], q["C"]) < 1e-8
    e_pos = brute_edges_positions(acts, secs, ref)
    e_flat = brute_edges(x.reshape(-1, 5), secs, ref)
    for E, R in zip(e_pos, e_flat):
        np.testing.assert_allclose(E, R, rtol=1e-10, atol=1e-12 * R.max())


# ---------------------------------------------------------------------------------------------
# The tiny transformer
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["local", "global"])
def test_transformer_basis_matches_brute_force(transformer, variant):
    model, x, acts = transformer
    ref = brute_basis_positions(acts, model.sections(), variant=variant, **_ref_kwargs(model))
    _distinct(ref)
    bases = interaction_basis(model, x, layers=model.LAYERS, variant=variant, progress=False)
    assert list(bases) == [*model.LAYERS, "output"]
    _check_bases(bases, ref, acts, model.CHANNELS_FIRST)


def test_transformer_output_basis_is_identity_with_variances_over_positions(transformer):
    model, x, acts = transformer
    bases = interaction_basis(model, x, layers=model.LAYERS, progress=False)
    out = acts[-1].numpy().reshape(-1, 4)
    np.testing.assert_allclose(bases["output"].C, np.eye(4), atol=0)
    np.testing.assert_allclose(bases["output"].eigenvalues, out.var(0), rtol=1e-12)
    np.testing.assert_allclose(bases["output"].mean, out.mean(0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("variant", "n_alpha"), [("local", 1), ("global", 1), ("local", 3)])
def test_transformer_edges_match_brute_force(transformer, variant, n_alpha):
    """Every kind of section: Linear junction (embed), attention with a residual (block_in),
    Linear + GELU (mlp_in), a Linear whose output joins a residual from an earlier layer
    (mlp_out), Linear to the output (unembed)."""
    model, x, acts = transformer
    bases = interaction_basis(model, x, layers=model.LAYERS, variant=variant, progress=False)
    graph = interaction_graph(model, x, bases, n_alpha=n_alpha, progress=False)
    assert graph.layers == (*model.LAYERS, "output")
    ref = brute_edges_positions(
        acts, model.sections(), _lib_as_ref(bases), n_alpha=n_alpha, **_ref_kwargs(model)
    )
    _check_edges(graph, ref)


def test_transformer_edges_in_the_brute_force_basis(transformer):
    """The whole pipeline against the brute force alone (edges are squares: signs drop out)."""
    model, x, acts = transformer
    ref = brute_basis_positions(acts, model.sections(), **_ref_kwargs(model))
    ref_edges = brute_edges_positions(acts, model.sections(), ref, **_ref_kwargs(model))
    graph = interaction_graph(model, x, layers=model.LAYERS, progress=False)
    _check_edges(graph, ref_edges)


@pytest.mark.parametrize("positions", [[-1], [0, 2]])
@pytest.mark.parametrize("variant", ["local", "global"])
def test_transformer_selected_positions(transformer, variant, positions):
    model, x, acts = transformer
    kw = _ref_kwargs(model)
    ref = brute_basis_positions(acts, model.sections(), variant=variant, positions=positions, **kw)
    graph = interaction_graph(
        model, x, layers=model.LAYERS, variant=variant, positions=positions, progress=False
    )
    _check_bases(graph.bases, ref, acts, model.CHANNELS_FIRST)
    ref_edges = brute_edges_positions(
        acts, model.sections(), _lib_as_ref(graph.bases), positions=positions, **kw
    )
    _check_edges(graph, ref_edges)
    # interaction_basis takes the same keyword and gives the same bases
    bases = interaction_basis(
        model, x, layers=model.LAYERS, variant=variant, positions=positions, progress=False
    )
    _check_bases(bases, ref, acts, model.CHANNELS_FIRST)


def test_selecting_every_position_changes_nothing(transformer):
    model, x, _ = transformer
    a = interaction_graph(model, x, layers=model.LAYERS, progress=False)
    b = interaction_graph(model, x, layers=model.LAYERS, positions=[0, 1, -1], progress=False)
    for name in a.importance:
        np.testing.assert_allclose(b.importance[name], a.importance[name], rtol=1e-10)
    for pair in a.edges:
        np.testing.assert_allclose(b.edges[pair], a.edges[pair], rtol=1e-9, atol=1e-12)


def test_find_modules_takes_positions(transformer):
    model, x, _ = transformer
    result = find_modules(model, x, layers=model.LAYERS, positions=[-1], progress=False)
    graph = interaction_graph(model, x, layers=model.LAYERS, positions=[-1], progress=False)
    for pair, E in graph.edges.items():
        np.testing.assert_allclose(result.edges[pair], E, rtol=1e-10, atol=1e-14)


def test_positions_need_one_shared_number_of_positions():
    """conv2's input has 4 positions (conv1 has no padding), conv1's 16: no common selection."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, dtype=F64), nn.ReLU(), nn.Conv2d(3, 2, 1, dtype=F64), nn.Flatten()
    )
    x = _correlated((20, 2, 4, 4), seed=0, axis=1)
    graph = interaction_graph(model, x, layers=["0", "2"], progress=False)
    assert [b.d for b in graph.bases.values()] == [2, 3, 8]
    with pytest.raises(ValueError, match="positions"):
        interaction_basis(model, x, layers=["0", "2"], positions=[-1], progress=False)


def test_last_position_differs_from_all(transformer):
    """positions=[-1] is really a selection (guards against a keyword that is ignored)."""
    model, x, _ = transformer
    a = interaction_basis(model, x, layers=model.LAYERS, progress=False)
    b = interaction_basis(model, x, layers=model.LAYERS, positions=[-1], progress=False)
    assert not np.allclose(a["block_in"].eigenvalues, b["block_in"].eigenvalues, rtol=1e-3)


def _rotated(model: TinyTransformer, seed: int) -> TinyTransformer:
    """The same function with the residual stream rotated by a random orthogonal R:
    writers (embed, o, mlp_out) W → R W, b → R b; readers (q, k, v, mlp_in, unembed) W → W Rᵀ."""
    twin = TinyTransformer(seed=0)
    twin.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    R, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=F64))
    with torch.no_grad():
        for m in (twin.embed, twin.o, twin.mlp_out):
            m.weight.copy_(R @ m.weight)
            m.bias.copy_(R @ m.bias)
        for m in (twin.q, twin.k, twin.v, twin.mlp_in, twin.unembed):
            m.weight.copy_(m.weight @ R.T)
    return twin


def _canonical(membership: np.ndarray) -> np.ndarray:
    """Module labels renumbered by first appearance (singletons, -1, kept)."""
    names: dict[int, int] = {}
    out = []
    for m in membership.tolist():
        if m < 0:
            out.append(-1)
            continue
        names.setdefault(m, len(names))
        out.append(names[m])
    return np.array(out)


def test_transformer_invariant_to_residual_rotation(transformer):
    model, x, _ = transformer
    twin = _rotated(model, seed=7)
    with torch.no_grad():
        np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-10, atol=1e-10)
        assert (twin.mlp_in.weight - model.mlp_in.weight).abs().max() > 0.1  # really rotated
    for variant in ("local", "global"):
        a = interaction_basis(model, x, layers=model.LAYERS, variant=variant, progress=False)
        b = interaction_basis(twin, x, layers=model.LAYERS, variant=variant, progress=False)
        for name in a:
            np.testing.assert_allclose(
                b[name].eigenvalues, a[name].eigenvalues, rtol=1e-8, err_msg=f"{variant} {name}"
            )
    r1 = find_modules(model, x, layers=model.LAYERS, seed=0, progress=False)
    r2 = find_modules(twin, x, layers=model.LAYERS, seed=0, progress=False)
    for pair in r1.edges:
        np.testing.assert_allclose(
            r2.edges[pair], r1.edges[pair], rtol=1e-7, atol=1e-9 * r1.edges[pair].max()
        )
    assert r1.n_modules >= 2  # a real partition (3 modules here), not one block
    np.testing.assert_array_equal(
        _canonical(r2.partition.membership), _canonical(r1.partition.membership)
    )


# ---------------------------------------------------------------------------------------------
# Random sources
# ---------------------------------------------------------------------------------------------


def _relative_errors(estimate, exact) -> float:
    worst = 0.0
    for name in exact:
        e, x = estimate[name].eigenvalues, exact[name].eigenvalues
        assert e.shape == x.shape, (name, e.shape, x.shape)
        worst = max(worst, float(np.linalg.norm(e - x) / np.linalg.norm(x)))
    return worst


def test_random_sources_converge_to_the_exact_basis():
    """Λ from R random ±1 combinations of (output position, feature) pairs converges: the error
    at R = 256 is a fraction of the one at R = 4 (1/√64 expected), and within a few %."""
    model = TinyTransformer(seed=0)
    x = _correlated((40, 3, 8), seed=1)
    kw = {"layers": model.LAYERS, "progress": False}
    exact = interaction_basis(model, x, **kw)
    seeds = (0, 1, 2)
    err = {
        R: np.mean(
            [
                _relative_errors(
                    interaction_basis(model, x, n_random_sources=R, seed=s, **kw), exact
                )
                for s in seeds
            ]
        )
        for R in (4, 256)
    }
    assert err[4] > 0  # the estimate is really random
    assert err[256] < 0.4 * err[4], err
    assert err[256] < 0.05, err


def test_random_sources_are_unbiased():
    """tr M of mlp_out (whose next basis, unembed's, is exact: a Linear junction to the output) is
    linear in the random-sign estimate of M', so its mean over seeds is the exact value."""
    model = TinyTransformer(seed=0)
    x = _correlated((40, 3, 8), seed=1)
    kw = {"layers": model.LAYERS, "progress": False}
    exact = interaction_basis(model, x, **kw)
    np.testing.assert_allclose(
        interaction_basis(model, x, n_random_sources=2, seed=0, **kw)["unembed"].eigenvalues,
        exact["unembed"].eigenvalues,
        rtol=1e-10,
    )
    target = exact["mlp_out"].jacobian_eigenvalues.sum()
    traces = np.array(
        [
            interaction_basis(model, x, n_random_sources=2, seed=s, **kw)[
                "mlp_out"
            ].jacobian_eigenvalues.sum()
            for s in range(16)
        ]
    )
    spread = traces.std(ddof=1) / np.sqrt(len(traces))
    assert spread > 1e-3 * target  # really random
    assert abs(traces.mean() - target) < 4 * spread, (traces.mean(), target, spread)


def test_random_sources_edges_converge():
    """With random signs over output positions (P_out > 1 sections), edges converge as R grows."""
    model = TinyTransformer(seed=0)
    x = _correlated((40, 3, 8), seed=1)
    kw = {"layers": model.LAYERS, "progress": False}
    exact = interaction_graph(model, x, **kw)

    def err(R: int, seed: int) -> float:
        g = interaction_graph(model, x, n_random_sources=R, seed=seed, **kw)
        return max(
            float(np.linalg.norm(g.edges[p] - E) / np.linalg.norm(E))
            for p, E in exact.edges.items()
        )

    e4 = np.mean([err(4, s) for s in (0, 1)])
    e256 = np.mean([err(256, s) for s in (0, 1)])
    assert e4 > 0
    assert e256 < 0.5 * e4, (e4, e256)
    assert e256 < 0.1, (e4, e256)


# ---------------------------------------------------------------------------------------------
# The tiny CNN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["local", "global"])
def test_cnn_basis_matches_brute_force(cnn, variant):
    model, x, acts = cnn
    ref = brute_basis_positions(acts, model.sections(), variant=variant, **_ref_kwargs(model))
    _distinct(ref)
    bases = interaction_basis(model, x, layers=model.LAYERS, variant=variant, progress=False)
    assert list(bases) == [*model.LAYERS, "output"]
    assert [b.d for b in bases.values()] == [3, 4, 32, 3]  # features are channels at the convs
    _check_bases(bases, ref, acts, model.CHANNELS_FIRST)


@pytest.mark.parametrize("n_alpha", [1, 3])
def test_cnn_edges_match_brute_force(cnn, n_alpha):
    model, x, acts = cnn
    bases = interaction_basis(model, x, layers=model.LAYERS, progress=False)
    graph = interaction_graph(model, x, bases, n_alpha=n_alpha, progress=False)
    ref = brute_edges_positions(
        acts, model.sections(), _lib_as_ref(bases), n_alpha=n_alpha, **_ref_kwargs(model)
    )
    _check_edges(graph, ref)


@pytest.mark.parametrize("variant", ["local", "global"])
def test_cnn_last_position(cnn, variant):
    """positions=[-1] selects the last spatial site of both convolution inputs (16 positions);
    the fc input (no positions) keeps its single one."""
    model, x, acts = cnn
    kw = _ref_kwargs(model)
    ref = brute_basis_positions(acts, model.sections(), variant=variant, positions=[-1], **kw)
    graph = interaction_graph(
        model, x, layers=model.LAYERS, variant=variant, positions=[-1], progress=False
    )
    _check_bases(graph.bases, ref, acts, model.CHANNELS_FIRST)
    ref_edges = brute_edges_positions(
        acts, model.sections(), _lib_as_ref(graph.bases), positions=[-1], **kw
    )
    _check_edges(graph, ref_edges)


def test_cnn_channel_permutation(cnn):
    """Permuting conv1's output channels (conv2's input channels to match) changes nothing:
    features are ordered by Λ, so Λ and edges agree entry by entry."""
    model, x, _ = cnn
    twin = TinyCNN(seed=2)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        twin.conv1.weight.copy_(model.conv1.weight[perm])
        twin.conv1.bias.copy_(model.conv1.bias[perm])
        twin.conv2.weight.copy_(model.conv2.weight[:, perm])
        np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-12, atol=1e-12)
    g1 = interaction_graph(model, x, layers=model.LAYERS, progress=False)
    g2 = interaction_graph(twin, x, layers=model.LAYERS, progress=False)
    for name in g1.importance:
        np.testing.assert_allclose(g2.importance[name], g1.importance[name], rtol=1e-9)
    np.testing.assert_allclose(
        g2.bases["conv2"].mean, g1.bases["conv2"].mean[perm.numpy()], rtol=1e-12
    )
    for pair in g1.edges:
        E = g1.edges[pair]
        np.testing.assert_allclose(g2.edges[pair], E, rtol=1e-8, atol=1e-10 * E.max())


@pytest.mark.parametrize("variant", ["local", "global"])
def test_cnn_invertible_1x1_convolution_at_a_junction(cnn, variant):
    """A dense invertible 1×1 convolution before conv2 (its inverse folded into conv2) changes
    conv2's input but not Λ (nor the edges: the features are the same functions of x)."""
    model, x, acts = cnn
    gen = torch.Generator().manual_seed(9)
    A = torch.randn(4, 4, generator=gen, dtype=F64) + 2 * torch.eye(4, dtype=F64)
    twin = TinyCNN(seed=2, mix=A)
    with torch.no_grad():
        np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=1e-10, atol=1e-10)
    # the twin's own reference agrees too: the hand-written sections include the mix
    twin_acts = position_activations(x, twin.sections())
    assert not torch.allclose(twin_acts[1], acts[1])
    kw = {"layers": model.LAYERS, "variant": variant, "progress": False}
    g1 = interaction_graph(model, x, **kw)
    g2 = interaction_graph(twin, x, **kw)
    for name in g1.importance:
        np.testing.assert_allclose(g2.importance[name], g1.importance[name], rtol=1e-8)
    for pair in g1.edges:
        E = g1.edges[pair]
        np.testing.assert_allclose(g2.edges[pair], E, rtol=1e-7, atol=1e-9 * E.max())
    ref = brute_basis_positions(twin_acts, twin.sections(), variant=variant, **_ref_kwargs(twin))
    _check_bases(g2.bases, ref, twin_acts, twin.CHANNELS_FIRST)


# ---------------------------------------------------------------------------------------------
# Flattening: a position-wise model on (N, P, d) is the same model on (N·P, d)
# ---------------------------------------------------------------------------------------------


def _positionwise_mlp(seed: int) -> nn.Sequential:
    mlp = nn.Sequential(
        nn.Linear(5, 7, dtype=F64),
        nn.Tanh(),
        nn.Linear(7, 6, dtype=F64),
        nn.ReLU(),
        nn.Linear(6, 3, dtype=F64),
    )
    _init(mlp, seed, scale=0.7)
    return mlp


def _mlp_sections(mlp: nn.Sequential) -> list:
    return [
        lambda v: torch.tanh(F.linear(v, mlp[0].weight, mlp[0].bias)),
        lambda v: F.relu(F.linear(v, mlp[2].weight, mlp[2].bias)),
        lambda v: F.linear(v, mlp[4].weight, mlp[4].bias),
    ]


@pytest.mark.parametrize("variant", ["local", "global"])
def test_positionwise_model_equals_flattened(variant):
    mlp = _positionwise_mlp(seed=4)
    x = _correlated((40, 3, 5), seed=5)
    kw = {"layers": ["0", "2", "4"], "variant": variant, "progress": False}
    g_pos = interaction_graph(mlp, x, **kw)
    g_flat = interaction_graph(mlp, x.reshape(-1, 5), **kw)
    for name in g_flat.bases:
        p, f = g_pos.bases[name], g_flat.bases[name]
        np.testing.assert_allclose(p.eigenvalues, f.eigenvalues, rtol=1e-10, err_msg=name)
        np.testing.assert_allclose(p.mean, f.mean, rtol=1e-12, atol=1e-14, err_msg=name)
        assert match_up_to_sign(p.C, f.C) < 1e-8, name
    for pair in g_flat.edges:
        E = g_flat.edges[pair]
        np.testing.assert_allclose(g_pos.edges[pair], E, rtol=1e-9, atol=1e-12 * E.max())
    # and both against the brute force
    secs = _mlp_sections(mlp)
    acts = position_activations(x, secs)
    ref = brute_basis_positions(acts, secs, variant=variant)
    _check_bases(g_pos.bases, ref, acts, [False] * 4)


def test_models_built_from_torch_layers_work():
    """nn.TransformerEncoderLayer (its attention's fast path bypasses submodules: switched off
    inside an analysis) and a CNN with pooling and a residual block."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).double()
    tokens = torch.randn(96, 5, 16, dtype=torch.float64)
    layers = ["self_attn", "linear1", "linear2"]
    last = find_modules(layer, tokens, layers=layers, positions=[-1], progress=False)
    assert list(last.bases) == [*layers, "output"]
    assert last.bases["linear1"].n_samples == 96  # one position per sample
    assert torch.backends.mha.get_fastpath_enabled()  # restored

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1, dtype=torch.float64)
            self.conv = nn.Conv2d(4, 4, 3, padding=1, dtype=torch.float64)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(16, 3, dtype=torch.float64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.stem(x))
            h = h + torch.relu(self.conv(h))  # a residual block
            return self.fc(self.pool(h).flatten(1))

    images = torch.randn(80, 1, 4, 4, dtype=torch.float64)
    result = find_modules(Residual(), images, layers=["stem", "conv", "pool", "fc"], progress=False)
    assert [result.bases[n].d for n in ("stem", "conv", "pool", "fc")] == [1, 4, 4, 16]
    assert result.bases["pool"].n_samples == 80 * 16  # channels first: 4×4 sites per image
