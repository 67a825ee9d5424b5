"""Files: atomic writes, a vectorised GraphML writer, and a safe GraphML reader.

GraphML holds scalars only: each attribute is a 1-d array of ints, floats, bools or strings, one
value per node or edge. Ints are declared ``long`` (networkx reads them back as ``int``; igraph
as numbers), floats are written with the shortest repr that round-trips exactly. Every write goes
to a temporary file beside the destination, then ``os.replace``: an interrupted write leaves the
old file (or nothing) and no temporary file behind. The new file keeps the permission bits of the
file it replaces; a symlink is written through (its target is replaced, the link stays a link);
FIFOs, devices and sockets are refused, as are names longer than the filesystem allows.

Strings (node ids, string values, attribute names) are escaped for XML, with tab, newline and
carriage return written as character references (``&#9;``, ``&#10;``, ``&#13;``) because XML
parsers normalise them; characters XML 1.0 cannot hold (other C0 controls, U+FFFE, U+FFFF, lone
surrogates) are refused (:func:`check_xml_text`), and so is ``&`` in node ids and attribute names
(:func:`check_graphml_name`: igraph's reader returns it as ``&#38;`` in XML attribute values), so
every written string reads back as written in networkx and igraph.

Why a hand-written writer and not igraph's ``Graph.write_graphml`` (its C writer is faster: for
1.02M edges, 1.6-2.2 s plus 1.4-2.5 s to build the ``igraph.Graph`` from our arrays, against
3.3-5.4 s for this writer, whole ``to_graphml``; measured on a shared two-core machine under load
2-3.5, igraph 1.0.0, numpy 2.4.6): igraph's writer fails our round trip
(``tests/test_graphml.py::test_igraph_writer_fails_our_round_trip``). It declares every number
``double``, so ``module``, ``depth``, ``index`` and ``n_alpha`` come back from networkx as floats
(``2.0``); it writes node ids ``n0, n1, ...`` with ours in a ``name`` attribute, so the
``"{layer}:{index}"`` ids are lost in every reader; it writes doubles with 15 significant digits
(``ε = 1/3`` and the weights do not read back exactly); and it writes a raw carriage return, which
comes back as a newline. Not faster end to end either: with the graph build it takes as long.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import ModgraphTypeError, ModgraphValueError

__all__ = [
    "atomic_open",
    "check_graphml_name",
    "check_xml_text",
    "read_graphml",
    "write_graphml",
    "write_json",
]

#: Bytes of a temporary name beyond the kept part of the target's name: ".", ".", 8 random, ".tmp".
_TMP_EXTRA = 14
_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _limits(folder: Path) -> tuple[int, int]:
    """``(NAME_MAX, PATH_MAX)`` of the filesystem of ``folder``'s nearest existing ancestor."""
    for candidate in (folder, *folder.parents):
        if os.path.isdir(candidate):
            try:
                return os.pathconf(candidate, "PC_NAME_MAX"), os.pathconf(candidate, "PC_PATH_MAX")
            except (OSError, ValueError):  # pragma: no cover - no pathconf (e.g. Windows)
                break
    return 255, 4096


def _check_length(target: Path, shown: str, where: str) -> int:
    """Refuse a path with a name or a length the filesystem cannot hold; return NAME_MAX."""
    name_max, path_max = _limits(target.parent if str(target.parent) else Path("."))
    for part in target.parts:
        size = len(os.fsencode(part))
        if size > name_max and part != target.anchor:
            raise ModgraphValueError(
                f"{where}: the name {part!r} in {shown!r} is {size} bytes long; this filesystem "
                f"allows at most {name_max} bytes per name (ENAMETOOLONG). Choose a shorter name."
            )
    size = len(os.fsencode(str(target)))
    if size >= path_max:
        raise ModgraphValueError(
            f"{where}: the path {shown[:40]!r}...{shown[-40:]!r} is {size} bytes long; the system "
            f"allows at most {path_max - 1} bytes per path (ENAMETOOLONG). Choose a shorter path."
        )
    return name_max


