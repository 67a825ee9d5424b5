"""ModuleResult is a thin view over (graph, partition): nothing copied, networkx built lazily."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from modgraph import (
    InteractionGraph,
    ModgraphTypeError,
    ModgraphValueError,
    ModuleResult,
    leiden_modules,
    modularity_score,
    partition_cost,
)


@pytest.fixture
def graph() -> InteractionGraph:
    rng = np.random.default_rng(0)
    E1 = rng.lognormal(0, 1, (12, 10)) * (rng.random((12, 10)) < 0.4)
    E2 = rng.lognormal(0, 1, (6, 12)) * (rng.random((6, 12)) < 0.4)
    return InteractionGraph.from_matrices([E1, E2], epsilon=0.3)


def test_fields_are_the_graph_and_the_partition_only(graph):
    partition = leiden_modules(graph, seed=2)
    result = ModuleResult(graph, partition)
    assert [f.name for f in dataclasses.fields(result)] == ["interaction_graph", "partition"]
    assert result.interaction_graph is graph and result.partition is partition
    assert result.membership is partition.membership  # the same array, not a copy
    assert result.modules is partition.modules
    assert result.edges is graph.edges
    assert (result.score, result.resolution, result.seed) == (
        partition.score,
        partition.resolution,
        partition.seed,
    )
    assert result.cross_fraction == pytest.approx(
        partition_cost(graph, partition.membership).cross_fraction, abs=1e-15
    )
    assert result.score == pytest.approx(modularity_score(graph, result.membership), abs=1e-12)
    assert result.module_of == dict(zip(graph.node_ids, partition.membership.tolist()))
    assert result.epsilon == graph.epsilon and result.bases == {}


def test_networkx_graph_is_built_on_first_access_only(graph, monkeypatch, tmp_path):
    partition = leiden_modules(graph, seed=2)
    calls = []
    to_networkx = InteractionGraph.to_networkx

    def counting(self, *args, **kwargs):
        calls.append(1)
        return to_networkx(self, *args, **kwargs)

    monkeypatch.setattr(InteractionGraph, "to_networkx", counting)
    result = ModuleResult(graph, partition)
    result.summary()
    result.to_json(tmp_path / "m.json")
    result.to_graphml(tmp_path / "m.graphml")
    assert json.loads((tmp_path / "m.json").read_text())["membership"] == result.module_of
    assert calls == []
    G = result.graph
    assert result.graph is G and calls == [1]
    assert {n: d["module"] for n, d in G.nodes(data=True)} == result.module_of


def test_bad_parts_are_refused(graph):
    partition = leiden_modules(graph, seed=2)
    with pytest.raises(ModgraphTypeError, match="InteractionGraph"):
        ModuleResult(partition, graph)  # type: ignore[arg-type]
    with pytest.raises(ModgraphTypeError, match="Partition"):
        ModuleResult(graph, partition.membership)  # type: ignore[arg-type]
    other = InteractionGraph.from_matrices([np.ones((3, 2))], epsilon=0.5)
    with pytest.raises(ModgraphValueError, match="partition of this graph"):
        ModuleResult(other, partition)
    result = ModuleResult(graph, partition)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.partition = partition  # type: ignore[misc]
