"""Node layers with positions (issue 13): a transformer block and a CNN, timed stage by stage.

Two small float64 models whose node layers have positions, both through modgraph's autograd
path (batched VJPs in rows space, ``modgraph.jacobian.section_vjp``), each run exactly and with
``n_random_sources=R``:

- :class:`TransformerBlock`: ``(N, P, d)`` inputs (features last), a causal multi-head attention
  block and a GELU MLP on a residual stream, then an unembedding. Node layers: ``resid`` (an
  ``nn.Identity`` probe on the residual stream entering the block), ``mlp`` (a probe on the MLP's
  input, the residual stream after attention), ``unembed`` (the residual stream after the MLP).
- :class:`SmallCNN`: ``(N, 1, S, S)`` images, conv 3×3 → ReLU → conv 3×3 → ReLU → 2×2 average
  pool → Linear. Node layers: the inputs of ``conv1`` and ``conv2`` (channels first: the channels
  are the features, the ``S²`` sites the positions) and of ``fc`` (no positions).

:func:`positions_stage_flops` counts what the library computes on them (the formulas are in
bench/README.md; checked against torch's FLOP counter in ``tests/test_bench_baseline.py``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .meter import Meter, matmul_rate, trim
from .models import NUMERIC_STAGES, Parts, _empty, eigh_flops, totals
from .pipeline import FLOP_KEYS, run_pipeline, stage_table

__all__ = [
    "MODELS",
    "SmallCNN",
    "TransformerBlock",
    "make_positions_model",
    "model_name",
    "positions_job",
    "positions_stage_flops",
]

F64 = torch.float64


class TransformerBlock(nn.Module):
    """``x (N, P, d)`` → ``h = x + attn(x)`` → ``h + fc2(gelu(fc1(h)))`` → ``unembed``: causal
    multi-head attention (``heads`` heads, no layer norm), MLP ``d → mlp → d``, float64."""

    LAYERS = ("resid", "mlp", "unembed")
    #: per section: is the source module affine (then jacobian.constant_jacobian reads the
    #: autograd graph of one sample first)? resid and mlp are nn.Identity probes.
    AFFINE = (False, False, True)

    def __init__(
        self, d: int = 64, heads: int = 4, mlp: int = 256, d_out: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)  # nn.Linear's own init: uniform ±1/√fan_in
        self.heads = heads
        self.resid = nn.Identity()
        self.qkv = nn.Linear(d, 3 * d, dtype=F64)
        self.proj = nn.Linear(d, d, dtype=F64)
        self.mlp = nn.Identity()
        self.fc1 = nn.Linear(d, mlp, dtype=F64)
        self.fc2 = nn.Linear(mlp, d, dtype=F64)
        self.unembed = nn.Linear(d, d_out, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.resid(x)
        n, P, d = h.shape
        q, k, v = self.qkv(h).view(n, P, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)  # (n, heads, P, P)
        causal = torch.ones(P, P, dtype=torch.bool, device=h.device).triu(1)
        att = torch.softmax(scores.masked_fill(causal, -math.inf), -1) @ v
        h = h + self.proj(att.transpose(1, 2).reshape(n, P, d))
        h = h + self.fc2(F.gelu(self.fc1(self.mlp(h))))
        return self.unembed(h)

    def section_flops(self, P: int) -> tuple[list[float], list[float]]:
        """Per sample: forward matmul FLOPs from each node layer to the next (the output last),
        and the backward (input gradients only) of each section per cotangent."""
        d, m, d_out = self.qkv.in_features, self.fc1.out_features, self.unembed.out_features
        linears = 2.0 * P * d * 3 * d + 2.0 * P * d * d  # qkv, proj
        forward = [linears + 4.0 * P * P * d, 4.0 * P * d * m, 2.0 * P * d * d_out]
        # attention backward: dA = g Vᵀ, dV = Aᵀ g, dQ = dS K, dK = dSᵀ Q (four bmm)
        backward = [linears + 8.0 * P * P * d, 4.0 * P * d * m, 0.0]
        return forward, backward


class SmallCNN(nn.Module):
    """``(N, c_in, S, S)`` → conv 3×3 (c) → ReLU → conv 3×3 (c) → ReLU → avg-pool 2 → Linear."""

    LAYERS = ("conv1", "conv2", "fc")
    AFFINE = (True, True, True)

    def __init__(
        self, channels: Sequence[int] = (1, 16, 16), image: int = 8, d_out: int = 10, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        c_in, c1, c2 = channels
        self.conv1 = nn.Conv2d(c_in, c1, 3, padding=1, dtype=F64)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, dtype=F64)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(c2 * (image // 2) ** 2, d_out, dtype=F64)
        self.image = image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(self.pool(h).flatten(1))

    def section_flops(self, P: int) -> tuple[list[float], list[float]]:
        """As :meth:`TransformerBlock.section_flops` (``P = S²`` sites; torch counts a padded
        3×3 convolution as ``2·P·9·c_out·c_in``, and its input gradient the same)."""
        c_in, c1, c2 = self.conv1.in_channels, self.conv1.out_channels, self.conv2.out_channels
        conv = [2.0 * P * 9 * c1 * c_in, 2.0 * P * 9 * c2 * c1]
        return [*conv, 2.0 * self.fc.in_features * self.fc.out_features], [*conv, 0.0]


MODELS = {"transformer": TransformerBlock, "cnn": SmallCNN}


def make_positions_model(spec: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    """The model of ``spec`` (``{"model": "transformer", "d", "heads", "mlp", "d_out", "P"}`` or
    ``{"model": "cnn", "channels", "image"}``) and its ``spec["n"]`` N(0, 1) float64 inputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.random.fork_rng(devices=[]):  # the models seed torch's global generator
        if spec["model"] == "transformer":
            model: nn.Module = TransformerBlock(
                spec["d"], spec["heads"], spec["mlp"], spec["d_out"]
            )
            shape = (spec["n"], spec["P"], spec["d"])
        else:
            model = SmallCNN(spec["channels"], spec["image"])
            shape = (spec["n"], spec["channels"][0], spec["image"], spec["image"])
    return model, torch.randn(shape, dtype=F64, generator=gen)


