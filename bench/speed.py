"""Speed of the issue-16 changes, as ratios in one run (``python -m bench --only speed``).

Every row labelled ``library`` calls today's public code (``modgraph.interaction_graph``,
``modgraph.find_modules``) with its defaults; a ``before`` row calls the same public function
with one private setting of the library switched back (:func:`patched`, as ``bench/leiden.py``
does), so that both rows run in the same process on the same machine state:

1. ``kernel``: the elementwise edge kernel on ``modgraph.toy.mlp([d, w, w, 10])`` with N(0, 1)
   inputs. ``before``: the dense row kernel from before issue 16 (``elementwise.SPARSE_MIN_WIDTH =
   10**9``, ``P`` scaled per row, no pair form); ``library``: today's default (the pair form
   where it takes fewer FLOPs, else each row's inactive ReLUs skipped from width
   ``SPARSE_MIN_WIDTH``, similar rows paired to share their common units
   (``modgraph.sparse_rows``), and the smaller factor scaled); ``float32``:
   ``precision="float32"``;
   ``row form only (exp.)``: the library without the pair form. The "of f64 matmul" column
   divides the FLOPs of the *dense* Γ GEMM, ``Σ_elementwise 2·N·k'·d'·k``, by the seconds of the
   whole ``interaction_graph`` call (bases given) and by the float64 GEMM rate measured around
   the rows: above 100 % means less work than the dense kernel, not a faster GEMM.
2. ``residual``: a residual MLP (:class:`ResidualMLP`). ``before``:
   ``kernels._constant_without_positions`` returns False (residual-add sections by batched
   autograd over the data); ``library``: their constant Jacobian from one data point.
3. ``precision``: the transformer block and the CNN of the ``positions`` job, ``precision``
   float64 against float32 (it only changes the elementwise kernel).
4. ``samples``: the MNIST MLP, every data point against ``edge_samples=m``, with the error bars.
5. ``mnist``: the MNIST MLP's stages (``bench.pipeline.run_pipeline``) and the public
   ``find_modules``, against the float64 matmul floor (``bench.models.stage_flops`` / rate).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

import modgraph
from modgraph import capture, elementwise, kernels
from modgraph.options import Options
from modgraph.toy import load_mnist_mlp, mlp

from .meter import Meter, format_table, matmul_rate, patched, trim
from .models import NUMERIC_STAGES, make_data, mnist_inputs, section_kinds, stage_flops, totals
from .pipeline import FLOP_KEYS, relative_gap, run_pipeline
from .positions import make_positions_model, model_name

__all__ = ["BEFORE", "PARTS", "ResidualMLP", "patched", "report_speed", "speed_job"]

#: The parts of the job, in the order they run.
PARTS = ("kernel", "residual", "precision", "samples", "mnist")


def _never_constant(sess: Any, section: Any) -> bool:
    return False


def _never_pairs(*args: Any, **kwargs: Any) -> bool:
    return False


def _dense_scaled_gamma(
    P: torch.Tensor, Q: torch.Tensor, s: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """The row kernel before issue 16: ``P`` scaled by each row's slopes, one dense product,
    then the columns scaled by the features."""
    b, (k_next, d_next) = s.shape[0], P.shape
    gamma = ((P[None] * s[:, None, :]).reshape(-1, d_next) @ Q).reshape(b, k_next, -1)
    return gamma * f[:, None, :]


#: Part → the module and private settings of its ``before`` row.
BEFORE: dict[str, tuple[ModuleType, dict[str, Any]]] = {
    "kernel": (
        elementwise,
        {
            "SPARSE_MIN_WIDTH": 10**9,
            "_scaled_gamma_chunk": _dense_scaled_gamma,
            "pair_form_pays": _never_pairs,
        },
    ),
    "residual": (kernels, {"_constant_without_positions": _never_constant}),
}
#: Experiment rows (not the library): row name → the module and private settings.
EXPERIMENTS: dict[str, tuple[ModuleType, dict[str, Any]]] = {
    "row form only (exp.)": (elementwise, {"pair_form_pays": _never_pairs}),
}


def _before(part: str) -> contextlib.AbstractContextManager[None]:
    return patched(*BEFORE[part])


def _timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls of ``fn`` (seconds) and the last result."""
    best, out = math.inf, None
    for _ in range(max(1, repeats)):
        trim()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _graph(model: nn.Module, x: torch.Tensor, bases: Any, batch_size: int, **kw: Any) -> Any:
    """Today's public ``interaction_graph`` in given bases."""
    return modgraph.interaction_graph(model, x, bases, batch_size=batch_size, progress=False, **kw)


