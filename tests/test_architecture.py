"""The house rules of docs/architecture.md, checked on the source (no code is run).

- Data flows one way: every module-level import of a modgraph room points to a lower floor (the
  floors below are the table of docs/architecture.md). Imports for type checking only are not
  arrows, nor is the one import inside a function, ``ModuleResult.plot`` (which points down).
- No room over 500 lines.
- No room reads another's results by attribute name (``getattr``/``hasattr`` with a literal).
- Every third-party package the library imports is a declared dependency, so ``modgraph demo``
  works after a plain ``pip install`` (no dev extra).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modgraph"

#: Floor of every room: a room may import only rooms on lower floors (docs/architecture.md).
FLOORS = {
    "errors": 0,
    "_validate": 1,
    "_arrays": 1,
    "_autograd": 1,  # walking the autograd graph (constant Jacobians); imports no other room
    "distributed": 1,  # process group and collectives; imports only errors
    "io": 1,
    "options": 2,
    "data": 3,
    "layout": 2,
    "plan": 3,  # imports io (names that cannot round-trip through GraphML)
    "capture": 4,
    "jacobian": 5,
    "moments": 6,
    "basis": 7,
    "graph": 2,
    "interactions": 8,
    "modularity": 3,
    "cluster": 4,
    "result": 9,
    "faithfulness": 9,  # ablations through capture, graphs from interactions
    "ties": 3,
    "_leiden_worker": 1,  # Leiden restarts in worker processes; imports no other room
    "_threads": 1,  # the thread-count warning of a session
    "cache": 1,  # node-layer records kept between passes (cache_mb)
    "_weights": 1,  # the CLI's --weights: state dicts loaded without unpickling
    "pairs": 1,  # the pair form of the elementwise edge kernel; imports no other room
    "sparse_rows": 1,  # the row form's products over active units (rows paired); no other room
    "elementwise": 6,  # the elementwise edge kernel (row form, pair choice): jacobian, ties, pairs,
    # sparse_rows
    "kernels": 7,  # edge kernels: capture, jacobian, ties; InteractionBasis only as a type
    "plot": 10,
    "degeneracy": 7,
    "api": 10,
    "toy": 0,
    "cli": 11,
    "__main__": 12,
    "__init__": 12,
}


def _rooms() -> dict[str, Path]:
    """Room name (the top-level module or subpackage under modgraph) → each of its files."""
    return {p.relative_to(PACKAGE).as_posix(): p for p in sorted(PACKAGE.rglob("*.py"))}


def _room(relative: str) -> str:
    first = relative.split("/")[0]
    return first.removesuffix(".py")


def _module_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported modgraph room) of imports outside functions and ``TYPE_CHECKING``."""
    package = ["modgraph", *path.relative_to(PACKAGE).parent.parts]
    found: list[tuple[int, str]] = []

    def absolute(node: ast.ImportFrom) -> list[str]:
        if node.level == 0:
            return [node.module or ""]
        base = package[: len(package) - node.level + 1]
        if node.module:
            return [".".join([*base, node.module])]
        return [".".join([*base, a.name]) for a in node.names]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = absolute(node)
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "modgraph" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)

    visit(tree_of(path).body)
    return found


def tree_of(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def test_every_room_has_a_floor():
    assert sorted({_room(r) for r in _rooms()}) == sorted(FLOORS)


def test_imports_point_down():
    wrong = []
    for relative, path in _rooms().items():
        room = _room(relative)
        for line, target in _module_level_imports(path):
            if target == room:
                continue  # inside a subpackage
            if FLOORS[target] >= FLOORS[room]:
                wrong.append(
                    f"{relative}:{line}: {room} imports {target} (floor "
                    f"{FLOORS[target]} >= {FLOORS[room]})"
                )
    assert not wrong, "\n".join(wrong)


def test_no_room_is_oversized():
    sizes = {r: len(p.read_text().splitlines()) for r, p in _rooms().items()}
    assert {r: n for r, n in sizes.items() if n > 500} == {}


def test_no_room_reads_results_by_attribute_name():
    pattern = re.compile(r"\b(getattr|hasattr)\(\s*\w+\s*,\s*['\"]")
    hits = [
        f"{r}:{i + 1}: {line.strip()}"
        for r, p in _rooms().items()
        for i, line in enumerate(p.read_text().splitlines())
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)


def _third_party_imports() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "modgraph"}


def test_every_imported_package_is_a_declared_dependency():
    try:
        requires = importlib.metadata.requires("modgraph") or []
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        pytest.skip("modgraph is not installed")
    core = {
        re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r
    }
    for name in list(core):  # a declared meta-package counts for what it requires
        for r in importlib.metadata.requires(name) or []:
            core.add(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower())
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for name in sorted(_third_party_imports()):
        dists = {d.lower() for d in distributions.get(name, [name])}
        if not dists & core:
            missing[name] = sorted(dists)
    assert missing == {}, f"imported but not in [project.dependencies]: {missing}"


def test_every_subpackage_is_packaged():
    """A plain ``pip install`` (not editable) ships every subpackage: the package discovery of
    pyproject.toml matches every folder of modgraph that holds an ``__init__.py``."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [
        ".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")
    ]
    assert len(packages) > 1
    missed = [p for p in packages if not any(fnmatch.fnmatch(p, pattern) for pattern in include)]
    assert missed == []
