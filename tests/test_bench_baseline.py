"""The benchmark baseline must keep computing what modgraph computes, and the bench must run.

``bench/baseline.py`` is the yardstick of modgraph's speed-ups (issue 6): if it drifted from
modgraph's formulas the speed-ups would compare different things. Likewise the FLOP counts of
``bench/models.py`` must count what the library (and the baseline) compute, or the "of matmul"
figures mean nothing: they are checked against torch's own FLOP formulas. Tiny sizes only.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import modgraph
from bench import jobs, models, positions, run
from bench.baseline import mlp_sections, run_baseline
from bench.pipeline import run_pipeline
from modgraph import elementwise, kernels
from modgraph.toy import mlp

TINY_RATE = run.SIZES["tiny"]["rate"]


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
    model = models.make_model([12, 16, 14, 5], path)
    x = models.make_data(300, 12, seed=3)
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
    x = models.make_data(200, 10, seed=4)
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


#: In-place products the library uses, counted by the formula of their out-of-place twin.
IN_PLACE = {torch.ops.aten.addmm_: torch.ops.aten.addmm}


class MatmulFlops(TorchDispatchMode):
    """Counts FLOPs with torch's own formulas (``torch.utils.flop_counter``: mm, bmm, addmm,
    ...), forward and backward. ``FlopCounterMode`` itself cannot be used: its module tracker
    fails on ``autograd.grad`` with a leaf module input, as the baseline does."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(IN_PLACE.get(packet, packet))
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


class FlopMeter:
    """A stand-in for ``bench.meter.Meter`` that counts each stage's matmul FLOPs."""

    def __init__(self) -> None:
        self.flops: dict[str, float] = {}

    def start(self) -> None:
        pass

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        with MatmulFlops() as counter:
            yield
        self.flops[stage] = counter.total


@pytest.mark.parametrize(
    ("path", "n"),
    [("shortcut", 300), ("autograd", 300), ("autograd", 15)],  # n=15: the projected Gram (r < d/2)
)
def test_stage_flops_count_what_the_library_computes(path: str, n: int, tmp_path: Path) -> None:
    model = models.make_model([40, 16, 16, 4], path)
    meter = FlopMeter()
    out = run_pipeline(
        model, models.make_data(n, 40, seed=1), batch_size=64, meter=meter, graphml=tmp_path / "g"
    )
    assert out["kinds"] == (
        ["elementwise", "elementwise", "junction"]
        if path == "shortcut"
        else ["autograd_folded", "autograd", "junction"]
    )
    parts = models.stage_flops(out["dims"], out["ks"], out["ranks"], out["kinds"], n, 64)
    for stage in models.NUMERIC_STAGES:
        assert parts[stage]["matmul"] == pytest.approx(meter.flops[stage], rel=1e-12), stage


def test_baseline_flops_count_what_the_baseline_computes() -> None:
    widths, n = [40, 16, 16, 4], 120
    meter = FlopMeter()
    x = models.make_data(n, 40, seed=1)
    base = run_baseline(x, mlp_sections(mlp(widths, seed=0)), batch_size=50, meter=meter)
    dims, ks = widths, [b.C.shape[1] for b in base.bases]
    ranks = [min(n - 1, 40), 16, 16, 4]  # N(0, 1) inputs; ReLU layers of full rank here
    parts = models.baseline_flops(dims, ks, ranks, n)
    for stage in models.NUMERIC_STAGES:
        assert parts[stage]["matmul"] == pytest.approx(meter.flops[stage], rel=1e-12), stage


