"""Options are validated once, at the public entry, and errors name the function called."""

from __future__ import annotations

import pytest
import torch

import modgraph.options
from modgraph import (
    ModgraphTypeError,
    ModgraphValueError,
    Options,
    degeneracy_report,
    find_modules,
    interaction_basis,
    interaction_graph,
    leiden_modules,
)
from modgraph.toy import mlp
from tests.zoo import correlated_inputs

MODEL = mlp([5, 8, 3], seed=0)
X = correlated_inputs(64, 5, seed=0)


@pytest.fixture
def counted(monkeypatch):
    """Counts of Options.validated and check_seed calls during a test."""
    calls = {"validated": [], "check_seed": 0}
    validated = Options.validated
    check_seed = modgraph.options.check_seed

    def count_validated(self, where):
        calls["validated"].append(where)
        return validated(self, where)

    def count_seed(value, where):
        calls["check_seed"] += 1
        return check_seed(value, where)

    monkeypatch.setattr(Options, "validated", count_validated)
    monkeypatch.setattr(modgraph.options, "check_seed", count_seed)
    return calls


@pytest.mark.parametrize(
    ("call", "where"),
    [
        (lambda: interaction_basis(MODEL, X, progress=False), "interaction_basis"),
        (lambda: interaction_graph(MODEL, X, progress=False), "interaction_graph"),
        (lambda: find_modules(MODEL, X, progress=False), "find_modules"),
        (lambda: degeneracy_report(MODEL, X, progress=False), "degeneracy_report"),
    ],
)
def test_each_public_call_validates_once(counted, call, where):
    call()
    assert counted["validated"] == [where]
    assert counted["check_seed"] == 1


def test_leiden_modules_validates_once(counted):
    graph = interaction_graph(MODEL, X, progress=False)
    counted["validated"].clear()
    counted["check_seed"] = 0
    leiden_modules(graph, seed=3)
    assert counted["validated"] == ["leiden_modules"] and counted["check_seed"] == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"variant": "both"}, ModgraphValueError, "variant"),
        ({"rtol": 2.0}, ModgraphValueError, "rtol"),
        ({"seed": -1}, ModgraphValueError, "seed"),
        ({"n_alpha": 0}, ModgraphValueError, "n_alpha"),
        ({"epsilon": "auto"}, ModgraphTypeError, "epsilon"),
        ({"batch_size": 1.5}, ModgraphTypeError, "batch_size"),
        ({"output": "logits"}, ModgraphTypeError, "output"),
        ({"progress": 1}, ModgraphTypeError, "progress"),
    ],
)
def test_errors_name_the_function_called_and_the_parameter(kwargs, error, name):
    for fn in (interaction_graph, find_modules):
        with pytest.raises(error) as exc:
            fn(MODEL, X, **kwargs)
        message = str(exc.value)
        assert message.startswith(f"The {name!r} parameter of {fn.__name__} ")
        other = {"interaction_graph": "find_modules", "find_modules": "interaction_graph"}
        assert other[fn.__name__] not in message


def test_basis_options_with_given_bases_raise_instead_of_being_ignored():
    bases = interaction_basis(MODEL, X, progress=False)
    # the defaults may be spelled out: nothing is ignored then
    plain = interaction_graph(MODEL, X, bases, variant="local", rtol=1e-10, progress=False)
    for kwargs in (
        {"variant": "global"},
        {"rtol": 1e-6},
        {"n_random_sources": 4},
        {"output_basis": "pca"},
    ):
        ((name, value),) = kwargs.items()
        with pytest.raises(ModgraphValueError, match=rf"{name}={value!r} only apply .*bases="):
            interaction_graph(MODEL, X, bases, progress=False, **kwargs)
    again = interaction_graph(MODEL, X, bases, progress=False)
    for pair, E in plain.edges.items():
        assert (E == again.edges[pair]).all()
    # seed is also an edge option (the subsample of edge_samples): accepted with bases, and
    # without edge_samples or random sources it changes nothing
    seeded = interaction_graph(MODEL, X, bases, seed=1, progress=False)
    for pair, E in plain.edges.items():
        assert (E == seeded.edges[pair]).all()


def test_validated_options_are_normalised_and_record_the_caller():
    opts = Options(rtol=1e-8, seed=3, tau=1, hamming_tol=0.25).validated("somewhere")
    assert opts.caller == "somewhere"
    assert isinstance(opts.tau, float) and opts.tau == 1.0
    assert opts.hamming_tol == 0.25 and opts.seed == 3
    with pytest.raises(dataclasses_frozen()):
        opts.rtol = 1.0  # type: ignore[misc]
    assert Options().changed_basis_options() == []
    assert Options(variant="global", seed=2).changed_basis_options() == ["variant"]


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_errors_below_the_entry_name_the_caller():
    for fn in (interaction_basis, find_modules):
        with pytest.raises(ModgraphTypeError, match=f"'layers' parameter of {fn.__name__}"):
            fn(MODEL, X, layers="0", progress=False)  # a str, not a list
        with pytest.raises(ModgraphTypeError, match=f"'data' parameter of {fn.__name__}"):
            fn(MODEL, iter([X]), progress=False)


def test_dtype_is_checked_before_any_work():
    with pytest.raises(ModgraphTypeError, match="'dtype' parameter of find_modules"):
        find_modules(MODEL, X, dtype=torch.int64)


def test_search_options_that_would_be_ignored_raise():
    graph = interaction_graph(MODEL, X, progress=False)
    with pytest.raises(ModgraphValueError, match="'resolution' parameter of leiden_modules"):
        leiden_modules(graph, n_modules=2, resolution=0.5)
    with pytest.raises(ModgraphValueError, match="'min_module_share' parameter of find_modules"):
        find_modules(MODEL, X, min_module_share=0.05, progress=False)
    with pytest.raises(ModgraphValueError, match="'resolution' parameter of find_modules"):
        find_modules(MODEL, X, n_modules=2, resolution=2.0, progress=False)