def positions_stage_flops(
    dims: Sequence[int],
    ks: Sequence[int],
    ranks: Sequence[int],
    kinds: Sequence[str],
    positions: Sequence[int],
    sections: tuple[Sequence[float], Sequence[float]],
    n: int,
    batch_size: int = 256,
    n_sources: int | None = None,
    affine: Sequence[bool] = (),
) -> Parts:
    """FLOPs of modgraph's numeric stages on a model with positions, per stage and part.

    As :func:`bench.models.stage_flops`, with ``positions[l]`` (``P_l``) rows per sample at node
    layer ``l`` and ``sections = (forward, backward)`` from the model's ``section_flops``:
    per-sample forward FLOPs of each section and its backward per cotangent. Sections are
    ``"autograd"`` (VJPs at the source's input) or ``"junction"``. Each term names the code.
    """
    forward, backward = sections
    parts = _empty()
    gram, basis, edges = (parts[s] for s in NUMERIC_STAGES)
    L = len(kinds)
    # capture.session's probe (first min(16, B, N) samples), one forward; Moments.add over rows
    gram["matmul"] = sum(forward) * (n + min(16, batch_size, n))
    gram["matmul"] += sum(2.0 * n * positions[l] * dims[l] ** 2 for l in range(L + 1))
    basis["eigh"] = eigh_flops(dims[L])
    for l, kind in enumerate(kinds):
        d, dn, k, kn, r = dims[l], dims[l + 1], ks[l], ks[l + 1], ranks[l]
        P, Pn = positions[l], positions[l + 1]
        to_target = n * sum(forward[: l + 1])  # section_vjp: forward stopped at the target
        basis["eigh"] += eigh_flops(d) + (eigh_flops(r) if r else 0.0)
        basis["matmul"] += 6.0 * d * r * k  # C and C⁺
        project = kind == "autograd" and 2 * r < d
        if r and not project:  # M = (U D^½)ᵀ M' (U D^½)
            basis["matmul"] += 2.0 * d * d * r + 2.0 * d * r * r
        if kind == "junction":  # elementwise_jacobian_gram and _junction_edges: no data pass
            if r:
                basis["matmul"] += 2.0 * dn * dn * kn + 2.0 * d * dn * dn + 2.0 * d * d * dn
            edges["matmul"] += 2.0 * kn * dn * d + 2.0 * kn * d * k
            continue
        if kind != "autograd":
            raise ValueError(f"positions_stage_flops counts autograd sections, not {kind!r}")
        if r and kn and affine and affine[l]:  # jacobian.constant_jacobian: one sample's forward
            basis["matmul"] += to_target / n
        if r and kn:  # local_jacobian_gram: cotangents P'·k' per sample (exact) or R
            vectors = n_sources or Pn * kn
            basis["matmul"] += to_target + n * vectors * backward[l]  # one backward each
            if n_sources is not None:  # jacobian.cotangents: φ (R, B, P', k') @ C'ᵀ
                basis["matmul"] += 2.0 * n * n_sources * Pn * kn * dn
            rows = n * vectors * P  # the Gram over rows: every cotangent, sample and position
            basis["matmul"] += 2.0 * rows * (d * r + r * r) if project else 2.0 * rows * d * d
        if k and kn:  # _autograd_edges: k'·P' cotangents (exact) or k'·R (R random over P')
            vectors = kn * (n_sources if n_sources is not None and Pn > 1 else Pn)
            edges["matmul"] += to_target + n * vectors * backward[l]
            edges["matmul"] += 2.0 * n * P * d * k  # features f̂ = (a − μ) C
            edges["matmul"] += 2.0 * n * vectors * P * d * k  # Γ = (∂f̂'/∂a) C⁺ᵀ
            edges["elementwise"] += n * vectors * k * (2.0 * P + 1)  # Γ∘f̂, Σ_s, ², Σ_x
    return parts


