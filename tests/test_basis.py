"""The interaction basis against an independent brute-force reference, and its invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modgraph import interaction_basis
from modgraph.capture import make_plan
from modgraph.toy import mlp, obfuscate
from tests.blocks import sequential_node_inputs
from tests.reference import brute_basis, match_up_to_sign
from tests.zoo import Custom, cases, correlated_inputs

CASES = cases()


@pytest.mark.parametrize("variant", ["local", "global"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_matches_brute_force(case, variant):
    bases = interaction_basis(case.model, case.x, variant=variant, progress=False)
    ref = brute_basis(case.x, case.sections, variant=variant)
    assert len(bases) == len(ref)
    for (name, b), r in zip(bases.items(), ref):
        assert b.k == r["C"].shape[1], name
        np.testing.assert_allclose(b.eigenvalues, r["eigenvalues"], rtol=1e-8, atol=0)
        np.testing.assert_allclose(b.mean, r["mean"], rtol=1e-12, atol=1e-12)
        a = case.x.numpy() if name == next(iter(bases)) else None
        if a is not None:
            # features as functions of x agree up to sign (Λ is non-degenerate here)
            f, g = b.transform(a), (a - r["mean"]) @ r["C"]
            assert match_up_to_sign(f, g) < 1e-6


@pytest.mark.parametrize("variant", ["local", "global"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_features_are_centred_and_decorrelated(case, variant):
    bases = interaction_basis(case.model, case.x, variant=variant, progress=False)
    acts = _node_activations(case)
    for (_name, b), a in zip(list(bases.items())[:-1], acts):
        f = b.transform(a)
        scale = b.eigenvalues.max()
        np.testing.assert_allclose(f.mean(0), 0, atol=1e-10 * np.sqrt(scale))
        np.testing.assert_allclose(f.T @ f / len(f), np.diag(b.eigenvalues), atol=1e-10 * scale)
        np.testing.assert_allclose(b.C_pinv @ b.C, np.eye(b.k), atol=1e-9)


def _node_activations(case):
    acts = [case.x]
    with torch.no_grad():
        for f in case.sections:
            acts.append(f(acts[-1]))
    return [a.numpy() for a in acts]


def test_elementwise_shortcut_detected_and_agrees_with_autograd():
    """A Sequential (shortcut) and the same function with functional ReLU (autograd) agree."""
    seq = mlp([6, 10, 8, 4], nn.ReLU, seed=7)

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = seq[0], seq[2], seq[4]

        def forward(self, x):
            return self.c(F.relu(self.b(F.relu(self.a(x)))))

    x = correlated_inputs(400, 6, seed=8)
    plan_seq = make_plan(seq, x[:4], None, None, "test")
    plan_fun = make_plan(Functional(), x[:4], None, None, "test")
    assert [s.elementwise for s in plan_seq.sections] == [True, True, True]
    assert [s.elementwise for s in plan_fun.sections] == [False, False, True]
    b1 = interaction_basis(seq, x, progress=False)
    b2 = interaction_basis(Functional(), x, layers=["a", "b", "c"], progress=False)
    for (_n1, u), (_n2, v) in zip(b1.items(), b2.items()):
        np.testing.assert_allclose(u.eigenvalues, v.eigenvalues, rtol=1e-10)
        np.testing.assert_allclose(np.abs(u.C), np.abs(v.C), rtol=1e-7, atol=1e-10)


def test_inplace_relu_and_junction_detected():
    model = nn.Sequential(
        nn.Linear(4, 6, dtype=torch.float64),
        nn.ReLU(inplace=True),
        nn.Linear(6, 5, dtype=torch.float64),
        nn.Linear(5, 2, dtype=torch.float64),
    )
    x = correlated_inputs(50, 4, seed=1)
    plan = make_plan(model, x[:4], None, None, "test")
    assert [(s.elementwise, type(s.activation).__name__) for s in plan.sections] == [
        (True, "ReLU"),
        (True, "NoneType"),
        (True, "NoneType"),
    ]


@pytest.mark.parametrize("variant", ["local", "global"])
def test_invariant_to_function_preserving_reparameterisation(variant):
    model = nn.Sequential(
        nn.Linear(6, 10, dtype=torch.float64),
        nn.ReLU(),
        nn.Linear(10, 8, dtype=torch.float64),
        nn.Linear(8, 7, dtype=torch.float64),
        nn.ReLU(),
        nn.Linear(7, 3, dtype=torch.float64),
    )
    torch.manual_seed(11)
    for p in model.parameters():
        nn.init.normal_(p, std=0.6)
    twin = obfuscate(model, seed=3, n_duplicate=2, n_dead=2)
    x = correlated_inputs(500, 6, seed=12)
    with torch.no_grad():
        np.testing.assert_allclose(twin(x), model(x), rtol=1e-10, atol=1e-10)
    # the twin really is different: wider layers and scrambled weights
    assert twin[0].weight.shape[0] == 14 and twin[2].weight.shape[1] == 14
    b1 = interaction_basis(model, x, variant=variant, progress=False)
    b2 = interaction_basis(twin, x, variant=variant, progress=False)
    for (n1, u), (_n2, v) in zip(b1.items(), b2.items()):
        assert u.k == v.k, (n1, u.k, v.k)
        np.testing.assert_allclose(u.eigenvalues, v.eigenvalues, rtol=1e-6)
    # features as functions of x agree up to sign, layer by layer
    acts = sequential_node_inputs(model, x)
    acts_twin = sequential_node_inputs(twin, x)
    for (n1, u), (_n2, v), a, b in zip(b1.items(), b2.items(), acts, acts_twin):
        assert match_up_to_sign(u.transform(a), v.transform(b)) < 1e-6, n1


def test_linear_network_gives_signed_permutation():
    widths = [5, 5, 5, 5]
    model = mlp(widths, nn.Identity, seed=2)
    model = nn.Sequential(*[m for m in model if isinstance(m, nn.Linear)])
    x = correlated_inputs(400, 5, seed=3)
    bases = list(interaction_basis(model, x, output_basis="pca", progress=False).values())
    for l, lin in enumerate(model):
        W = lin.weight.detach().numpy()
        J = bases[l + 1].C.T @ W @ bases[l].C_pinv.T  # ∂f̂_{l+1}/∂f̂_l
        A = np.abs(J)
        np.testing.assert_allclose(np.sort(A, axis=1)[:, -1], 1.0, atol=1e-8)
        np.testing.assert_allclose(np.sort(A, axis=1)[:, :-1], 0.0, atol=1e-8)
        np.testing.assert_allclose(A.sum(0), 1.0, atol=1e-8)


def test_random_sources_converge_to_exact():
    model = Custom()
    x = correlated_inputs(300, 6, seed=9)
    exact = interaction_basis(model, x, progress=False)
    errors = []
    for R in (2, 32, 512):
        est = interaction_basis(model, x, n_random_sources=R, seed=1, progress=False)
        rel = [
            np.abs(est[n].eigenvalues[:3] - exact[n].eigenvalues[:3]).max()
            / exact[n].eigenvalues[0]
            for n in ("fc1", "fc2")
        ]
        errors.append(max(rel))
    assert errors[2] < errors[0] / 4, errors
    assert errors[2] < 0.05, errors


@pytest.mark.parametrize("variant", ["local", "global"])
def test_streaming_is_independent_of_batch_size(variant):
    model = Custom()
    x = correlated_inputs(60, 6, seed=4)
    runs = [
        interaction_basis(model, x, batch_size=bs, variant=variant, progress=False)
        for bs in (1, 7, 60)
    ]
    for other in runs[1:]:
        for name in runs[0]:
            np.testing.assert_allclose(
                other[name].eigenvalues, runs[0][name].eigenvalues, rtol=1e-10
            )
            np.testing.assert_allclose(other[name].C, runs[0][name].C, rtol=1e-8, atol=1e-10)


def test_data_forms_are_equivalent():
    model = mlp([6, 8, 3], seed=0)
    x = correlated_inputs(64, 6, seed=0)
    y = torch.zeros(64)
    ds = torch.utils.data.TensorDataset(x, y)
    forms = [
        x,
        ds,
        torch.utils.data.DataLoader(ds, batch_size=10),
        [x[:30], x[30:]],
        [(x[:30], y[:30]), (x[30:], y[30:])],
        x.numpy(),
    ]
    ref = interaction_basis(model, forms[0], progress=False)
    for form in forms[1:]:
        got = interaction_basis(model, form, progress=False)
        for name in ref:
            np.testing.assert_allclose(got[name].eigenvalues, ref[name].eigenvalues, rtol=1e-10)


def test_float32_model_runs_in_float64_copy_and_is_untouched():
    model = mlp([6, 8, 3], seed=0).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = correlated_inputs(64, 6, seed=0).float()
    bases = interaction_basis(model, x, progress=False)
    assert bases["output"].C.dtype == np.float64
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, before[k])
    ref = interaction_basis(model.double(), x.double(), progress=False)
    np.testing.assert_allclose(bases["0"].eigenvalues, ref["0"].eigenvalues, rtol=1e-10)


def test_constant_layer_gives_zero_features():
    model = nn.Sequential(
        nn.Linear(4, 5, dtype=torch.float64), nn.ReLU(), nn.Linear(5, 3, dtype=torch.float64)
    )
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # every ReLU dead: layer "2" is constant zero
    bases = interaction_basis(model, correlated_inputs(40, 4, seed=0), progress=False)
    assert bases["2"].k == 0 and bases["2"].C.shape == (5, 0)
    assert bases["0"].k == 0  # nothing downstream depends on the input
    assert bases["2"].transform(np.zeros((3, 5))).shape == (3, 0)


def test_input_confined_to_subspace_gives_rank():
    x = correlated_inputs(200, 3, seed=1) @ torch.randn(3, 6, dtype=torch.float64)
    bases = interaction_basis(mlp([6, 8, 3], seed=0), x, progress=False)
    assert bases["0"].gram_rank == 3 and bases["0"].k == 3


@pytest.mark.parametrize("activation", [nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.ReLU6, nn.SiLU])
def test_each_elementwise_activation_matches_brute_force(activation):
    from tests.zoo import sequential_sections

    model = mlp([5, 9, 7, 3], activation, seed=6)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # reach the nonlinear regions (and ReLU6's upper kink)
    x = correlated_inputs(250, 5, seed=7)
    plan = make_plan(model, x[:4], None, None, "test")
    assert all(s.elementwise for s in plan.sections)
    bases = interaction_basis(model, x, progress=False)
    ref = brute_basis(x, sequential_sections(model))
    for b, r in zip(bases.values(), ref):
        np.testing.assert_allclose(b.eigenvalues, r["eigenvalues"], rtol=1e-8)


def test_projected_jacobian_path_for_inputs_in_a_subspace():
    """Inputs in a 2-dim subspace of 6: the autograd path projects VJPs before the Gram."""
    model = Custom()
    x = correlated_inputs(200, 2, seed=3) @ torch.randn(
        2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    bases = interaction_basis(model, x, progress=False)
    ref = brute_basis(x, model.sections())
    assert bases["fc1"].gram_rank == 2
    for b, r in zip(bases.values(), ref):
        np.testing.assert_allclose(b.eigenvalues, r["eigenvalues"], rtol=1e-8)
