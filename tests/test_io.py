"""Every file write is atomic: an injected failure mid-write keeps the old file, leaves no
temporary file; finished files get the usual permissions."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from matplotlib.figure import Figure

from modgraph import InteractionGraph, ModuleResult, leiden_modules
from modgraph.io import atomic_open, write_json
from modgraph.plot import plot_modules


def test_json_failure_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"old": 1})

    def half_then_fail(obj, f, **kwargs):
        f.write('{"new": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"new": 2})
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_plot_failure_mid_write_keeps_old_file(tmp_path, monkeypatch):
    graph = InteractionGraph.from_matrices([np.eye(3) * 2.0 + 0.01], epsilon=0.5)
    result = ModuleResult(graph, leiden_modules(graph))
    path = tmp_path / "m.png"
    plot_modules(result.interaction_graph, result.partition, path=path)
    good = path.read_bytes()

    def broken(self, fname, **kwargs):
        fname.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plot_modules(result.interaction_graph, result.partition, path=path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.png"]


def test_written_files_have_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "f.txt") as f:
            f.write("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
