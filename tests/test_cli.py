"""The command line: demo, run, report; weights are never unpickled."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import networkx as nx
import numpy as np
import pytest
import torch

from modgraph import find_modules
from modgraph.cli import main

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))

    def data():
        g = torch.Generator().manual_seed(0)
        return torch.randn(400, 6, generator=g)
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


def test_demo_writes_graphml_json_png(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "modules over" in text and "parity outputs" in text
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
