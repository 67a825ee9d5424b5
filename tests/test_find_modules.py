"""find_modules end to end: planted modules, obfuscation, trained two-task MLPs, the API."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, homogeneity_score

from modgraph import ModuleResult, find_modules, interaction_graph, leiden_modules, modularity_score
from modgraph.toy import (
    accuracy,
    block_diagonal_mlp,
    digits_as_mnist,
    load_mnist_mlp,
    obfuscate,
    train_mlp,
    two_task_digits,
)
from tests.blocks import feature_blocks, match_features, product_data, sequential_node_inputs

N1, N2 = 50, 40


@pytest.fixture(scope="module")
def planted():
    # hidden layer 2 feeds the next Linear directly: a junction where obfuscate applies a dense
    # invertible map that mixes the units of both blocks
    model = block_diagonal_mlp([[5, 12, 10, 8, 3], [4, 12, 10, 8, 2]], seed=0, linear_at=(2,))
    twin = obfuscate(model, seed=1, n_duplicate=2, n_dead=2)
    after = twin[3].weight.detach()  # reads the junction through R⁻¹ (2 dead rows of zeros added)
    assert (after.abs() > 1e-9).double().mean() > 0.85  # dense (block-diagonal would be ≤ 0.5)
    x = product_data(N1, N2, 5, 4, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-10, atol=1e-10)
    return (
        model,
        twin,
        x,
        find_modules(model, x, progress=False),
        find_modules(twin, x, progress=False),
    )


def test_planted_modules_are_pure(planted):
    model, _, x, result, _ = planted
    truth, purity = feature_blocks(result.bases, sequential_node_inputs(model, x), N1, N2)
    assert purity.min() > 1 - 1e-9
    m = result.partition.membership
    assert result.n_modules >= 2
    assert homogeneity_score(truth[m >= 0], m[m >= 0]) >= 0.99
    src, dst, cost = result.interaction_graph.undirected_edges("cost")
    assert cost[truth[src] != truth[dst]].sum() < 1e-9 * cost.sum()  # no cost between blocks


def test_obfuscated_copy_has_the_same_modules(planted):
    model, twin, x, result, result_twin = planted
    acts = sequential_node_inputs(model, x)
    acts_twin = sequential_node_inputs(twin, x)
    g, g_twin = result.interaction_graph, result_twin.interaction_graph
    assert g.sizes == g_twin.sizes
    mapping = []
    for (name, b), (_, b_twin), a, a_twin, offset in zip(
        result.bases.items(), result_twin.bases.items(), acts, acts_twin, g_twin.offsets
    ):
        idx, corr = match_features(b.transform(a), b_twin.transform(a_twin))
        assert corr.min() > 1 - 1e-6, name
        assert len(set(idx)) == len(idx)
        mapping.append(offset + idx)
    mapping = np.concatenate(mapping)
    m, m_twin = result.partition.membership, result_twin.partition.membership[mapping]
    assert adjusted_rand_score(m, m_twin) == 1.0
    np.testing.assert_array_equal(m < 0, m_twin < 0)
    assert result.score == pytest.approx(result_twin.score, abs=1e-6)


def test_result_fields_and_exports(planted, tmp_path):
    _, _, _, result, _ = planted
    assert isinstance(result, ModuleResult)
    sizes = [len(m) for m in result.modules]
    assert sizes == sorted(sizes, reverse=True)
    assert set(result.module_of) == set(result.graph.nodes)
    assert all(result.graph.nodes[n]["module"] == k for n, k in result.module_of.items())
    score = modularity_score(result.interaction_graph, result.membership)
    assert result.score == pytest.approx(score, abs=1e-12)
    assert result.seed == 0 and result.resolution == 1.0
    text = result.summary()
    assert f"{result.n_modules} modules" in text and "Q_deg" in text
    assert len(text.splitlines()) == 2 + result.n_modules
    path = tmp_path / "modules.graphml"
    result.to_graphml(path)
    back = nx.read_graphml(path)
    assert {n: d["module"] for n, d in back.nodes(data=True)} == result.module_of
    assert back.graph["seed"] == 0
    result.to_json(tmp_path / "modules.json")
    loaded = json.loads((tmp_path / "modules.json").read_text())
    assert loaded["modules"] == result.modules
    with pytest.raises(dataclasses_error()):
        result.score = 1.0  # frozen


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_same_seed_same_modules_across_batch_sizes(planted):
    model, _, x, result, _ = planted
    other = find_modules(model, x, batch_size=333, progress=False)
    np.testing.assert_array_equal(other.partition.membership, result.partition.membership)
    assert other.score == pytest.approx(result.score, abs=1e-10)


def test_every_feature_isolated_is_a_result_not_a_crash(planted):
    model, _, x, _, _ = planted
    result = find_modules(model, x, epsilon=1e6, progress=False)
    assert result.modules == [] and result.score == 0.0
    assert set(result.module_of.values()) == {-1}
    assert result.graph.number_of_edges() == 0
    assert "0 modules" in result.summary()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resolution": 0.0}, "'resolution'"),
        ({"resolution": -1.0}, "'resolution'"),
        ({"n_modules": 0}, "'n_modules'"),
        ({"n_modules": 10_000}, "larger than the number of features"),
        ({"n_modules": 2, "min_module_share": 1.0}, "'min_module_share'"),
        ({"n_modules": 2, "min_module_share": -0.1}, "'min_module_share'"),
        ({"n_modules": 5, "min_module_share": 0.3}, "at most 3 modules"),
        ({"tau": 0.0}, "'tau'"),
        ({"epsilon": float("nan")}, "'epsilon'"),
        ({"epsilon": -1.0}, "'epsilon'"),
        ({"n_restarts": 0}, "'n_restarts'"),
        ({"variant": "globl"}, "'variant'"),
        ({"n_alpha": 0}, "'n_alpha'"),
    ],
)
def test_bad_parameters(planted, kwargs, match):
    model, _, x, _, _ = planted
    with pytest.raises(ValueError, match=match):
        find_modules(model, x[:64], progress=False, **kwargs)


# ---------------------------------------------------------------- trained two-task MLPs


def task_dependence(model, bases, x, n_first, seed=0):
    """(n_features, 2): each feature's mean squared change when one input block is resampled."""
    rng = np.random.default_rng(seed)
    base = sequential_node_inputs(model, x)
    deps = []
    for cols in (slice(0, n_first), slice(n_first, None)):
        xs = x.clone()
        xs[:, cols] = x[rng.permutation(len(x))][:, cols]
        alt = sequential_node_inputs(model, xs)
        deps.append(
            np.concatenate(
                [
                    ((b.transform(a) - b.transform(c)) ** 2).mean(0)
                    for b, a, c in zip(bases.values(), base, alt)
                ]
            )
        )
    return np.stack(deps, 1)