def _row(
    part: str, name: str, model: nn.Module, x: torch.Tensor, bases: Any, batch_size: int, **kw: Any
) -> Any:
    """One row of ``part``: ``interaction_graph`` as the library runs it, or with the private
    setting of :data:`BEFORE` switched when ``name == "before"``."""
    if name == "before":
        ctx: contextlib.AbstractContextManager[None] = _before(part)
    elif name in EXPERIMENTS:
        ctx = patched(*EXPERIMENTS[name])
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        return _graph(model, x, bases, batch_size, **kw)


def _edge_gap(a: Any, b: Any) -> float:
    """Largest ``max |E_a − E_b| / max |E_b|`` over the sections of two graphs."""
    return max(relative_gap(a.edges[p], E) for p, E in b.edges.items())


def _plan(
    model: nn.Module, x: torch.Tensor, batch_size: int, layers: Sequence[str] | None = None
) -> dict[str, Any]:
    """Sections, their kinds (``bench.models.section_kinds``), widths, and which non-elementwise
    sections have a constant Jacobian (residual adds: what the ``residual`` rows switch)."""
    options = Options(batch_size=batch_size, progress=False).validated("bench")
    with capture.session(model, x[:16], layers, options) as sess:
        kinds = section_kinds(sess)
        constant = [
            not s.elementwise and kernels._constant_without_positions(sess, s)
            for s in sess.plan.sections
        ]
        return {
            "sections": [list(s.key) for s in sess.plan.sections],
            "kinds": kinds,
            "constant": constant,
            "dims": dict(sess.plan.dims),
        }


def _dense_gemm_flops(plan: dict[str, Any], bases: Any, n: int) -> float:
    """FLOPs of the dense Γ GEMM, ``Σ_elementwise 2·N·k'·d'·k`` (``P diag(s) Q``: (k'·N, d')
    @ (d', k) per section)."""
    flops = 0.0
    for (src, dst), kind in zip(plan["sections"], plan["kinds"]):
        if kind == "elementwise":
            flops += 2.0 * n * bases[dst].k * plan["dims"][dst] * bases[src].k
    return flops


def _gemm_shapes(plan: dict[str, Any], bases: Any) -> list[list[int]]:
    """``[k', d', k]`` of every elementwise section."""
    return [
        [bases[dst].k, plan["dims"][dst], bases[src].k]
        for (src, dst), kind in zip(plan["sections"], plan["kinds"])
        if kind == "elementwise"
    ]