def test_stage_flops_eigh_and_elementwise_by_hand() -> None:
    # one elementwise section 4 -> 3 (k = 2, k' = 3), then a junction 3 -> 2 (k' = 2), N = 10
    dims, ks, ranks = [4, 3, 2], [2, 3, 2], [4, 3, 2]
    parts = models.stage_flops(dims, ks, ranks, ["elementwise", "junction"], 10, batch_size=4)
    eigh = models.eigh_flops
    assert parts["basis"]["eigh"] == eigh(2) + eigh(4) + eigh(4) + eigh(3) + eigh(3)
    # the pair form (2·6·2·(10 + 3) = 312 FLOPs < the row form's 2·10·3·3·2 = 360): the slope
    # products s_u s_v (2·N·p, p = 6 pairs), then P_u P_v and Q_u Q_v T (3·p·(k' + k))
    assert parts["edges"]["elementwise"] == 2 * 10 * 6 + 3 * 6 * (3 + 2)
    # as filed, the row form: P ∘ s (N·k'·d'), then Γ², ∘ f², Σ (3·N·k'·k); W a + b again
    # (2·N·d·d'); no data pass at a junction
    filed = models.stage_flops(dims, ks, ranks, ["elementwise", "junction"], 10, 4, as_filed=True)
    assert filed["edges"]["elementwise"] == 10 * 3 * 3 + 3 * 10 * 3 * 2
    pairs_matmul = 2 * 10 * 2 * 6 + 2 * 3 * 6 * 2 + 2 * 3 * 4 * 2  # Σ f̂² s s, contraction, Q
    rows_matmul = 2 * 10 * 4 * 3 + 3 * 2 * 3 * 4 * 2 + 2 * 10 * 3 * 3 * 2  # W a + b, Q per batch, Γ
    assert filed["edges"]["matmul"] - parts["edges"]["matmul"] == rows_matmul - pairs_matmul
    # the Gram of a 300-wide layer: block rows [0, 150) and [150, 300) of the upper triangle
    assert models.gram_flops(10, 300) == 2 * 10 * (150 * 300 + 150 * 150)
    assert models.gram_flops(10, 255) == 2 * 10 * 255**2
    assert parts["gram"]["elementwise"] == parts["basis"]["elementwise"] == 0
    assert models.totals(parts) == {s: sum(p.values()) for s, p in parts.items()}


def test_fit_exponent_and_synthetic_graph() -> None:
    assert run.fit_exponent([1, 2, 4], [3, 12, 48]) == pytest.approx(2.0)
    mats = jobs.synthetic_matrices(2_000, seed=1)
    above = sum(int((E > 1.0).sum()) for E in mats)
    assert 0.7 * 2_000 < above < 1.3 * 2_000
    assert all(E.shape == mats[0].shape and (E >= 0).all() for E in mats)