@pytest.fixture(scope="module")
def two_task():
    data = two_task_digits(2000, seed=0)
    model = train_mlp(data, (64, 64), l1=3e-4, epochs=400)
    return data, model, find_modules(model, data.x, progress=False)


@pytest.fixture(scope="module")
def one_task():
    data = two_task_digits(2000, seed=0, one_task=True)
    model = train_mlp(data, (64, 64), l1=3e-4, epochs=400)
    return data, model


def io_nodes(result):
    depth = result.interaction_graph.node_attributes()["depth"]
    return (depth == 0) | (depth == depth.max())


def test_two_task_modules_are_pure_at_resolution_one(two_task):
    data, model, result = two_task
    acc = accuracy(model, data)
    assert acc[0] > 0.8 and acc[1] > 0.8, acc  # trained, not the property under test
    truth = task_dependence(model, result.bases, data.x, data.n_first_inputs).argmax(1)
    m = result.partition.membership
    assert result.n_modules >= 2
    assert homogeneity_score(truth[m >= 0], m[m >= 0]) >= 0.95
    # the second task (parity) has a module of its own, holding its output features
    parity_outputs = [f"output:{i}" for i in range(10, 10 + data.n_second_outputs)]
    labels = {result.module_of[n] for n in parity_outputs}
    assert len(labels) == 1 and labels != {-1}


def test_two_task_split_into_two_modules_separates_the_tasks(two_task):
    data, model, _ = two_task
    result = find_modules(model, data.x, n_modules=2, progress=False)
    truth = task_dependence(model, result.bases, data.x, data.n_first_inputs).argmax(1)
    sel = io_nodes(result) & (result.partition.membership >= 0)
    assert adjusted_rand_score(truth[sel], result.partition.membership[sel]) >= 0.9