def _rel(a: Sequence[float], b: Sequence[float]) -> float:
    """Largest ``|a − b| / |b|`` over pairs (``b ≠ 0``)."""
    return max((abs(x - y) / abs(y) for x, y in zip(a, b) if y), default=0.0)


def _versus(exact: dict[str, Any], rand: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups of the random-source pipeline over the exact one, and how far its estimates
    are from the exact values (relative error of Σ Λ per layer and of Σ E per section)."""
    e, r = exact["stages"], rand["stages"]

    def work(st: dict[str, Any]) -> float:  # seconds × the matmul rate around each stage
        return sum(st[s]["seconds"] * st[s]["matmul_gflops"] for s in NUMERIC_STAGES)

    return {
        "speedup": {s: e[s]["seconds"] / r[s]["seconds"] for s in NUMERIC_STAGES},
        "speedup_numeric": sum(e[s]["seconds"] for s in NUMERIC_STAGES)
        / sum(r[s]["seconds"] for s in NUMERIC_STAGES),
        "speedup_numeric_rate_normalised": work(e) / work(r),
        "eigenvalue_sum_rel": _rel(rand["eigenvalue_sums"], exact["eigenvalue_sums"]),
        "edge_sum_rel": _rel(rand["edge_sums"], exact["edge_sums"]),
    }


def positions_job(job: dict[str, Any]) -> dict[str, Any]:
    """One model with positions (``job["spec"]``), exact and with ``n_random_sources``."""
    spec, batch_size, R = job["spec"], job["batch_size"], job["n_sources"]
    model, x = make_positions_model(spec)
    layers = list(type(model).LAYERS)
    tiny = {**spec, "n": 8, "P": 2, "d": 8, "heads": 2, "mlp": 8, "d_out": 4, "image": 4}
    warm_model, warm_x = make_positions_model(tiny)
    workdir = Path(tempfile.mkdtemp(prefix="modgraph-bench-"))
    result: dict[str, Any] = {"spec": spec, "n": spec["n"], "batch_size": batch_size}
    for path, sources in (("exact", None), ("random", R)):
        # the first calls of vmap'd attention/convolution backward are slow: pay them untimed
        run_pipeline(warm_model, warm_x, batch_size=4, meter=Meter(), graphml=workdir / "w",
                     layers=layers, n_sources=sources)  # fmt: skip
        meter = Meter(NUMERIC_STAGES)
        rate_before = matmul_rate()
        out = run_pipeline(model, x, batch_size=batch_size, meter=meter,
                           graphml=workdir / f"{path}.graphml", layers=layers,
                           n_sources=sources)  # fmt: skip
        rate = 0.5 * (rate_before + matmul_rate())
        sections = model.section_flops(out["positions"][0])  # type: ignore[operator]
        flops = positions_stage_flops(*(out[key] for key in FLOP_KEYS), out["positions"],
                                      sections, spec["n"], batch_size, sources,
                                      model.AFFINE)  # type: ignore[attr-defined]  # fmt: skip
        result[path] = {
            "n_sources": sources,
            "matmul_gflops": rate,
            "stages": stage_table(meter.records, totals(flops), rate),
            "total_seconds": sum(r["seconds"] for r in meter.records.values()),
            "peak_mb": max(r["peak_mb"] for r in meter.records.values()),
            "eigenvalue_sums": [float(b.eigenvalues.sum()) for b in out["bases"].values()],
            "edge_sums": [float(E.sum()) for E in out["edges"].values()],
            **{key: out[key] for key in (*FLOP_KEYS, "positions", "layers", "n_modules")},
        }
        del out
        trim()
    result["vs"] = _versus(result["exact"], result["random"])
    return result


def model_name(spec: dict[str, Any]) -> str:
    if spec["model"] == "transformer":
        return f"transformer d{spec['d']} h{spec['heads']} P{spec['P']}"
    return f"cnn {'-'.join(map(str, spec['channels']))} {spec['image']}x{spec['image']}"
