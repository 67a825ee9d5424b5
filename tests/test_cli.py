"""The command line: demo, run, report; weights are never unpickled."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

import modgraph
from modgraph import find_modules
from modgraph._weights import load_weights as _load_weights
from modgraph.cli import _build_parser, main

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))

    def data():
        g = torch.Generator().manual_seed(0)
        return torch.randn(400, 6, generator=g)

    CONST = 3

    def broken():
        raise RuntimeError("factory exploded")

    def not_a_module():
        return [1, 2]

    def broken_data():
        raise KeyError("no such split")
    """
)


@pytest.fixture
def user(tmp_path, monkeypatch, request):
    name = f"usermod_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    exec(compile(USER_MODULE, name, "exec"), namespace := {})
    model = namespace["make"]()
    return name, model, tmp_path


def test_demo_writes_graphml_json_png(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="modgraph")
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "modules over" in text and "parity outputs" in text
    # the files written are reported once, on stdout (not printed and logged again)
    assert text.count("modules.graphml") == 1
    assert "modules.graphml" not in caplog.text
    G = nx.read_graphml(out / "modules.graphml")
    assert all("module" in d for _, d in G.nodes(data=True))
    summary = json.loads((out / "modules.json").read_text())
    assert summary["membership"] == {n: d["module"] for n, d in G.nodes(data=True)}
    assert (out / "modules.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fmt", ["pt", "npz"])
