"""Hostile inputs to the file writers and the lower-level graph API (issue 12, round two): each
ends in a clear error or a correct result. One test per defect class."""

from __future__ import annotations

import json
import math
import os
import socket
import stat

import igraph as ig
import networkx as nx
import numpy as np
import pytest

import modgraph.io as mio
from modgraph import InteractionGraph, ModuleResult, leiden_modules
from modgraph.errors import ModgraphTypeError, ModgraphValueError

# Names a torch module can have (any non-empty str without "."), all writable as GraphML.
HOSTILE_NAMES = [
    "A<B",
    "<",
    '"',
    ">",
    "ñandú",
    "日本語",
    "e\u0301",
    "\u200f",
    "😀🧠",
    "\U0010fffd",
    "\ufdd0",
    "\x7f\x85\u2028",
    "q\"uo'te",
    "<>\"'",
    " sp ace ",
    "\tTab",
    "new\nline",
    "c\rr",
    "crlf\r\n",
    "]]>",
    "<!--x-->",
    "a:b",
]
# Characters a layer name or attribute name cannot hold in GraphML: XML 1.0 cannot store the
# first ones; igraph reads "&" in node ids and attribute names back as "&#38;".
UNWRITABLE = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1f", "\ufffe", "\uffff", "\ud800", "&"]


def _round_trips(path, graph, graph_attributes):
    """Node ids, the ``layer`` attribute, ints and graph attributes read back as written, in
    networkx and in igraph."""
    layers = graph.node_attributes()["layer"].tolist()
    depth = graph.node_attributes()["depth"].tolist()
    G = nx.read_graphml(path)
    assert list(G.nodes) == graph.node_ids
    assert [d["layer"] for _, d in G.nodes(data=True)] == layers
    got_depth = [d["depth"] for _, d in G.nodes(data=True)]
    assert got_depth == depth and all(type(d) is int for d in got_depth)
    h = ig.Graph.Read_GraphML(str(path))
    assert h.vs["id"] == graph.node_ids
    assert h.vs["layer"] == layers
    for name, value in graph_attributes.items():
        assert G.graph[name] == value and type(G.graph[name]) is type(value)
        assert h[name] == value


def test_graphml_escaping(tmp_path):
    path = tmp_path / "g.graphml"
    # numpy's replace cut "&amp;" to the width of a short array ("A&B" -> "A&amB").
    out = mio.write_graphml
    out(path, np.array(["x"]), {"s": np.array(["A&B"])}, np.zeros(0, int), np.zeros(0, int), {})
    assert nx.read_graphml(path).nodes["x"]["s"] == "A&B"
    assert ig.Graph.Read_GraphML(str(path)).vs["s"] == ["A&B"]

    for name in HOSTILE_NAMES:
        graph = InteractionGraph.from_matrices(
            [np.ones((2, 3))], epsilon=0.5, layers=[name, f"blocks.{name}"]
        )
        extra = {f"note {name}": f"A&B {name} &amp;", f"{name}": 7, "v": "A&B"}
        graph.to_graphml(path, graph_attributes=extra)
        _round_trips(path, graph, extra)

    for bad in UNWRITABLE:
        name = f"a{bad}b"
        code = f"U\\+{ord(bad):04X}"
        graph = InteractionGraph.from_matrices([np.ones((2, 2))], epsilon=0.5, layers=[name, "o"])
        new = tmp_path / "new.graphml"
        with pytest.raises(ModgraphValueError, match=f"layer name .*{code}.*at position 1"):
            graph.to_graphml(new)
        ok = InteractionGraph.from_matrices([np.ones((2, 2))], epsilon=0.5, layers=["i", "o"])
        with pytest.raises(ModgraphValueError, match=f"graph attribute name .*{code}"):
            ok.to_graphml(new, graph_attributes={name: 1.0})
        with pytest.raises(ModgraphValueError, match=f"node id .*{code}"):
            out(new, np.array([name]), {}, np.zeros(0, int), np.zeros(0, int), {})
        with pytest.raises(ModgraphValueError, match=code):
            mio.check_graphml_name(name, "layer name")
        if bad == "&":  # "&" is fine in text
            assert mio.check_xml_text(name, "value") == name
            continue
        with pytest.raises(ModgraphValueError, match=f"graph attribute 'v': value .*{code}"):
            ok.to_graphml(new, graph_attributes={"v": name})
        # string columns are checked at once, on their code points
        with pytest.raises(ModgraphValueError, match=f"attribute 's': value .*{code}"):
            out(new, np.array(["x", "y"]), {"s": np.array(["ok", name])}, [0], [1], {})
        with pytest.raises(ModgraphValueError, match=f"layer name {name!r}".replace("\\", "\\\\")):
            mio.check_xml_text(name, "layer name")
        assert not new.exists()
    with pytest.raises(ModgraphTypeError, match="graph attribute name must be a str"):
        ok.to_graphml(tmp_path / "new.graphml", graph_attributes={3: 1.0})
    with pytest.raises(ModgraphValueError, match="layer name 'ab\\\\x00'"):  # trailing NUL
        InteractionGraph.from_matrices(
            [np.ones((2, 2))], epsilon=0.5, layers=["ab\x00", "o"]
        ).to_graphml(tmp_path / "new.graphml")


