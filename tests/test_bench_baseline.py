"""The benchmark baseline must keep computing what modgraph computes, and the bench must run.

``bench/baseline.py`` is the yardstick of modgraph's speed-ups (issue 6): if it drifted from
modgraph's formulas the speed-ups would compare different things. Tiny sizes only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import modgraph
from bench import run as bench_run
from bench.baseline import mlp_sections, run_baseline
from modgraph.toy import mlp

TINY_RATE = bench_run.SIZES["tiny"]["rate"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: tiny ops are much slower with two threads on a busy two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("path", ["shortcut", "autograd"])
def test_baseline_agrees_with_modgraph(path: str) -> None:
    model = bench_run.make_model([12, 16, 14, 5], path)
    x = bench_run.make_data(300, 12, seed=3)
    graph = modgraph.interaction_graph(model, x, batch_size=64, progress=False)
    seq = mlp([12, 16, 14, 5], seed=0)  # the same weights as make_model (seed 0)
    base = run_baseline(x, mlp_sections(seq), batch_size=50)
    assert set(base.seconds) == {"gram", "basis", "edges"}
    for b, m in zip(base.bases, graph.bases.values()):
        assert _gap(b.eigenvalues.numpy(), m.eigenvalues) < 1e-8
    for b, m in zip(base.edges, graph.edges.values()):
        assert _gap(b.numpy(), m) < 1e-8


def test_baseline_features_up_to_sign() -> None:
    seq = mlp([10, 12, 6, 3], seed=2)
    x = bench_run.make_data(200, 10, seed=4)
    bases = modgraph.interaction_basis(seq, x, progress=False)
    base = run_baseline(x, mlp_sections(seq), batch_size=64)
    for b, m in zip(base.bases, bases.values()):
        fb = ((x_l := _layer_input(seq, x, m.layer)) - b.mean) @ b.C
        fm = m.transform(x_l)
        signs = torch.sign((fb * fm).sum(0))
        assert torch.allclose(fb * signs, fm, rtol=1e-8, atol=1e-9 * float(fm.abs().max()))


def _layer_input(seq: torch.nn.Sequential, x: torch.Tensor, layer: str) -> torch.Tensor:
    stop = len(seq) if layer == "output" else int(layer)
    with torch.no_grad():
        for m in list(seq)[:stop]:
            x = m(x)
    return x


def test_stage_flops_by_hand() -> None:
    # one elementwise section 4 -> 3 (k = 2, k' = 3), then a junction 3 -> 2 (k' = 2), N = 10
    flops = bench_run.stage_flops([4, 3, 2], [2, 3, 2], [4, 3, 2], ["elementwise", "junction"], 10)
    fwd = 2 * 10 * (4 * 3 + 3 * 2)
    assert flops["gram"] == fwd + 2 * 10 * (16 + 9 + 4) + 2 * 10 * 9
    # edges: forward of the first section, Γ 2·N·k'·d'·k, features 2·N·d·k, squares 3·N·k'·k,
    # junction 2·k'·d'·d + 2·k'·d·k
    assert flops["edges"] == 2 * 10 * 12 + 2 * 10 * 3 * 3 * 2 + 2 * 10 * 4 * 2 + 3 * 10 * 3 * 2 + (
        2 * 2 * 2 * 3 + 2 * 2 * 3 * 3
    )
    auto = bench_run.stage_flops([4, 3, 2], [2, 3, 2], [4, 3, 2], ["autograd", "junction"], 10)
    assert auto["basis"] - flops["basis"] == pytest.approx(
        2 * 10 * 12 + 2 * 10 * 3 * 3 * 4 + 2 * 10 * 3 * 16 - (2 * 9 * 3 + 2 * 4 * 9 + 2 * 16 * 3)
    )


def test_fit_exponent_and_synthetic_graph() -> None:
    assert bench_run.fit_exponent([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    mats = bench_run.synthetic_matrices(2_000, seed=1)
    above = sum(int((E > 1.0).sum()) for E in mats)
    assert 0.7 * 2_000 < above < 1.3 * 2_000
    assert all(E.shape == mats[0].shape and (E >= 0).all() for E in mats)


def test_bench_jobs_tiny(tmp_path) -> None:
    job = {"kind": "pipeline", "widths": [16, 8, 8, 4], "n": 120, "batch_size": 32,
           "paths": ["shortcut", "autograd"], "baseline": True, "threads": 1, "rate": TINY_RATE}  # fmt: skip
    res = bench_run.execute(job)
    for path in ("shortcut", "autograd", "baseline"):
        stages = res[path]["stages"]
        assert all(stages[s]["seconds"] > 0 and stages[s]["gflop"] > 0 for s in ("gram", "edges"))
    assert all(v["agree_1e-8"] for v in res["baseline"]["vs"].values())
    assert res["shortcut"]["kinds"] == ["elementwise", "elementwise", "junction"]
    assert res["autograd"]["kinds"] == ["autograd", "autograd", "junction"]
    # the kernel variants compute the same E
    kernel = bench_run.execute({"kind": "kernel", "rows": 40, "width": 8, "rate": TINY_RATE})
    assert max(kernel["rel_error"].values()) < 1e-5
    # the entry point, end to end, in process; the graph job through a real subprocess
    out = tmp_path / "bench.json"
    assert (
        bench_run.main(["--size", "tiny", "--in-process", "--only", "scaling", "--out", str(out)])
        == 0
    )
    saved = json.loads(out.read_text())
    assert saved["targets"]["peak_memory_ratio"]["n"] == [100, 200]
    graph = bench_run.run_job(
        {"kind": "graph", "n_edges": 300, "n_restarts": 2, "threads": 1, "rate": TINY_RATE}
    )
    assert graph["n_edges"] > 100 and graph["stages"]["leiden"]["seconds"] > 0