@pytest.mark.slow
def test_bench_jobs_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"kind": "pipeline", "widths": [16, 8, 8, 4], "n": 120, "batch_size": 32,
           "paths": ["shortcut", "autograd"], "baseline": True, "threads": 1, "rate": TINY_RATE}  # fmt: skip
    res = jobs.execute(job)
    for path in ("shortcut", "autograd", "baseline"):
        stages = res[path]["stages"]
        assert all(stages[s]["seconds"] > 0 and stages[s]["gflop"] > 0 for s in ("gram", "edges"))
    assert all(v["agree_1e-8"] for v in res["baseline"]["vs"].values())
    assert res["shortcut"]["kinds"] == ["elementwise", "elementwise", "junction"]
    assert res["autograd"]["kinds"] == ["autograd_folded", "autograd", "junction"]
    # the kernel's "library" row calls the library's edge kernel itself; the experiments agree
    calls = []
    library_kernel = elementwise.elementwise_edges

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(args)
        return library_kernel(*args, **kwargs)

    monkeypatch.setattr(elementwise, "elementwise_edges", counted)
    small = {"rows": 40, "width": 8, "input_dim": 12, "batch_size": 16, "rate": TINY_RATE}
    kernel = jobs.execute({"kind": "kernel", **small})
    assert len(calls) == 2 * 3  # warm-up and timed run, 3 batches of 16 rows each
    assert set(kernel["seconds"]) == set(jobs.KERNEL_VARIANTS)
    assert max(kernel["rel_error"].values()) < 1e-5
    # the entry point, end to end, in process; the graph job through a real subprocess
    out = tmp_path / "bench.json"
    assert run.main(["--size", "tiny", "--in-process", "--only", "scaling", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["targets"]["peak_memory_ratio"]["n"] == [100, 200]
    graph = jobs.run_job(
        {"kind": "graph", "n_edges": 300, "n_restarts": 2, "threads": 1, "rate": TINY_RATE}
    )
    assert graph["n_edges"] > 100 and graph["stages"]["leiden"]["seconds"] > 0


# --------------------------------------------------------------------------------------------
# Node layers with positions (issue 13): the transformer and CNN rows
# --------------------------------------------------------------------------------------------

POSITION_SPECS = {  # the tiny sizes of bench.run
    name: {"model": name, **run.SIZES["tiny"][name]} for name in ("transformer", "cnn")
}


@pytest.mark.parametrize("n_sources", [None, 3])
@pytest.mark.parametrize(
    ("name", "n"),
    [("transformer", 24), ("cnn", 40), ("transformer", 2)],  # n=2: the projected Gram (r < d/2)
)
@pytest.mark.filterwarnings("ignore:only .* data points")
def test_positions_flops_count_what_the_library_computes(
    name: str, n: int, n_sources: int | None, tmp_path: Path
) -> None:
    model, x = positions.make_positions_model({**POSITION_SPECS[name], "n": n})
    meter = FlopMeter()
    out = run_pipeline(model, x, batch_size=16, meter=meter, graphml=tmp_path / "g",
                       layers=type(model).LAYERS, n_sources=n_sources)  # fmt: skip
    assert out["kinds"] == ["autograd", "autograd", "junction"]
    P = out["positions"]
    assert P == ([4, 4, 4, 4] if name == "transformer" else [16, 16, 1, 1])
    if n == 2:
        assert 2 * out["ranks"][0] < out["dims"][0]
    sections = model.section_flops(P[0])  # type: ignore[operator]
    parts = positions.positions_stage_flops(
        out["dims"],
        out["ks"],
        out["ranks"],
        out["kinds"],
        P,
        sections,
        n,
        16,
        n_sources,
        model.AFFINE,  # type: ignore[attr-defined]
    )
    for stage in models.NUMERIC_STAGES:
        assert parts[stage]["matmul"] == pytest.approx(meter.flops[stage], rel=1e-12), stage


@pytest.mark.slow
def test_positions_jobs_tiny() -> None:
    for name, spec in POSITION_SPECS.items():
        res = jobs.execute({"kind": "positions", "spec": spec, "n_sources": 3, "batch_size": 16,
                            "threads": 1, "rate": TINY_RATE})  # fmt: skip
        res = json.loads(json.dumps(res))  # the JSON rows, as bench.run writes them
        for path in ("exact", "random"):
            stages = res[path]["stages"]
            for s in models.NUMERIC_STAGES:
                assert stages[s]["seconds"] > 0 and stages[s]["gflop"] > 0, (name, path, s)
                assert 0 < stages[s]["frac_matmul"] < 1, (name, path, s)
            assert {"graph", "leiden", "graphml"} <= set(stages)
        assert res["random"]["n_sources"] == 3 and res["exact"]["n_sources"] is None
        assert set(res["vs"]["speedup"]) == set(models.NUMERIC_STAGES)
        text = run.report_positions(res)
        assert "R=3" in text and "exact" in text


# --------------------------------------------------------------------------------------------
# Speed of issue 16: the speed job at tiny sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:only .* data points")
def test_speed_job_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import speed

    sizes = {**run.SIZES["tiny"]["speed"], "random_sources": run.SIZES["tiny"]["random_sources"]}
    for name in ("transformer", "cnn"):
        sizes[name] = {**run.SIZES["tiny"][name], "n": sizes[f"{name}_n"]}
    # the kernel's "before" row switches the library's setting back, and restores it after
    seen = []
    library_kernel = kernels.row_edges

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(elementwise.SPARSE_MIN_WIDTH)
        return library_kernel(*args, **kwargs)

    monkeypatch.setattr(kernels, "row_edges", spy)
    res = jobs.execute({"kind": "speed", "sizes": sizes, "batch_size": 64, "threads": 1,
                        "rate": TINY_RATE})  # fmt: skip
    res = json.loads(json.dumps(res))  # the JSON rows, as bench.run writes them
    assert {10**9, elementwise.SPARSE_MIN_WIDTH} <= set(
        seen
    ) and elementwise.SPARSE_MIN_WIDTH < 10**9
    assert kernels._constant_without_positions is not speed._never_constant
    for k in res["kernel"]:
        assert all(r["seconds"] > 0 for r in k["rows"].values())
        assert k["rows"]["library"]["rel_error"] < 1e-12
        assert 0 < k["rows"]["float32"]["rel_error"] < 1e-5
    for label in speed.RESIDUAL_VARIANTS:
        r = res["residual"][label]
        assert r["n_constant"] == 2 and r["before_s"] > 0 and r["library_s"] > 0
        assert r["rel_diff"] < 1e-10
    assert res["residual"]["nn.ReLU"]["kinds"].count("elementwise") == 2
    assert res["residual"]["torch.relu"]["kinds"].count("elementwise") == 0
    for p in res["precision"]:
        assert p["float64_s"] > 0 and p["float32_s"] > 0 and p["n_elementwise"] == 0
        assert p["rel_error"] == 0  # no elementwise section: float32 changes nothing
    s = res["samples"]
    assert s["full_s"] > 0 and s["sub_s"] > 0 and s["median_stderr_over_E"] > 0
    m = res["mnist"]
    assert m["kinds"] == ["elementwise", "elementwise", "junction"]
    assert all(m["stages"][st]["x_floor"] > 0 for st in models.NUMERIC_STAGES)
    assert m["find_modules_s"] > 0 and m["find_modules_x_floor"] > 0
    text = speed.report_speed(res)
    assert "speed 1." in text and "speed 5." in text and "find_modules" in text