def test_atomic_replacement(tmp_path):
    # the mode of the replaced file is kept
    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    mio.write_json(private, {"a": 1})
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and json.loads(private.read_text())

    # a symlink is written through, atomically beside its target; the link stays a link
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    real = tmp_path / "real" / "r.json"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "links" / "l.json"
    link.symlink_to(os.path.join("..", "real", "r.json"))
    mio.write_json(link, {"b": 2})
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "real", "r.json")
    assert json.loads(real.read_text()) == {"b": 2}
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    dangling = tmp_path / "links" / "d.json"
    dangling.symlink_to(os.path.join("..", "real", "new.json"))
    mio.write_json(dangling, [1])
    assert dangling.is_symlink() and json.loads((tmp_path / "real" / "new.json").read_text()) == [1]
    assert sorted(os.listdir(tmp_path / "real")) == ["new.json", "r.json"]
    assert sorted(os.listdir(tmp_path / "links")) == ["d.json", "l.json"]
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    with pytest.raises(ModgraphValueError, match=r"symbolic link .*loop.* cannot be followed"):
        mio.write_json(loop, {})
    assert loop.is_symlink()

    # FIFOs, sockets and devices are refused before anything is written
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    if os.geteuid() == 0:
        device = tmp_path / "null"
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    else:
        device = "/dev/null"  # cannot be replaced without root either way
    graph = InteractionGraph.from_matrices([np.ones((2, 2))], epsilon=0.5)
    try:
        for target, kind, is_kind in [
            (fifo, "a FIFO", stat.S_ISFIFO),
            (sock_path, "a socket", stat.S_ISSOCK),
            (device, "a character device", stat.S_ISCHR),
        ]:
            with pytest.raises(ModgraphValueError, match=f"is {kind}.*regular file"):
                mio.write_json(target, {})
            with pytest.raises(ModgraphValueError, match=f"write_graphml: .* is {kind}"):
                graph.to_graphml(target)
            assert is_kind(os.stat(target).st_mode)
    finally:
        sock.close()

    # names too long for the filesystem: a clear error naming the limit; the longest name fits
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = tmp_path / ("x" * (name_max - 5) + ".json")
    mio.write_json(longest, {"c": 3})  # the temporary name is shortened to fit beside it
    assert json.loads(longest.read_text()) == {"c": 3}
    for name in ["y" * (name_max - 4) + ".json", "é" * (name_max // 2 + 1)]:  # bytes, not chars
        with pytest.raises(ModgraphValueError, match=f"{name[:20]}.*at most {name_max} bytes"):
            mio.write_json(tmp_path / name, {})
    path_max = os.pathconf(tmp_path, "PC_PATH_MAX")
    deep = tmp_path.joinpath(*["d" * 200] * (path_max // 200 + 1), "f.json")
    with pytest.raises(ModgraphValueError, match=f"at most {path_max - 1} bytes per path"):
        mio.write_json(deep, {})
    leftovers = sorted(p for p in os.listdir(tmp_path) if p.startswith("."))
    assert leftovers == []


def test_lower_level_api_validation(tmp_path):
    E = np.array([[1.0, 0.1], [2.0, 3.0]])
    with pytest.raises(ModgraphValueError, match=r"from_matrices: edges is empty.*at least one"):
        InteractionGraph.from_matrices([], epsilon=0.5)
    with pytest.raises(ModgraphValueError, match="layers has 3 entries for 1 matrices; give 2"):
        InteractionGraph.from_matrices([E], epsilon=0.5, layers=["a", "b", "c"])

    def direct(epsilon, layers=("a", "b")):
        return InteractionGraph(
            layers=layers,
            edges={(layers[0], layers[1]): E},
            importance={n: np.ones(2) for n in layers},
            epsilon=epsilon,
        )

    for bad in [0, 0.0, -1.0, math.nan, math.inf, -math.inf]:
        message = (
            r"'epsilon' parameter of InteractionGraph(\.from_matrices)? must be a finite float "
            r"in \(0.0, inf\)"
        )
        with pytest.raises(ModgraphValueError, match=message):
            InteractionGraph.from_matrices([E], epsilon=bad)
        with pytest.raises(ModgraphValueError, match=message):
            direct(bad)
    for bad in ["0.5", None, [0.5]]:
        with pytest.raises(ModgraphTypeError, match=r"'epsilon' parameter .* real number"):
            direct(bad)
    assert type(direct(np.float32(0.5)).epsilon) is float

    with pytest.raises(ModgraphValueError, match="unique; 'a' appears 2 times"):
        InteractionGraph.from_matrices([E, E], epsilon=0.5, layers=["a", "b", "a"])
    with pytest.raises(ModgraphValueError, match="unique; 'a' appears 2 times"):
        direct(0.5, layers=("a", "a"))
    with pytest.raises(ModgraphTypeError, match="layer names must be non-empty strs; got 3"):
        InteractionGraph.from_matrices([E], epsilon=0.5, layers=[3, "b"])

    graph = InteractionGraph.from_matrices([E], epsilon=0.5)
    result = ModuleResult(graph, leiden_modules(graph, seed=0))
    path = tmp_path / "g.graphml"
    exports = {
        "edge_list": lambda w: graph.edge_list(w),
        "to_networkx": lambda w: graph.to_networkx(min_weight=w),
        "to_igraph": lambda w: graph.to_igraph(min_weight=w),
        "to_graphml": lambda w: graph.to_graphml(path, min_weight=w),
    }
    for name, export in exports.items():
        for bad in [math.nan, math.inf, -0.5]:
            message = f"'min_weight' parameter of InteractionGraph.{name} must be a finite float"
            with pytest.raises(ModgraphValueError, match=message):
                export(bad)
        with pytest.raises(ModgraphTypeError, match=r"'min_weight' parameter .* real number"):
            export("0.1")
    with pytest.raises(ModgraphValueError, match="'min_weight' parameter"):
        result.to_graphml(path, min_weight=math.nan)
    assert not path.exists()
    assert len(graph.edge_list(0.0)["weight"]) == 4 and len(graph.edge_list()["weight"]) == 3
    graph.to_graphml(path, min_weight=0)
    assert nx.read_graphml(path).number_of_edges() == 4