def _active_share(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Share of active units (output > 0) after each ``nn.ReLU`` call of ``model`` on ``x``."""
    shares: list[float] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shares.append(float((out > 0).double().mean())))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return shares


# --------------------------------------------------------------------------------------------
# 1. The elementwise edge kernel: dense (before), sparse (library), float32
# --------------------------------------------------------------------------------------------

KERNEL_ROWS = ("before", "library", "float32", *EXPERIMENTS)


def kernel_part(cfg: dict[str, Any], batch_size: int, repeats: int) -> list[dict[str, Any]]:
    """Per width ``w``: ``mlp([d, w, w, 10])`` with ``d = cfg["input_dim"]`` on ``cfg["n"]``
    inputs, then (with ``cfg["square_n"]``) ``d = w`` on ``square_n`` inputs, where the first
    section's Γ GEMM is ``w`` wide in all three dimensions (k' = d' = k = w)."""
    cases = [(cfg["input_dim"], w, cfg["n"]) for w in cfg["widths"]]
    cases += [(w, w, cfg["square_n"]) for w in cfg["widths"] if cfg.get("square_n")]
    out = []
    for d_in, w, n in cases:
        x = make_data(n, d_in, seed=1)
        model = mlp([d_in, w, w, 10], seed=0)
        bases = modgraph.interaction_basis(model, x, batch_size=batch_size, progress=False)
        plan = _plan(model, x, batch_size)
        rows = {
            name: partial(_row, "kernel", name, model, bases=bases, batch_size=batch_size,
                          precision="float32" if name == "float32" else "float64")
            for name in KERNEL_ROWS
        }  # fmt: skip
        for row in rows.values():  # untimed warm-up
            row(x[:64])
        rate = matmul_rate(torch.float64)
        seconds, graphs = {}, {}
        for name, row in rows.items():
            seconds[name], graphs[name] = _timed(partial(row, x), repeats)
        rate = 0.5 * (rate + matmul_rate(torch.float64))
        flops = _dense_gemm_flops(plan, bases, n)
        table = {
            name: {
                "seconds": t,
                "x_before": seconds["before"] / t,
                "rel_error": _edge_gap(graphs[name], graphs["before"]),
                "gflops_dense": flops / t / 1e9,
                "frac_matmul": flops / t / 1e9 / rate,
            }
            for name, t in seconds.items()
        }
        out.append(
            {
                "widths": [d_in, w, w, 10],
                "n": n,
                "gemm_shapes": _gemm_shapes(plan, bases),
                "active_share": _active_share(model, x),
                "gemm_gflop": flops / 1e9,
                "matmul_gflops": rate,
                "matmul_gflops_f32": matmul_rate(torch.float32),
                "sparse_min_width": elementwise.SPARSE_MIN_WIDTH,
                "rows": table,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# 2. Residual MLP: residual-add sections by autograd (before) or from one data point (library)
# --------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """``x + fc2(relu(fc1 x))``, with an ``nn.ReLU`` module or ``torch.relu`` in ``forward``."""

    def __init__(self, width: int, hidden: int, functional: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, dtype=torch.float64)
        self.relu = None if functional else nn.ReLU()
        self.fc2 = nn.Linear(hidden, width, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = torch.relu(h) if self.relu is None else self.relu(h)
        return x + self.fc2(h)


class ResidualMLP(nn.Module):
    """``d_in → width`` (``embed``), ``blocks`` :class:`ResidualBlock` (hidden ``hidden``), then
    ``width → d_out`` (``head``); float64, torch's default init under ``seed``.

    Node layers (default: the inputs of the Linears): ``embed`` → ``blocks.0.fc1`` is a junction,
    ``fc1`` → ``fc2`` of a block elementwise (with ``nn.ReLU``; through autograd with
    ``torch.relu``), ``fc2`` → the next ``fc1`` (or ``head``) a residual add after a Linear:
    a constant Jacobian."""

    def __init__(
        self,
        d_in: int = 64,
        width: int = 256,
        hidden: int = 512,
        blocks: int = 3,
        d_out: int = 10,
        functional: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Linear(d_in, width, dtype=torch.float64)
            self.blocks = nn.ModuleList(
                ResidualBlock(width, hidden, functional) for _ in range(blocks)
            )
            self.head = nn.Linear(width, d_out, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


RESIDUAL_VARIANTS = {"nn.ReLU": False, "torch.relu": True}


def residual_part(cfg: dict[str, Any], batch_size: int, repeats: int) -> dict[str, Any]:
    x = make_data(cfg["n"], cfg["d_in"], seed=1)
    out: dict[str, Any] = {"n": cfg["n"], "spec": {k: v for k, v in cfg.items() if k != "n"}}
    for label, functional in RESIDUAL_VARIANTS.items():
        if label not in cfg.get("variants", RESIDUAL_VARIANTS):
            continue
        model = ResidualMLP(
            cfg["d_in"], cfg["width"], cfg["hidden"], cfg["blocks"], functional=functional
        )
        bases = modgraph.interaction_basis(model, x, batch_size=batch_size, progress=False)
        plan = _plan(model, x, batch_size)
        for name in ("before", "library"):  # untimed warm-up
            _row("residual", name, model, x[:32], bases, batch_size)
        t_before, g_before = _timed(
            partial(_row, "residual", "before", model, x, bases, batch_size), repeats
        )
        t_library, g_library = _timed(
            partial(_row, "residual", "library", model, x, bases, batch_size), repeats
        )
        out[label] = {
            "kinds": plan["kinds"],
            "n_constant": int(sum(plan["constant"])),
            "before_s": t_before,
            "library_s": t_library,
            "x_before": t_before / t_library,
            "rel_diff": _edge_gap(g_library, g_before),
        }
    return out


# --------------------------------------------------------------------------------------------
# 3. Models with positions: float64 against float32 products
# --------------------------------------------------------------------------------------------


def precision_part(
    specs: Sequence[dict[str, Any]], n_sources: int, batch_size: int, repeats: int
) -> list[dict[str, Any]]:
    """``interaction_graph`` in bases from ``interaction_basis(n_random_sources=R)`` (cheap;
    the edges in given bases are exact either way), ``precision`` float64 then float32."""
    out = []
    for spec in specs:
        model, x = make_positions_model(spec)
        layers = list(type(model).LAYERS)  # type: ignore[attr-defined]
        bases = modgraph.interaction_basis(
            model, x, layers=layers, n_random_sources=n_sources, batch_size=batch_size,
            progress=False,
        )  # fmt: skip
        plan = _plan(model, x, batch_size, layers)
        for p in ("float64", "float32"):
            _graph(model, x[:4], bases, batch_size, precision=p)
        t64, g64 = _timed(partial(_graph, model, x, bases, batch_size), repeats)
        t32, g32 = _timed(
            partial(_graph, model, x, bases, batch_size, precision="float32"), repeats
        )
        out.append(
            {
                "model": model_name(spec),
                "n": spec["n"],
                "kinds": plan["kinds"],
                "n_elementwise": plan["kinds"].count("elementwise"),
                "float64_s": t64,
                "float32_s": t32,
                "x_float64": t64 / t32,
                "rel_error": _edge_gap(g32, g64),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# 4. Edges from a subsample, with error bars
# --------------------------------------------------------------------------------------------


def samples_part(
    model: nn.Module, x: torch.Tensor, m: int, batch_size: int, repeats: int
) -> dict[str, Any]:
    bases = modgraph.interaction_basis(model, x, batch_size=batch_size, progress=False)
    _graph(model, x[:64], bases, batch_size)
    _graph(model, x[:64], bases, batch_size, edge_samples=32)
    t_full, full = _timed(partial(_graph, model, x, bases, batch_size), repeats)
    t_sub, sub = _timed(partial(_graph, model, x, bases, batch_size, edge_samples=m), repeats)
    rel, z, sections = [], [], 0
    for pair, E in full.edges.items():
        se = sub.edge_stderr[pair]
        if not se.any():  # a junction: exact, no data needed
            continue
        sections += 1
        # edges above 1e-6 of the section's largest (as tests/test_speed_options.py): below,
        # a subsample in which an edge is almost always 0 gives a stderr near 0
        ok = (se > 0) & (E > 1e-6 * E.max())
        est = sub.edges[pair]
        rel.append(se[ok] / est[ok])
        z.append(np.abs(est[ok] - E[ok]) / se[ok])
    zs = np.concatenate(z)
    return {
        "n": int(x.shape[0]),
        "edge_samples": m,
        "sections_sampled": sections,
        "n_edges": int(zs.size),
        "full_s": t_full,
        "sub_s": t_sub,
        "x_full": t_full / t_sub,
        "median_stderr_over_E": float(np.median(np.concatenate(rel))),
        "max_z": float(zs.max()),
        "p99_z": float(np.quantile(zs, 0.99)),
        "coverage_95": float(np.mean(zs <= 1.96)),
        "rel_gap": _edge_gap(sub, full),
    }


# --------------------------------------------------------------------------------------------
# 5. MNIST MLP: stages and find_modules against the float64 matmul floor
# --------------------------------------------------------------------------------------------


def mnist_part(model: nn.Module, x: torch.Tensor, batch_size: int, repeats: int) -> dict[str, Any]:
    """The stages of ``find_modules`` (``run_pipeline``: the library's internal stage functions,
    each between two matmul-rate measurements), then the public ``find_modules`` itself."""
    n = int(x.shape[0])
    workdir = Path(tempfile.mkdtemp(prefix="modgraph-bench-"))
    meter = Meter(NUMERIC_STAGES)
    rate = matmul_rate(torch.float64)
    out = run_pipeline(model, x, batch_size=batch_size, meter=meter, graphml=workdir / "g")
    flops = totals(stage_flops(*(out[key] for key in FLOP_KEYS), n, batch_size))
    # the floor issue 16 measured: the FLOPs of the code it was filed against
    filed_flops = totals(stage_flops(*(out[key] for key in FLOP_KEYS), n, batch_size, True))
    stages = {}
    for name, rec in meter.records.items():
        row: dict[str, Any] = {"seconds": rec["seconds"]}
        if name in flops:
            floor = flops[name] / 1e9 / rec["matmul_gflops"]
            filed_floor = filed_flops[name] / 1e9 / rec["matmul_gflops"]
            row.update(gflop=flops[name] / 1e9, floor_s=floor, x_floor=rec["seconds"] / floor,
                       x_filed_floor=rec["seconds"] / filed_floor,
                       matmul_gflops=rec["matmul_gflops"])  # fmt: skip
        stages[name] = row
    numeric = sum(stages[s]["seconds"] for s in NUMERIC_STAGES)
    numeric_floor = sum(stages[s]["floor_s"] for s in NUMERIC_STAGES)

    def find() -> Any:
        return modgraph.find_modules(model, x, batch_size=batch_size, progress=False)

    rate_before = matmul_rate(torch.float64)
    t_find, result = _timed(find, max(3, repeats))  # about a second each: the best of 3
    rate = 0.5 * (rate_before + matmul_rate(torch.float64))
    floor = sum(flops.values()) / 1e9 / rate
    filed_floor = sum(filed_flops.values()) / 1e9 / rate
    return {
        "n": n,
        "widths": out["dims"],
        "ks": out["ks"],
        "kinds": out["kinds"],
        "stages": stages,
        "numeric_s": numeric,
        "numeric_floor_s": numeric_floor,
        "numeric_x_floor": numeric / numeric_floor,
        "find_modules_s": t_find,
        "find_modules_floor_s": floor,
        "find_modules_x_floor": t_find / floor,
        "find_modules_x_filed_floor": t_find / filed_floor,
        "matmul_gflops": rate,
        "n_modules": len(result.modules),
    }


# --------------------------------------------------------------------------------------------
# The job and its tables
# --------------------------------------------------------------------------------------------


def speed_job(job: dict[str, Any]) -> dict[str, Any]:
    """The parts ``job["parts"]`` (default :data:`PARTS`) with the sizes ``job["sizes"]``."""
    cfg, batch_size = job["sizes"], job.get("batch_size", 256)
    repeats = int(cfg.get("repeats", 1))
    parts = job.get("parts") or PARTS
    res: dict[str, Any] = {"parts": list(parts), "threads": torch.get_num_threads()}
    if "kernel" in parts:
        res["kernel"] = kernel_part(cfg["kernel"], batch_size, repeats)
    if "residual" in parts:
        res["residual"] = residual_part(cfg["residual"], batch_size, repeats)
    if "precision" in parts:
        specs = [{"model": m, **cfg[m]} for m in ("transformer", "cnn")]
        res["precision"] = precision_part(specs, cfg["random_sources"], batch_size, repeats)
    if "samples" in parts or "mnist" in parts:
        model, x = load_mnist_mlp(), mnist_inputs(cfg["mnist_n"])
        if "samples" in parts:
            res["samples"] = samples_part(model, x, cfg["edge_samples"], batch_size, repeats)
        if "mnist" in parts:
            res["mnist"] = mnist_part(model, x, batch_size, repeats)
    return res


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def report_speed(res: dict[str, Any]) -> str:
    text: list[str] = []
    for k in res.get("kernel", []):
        name = "-".join(map(str, k["widths"]))
        active = ", ".join(f"{100 * a:.0f}%" for a in k["active_share"])
        shapes = ", ".join("×".join(map(str, g)) for g in k.get("gemm_shapes", []))
        text.append(
            f"== speed 1. edge kernel, {name}, N={k['n']} (k'×d'×k {shapes}; active ReLUs: "
            f"{active}; sparse from width {k['sparse_min_width']}) =="
        )
        rows = [
            [name, r["seconds"], r["x_before"], r["rel_error"], r["gflops_dense"],
             _pct(r["frac_matmul"])]
            for name, r in k["rows"].items()
        ]  # fmt: skip
        text.append(format_table(
            ["row", "seconds", "x before", "rel.err vs before", "dense GF/s", "of f64 matmul"],
            rows))  # fmt: skip
        text.append(
            f"dense Γ GEMM Σ 2·N·k'·d'·k = {k['gemm_gflop']:.3g} GFLOP; matmul float64 "
            f"{k['matmul_gflops']:.3g} GF/s, float32 {k['matmul_gflops_f32']:.3g} GF/s\n"
        )
    if "residual" in res:
        r = res["residual"]
        s = r["spec"]
        text.append(
            f"== speed 2. residual MLP {s['d_in']} → {s['width']}, {s['blocks']} blocks "
            f"x + fc2(relu(fc1 x)) (hidden {s['hidden']}) → 10, N={r['n']} =="
        )
        rows = [
            [label, v["n_constant"], v["kinds"].count("elementwise"), v["before_s"],
             v["library_s"], v["x_before"], v["rel_diff"]]
            for label, v in r.items()
            if label in RESIDUAL_VARIANTS
        ]  # fmt: skip
        text.append(format_table(
            ["relu", "residual adds", "elementwise", "before s", "library s", "x before",
             "max rel.diff E"], rows) + "\n")  # fmt: skip
    if "precision" in res:
        text.append("== speed 3. models with positions: precision float64 vs float32 ==")
        rows = [
            [p["model"], p["n"], p["n_elementwise"], p["float64_s"], p["float32_s"],
             p["x_float64"], p["rel_error"]]
            for p in res["precision"]
        ]  # fmt: skip
        text.append(format_table(
            ["model", "N", "elementwise sections", "float64 s", "float32 s", "x float64",
             "rel.err"], rows) + "\n")  # fmt: skip
    if "samples" in res:
        s = res["samples"]
        text.append(f"== speed 4. edge_samples on the MNIST MLP 784-100-100-10, N={s['n']} ==")
        text.append(format_table(
            ["all data s", f"edge_samples={s['edge_samples']} s", "x all data",
             "median stderr/E", "max |E_sub−E|/stderr", "99th pct", "within 1.96 stderr",
             "edges"],
            [[s["full_s"], s["sub_s"], s["x_full"], s["median_stderr_over_E"], s["max_z"],
              s["p99_z"], _pct(s["coverage_95"]), s["n_edges"]]]) + "\n")  # fmt: skip
    if "mnist" in res:
        m = res["mnist"]
        text.append(
            f"== speed 5. MNIST MLP {'-'.join(map(str, m['widths']))}, N={m['n']}: "
            f"stages against the float64 matmul floor (FLOPs / rate) =="
        )
        rows = [
            [name, r["seconds"], r.get("gflop", ""), r.get("floor_s", ""), r.get("x_floor", ""),
             r.get("x_filed_floor", "")]
            for name, r in m["stages"].items()
        ]  # fmt: skip
        rows.append(["gram+basis+edges", m["numeric_s"], "", m["numeric_floor_s"],
                     m["numeric_x_floor"], ""])  # fmt: skip
        rows.append(["find_modules", m["find_modules_s"], "", m["find_modules_floor_s"],
                     m["find_modules_x_floor"], m["find_modules_x_filed_floor"]])  # fmt: skip
        head = ["stage", "seconds", "GFLOP", "floor s", "x floor", "x floor as filed"]
        text.append(format_table(head, rows))
        text.append(
            f"kept features {m['ks']}, sections {m['kinds']}; matmul {m['matmul_gflops']:.3g} GF/s"
        )
    return "\n".join(text)
