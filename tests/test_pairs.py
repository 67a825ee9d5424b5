"""The pair form and the row-form branches of the elementwise edge kernel, against float64
brute force (``(P diag(s) Q ⊙ f)²`` summed row by row in the test) and end to end against the
``jacrev`` reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from modgraph import elementwise, interaction_basis, interaction_graph, kernels, pairs, sparse_rows
from modgraph.plan import Section
from tests.reference import brute_edges
from tests.zoo import cases

CASES = [c for c in cases(n=200) if c.name in ("relu", "gelu")]


def _problem(k_next: int, d_next: int, k: int, n: int, binary: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(k_next, d_next, generator=g, dtype=torch.float64)
    Q = torch.randn(d_next, k, generator=g, dtype=torch.float64)
    s = torch.randn(n, d_next, generator=g, dtype=torch.float64)
    s = (s > 0).to(torch.float64) if binary else s
    f = torch.randn(n, k, generator=g, dtype=torch.float64)
    return P, Q, s, f


def _brute(P, Q, s, f) -> torch.Tensor:
    """Row by row: Σ_x ((P diag(s_x) Q) ⊙ f_x)²."""
    total = torch.zeros(P.shape[0], Q.shape[1], dtype=torch.float64)
    for sx, fx in zip(s, f):
        total += ((P * sx) @ Q * fx).square()
    return total


@pytest.mark.parametrize("binary", [True, False])
def test_pair_sums_match_brute_force(monkeypatch, binary):
    """Several blocks of rows and of pairs (the block sizes forced small), exact to 1e-12."""
    monkeypatch.setattr(pairs, "BLOCK_ROWS", 7)
    monkeypatch.setattr(pairs, "BLOCK_ELEMENTS", 50)
    P, Q, s, f = _problem(9, 12, 5, 40, binary)
    acc = pairs.PairSums(12, 5, torch.device("cpu"))
    acc.add(s[:25], f[:25])
    acc.add(s[25:], f[25:])
    ref = _brute(P, Q, s, f)
    assert (acc.edges(P, Q) - ref).abs().max() <= 1e-12 * ref.max()


def test_pair_sums_in_float32_keep_float64_sums():
    P, Q, s, f = _problem(20, 30, 10, 300, binary=True)
    acc = pairs.PairSums(30, 10, torch.device("cpu"), torch.float32)
    acc.add(s, f)
    assert acc.sums.dtype == torch.float64
    ref = _brute(P, Q, s, f)
    err = float((acc.edges(P, Q) - ref).abs().max() / ref.max())
    assert 0 < err < 1e-5


def test_pair_form_pays_where_its_flops_are_fewer():
    # the MNIST MLP's first section (k' = 91, d' = 100, k = 94): 0.56 of the row form's FLOPs
    assert pairs.pair_form_pays(10_000, 91, 100, 94)
    # a target that keeps 10 features: 5x the row form's FLOPs
    assert not pairs.pair_form_pays(10_000, 10, 100, 91)
    # few rows: the contraction (k'·k·d'(d'+1)) is not paid back
    assert not pairs.pair_form_pays(50, 91, 100, 94)
    # the row form skips half the units: equal FLOPs are not enough
    assert not pairs.pair_form_pays(10_000, 512, 512, 64, share=0.5)
    # sums over the budget: 512 · 512·513/2 > PAIR_MAX_ELEMENTS
    assert not pairs.pair_form_pays(10**6, 512, 512, 512)


def _section(k_next: int, d_next: int, k: int, binary: bool, seed: int):
    """A section and duck-typed layer tensors with ``P = C'ᵀ``, ``Q = W C⁺ᵀ``."""
    P, Q, s, f = _problem(k_next, d_next, k, 37, binary, seed)
    linear = nn.Linear(k, d_next, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(Q)  # with C⁺ = I (k = d), Q = W
    section = Section("a", "b", linear=linear, activation=nn.ReLU())
    src = SimpleNamespace(C_pinv=torch.eye(k, dtype=torch.float64))
    dst = SimpleNamespace(C=P.T.contiguous())
    return section, src, dst, P, Q, s, f


@pytest.mark.parametrize(
    "shape", [(9, 12, 5), (3, 12, 11), (15, 12, 13)], ids=["right", "left", "sparse"]
)
@pytest.mark.parametrize("binary", [True, False])
def test_row_form_branches_match_brute_force(monkeypatch, shape, binary):
    """Q scaled (d'·k ≤ k'(d' + k)), P scaled (k' = 3), and each row's active units only."""
    k_next, d_next, k = shape
    if shape == (15, 12, 13):
        monkeypatch.setattr(elementwise, "SPARSE_MIN_WIDTH", 1)
        monkeypatch.setattr(elementwise, "SPARSE_MIN_TARGETS", 1)
        monkeypatch.setattr(sparse_rows, "SPARSE_MAX_SHARE", 1.0)
    monkeypatch.setattr(elementwise, "CACHE_ELEMENTS", 600)  # several chunks
    section, src, dst, P, Q, s, f = _section(k_next, d_next, k, binary, seed=k_next)
    squares = torch.zeros(k_next, k, dtype=torch.float64)
    total = elementwise.row_edges(section, s, f, src, dst, squares=squares)  # type: ignore[arg-type]
    ref = _brute(P, Q, s, f)
    assert (total - ref).abs().max() <= 1e-12 * ref.max()
    ref_squares = sum(((P * sx) @ Q * fx) ** 4 for sx, fx in zip(s, f))
    assert (squares - ref_squares).abs().max() <= 1e-12 * ref_squares.max()


def _sparse_everywhere(monkeypatch, paired: bool) -> list[bool]:
    """Force the row form to skip inactive units at every width, rows paired (always) or one
    by one (never); returns the pairing decisions the kernel took."""
    monkeypatch.setattr(elementwise, "SPARSE_MIN_WIDTH", 1)
    monkeypatch.setattr(elementwise, "SPARSE_MIN_TARGETS", 1)
    monkeypatch.setattr(sparse_rows, "SPARSE_MAX_SHARE", 1.0)
    monkeypatch.setattr(sparse_rows, "PAIRED_ROWS_MAX_COST", 1e9 if paired else -1.0)
    taken: list[bool] = []

    class Spy(sparse_rows.SparseRows):
        def __init__(self, slopes, rows):
            super().__init__(slopes, rows)
            taken.append(self.usable and self.paired)

    monkeypatch.setattr(elementwise, "SparseRows", Spy)
    return taken


@pytest.mark.parametrize("slopes", ["relu", "leaky", "three"])
@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("cache", [600, 1400])  # chunks of 2 and 4 rows, the 37th alone
def test_paired_rows_match_brute_force(monkeypatch, slopes, paired, cache):
    """Rows two by two (a pair's shared slopes multiplied once) and one by one give the
    row-by-row brute force, squares included, whatever the slopes: 0/1 (ReLU), 0.1/1 (no zero
    slope: only equal ones are shared), or three values with zeros. The last chunk holds one
    row, which a zero row pairs."""
    taken = _sparse_everywhere(monkeypatch, paired)
    monkeypatch.setattr(elementwise, "CACHE_ELEMENTS", cache)
    section, src, dst, P, Q, s, f = _section(15, 12, 13, binary=True, seed=4)  # 37 rows
    g = torch.Generator().manual_seed(9)
    if slopes == "leaky":
        s = torch.where(s > 0, 1.0, 0.1).to(torch.float64)
    elif slopes == "three":
        s = s * torch.randint(1, 3, s.shape, generator=g).to(torch.float64) / 2
    squares = torch.zeros(15, 13, dtype=torch.float64)
    total = elementwise.row_edges(section, s, f, src, dst, squares=squares)  # type: ignore[arg-type]
    ref = _brute(P, Q, s, f)
    assert (total - ref).abs().max() <= 1e-12 * ref.max()
    ref_squares = sum(((P * sx) @ Q * fx) ** 4 for sx, fx in zip(s, f))
    assert (squares - ref_squares).abs().max() <= 1e-12 * ref_squares.max()
    assert taken and all(t == paired for t in taken)


def test_paired_rows_in_float32_keep_float64_sums():
    """``precision="float32"`` products on paired rows: float64 totals, error of float32."""
    section, src, dst, P, Q, s, f = _section(64, 80, 48, binary=True, seed=2)
    s, f = s.repeat(4, 1), f.repeat(4, 1)
    elementwise.SPARSE_MIN_WIDTH, old = 1, elementwise.SPARSE_MIN_WIDTH
    try:
        with torch.no_grad():
            total = elementwise.row_edges(section, s, f, src, dst, products=torch.float32)  # type: ignore[arg-type]
    finally:
        elementwise.SPARSE_MIN_WIDTH = old
    ref = _brute(P, Q, s, f)
    err = float((total - ref).abs().max() / ref.max())
    assert total.dtype == torch.float64 and 0 < err < 1e-5


def test_rows_are_paired_where_that_halves_a_quarter_of_the_products():
    """Half the units active at random: a quarter of them shared by a pair, so paired rows do
    (1/4 + 2·1/4)/2 = 0.375 of the dense product per row, against 0.5 one by one. Few active
    units share too few to pay; no zero slope: the dense product."""
    g = torch.Generator().manual_seed(0)
    half = (torch.rand(64, 512, generator=g) < 0.5).to(torch.float64)
    plan = sparse_rows.SparseRows(half, 4)
    assert plan.usable and plan.paired and 0.36 < plan.share < 0.39
    rows = half.view(16, 4, 512)
    assert plan.row_widths == rows.sum(2).max(1).values.int().tolist()
    both = (half[0::2] * half[1::2]).view(16, 2, 512)  # ReLU: active in both rows of a pair
    assert plan.shared_widths == both.sum(2).max(1).values.int().tolist()
    few = (torch.rand(64, 512, generator=g) < 0.05).to(torch.float64)
    plan = sparse_rows.SparseRows(few, 4)
    assert plan.usable and not plan.paired and plan.share < 0.1
    assert not sparse_rows.SparseRows(torch.rand(64, 512, generator=g) + 0.1, 4).usable


def test_matched_order_pairs_rows_that_share_their_active_units():
    """Rows built as 20 twins (each row's twin differs in 5 % of the units), shuffled: the
    order is a permutation that puts every row next to its twin, and paired rows then do
    about half of rows one by one."""
    g = torch.Generator().manual_seed(1)
    base = (torch.rand(20, 300, generator=g) < 0.5).to(torch.float64)
    flip = (torch.rand(20, 300, generator=g) < 0.05).to(torch.float64)
    rows = torch.cat([base, (base - flip).abs()])  # row i + 20 is the twin of row i
    shuffle = torch.randperm(40, generator=g)
    slopes, twin_of = rows[shuffle], (shuffle + 20) % 40
    order = sparse_rows.matched_order(slopes)
    assert sorted(order.tolist()) == list(range(40))
    pairs = order.view(20, 2)
    assert all(twin_of[a] == shuffle[b] for a, b in pairs.tolist())
    before, after = sparse_rows.SparseRows(slopes, 2), sparse_rows.SparseRows(slopes[order], 2)
    assert after.paired and after.share < 0.3 < before.share


def test_matched_order_works_block_by_block(monkeypatch):
    """Large batches are matched within blocks of rows (their overlap counts stay small):
    still a permutation, every pair inside one block."""
    monkeypatch.setattr(sparse_rows, "MATCH_BLOCK", 8)
    g = torch.Generator().manual_seed(2)
    slopes = (torch.rand(21, 30, generator=g) < 0.5).to(torch.float64)
    order = sparse_rows.matched_order(slopes)
    assert sorted(order.tolist()) == list(range(21))
    assert [sorted(order[i : i + 8].tolist()) for i in (0, 8)] == [
        list(range(0, 8)),
        list(range(8, 16)),
    ]
    assert sparse_rows.matched_order(slopes[:0]).shape == (0,)


@pytest.mark.parametrize("ties", ["keep", "rotate"])
def test_paired_rows_end_to_end_equal_rows_one_by_one(monkeypatch, ties):
    """The ReLU MLP of the zoo with every elementwise section skipping inactive units: paired
    rows give rows one by one to 1e-12, tie moments and turned bases included, and the
    ``jacrev`` reference."""
    case = next(c for c in CASES if c.name == "relu")
    bases = interaction_basis(case.model, case.x, progress=False)
    monkeypatch.setattr(pairs, "PAIR_MAX_ELEMENTS", 0)  # the row form on every section
    graphs = {}
    for paired in (False, True):
        taken = _sparse_everywhere(monkeypatch, paired)
        graphs[paired] = interaction_graph(case.model, case.x, bases, ties=ties, progress=False)
        assert any(taken) == paired
    for key, E in graphs[True].edges.items():
        one_by_one = graphs[False].edges[key]
        assert np.abs(E - one_by_one).max() <= 1e-12 * one_by_one.max(), key
    if ties == "keep":
        ref_bases = [{"mean": b.mean, "C": b.C} for b in bases.values()]
        ref = brute_edges(case.x, case.sections, ref_bases, n_alpha=1)
        for (key, E), R in zip(graphs[True].edges.items(), ref):
            np.testing.assert_allclose(E, R, rtol=1e-8, atol=1e-8 * R.max(), err_msg=str(key))


@pytest.mark.parametrize("n_alpha", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pair_form_end_to_end_matches_brute_force_and_the_row_form(monkeypatch, case, n_alpha):
    """Forced on every elementwise section, the pair form gives the ``jacrev`` reference and
    the row form's edges (forced off) to 1e-12."""
    bases = interaction_basis(case.model, case.x, progress=False)
    monkeypatch.setattr(pairs, "PAIR_MAX_ELEMENTS", 0)
    rows = interaction_graph(case.model, case.x, bases, n_alpha=n_alpha, progress=False).edges
    used = []

    def always(*args: object, **kwargs: object) -> bool:
        used.append(args)
        return True

    monkeypatch.setattr(elementwise, "pair_form_pays", always)
    paired = interaction_graph(case.model, case.x, bases, n_alpha=n_alpha, progress=False)
    assert used, "no section took the pair form"
    ref_bases = [{"mean": b.mean, "C": b.C} for b in bases.values()]
    ref = brute_edges(case.x, case.sections, ref_bases, n_alpha=n_alpha)
    for (key, E), R in zip(paired.edges.items(), ref):
        np.testing.assert_allclose(E, R, rtol=1e-8, atol=1e-8 * R.max(), err_msg=str(key))
        assert np.abs(E - rows[key]).max() <= 1e-12 * rows[key].max(), key


def test_pair_form_is_chosen_on_the_mnist_mlp_first_section(monkeypatch):
    """The library's own choice on a model no one here shaped: the 784-100-100-10 MLP's first
    section (target keeps most of its 100 units) takes the pair form, the second (10 kept
    features) the row form."""
    from modgraph.toy import digits_as_mnist, load_mnist_mlp

    model = load_mnist_mlp()
    x, _ = digits_as_mnist()
    bases = interaction_basis(model, x, progress=False)
    chosen = []
    library = kernels.pair_form

    def spy(slope, k_next, *args, **kwargs):
        out = library(slope, k_next, *args, **kwargs)
        chosen.append((slope.shape[1], k_next, out is not None))
        return out

    monkeypatch.setattr(kernels, "pair_form", spy)
    interaction_graph(model, x, bases, progress=False)
    assert (100, 10, False) in chosen
    assert any(d == 100 and k > 50 and paired for d, k, paired in chosen), chosen


@pytest.mark.parametrize(
    "act", [nn.ReLU(), nn.LeakyReLU(0.1), nn.Tanh(), nn.Sigmoid(), nn.GELU()], ids=str
)
def test_slopes_read_off_the_target_equal_the_recomputed_ones(act):
    """At α = 1 the slopes come from the target's recorded activations (where σ allows); they
    must be those of ``σ'(W a + b)`` by autograd, and the features ``(a − μ) C``."""
    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(6, 9).double()
    section = Section("a", "b", linear=linear, activation=act)
    a = torch.randn(50, 6, generator=g, dtype=torch.float64)
    src = SimpleNamespace(
        mean=torch.randn(6, generator=g, dtype=torch.float64),
        C=torch.randn(6, 4, generator=g, dtype=torch.float64),
    )
    with torch.no_grad():
        out = act(linear(a))
    ones = np.ones(1)
    read, f = elementwise.elementwise_slopes(section, a, src, ones, ones, out)  # type: ignore[arg-type]
    z = linear(a).detach().requires_grad_(True)
    (brute,) = torch.autograd.grad(act(z).sum(), z)
    assert torch.allclose(read, brute, rtol=1e-12, atol=1e-14)
    assert torch.allclose(f, (a - src.mean) @ src.C, rtol=1e-12, atol=1e-14)