def _resolve_target(path: Any, where: str) -> tuple[Path, int | None, int]:
    """The file to replace (a symlink's target), its permission bits (None if new), NAME_MAX."""
    if not isinstance(path, (str, os.PathLike)):
        raise ModgraphTypeError(
            f"{where}: path must be a str or PathLike; got {type(path).__name__}."
        )
    target = Path(path)
    shown = str(target)
    name_max = _check_length(target, shown, where)
    if os.path.islink(target):
        try:
            os.stat(target)
        except FileNotFoundError:
            pass  # a dangling link: writing through it creates its target
        except OSError as exc:
            raise ModgraphValueError(
                f"{where}: the symbolic link {shown!r} cannot be followed ({exc.strerror}); "
                "point it at a file or remove it."
            ) from exc
        target = Path(os.path.realpath(target))
        name_max = _check_length(target, f"{shown} -> {target}", where)
    if target.is_dir():
        raise IsADirectoryError(
            f"{where}: {shown!r} is a directory; give a file path such as "
            f"{str(Path(shown) / 'modules.graphml')!r}."
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(
            f"{where}: folder {str(parent)!r} does not exist; create it first "
            "(e.g. Path(...).mkdir(parents=True))."
        )
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None, name_max
    if not stat.S_ISREG(st.st_mode):
        kind = next((k for is_kind, k in _KINDS if is_kind(st.st_mode)), "not a regular file")
        raise ModgraphValueError(
            f"{where}: {shown!r} is {kind}; modgraph writes a file by atomically replacing it, "
            "which would turn it into a regular file. Give the path of a regular file."
        )
    # Permission bits only: like a write by a non-owner, setuid/setgid/sticky are not carried over.
    return target, stat.S_IMODE(st.st_mode) & 0o777, name_max


def _check_target(path: str | os.PathLike[str], where: str) -> Path:
    return _resolve_target(path, where)[0]


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, where: str = "write"
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and ``path``
    is left as it was. A replaced file keeps its permission bits (a new one gets
    ``0o666 & ~umask``); a symlink is written through to its target (the temporary file goes
    beside the target, the link stays a link); FIFOs, devices, sockets and names too long for the
    filesystem are refused (:class:`ModgraphValueError`) before anything is written.
    """
    target, keep_mode, name_max = _resolve_target(path, where)
    stem = target.name
    while len(os.fsencode(stem)) > name_max - _TMP_EXTRA:
        stem = stem[:-1]  # the temporary name must fit too
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}.", suffix=".tmp")
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"{where}: cannot write in {str(target.parent)!r} ({exc.strerror}); "
            "choose a writable folder",
        ) from exc
    try:
        if keep_mode is None:
            umask = os.umask(0)
            os.umask(umask)
            keep_mode = 0o666 & ~umask  # mkstemp creates 0600; give the file the usual mode
        os.chmod(tmp, keep_mode)
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

# Characters XML 1.0 cannot hold: C0 controls but tab, newline, CR; lone surrogates; U+FFFE/FFFF.
_XML_FORBIDDEN = "\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff"
_TEXT_BAD = re.compile(f"[{_XML_FORBIDDEN}]")
_NAME_BAD = re.compile(f"[{_XML_FORBIDDEN}&]")
# "&" first. Tab, newline and CR as character references: parsers normalise the raw characters
# (to spaces in attribute values, CR to newline in text). ``np.str_`` on both sides: numpy casts a
# plain-str replacement to the array's width (a "<U3" array turns "&amp;" into "&am").
_XML_ESCAPES = tuple(
    (np.str_(old), np.str_(new))
    for old, new in (
        ("&", "&amp;"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ('"', "&quot;"),
        ("\t", "&#9;"),
        ("\n", "&#10;"),
        ("\r", "&#13;"),
    )
)


def _check(value: Any, what: str, bad_chars: re.Pattern[str]) -> str:
    if not isinstance(value, str):
        raise ModgraphTypeError(f"{what} must be a str; got {type(value).__name__}.")
    bad = bad_chars.search(value)
    if bad is None:
        return value
    shown = repr(value) if len(value) <= 120 else repr(value[:117]) + "..."
    char = bad.group()
    if char == "&":
        why = (
            "igraph's GraphML reader (libxml2) returns '&' in node ids and attribute names as "
            "'&#38;', whatever the escape, so the file would not read back as written"
        )
    else:
        why = (
            "XML 1.0 (and so GraphML) cannot store it: control characters other than tab, "
            "newline and carriage return, U+FFFE, U+FFFF and lone surrogates are not allowed"
        )
    raise ModgraphValueError(
        f"{what} {shown} holds the character U+{ord(char):04X} ({char!r}) at position "
        f"{bad.start()}; {why}. Rename it without that character."
    )


def check_xml_text(value: Any, what: str) -> str:
    """Return ``value`` if it is a str that XML 1.0 (so GraphML) can hold as text; else raise.

    Refused: characters U+0000-U+001F other than tab, newline and carriage return, lone
    surrogates (U+D800-U+DFFF) and U+FFFE/U+FFFF. ``what`` names the value in the message, e.g.
    ``"find_modules: layer name"``. Used for string values (``<data>`` text).

    Raises
    ------
    ModgraphTypeError
        ``value`` is not a str.
    ModgraphValueError
        ``value`` holds a character XML 1.0 cannot hold.
    """
    return _check(value, what, _TEXT_BAD)


def check_graphml_name(value: Any, what: str) -> str:
    """:func:`check_xml_text`, and no ``"&"``: for text written as an XML attribute value.

    Layer names (inside node ids ``"{layer}:{index}"``) and attribute names are XML attribute
    values; igraph's GraphML reader returns an ``&`` there as ``&#38;`` (however it is escaped),
    so such a name is refused rather than written in a file that does not read back as written.
    """
    return _check(value, what, _NAME_BAD)


def _check_xml_array(text: np.ndarray, what: str, *, name: bool) -> None:
    """:func:`check_xml_text` (``name``: :func:`check_graphml_name`) for a ``str_`` array at once."""
    if text.size == 0 or text.dtype.itemsize == 0:
        return
    codes = np.ascontiguousarray(text).view(np.uint32).reshape(text.size, -1)
    bad = ((codes < 0x20) & (codes != 0x9) & (codes != 0xA) & (codes != 0xD)) | (
        (codes >= 0xD800) & ((codes <= 0xDFFF) | (codes == 0xFFFE) | (codes == 0xFFFF))
    )
    if name:
        bad |= codes == ord("&")
    bad &= np.arange(codes.shape[1]) < np.strings.str_len(text).reshape(-1, 1)  # not padding
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size:
        _check(str(text.reshape(-1)[rows[0]]), what, _NAME_BAD if name else _TEXT_BAD)


def _escape(values: Any, what: str, *, name: bool = False) -> np.ndarray:
    out = np.asarray(values).astype(np.str_)
    _check_xml_array(out, what, name=name)
    for old, new in _XML_ESCAPES:
        out = np.strings.replace(out, old, new)
    return out


def _escape_str(value: Any, what: str, *, name: bool = False) -> str:
    out = _check(value, what, _NAME_BAD if name else _TEXT_BAD)
    for old, new in _XML_ESCAPES:
        out = out.replace(str(old), str(new))
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
        return "string", _escape(arr, f"write_graphml: attribute {name!r}: value")
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
        return "string", _escape_str(value, f"write_graphml: graph attribute {name!r}: value")
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
    ids = _escape(node_ids, f"{where}: node id", name=True)

    def key(kind: str, i: int, name: Any, what: str) -> str:
        name = _escape_str(name, f"{where}: {what} attribute name", name=True)
        return f'  <key id="{what[0]}{i}" for="{what}" attr.name="{name}" attr.type="{kind}"/>'

    keys: list[str] = []
    node_cols = []
    for i, (name, values) in enumerate(node_attrs.items()):
        kind, text = _attribute(values, name)
        if text.shape[0] != ids.shape[0]:
            raise ModgraphValueError(
                f"node attribute {name!r} has {text.shape[0]} values for {ids.shape[0]} nodes."
            )
        keys.append(key(kind, i, name, "node"))
        node_cols.append((f"n{i}", text))
    edge_cols = []
    for i, (name, values) in enumerate(edge_attrs.items()):
        kind, _ = _attribute(np.asarray(values)[:1], name)
        text = np.asarray(values)
        if text.shape[0] != len(src):
            raise ModgraphValueError(
                f"edge attribute {name!r} has {text.shape[0]} values for {len(src)} edges."
            )
        keys.append(key(kind, i, name, "edge"))
        edge_cols.append((f"e{i}", text))
    graph_data = []
    for i, (name, value) in enumerate((graph_attrs or {}).items()):
        kind, text = _scalar(value, name)
        keys.append(key(kind, i, name, "graph"))
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
