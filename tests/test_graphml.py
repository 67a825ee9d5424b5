"""GraphML round trip through networkx and igraph, atomic writes, safe reading."""

from __future__ import annotations

import os

import igraph as ig
import networkx as nx
import numpy as np
import pytest

import modgraph.io
from modgraph import InteractionGraph, leiden_modules, read_graphml


@pytest.fixture
def graph_and_membership():
    rng = np.random.default_rng(4)
    mats = [rng.lognormal(0, 2, (7, 5)), rng.lognormal(0, 2, (4, 7))]
    graph = InteractionGraph.from_matrices(
        mats,
        epsilon=0.3,
        layers=["fc1", "blocks.2", "output"],
        importance=[rng.random(5), rng.random(7), rng.random(4)],
    )
    return graph, leiden_modules(graph, seed=0).membership


def test_round_trip_networkx_and_igraph(tmp_path, graph_and_membership):
    graph, membership = graph_and_membership
    path = tmp_path / "g.graphml"
    graph.to_graphml(path, membership)
    expected = graph.to_networkx(membership)
    edges = graph.edge_list()

    G = nx.read_graphml(path)
    assert list(G.nodes) == graph.node_ids  # ids "{layer}:{index}"
    assert G.number_of_edges() == len(edges["weight"]) == expected.number_of_edges()
    for node, data in expected.nodes(data=True):
        got = G.nodes[node]
        assert got["layer"] == data["layer"]
        for key in ("depth", "index", "module"):
            assert type(got[key]) is int and got[key] == data[key]
        assert got["importance"] == pytest.approx(data["importance"], rel=1e-12)
    for u, v, data in expected.edges(data=True):
        assert G.edges[u, v]["weight"] == pytest.approx(data["weight"], rel=1e-12)
        assert G.edges[u, v]["cost"] == pytest.approx(data["cost"], rel=1e-12, abs=1e-15)
    assert G.graph["epsilon"] == pytest.approx(0.3)

    g = ig.Graph.Read_GraphML(str(path))
    assert g.vcount() == graph.n_nodes and g.ecount() == len(edges["weight"])
    assert g.vs["id"] == graph.node_ids
    np.testing.assert_allclose(
        g.vs["importance"], graph.node_attributes()["importance"], rtol=1e-12
    )
    np.testing.assert_array_equal(np.asarray(g.vs["module"], dtype=int), membership)
    np.testing.assert_array_equal(
        np.asarray(g.vs["depth"], dtype=int), graph.node_attributes()["depth"]
    )
    pairs = np.array(g.get_edgelist())
    np.testing.assert_array_equal(pairs[:, 0], edges["source"])
    np.testing.assert_array_equal(pairs[:, 1], edges["target"])
    np.testing.assert_allclose(g.es["weight"], edges["weight"], rtol=1e-12)
    np.testing.assert_allclose(g.es["cost"], edges["cost"], rtol=1e-12)


def test_to_igraph_matches_to_networkx(graph_and_membership):
    graph, membership = graph_and_membership
    g = graph.to_igraph(membership)
    G = graph.to_networkx(membership)
    assert g.vs["name"] == list(G.nodes)
    pairs = {(g.vs[e.source]["name"], g.vs[e.target]["name"]) for e in g.es}
    assert pairs == set(G.edges) and len(pairs) == g.ecount()
    assert "_igraph_index" not in next(iter(G.nodes(data=True)))[1]


def test_interrupted_write_keeps_old_file_and_leaves_no_temp(
    tmp_path, graph_and_membership, monkeypatch
):
    graph, membership = graph_and_membership
    path = tmp_path / "g.graphml"
    path.write_text("old contents")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(modgraph.io.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        graph.to_graphml(path, membership)
    assert path.read_text() == "old contents"
    assert os.listdir(tmp_path) == ["g.graphml"]


def test_bad_paths(tmp_path, graph_and_membership):
    graph, _ = graph_and_membership
    with pytest.raises(IsADirectoryError, match="is a directory"):
        graph.to_graphml(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        graph.to_graphml(tmp_path / "missing" / "g.graphml")
    with pytest.raises(TypeError, match="path"):
        graph.to_graphml(3)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path, graph_and_membership):
    graph, _ = graph_and_membership
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot write"):
            graph.to_graphml(folder / "g.graphml")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


def test_read_graphml_refuses_entities(tmp_path, graph_and_membership):
    graph, membership = graph_and_membership
    good = tmp_path / "g.graphml"
    graph.to_graphml(good, membership)
    assert list(read_graphml(good).nodes) == graph.node_ids
    evil = tmp_path / "evil.graphml"
    evil.write_text(
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="directed">'
        '<node id="&lol2;"/></graph></graphml>'
    )
    with pytest.raises(ValueError, match="ENTITY"):
        read_graphml(evil)


def test_xml_special_characters_are_escaped(tmp_path):
    graph = InteractionGraph.from_matrices(
        [np.ones((2, 2))], epsilon=0.5, layers=['a&b<"c">', "output"]
    )
    path = tmp_path / "g.graphml"
    graph.to_graphml(path)
    G = nx.read_graphml(path)
    assert list(G.nodes) == graph.node_ids
    assert G.nodes['a&b<"c">:1']["layer"] == 'a&b<"c">'


def test_edges_written_in_blocks_round_trip(tmp_path, graph_and_membership, monkeypatch):
    graph, membership = graph_and_membership
    monkeypatch.setattr(modgraph.io, "EDGE_BLOCK", 3)  # many blocks, one partial
    path = tmp_path / "g.graphml"
    graph.to_graphml(path, membership, min_weight=0.0)
    G = nx.read_graphml(path)
    expected = graph.to_networkx(membership, min_weight=0.0)
    assert G.number_of_edges() == expected.number_of_edges() > 3
    assert {(u, v): d for u, v, d in G.edges(data=True)} == {
        (u, v): d for u, v, d in expected.edges(data=True)
    }
