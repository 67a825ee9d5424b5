"""The scripts in examples/ run (quick settings), write their figures and report sensible numbers."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name: str):
    """Import ``examples/<name>.py`` (examples/ is not a package)."""
    path = EXAMPLES / f"{name}.py"
    if str(EXAMPLES) not in sys.path:  # as when a script runs: its folder first (for _cli)
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"modgraph_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(name: str, out: Path, capsys) -> str:
    """Run an example's ``main`` with ``--quick``; return what it printed."""
    code = load(name).main(["--quick", "--out", str(out), "--seed", "0"])
    text = capsys.readouterr().out
    assert code == 0, text
    return text


def assert_pngs(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        assert path.is_file(), f"{path} was not written"
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), path


def number(pattern: str, text: str) -> float:
    found = re.findall(pattern, text)
    assert found, f"no {pattern!r} in:\n{text}"
    return float(found[0])


def test_two_tasks(tmp_path, capsys):
    text = run("two_tasks", tmp_path, capsys)
    assert_pngs(tmp_path, ["modules.png", "modules_res0.5.png", "modules_2.png", "module_map.png"])
    # one report per resolution and one for n_modules=2: no module mixes the tasks, and the
    # outputs of the two tasks are in different modules
    homogeneity = [
        float(v) for v in re.findall(r"homogeneity of tasks within modules: ([\d.]+)", text)
    ]
    assert len(homogeneity) == 3, text
    assert min(homogeneity) >= 0.9, text
    assert text.count("class and parity outputs in different modules: yes") == 3, text
    assert "=== n_modules=2" in text and "\n2 modules over" in text, text


def test_digits(tmp_path, capsys):
    text = run("digits", tmp_path, capsys)
    assert_pngs(tmp_path, ["modules.png", "spectra.png"])
    assert number(r"held-out test accuracy ([\d.]+)", text) >= 0.9, text
    assert number(r"(\d+) modules over", text) >= 1
    assert "Degeneracy report" in text


def test_invariance(tmp_path, capsys):
    text = run("invariance", tmp_path, capsys)
    assert_pngs(tmp_path, ["invariance.png"])
    assert number(r"max \|output difference\| between the two models: (\S+)", text) < 1e-9
    assert number(r"adjusted Rand index between the two partitions.*: ([\d.]+)", text) == 1.0
    scores = re.findall(r"(\d+) modules, Q_deg = ([\d.]+)", text)
    assert len(scores) == 2 and scores[0] == scores[1], text
    assert int(scores[0][0]) == 2  # the two planted blocks


def test_mnist(tmp_path, capsys):
    text = run("mnist", tmp_path, capsys)
    assert_pngs(tmp_path, ["modules.png", "interactions.png"])
    # the pretrained weights loaded correctly: far above chance (0.1) on the stand-in digits
    assert number(r"\(a stand-in for MNIST\): ([\d.]+)", text) > 0.3, text
    assert number(r"(\d+) modules over", text) >= 1


@pytest.mark.parametrize(
    "name",
    ["two_tasks", "digits", "invariance", "mnist", "cnn", "modular_addition", "faithfulness"],
)
def test_help_and_defaults(name, capsys):
    module = load(name)
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_cnn(tmp_path, capsys):
    text = run("cnn", tmp_path, capsys)
    assert_pngs(tmp_path, ["modules.png", "module_map.png", "features.png", "channels.png"])
    assert number(r"held-out test accuracy ([\d.]+)", text) >= 0.9, text
    assert number(r"(\d+) modules over", text) >= 1, text
    # the convolutions are node layers whose features are channels (1 image channel, 8 of conv1)
    assert re.search(r"conv1: 1/1, conv2: \d/8, fc1: \d+/128", text), text
    assert "channel shares of the modules' conv2 features" in text, text


def test_modular_addition(tmp_path, capsys):
    text = run("modular_addition", tmp_path, capsys)
    assert_pngs(
        tmp_path,
        ["modules.png", "modules_last.png", "module_map.png", "interactions.png", "spectra.png"],
    )
    assert 0 <= number(r"test accuracy ([\d.]+)", text) <= 1, text
    # both analyses (last position, all positions) and the degeneracy report ran
    assert len(re.findall(r"\n\d+ modules over", text)) == 2, text
    assert "Degeneracy report" in text, text
    # the sparsity table at all positions: edges carrying 90% of the weight, per basis
    table = text.split("=== sparsity (all positions)", 1)[1]
    first = re.search(r"resid_pre -> resid_mid\s+(\d+)\s+(\d+)\s+(\d+)", table)
    assert first, text
    counts = [int(c) for c in first.groups()]
    assert all(c > 0 for c in counts), text


@pytest.mark.slow
def test_faithfulness(tmp_path, capsys):
    text = run("faithfulness", tmp_path, capsys)
    assert_pngs(
        tmp_path,
        [
            "two_tasks_features.png",
            "two_tasks_edges.png",
            "mnist_features.png",
            "mnist_edges.png",
            "mnist_accuracy.png",
        ],
    )
    # the interaction basis keeps fewer features than the neurons for the same loss
    for layer in ("0", "layers.1"):
        kept = re.search(
            rf"features of {re.escape(layer)}: interaction (\d+)/\d+.*neuron (\d+)/\d+", text
        )
        assert kept and int(kept.group(1)) < int(kept.group(2)), text
    assert len(re.findall(r"held-out relative loss ([\d.]+)", text)) == 6, text
    assert text.count("edges that carry 50 / 90 / 99 %") == 2, text