def test_run_on_a_user_model_with_weights(user, fmt, capsys):
    name, model, tmp = user
    if fmt == "pt":
        torch.save(model.state_dict(), tmp / "w.pt")
    else:
        np.savez(tmp / "w.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    out = tmp / "out"
    rc = main(
        ["run", "--model", f"{name}:make", "--weights", str(tmp / f"w.{fmt}"),
         "--data", f"{name}:data", "--out", str(out), "--seed", "3", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    assert "modules over" in capsys.readouterr().out
    G = nx.read_graphml(out / "modules.graphml")
    assert G.graph["seed"] == 3
    # the weights were used: the output layer's importance is the variance of these outputs
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        var = model(x).double().var(0, unbiased=False).numpy()
    got = [G.nodes[f"output:{i}"]["importance"] for i in range(3)]
    np.testing.assert_allclose(got, var, rtol=1e-5)


@pytest.mark.parametrize("share", [None, 0.0], ids=["default", "every_module"])
def test_run_with_n_modules_matches_the_python_api(user, share, capsys):
    name, model, tmp = user
    torch.save(model.state_dict(), tmp / "w.pt")
    extra = [] if share is None else ["--min-module-share", str(share)]
    rc = main(
        ["run", "--model", f"{name}:make", "--weights", "w.pt", "--data", f"{name}:data",
         "--out", "out", "--n-modules", "2", "--quiet", *extra]
    )  # fmt: skip
    assert rc == 0
    assert "\n2 modules over" in "\n" + capsys.readouterr().out
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    expected = find_modules(model, x, n_modules=2, min_module_share=share, seed=0, progress=False)
    G = nx.read_graphml(tmp / "out" / "modules.graphml")
    assert {n: d["module"] for n, d in G.nodes(data=True)} == expected.module_of
    assert G.graph["resolution"] == pytest.approx(expected.resolution, rel=1e-12)


@pytest.mark.parametrize(
    ("flags", "keywords"),
    [
        (["--precision", "float32", "--edge-samples", "300", "--cache-mb", "8"],
         {"precision": "float32", "edge_samples": 300, "cache_mb": 8.0}),
        (["--ties", "rotate"], {"ties": "rotate"}),
        (["--epsilon", "ablation", "--loss-tolerance", "0.02"],
         {"epsilon": "ablation", "loss_tolerance": 0.02}),
    ],
    ids=["precision-samples-cache", "ties", "epsilon-ablation"],
)  # fmt: skip
def test_run_passes_the_analysis_options_on(user, flags, keywords, capsys):
    """Each option of ``find_modules`` the CLI offers gives the Python API's modules."""
    name, model, tmp = user
    torch.save(model.state_dict(), tmp / "w.pt")
    rc = main(
        ["run", "--model", f"{name}:make", "--weights", "w.pt", "--data", f"{name}:data",
         "--out", "out", "--quiet", *flags]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
    expected = find_modules(model, x, seed=0, progress=False, **keywords)
    G = nx.read_graphml(tmp / "out" / "modules.graphml")
    assert {n: d["module"] for n, d in G.nodes(data=True)} == expected.module_of


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--epsilon", "big", "must be a number > 0 or 'ablation', got 'big'"),
        ("--ties", "twist", "invalid choice: 'twist'"),
        ("--precision", "float16", "invalid choice: 'float16'"),
        ("--edge-samples", "0", "must be an integer >= 1, got '0'"),
    ],
)
def test_bad_analysis_options_end_in_one_clear_line(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", "m:f", "--data", "m:g", "--out", "o", flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_mismatched_weights_list_the_expected_keys(user, capsys):
    name, _, tmp = user
    torch.save({"0.weight": torch.zeros(10, 6), "extra": torch.zeros(1)}, tmp / "w.pt")
    rc = main(["run", "--model", f"{name}:make", "--weights", "w.pt", "--data", f"{name}:data",
               "--out", "o", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "Missing keys: ['0.bias', '2.bias'" in err and "unexpected keys: ['extra']" in err
    assert "Expected keys and shapes" in err and "'4.weight': (3, 8)" in err


class Payload:
    """An object torch.load(weights_only=True) must refuse to unpickle."""


def test_pickled_objects_are_refused(user, capsys):
    name, _, tmp = user
    torch.save({"0.weight": Payload()}, tmp / "evil.pt")
    rc = main(["run", "--model", f"{name}:make", "--weights", "evil.pt", "--data", f"{name}:data",
               "--out", "o", "--quiet"])  # fmt: skip
    assert rc == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert not (tmp / "o").exists()


def test_missing_weights_file_and_bad_specs(user, capsys):
    name, _, _ = user
    assert main(["run", "--model", f"{name}:make", "--weights", "nope.pt", "--data",
                 f"{name}:data", "--out", "o", "--quiet"]) == 2  # fmt: skip
    assert "no file at 'nope.pt'" in capsys.readouterr().err
    assert main(["run", "--model", "nocolon", "--data", f"{name}:data", "--out", "o"]) == 2
    assert "PKG.MODULE:NAME" in capsys.readouterr().err
    assert main(["run", "--model", f"{name}:absent", "--data", f"{name}:data", "--out", "o"]) == 2
    assert "has no attribute 'absent'" in capsys.readouterr().err


def test_report_prints_the_degeneracy_table(user, capsys):
    name, _, tmp = user
    rc = main(["report", "--model", f"{name}:make", "--data", f"{name}:data", "--out", "rep",
               "--quiet"])  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "parameters" in text.lower()
    report = json.loads((tmp / "rep" / "degeneracy.json").read_text())
    assert report  # JSON-serialisable report written


def test_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "modgraph", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for command in ("demo", "run", "report"):
        assert command in proc.stdout


# --- robustness, round two (issue 12) ---------------------------------------------------------


def one_line_error(capsys, command: str = "run") -> str:
    """The CLI's error: exactly one line on stderr, no traceback, nothing on stdout."""
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"modgraph {command}: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and captured.out == ""
    return err


class _Marker:
    """Unpickling this creates the file ``path``: proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _npz_bytes(tmp, **arrays) -> bytes:
    np.savez(tmp / "_tmp.npz", **arrays)
    data = (tmp / "_tmp.npz").read_bytes()
    (tmp / "_tmp.npz").unlink()
    return data


def _hostile_weights(kind: str, tmp, model) -> tuple[str, list[str]]:
    """Write a hostile weights file; return its name and what the error must say."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    npz_hint = "numpy.savez("
    pt_hint = "torch.save(model.state_dict()"
    if kind == "npz_truncated":
        data = _npz_bytes(tmp, **state)
        (tmp / "w.npz").write_bytes(data[: len(data) // 2])
        return "w.npz", ["damaged", npz_hint]
    if kind == "npz_corrupt_member":  # the archive opens, a member's bytes are wrong (CRC)
        data = bytearray(_npz_bytes(tmp, **state))
        at = data.index(b"\x93NUMPY") + 200
        data[at : at + 16] = bytes(16)
        (tmp / "w.npz").write_bytes(bytes(data))
        return "w.npz", ["damaged", npz_hint]
    if kind == "npz_pickle":
        (tmp / "w.npz").write_bytes(pickle.dumps({"0.weight": _Marker(tmp / "unpickled")}))
        return "w.npz", ["pickle", "never unpickles", npz_hint]
    if kind == "npz_object_array":
        arr = np.array([_Marker(tmp / "unpickled"), 1], dtype=object)
        (tmp / "w.npz").write_bytes(_npz_bytes(tmp, **{**state, "0.weight": arr}))
        return "w.npz", ["object array '0.weight'", "never unpickles", npz_hint]
    if kind == "npz_not_a_zip":
        (tmp / "w.npz").write_text("hello, I am not a zip archive\n" * 20)
        return "w.npz", ["not an .npz archive", npz_hint]
    if kind == "npz_empty":
        (tmp / "w.npz").write_bytes(b"")
        return "w.npz", ["is empty", npz_hint]
    if kind == "npz_single_npy":
        np.save(tmp / "w.npy", state["0.weight"])
        (tmp / "w.npy").rename(tmp / "w.npz")
        return "w.npz", ["single .npy array", npz_hint]
    if kind == "npz_strings":
        (tmp / "w.npz").write_bytes(_npz_bytes(tmp, **{**state, "0.bias": np.array(["a", "b"])}))
        return "w.npz", ["'0.bias'", "not numeric", npz_hint]
    if kind == "pt_truncated":
        torch.save(model.state_dict(), tmp / "w.pt")
        data = (tmp / "w.pt").read_bytes()
        (tmp / "w.pt").write_bytes(data[: len(data) // 2])
        return "w.pt", ["weights_only=True", pt_hint]
    if kind == "pt_text":
        (tmp / "w.pt").write_text("not a checkpoint\n")
        return "w.pt", ["weights_only=True", pt_hint]
    if kind == "pt_empty":
        (tmp / "w.pt").write_bytes(b"")
        return "w.pt", ["is empty", pt_hint]
    if kind == "pt_non_tensor_value":
        torch.save({**model.state_dict(), "0.bias": 3}, tmp / "w.pt")
        return "w.pt", ["'0.bias'", "int, not a tensor", pt_hint]
    if kind == "pt_non_str_key":
        torch.save({**model.state_dict(), 7: torch.zeros(1)}, tmp / "w.pt")
        return "w.pt", ["key 7", "not a string", pt_hint]
    if kind == "pt_npz_inside":
        (tmp / "w.pt").write_bytes(_npz_bytes(tmp, **state))
        return "w.pt", ["an .npz archive", "rename it"]
    raise AssertionError(kind)


HOSTILE_WEIGHTS = [
    "npz_truncated", "npz_corrupt_member", "npz_pickle", "npz_object_array", "npz_not_a_zip",
    "npz_empty", "npz_single_npy", "npz_strings", "pt_truncated", "pt_text", "pt_empty",
    "pt_non_tensor_value", "pt_non_str_key", "pt_npz_inside",
]  # fmt: skip


@pytest.mark.parametrize("kind", HOSTILE_WEIGHTS)
def test_hostile_weights_files_end_in_one_clear_line(user, kind, capsys):
    name, model, tmp = user
    file, expected = _hostile_weights(kind, tmp, model)
    rc = main(["run", "--model", f"{name}:make", "--weights", file, "--data", f"{name}:data",
               "--out", "o", "--quiet"])  # fmt: skip
    assert rc == 2
    err = one_line_error(capsys)
    assert f"--weights: {file!r}" in err
    for piece in expected:
        assert piece in err, (piece, err)
    assert not (tmp / "unpickled").exists()  # nothing was ever unpickled
    assert not (tmp / "o").exists()


def test_npz_weights_in_any_byte_order_and_suffix_case_load_exactly(user):
    _, model, tmp = user
    state = {k: v.numpy().astype(">f8") for k, v in model.state_dict().items()}
    with open(tmp / "W.NPZ", "wb") as f:  # a path not ending in .npz would gain one
        np.savez(f, **state)
    fresh = torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 8), torch.nn.ReLU(),
        torch.nn.Linear(8, 3),
    )  # fmt: skip
    _load_weights(fresh, tmp / "W.NPZ")
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def _bad_spec_cases(name: str) -> list[tuple[list[str], list[str]]]:
    """(the arguments after `run`, what the one-line error must say)"""
    data, make = ["--data", f"{name}:data"], ["--model", f"{name}:make"]
    return [
        (["--model", ":make", *data], ["--model", "':make'", "PKG.MODULE:NAME"]),
        (["--model", f"{name}:", *data], ["--model", f"'{name}:'", "PKG.MODULE:NAME"]),
        (["--model", f"{name}:make:x", *data], ["--model", "PKG.MODULE:NAME"]),
        (["--model", f"{name}..x:make", *data], ["--model", "PKG.MODULE:NAME"]),
        (["--model", f".{name}:make", *data], ["--model", "PKG.MODULE:NAME"]),
        (["--model", "boom_mod:make", *data],
         ["--model", "importing module 'boom_mod' raised RuntimeError: import exploded",
          "boom_mod.py:2"]),
        (["--model", "exit_mod:make", *data], ["--model", "'exit_mod'", "SystemExit: 3"]),
        (["--model", "syntax_mod:make", *data], ["--model", "'syntax_mod'", "SyntaxError"]),
        (["--model", "no_such_module_xyz:make", *data],
         ["--model", "cannot find module 'no_such_module_xyz'"]),
        (["--model", f"{name}:CONST", *data], ["--model", "'CONST'", "int, not callable"]),
        (["--model", f"{name}:broken", *data],
         ["--model", "broken() raised RuntimeError: factory exploded", f"{name}.py:"]),
        (["--model", f"{name}:not_a_module", *data],
         ["--model", "returned a list, not a torch.nn.Module"]),
        ([*make, "--data", f"{name}:broken_data"],
         ["--data", "broken_data() raised KeyError: 'no such split'"]),
        ([*make, "--data", f"{name}:nothing"], ["--data", "has no attribute 'nothing'"]),
    ]  # fmt: skip


@pytest.mark.parametrize("case", range(14))
def test_malformed_specs_end_in_one_clear_line(user, case, capsys):
    name, _, tmp = user
    (tmp / "boom_mod.py").write_text("x = 1\nraise RuntimeError('import exploded')\n")
    (tmp / "exit_mod.py").write_text("import sys\nsys.exit(3)\n")
    (tmp / "syntax_mod.py").write_text("def make(:\n")
    cases = _bad_spec_cases(name)
    assert len(cases) == 14
    argv, expected = cases[case]
    assert main(["run", *argv, "--out", "o", "--quiet"]) == 2
    err = one_line_error(capsys)
    for piece in expected:
        assert piece in err, (piece, err)
    assert not (tmp / "o").exists()


@pytest.fixture
def no_computation(monkeypatch):
    """Make every computation the CLI could start fail the test if it is reached."""

    def forbidden(*args, **kwargs):
        raise AssertionError("computation started before --out was checked")

    import modgraph.api
    import modgraph.degeneracy
    import modgraph.toy

    monkeypatch.setattr(modgraph.api, "find_modules", forbidden)
    monkeypatch.setattr(modgraph.degeneracy, "degeneracy_report", forbidden)
    monkeypatch.setattr(modgraph.toy, "train_mlp", forbidden)


@pytest.mark.parametrize("command", ["demo", "run", "report"])
@pytest.mark.parametrize("out", ["taken", "taken/sub"], ids=["file", "below_a_file"])
def test_out_that_is_a_file_fails_before_computing(user, command, out, no_computation, capsys):
    name, _, tmp = user
    (tmp / "taken").write_text("keep me")
    user_args = ["--model", f"{name}:make", "--data", f"{name}:data"]
    argv = [command, *([] if command == "demo" else user_args), "--out", out, "--quiet"]
    assert main(argv) == 2
    err = one_line_error(capsys, command)
    assert f"--out {out!r}" in err and "'taken' is a file" in err
    assert (tmp / "taken").read_text() == "keep me"


def test_an_output_name_taken_by_a_folder_fails_before_computing(user, no_computation, capsys):
    name, _, tmp = user
    (tmp / "o" / "modules.json").mkdir(parents=True)
    assert main(["run", "--model", f"{name}:make", "--data", f"{name}:data", "--out", "o"]) == 2
    err = one_line_error(capsys)
    assert f"--out 'o': {str(Path('o') / 'modules.json')!r} is a folder" in err


def test_out_that_cannot_be_written_fails_before_computing_and_leaves_nothing(
    user, no_computation, monkeypatch, capsys
):
    import modgraph.cli

    name, _, tmp = user

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(modgraph.cli.tempfile, "NamedTemporaryFile", refuse)
    argv = ["run", "--model", f"{name}:make", "--data", f"{name}:data", "--out", "new/deeper"]
    assert main(argv) == 2
    assert "--out 'new/deeper': cannot write there (Permission denied)." in one_line_error(capsys)
    assert not (tmp / "new").exists()  # the folders made to check are removed again


def test_a_failed_run_leaves_no_empty_output_folder(user, capsys):
    name, _, tmp = user
    (tmp / "kept").mkdir()
    for out in ("new/deeper", "kept"):
        argv = ["run", "--model", f"{name}:make", "--data", f"{name}:broken_data", "--out", out]
        assert main(argv) == 2
        assert "broken_data() raised KeyError" in one_line_error(capsys)
    assert not (tmp / "new").exists() and (tmp / "kept").is_dir()


def test_import_restores_sys_path_exactly(user, monkeypatch):
    name, _, tmp = user
    monkeypatch.setattr(sys, "path", list(sys.path))  # the test's own changes are undone after
    before = list(sys.path)
    assert str(tmp) not in before
    (tmp / "pathmod.py").write_text(
        "import sys\nsys.path.insert(0, '/pathmod-added')\n"
        "from torch import nn\ndef make():\n    return nn.Linear(6, 3)\n"
    )
    main(["run", "--model", "pathmod:make", "--data", f"{name}:broken_data", "--out", "o"])
    # the module's own change stays (as after any import); the folder the CLI added is gone
    assert sys.path == ["/pathmod-added", *before]


@pytest.fixture
def threads_3():
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(previous)


def _spy_threads(monkeypatch, target, attr, seen, *, stop: bool):
    real = getattr(target, attr)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if stop:
            raise modgraph.ModgraphValueError("stopped by the test")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, spy)


@pytest.mark.parametrize("threads", [None, "1", "2"])
def test_run_threads_option_sets_and_restores_torch_threads(user, threads, threads_3, monkeypatch):
    import modgraph.api

    name, _, _ = user
    seen: list[int] = []
    _spy_threads(monkeypatch, modgraph.api, "find_modules", seen, stop=False)
    extra = [] if threads is None else ["--threads", threads]
    rc = main(["run", "--model", f"{name}:make", "--data", f"{name}:data", "--out", "o",
               "--quiet", *extra])  # fmt: skip
    assert rc == 0
    assert seen == [3 if threads is None else int(threads)]  # run keeps torch's default
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("threads", [None, "2"])
def test_demo_uses_one_thread_unless_told(tmp_path, threads, threads_3, monkeypatch, capsys):
    import modgraph.toy

    seen: list[int] = []
    _spy_threads(monkeypatch, modgraph.toy, "train_mlp", seen, stop=True)
    extra = [] if threads is None else ["--threads", threads]
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), "--quiet", *extra]) == 2
    assert seen == [1 if threads is None else 2]
    assert torch.get_num_threads() == 3
    assert "stopped by the test" in one_line_error(capsys, "demo")


def test_report_threads_option(user, threads_3, monkeypatch, capsys):
    import modgraph.degeneracy

    name, _, _ = user
    seen: list[int] = []
    _spy_threads(monkeypatch, modgraph.degeneracy, "degeneracy_report", seen, stop=True)
    rc = main(["report", "--model", f"{name}:make", "--data", f"{name}:data", "--threads", "1"])
    assert rc == 2 and seen == [1] and torch.get_num_threads() == 3


@pytest.mark.parametrize("command", ["demo", "run", "report"])
@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_threads_must_be_a_positive_integer(command, value, capsys):
    argv = [command, "--threads", value]
    if command != "demo":
        argv += ["--model", "m:f", "--data", "m:g", "--out", "o"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --threads: must be an integer >= 1, got {value!r}" in err


def _library_calls(name: str) -> list[str]:
    """Calls of ``name`` (a function or method name) in the library, outside the CLI."""
    package = Path(modgraph.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name in {"cli.py", "__main__.py"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if called == name:
                    found.append(f"{path.relative_to(package)}:{node.lineno}")
    return found


def test_only_the_cli_sets_threads_or_prints():
    for name in ("set_num_threads", "set_num_interop_threads", "print"):
        assert _library_calls(name) == [], name


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"modgraph {modgraph.__version__}\n"


def test_every_option_of_every_command_has_help():
    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    yield f"{path} {choice.dest}", choice
                for command, sub in action.choices.items():
                    yield from walk(sub, f"{path} {command}")

    actions = list(walk(_build_parser(), "modgraph"))
    assert len(actions) > 30
    missing = [where for where, action in actions if not (action.help or "").strip()]
    assert missing == []
    helps = {where for where, _ in actions}
    for command in ("demo", "run", "report"):
        assert f"modgraph {command} --threads" in helps and f"modgraph {command} --out" in helps
