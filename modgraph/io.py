"""Files: atomic writes, a vectorised GraphML writer, and a safe GraphML reader.

GraphML holds scalars only: each attribute is a 1-d array of ints, floats, bools or strings, one
value per node or edge. Ints are declared ``long`` (networkx reads them back as ``int``; igraph
as numbers), floats are written with the shortest repr that round-trips exactly. Every write goes
to a temporary file in the destination folder, then ``os.replace``: an interrupted write leaves the
old file (or nothing) and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import ModgraphTypeError, ModgraphValueError

__all__ = ["atomic_open", "read_graphml", "write_graphml", "write_json"]


def _check_target(path: str | os.PathLike[str], where: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ModgraphTypeError(
            f"{where}: path must be a str or PathLike; got {type(path).__name__}."
        )
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"{where}: {str(target)!r} is a directory; give a file path such as "
            f"{str(target / 'modules.graphml')!r}."
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"{where}: folder {str(parent)!r} does not exist; create it first "
            "(e.g. Path(...).mkdir(parents=True))."
        )
    return target


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, where: str = "write"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and ``path``
    is left as it was.
    """
    target = _check_target(path, where)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"{where}: cannot write in {str(target.parent)!r} ({exc.strerror}); "
            "choose a writable folder",
        ) from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        encoding = None if "b" in mode else "utf-8"
        with open(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", where="write_json") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


#: Edges formatted at once by :func:`write_graphml` (bounds the memory of the text arrays).
EDGE_BLOCK = 65536

_XML_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&quot;"))


def _escape(values: np.ndarray) -> np.ndarray:
    out = values.astype(np.str_)
    for old, new in _XML_ESCAPES:
        out = np.strings.replace(out, old, new)
    return out


def _attribute(values: Any, name: str) -> tuple[str, np.ndarray]:
    """GraphML type and text of an attribute column."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ModgraphValueError(f"GraphML attribute {name!r} must be 1-d; got shape {arr.shape}.")
    if arr.dtype == np.bool_:
        return "boolean", np.where(arr, "true", "false").astype(np.str_)
    if np.issubdtype(arr.dtype, np.integer):
        return "long", arr.astype(np.int64).astype(np.str_)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ModgraphValueError(f"GraphML attribute {name!r} holds NaN/Inf values.")
        return "double", arr.astype(np.str_)
    if arr.dtype.kind in "US":
        return "string", _escape(arr)
    raise ModgraphTypeError(
        f"GraphML attribute {name!r} has dtype {arr.dtype}; only ints, floats, bools and strings "
        "can be stored (GraphML holds scalars)."
    )


def _scalar(value: Any, name: str) -> tuple[str, str]:
    if isinstance(value, (bool, np.bool_)):
        return "boolean", "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return "long", str(int(value))
    if isinstance(value, (float, np.floating)):
        return "double", repr(float(value))
    if isinstance(value, str):
        return "string", str(_escape(np.array([value]))[0])
    raise ModgraphTypeError(
        f"graph attribute {name!r} must be a scalar; got {type(value).__name__}."
    )


def write_graphml(
    path: str | os.PathLike[str],
    node_ids: np.ndarray,
    node_attrs: Mapping[str, Any],
    src: np.ndarray,
    dst: np.ndarray,
    edge_attrs: Mapping[str, Any],
    graph_attrs: Mapping[str, Any] | None = None,
    *,
    directed: bool = True,
) -> None:
    """Write a graph given as arrays to GraphML, atomically, with no Python loop per element.

    Parameters
    ----------
    path : str or PathLike
    node_ids : ndarray of str, shape (n,)
    node_attrs : mapping of name to array, each shape (n,)
    src, dst : ndarray of int, shape (m,)
        Edge endpoints as indices into ``node_ids``.
    edge_attrs : mapping of name to array, each shape (m,)
    graph_attrs : mapping of name to scalar, optional
    """
    where = "write_graphml"
    _check_target(path, where)
    ids = _escape(np.asarray(node_ids))
    keys: list[str] = []
    node_cols = []
    for i, (name, values) in enumerate(node_attrs.items()):
        kind, text = _attribute(values, name)
        if text.shape[0] != ids.shape[0]:
            raise ModgraphValueError(
                f"node attribute {name!r} has {text.shape[0]} values for {ids.shape[0]} nodes."
            )
        keys.append(f'  <key id="n{i}" for="node" attr.name="{name}" attr.type="{kind}"/>')
        node_cols.append((f"n{i}", text))
    edge_cols = []
    for i, (name, values) in enumerate(edge_attrs.items()):
        kind, _ = _attribute(np.asarray(values)[:1], name)
        text = np.asarray(values)
        if text.shape[0] != len(src):
            raise ModgraphValueError(
                f"edge attribute {name!r} has {text.shape[0]} values for {len(src)} edges."
            )
        keys.append(f'  <key id="e{i}" for="edge" attr.name="{name}" attr.type="{kind}"/>')
        edge_cols.append((f"e{i}", text))
    graph_data = []
    for i, (name, value) in enumerate((graph_attrs or {}).items()):
        kind, text = _scalar(value, name)
        keys.append(f'  <key id="g{i}" for="graph" attr.name="{name}" attr.type="{kind}"/>')
        graph_data.append(f'    <data key="g{i}">{text}</data>')

    add = np.strings.add
    nodes = add(add('    <node id="', ids), '">')
    for key, text in node_cols:
        nodes = add(add(add(nodes, f'<data key="{key}">'), text), "</data>")
    nodes = add(nodes, "</node>")
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)

    def edge_lines(lo: int, hi: int) -> np.ndarray:
        """GraphML lines of edges lo..hi (formatted per block to bound memory)."""
        lines = add(
            add(add(add('    <edge source="', ids[src[lo:hi]]), '" target="'), ids[dst[lo:hi]]),
            '">',
        )
        for (key, values), name in zip(edge_cols, edge_attrs):
            _, text = _attribute(values[lo:hi], name)
            lines = add(add(add(lines, f'<data key="{key}">'), text), "</data>")
        return add(lines, "</edge>")

    head = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
        'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">',
        *keys,
        f'  <graph id="G" edgedefault="{"directed" if directed else "undirected"}">',
        *graph_data,
    ]
    with atomic_open(path, "w", where=where) as f:
        f.write("\n".join(head))
        f.write("\n")
        if nodes.size:
            f.write("\n".join(nodes.tolist()))
            f.write("\n")
        for lo in range(0, len(src), EDGE_BLOCK):
            f.write("\n".join(edge_lines(lo, lo + EDGE_BLOCK).tolist()))
            f.write("\n")
        f.write("  </graph>\n</graphml>\n")


_UNSAFE = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def read_graphml(path: str | os.PathLike[str]) -> Any:
    """Read a GraphML file into a ``networkx`` graph, refusing DTDs and entity declarations.

    Entity expansion ("billion laughs") and external entities need a ``<!DOCTYPE``/``<!ENTITY``
    declaration; GraphML never needs one, so such files are rejected before parsing.
    """
    import networkx as nx

    data = Path(path).read_bytes()
    if _UNSAFE.search(data):
        raise ModgraphValueError(
            f"read_graphml: {str(path)!r} declares a DOCTYPE or ENTITY; modgraph does not parse "
            "XML with entity declarations (entity-expansion attacks). Remove the declaration."
        )
    return nx.parse_graphml(data.decode("utf-8"))