@pytest.mark.slow
def test_two_task_split_is_not_a_lucky_seed(two_task):
    """The same check on networks trained from four more seeds. Measured ARIs for seeds 0-9:
    1.00 on eight; 0.55 on seeds 1 and 8, where a task-1 chain ending in one class logit joins
    the parity module (that partition has the higher Q_deg at its resolution: 0.686 vs 0.679
    for the task split), so the metric, not the search, puts it there."""
    aris = []
    for seed in range(5):
        if seed == 0:
            data, model, _ = two_task
        else:
            data = two_task_digits(2000, seed=seed)
            model = train_mlp(data, (64, 64), l1=3e-4, epochs=400, seed=seed)
        result = find_modules(model, data.x, n_modules=2, progress=False)
        truth = task_dependence(model, result.bases, data.x, data.n_first_inputs).argmax(1)
        sel = io_nodes(result) & (result.partition.membership >= 0)
        aris.append(adjusted_rand_score(truth[sel], result.partition.membership[sel]))
    print("2-module split vs tasks, ARI per training seed:", np.round(aris, 2))
    assert np.median(aris) >= 0.9, aris


def test_n_modules_on_the_pretrained_mnist_mlp():
    """A model no one here shaped. At γ = 1 it splits by depth: an early module that holds no
    output feature, and the module of the logits. Both are large, so n_modules=2 returns them
    (found at a lower resolution: the coarsest partition with two modules)."""
    x, _ = digits_as_mnist()
    graph = interaction_graph(load_mnist_mlp(), x, progress=False)
    at_one = leiden_modules(graph)
    two = leiden_modules(graph, n_modules=2)
    assert len(at_one.modules) == 2
    assert sorted(map(sorted, two.modules)) == sorted(map(sorted, at_one.modules))
    assert two.resolution < 1.0
    holds_output = [any(n.startswith("output:") for n in m) for m in at_one.modules]
    assert sorted(holds_output) == [False, True]


def test_two_task_split_cuts_far_less_than_one_task(two_task, one_task):
    data, model, _ = two_task
    two = find_modules(model, data.x, n_modules=2, progress=False).cross_fraction
    one = find_modules(one_task[1], one_task[0].x, n_modules=2, progress=False).cross_fraction
    print(f"best 2-module split cuts {100 * two:.2f} % (two tasks) vs {100 * one:.2f} % (one task)")
    assert two * 5 <= one, (two, one)


def output_jacobian_leak(model, x, n_first):
    """Share of each task's output-Jacobian energy that falls on the other task's inputs."""
    J = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x)  # (N, out, in)
    e = J.square().mean(0)
    first = e[:10, n_first:].sum() / e[:10].sum()
    second = e[10:, :n_first].sum() / e[10:].sum()
    return float(first), float(second)


@pytest.mark.slow
def test_identical_tasks_limitation(two_task):
    """Known limitation (docs/method.md): two copies of the same task on identically distributed
    inputs separate less cleanly, because the trained network leaks each task onto the other's
    inputs: modules at γ = 1 mix the tasks, and splitting the network in two costs about as much
    as splitting a network that does a single task."""
    data = two_task_digits(2000, seed=0, same_task=True)
    model = train_mlp(data, (64, 64), l1=3e-4, epochs=400)
    result = find_modules(model, data.x, progress=False)
    truth = task_dependence(model, result.bases, data.x, data.n_first_inputs).argmax(1)
    m = result.partition.membership
    homogeneity = homogeneity_score(truth[m >= 0], m[m >= 0])
    leak = output_jacobian_leak(model, data.x[:500], data.n_first_inputs)
    split = find_modules(model, data.x, n_modules=2, progress=False).cross_fraction
    other = two_task[0]
    asymmetric = find_modules(two_task[1], other.x, n_modules=2, progress=False).cross_fraction
    print(
        f"identical tasks: homogeneity {homogeneity:.3f}, Jacobian leak {leak}, 2-module split "
        f"cuts {100 * split:.2f} % (asymmetric tasks: {100 * asymmetric:.2f} %)"
    )
    # measured: homogeneity 0.915 (1.0 for the asymmetric two-task network), leak 3.7 % / 2.8 %,
    # split 22.4 % vs 2.74 % (the one-task control: 17.2 %)
    turned = find_modules(model, data.x, n_modules=2, ties="rotate", progress=False)
    truth2 = task_dependence(model, turned.bases, data.x, data.n_first_inputs).argmax(1)
    sel = io_nodes(turned) & (turned.partition.membership >= 0)
    ari = adjusted_rand_score(truth2[sel], turned.partition.membership[sel])
    print(f"identical tasks, ties='rotate': ARI of the 2-module split {ari:.2f}")
    assert ari >= 0.8  # measured 0.85 (seeds 0-4: 0.85, 1.00, 1.00, 0.86, 0.86; docs/method.md §6a)
    assert homogeneity < 0.95  # modules mix the two tasks, unlike the asymmetric case
    assert min(leak) > 0.01  # and the network itself couples them
    assert split >= 3 * asymmetric  # the two halves interact about as much as one task's parts
