"""Distributed sums (issue 17): two gloo processes on the CPU give what one process gives.

Each test starts two worker processes the way ``torchrun`` does (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK`` in the environment; ``distributed=True`` makes
modgraph start the gloo process group itself): this file run as a script is the worker. The
workers write their results as ``.npz`` files (``allow_pickle=False``), and the test compares
them with a single-process run: bases, edges, modules and the degeneracy report to 1e-10, and
the two ranks with each other bit for bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

F64 = torch.float64
TOLERANCE = 1e-10
#: Seconds a collective waits in the failure test (MODGRAPH_DIST_TIMEOUT).
SHORT_TIMEOUT = 3.0
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Models and data, built alike in the workers and in the test
# --------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """Linear → ReLU → Linear → LayerNorm → tanh → Linear: an elementwise section, a section
    differentiated by autograd (the LayerNorm), and a Linear junction to the output."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.fc3 = (
            nn.Linear(i, o, dtype=F64) for i, o in ((5, 10), (10, 8), (8, 3))
        )
        self.norm = nn.LayerNorm(8, dtype=F64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.fc3(torch.tanh(self.norm(self.fc2(h))))


def _cnn() -> nn.Sequential:
    """conv1 → ReLU → conv2 → ReLU → flatten → fc1: co-activation Grams per output site."""
    torch.manual_seed(1)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(2, 3, 3, padding=1, dtype=F64),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(3, 3, 3, padding=1, dtype=F64),
            relu2=nn.ReLU(),
            flat=nn.Flatten(),
            fc1=nn.Linear(3 * 16, 4, dtype=F64),
        )
    )


def _inputs(n: int, shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=F64)


def _save_basis(out: dict[str, np.ndarray], tag: str, bases: dict[str, Any]) -> None:
    for name, b in bases.items():
        for field in ("mean", "C", "eigenvalues", "gram_eigenvalues", "jacobian_eigenvalues"):
            out[f"{tag}/{name}/{field}"] = np.asarray(getattr(b, field))
        out[f"{tag}/{name}/n_samples"] = np.asarray(b.n_samples)


def _save_graph(out: dict[str, np.ndarray], tag: str, graph: Any) -> None:
    for (src, dst), e in graph.edges.items():
        out[f"{tag}/edges/{src}->{dst}"] = np.asarray(e)


def _save_report(out: dict[str, np.ndarray], tag: str, report: Any) -> None:
    out[f"{tag}/n_samples"] = np.asarray(report.n_samples)
    out[f"{tag}/free"] = np.asarray(report.free_directions)
    for layer in report.layers:
        out[f"{tag}/{layer.name}/gram"] = np.asarray(layer.gram_eigenvalues)
        out[f"{tag}/{layer.name}/jacobian"] = np.asarray(layer.jacobian_eigenvalues)
    for unit_set in report.unit_sets:
        out[f"{tag}/{unit_set.layer}/firing"] = np.asarray(unit_set.firing_counts)


#: Rows the MLP's first layer saw in this process (to check that the data were sharded).
SEEN = [0]


def _equal_run(distributed: bool) -> dict[str, np.ndarray]:
    """Bases (local and global variant), the graph and modules, and the degeneracy report of
    an MLP; bases and edges of a CNN. 7 blocks of 32 rows: rank 0 gets 4, rank 1 gets 3."""
    from modgraph import degeneracy_report, find_modules, interaction_basis

    out: dict[str, np.ndarray] = {}
    net, x = _Net(), _inputs(200, (5,))
    SEEN[0] = 0
    net.fc1.register_forward_pre_hook(lambda m, args: SEEN.__setitem__(0, SEEN[0] + len(args[0])))
    common: dict[str, Any] = {"batch_size": 32, "progress": False, "distributed": distributed}
    result = find_modules(net, x, n_restarts=2, **common)
    _save_basis(out, "local", dict(result.bases))
    _save_graph(out, "local", result)
    out["membership"] = np.asarray(result.membership)
    out["score"] = np.asarray(result.score)
    out["cross_cost"] = np.asarray(result.cross_cost)
    _save_basis(out, "global", interaction_basis(net, x, variant="global", **common))
    _save_report(out, "report", degeneracy_report(net, x, **common))
    cnn = find_modules(
        _cnn(), _inputs(40, (2, 4, 4)), layers=["conv1", "conv2", "fc1"], n_restarts=1, **common
    )
    _save_basis(out, "cnn", dict(cnn.bases))
    _save_graph(out, "cnn", cnn)
    return out


class _Batches:
    """A re-iterable list of batches (sharded by modgraph, batch by batch)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches

    def __iter__(self) -> Any:
        return iter(self.batches)


def _uneven_sources(x: torch.Tensor) -> dict[str, Any]:
    """The same 60 rows in shapes that shard unevenly, or are sharded by a sampler."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    sources: dict[str, Any] = {
        "one_block": x,  # one block (60 rows, batch_size 64): rank 1 has no data at all
        "three_batches": _Batches(list(x.split(24))),  # rank 0: 2 batches, rank 1: 1
        "dataset": TensorDataset(x),  # blocks of batch_size rows, read by each rank alone
        "sampler": x,  # one process: the same rows
    }
    if torch.distributed.is_initialized():  # rows r, r + 2, ... per rank: all rows once
        sampler = DistributedSampler(TensorDataset(x), shuffle=False)
        sources["sampler"] = DataLoader(TensorDataset(x), batch_size=16, sampler=sampler)
    return sources


#: The error of a module search that fails on rank 0, as this process saw it.
SEARCH_ERROR = [""]


def _uneven_run(distributed: bool) -> dict[str, np.ndarray]:
    from modgraph import degeneracy_report, find_modules, interaction_graph

    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():  # started here so that the sampler can be built
            dist.init_process_group("gloo", init_method="env://")
    out: dict[str, np.ndarray] = {}
    net, x = _Net(), _inputs(60, (5,))
    for tag, data in _uneven_sources(x).items():
        graph = interaction_graph(
            net, data, batch_size=64, progress=False, distributed=distributed or None
        )
        _save_basis(out, tag, dict(graph.bases))
        _save_graph(out, tag, graph)
    _save_report(out, "report", degeneracy_report(net, x, batch_size=64, progress=False))
    if distributed:  # rank 0's search fails: every rank raises its error
        from modgraph.errors import ModgraphValueError

        with pytest.raises(ModgraphValueError, match="n_modules=1000") as caught:
            find_modules(net, x, n_modules=1000, batch_size=64, progress=False)
        SEARCH_ERROR[0] = str(caught.value)
    return out


# --------------------------------------------------------------------------------------------
# The worker (this file run as a script, under a torchrun-like environment)
# --------------------------------------------------------------------------------------------


class _Failing:
    """Batches of ``x``; on rank 1 the third batch raises (in the middle of the first pass)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __iter__(self) -> Any:
        for i, batch in enumerate(self.x.split(10)):
            if i == 3 and os.environ["RANK"] == "1":
                raise RuntimeError("planted failure on rank 1")
            yield batch


def _fail_run(out_dir: Path) -> None:
    from modgraph import interaction_basis

    rank = int(os.environ["RANK"])
    start = time.perf_counter()
    try:
        interaction_basis(_Net(), _Failing(_inputs(80, (5,))), progress=False, distributed=True)
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["seconds"] = time.perf_counter() - start
    (out_dir / f"fail{rank}.json").write_text(json.dumps(outcome))
    end = time.perf_counter() + SHORT_TIMEOUT + 20
    while rank == 1 and time.perf_counter() < end and not (out_dir / "fail0.json").exists():
        time.sleep(0.1)  # alive: rank 0 must give up through the timeout, not a closed pipe


def _worker(scenario: str, out_dir: Path) -> None:
    rank = int(os.environ["RANK"])
    if scenario == "fail":
        _fail_run(out_dir)
    else:
        arrays = {"equal": _equal_run, "uneven": _uneven_run}[scenario](True)
        np.savez(out_dir / f"{scenario}{rank}.npz", **arrays)
        seen = {"rows": SEEN[0], "search_error": SEARCH_ERROR[0]}
        (out_dir / f"{scenario}{rank}.json").write_text(json.dumps(seen))
    import torch.distributed as dist

    if scenario != "fail" and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # no teardown of a process group whose peer may be gone


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(scenario: str, out_dir: Path, world: int = 2, limit: float = 120.0) -> float:
    """Run ``world`` workers like ``torchrun --nproc_per_node=world``; returns the seconds."""
    port = _free_port()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "MODGRAPH_DIST_TIMEOUT": str(SHORT_TIMEOUT if scenario == "fail" else 60),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, scenario, str(out_dir)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=limit)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return time.perf_counter() - start


def _compare(single: dict[str, np.ndarray], ranks: list[Any]) -> float:
    """The largest error of the ranks' arrays relative to the single run (per array, to its
    largest entry); the ranks must agree with each other exactly."""
    worst = 0.0
    for key, ref in single.items():
        got = [r[key] for r in ranks]
        assert got[0].shape == ref.shape, key
        for other in got[1:]:
            np.testing.assert_array_equal(other, got[0], err_msg=key)
        if ref.dtype.kind in "iub":
            np.testing.assert_array_equal(got[0], ref, err_msg=key)
            continue
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        err = float(np.abs(got[0] - ref).max()) if ref.size else 0.0
        worst = max(worst, err / max(scale, 1e-300))
        assert err <= TOLERANCE * max(scale, 1e-300), (key, err, scale)
    assert sorted(ranks[0].files) == sorted(single), "the runs hold different arrays"
    return worst


def _check(scenario: str, run: Callable[[bool], dict[str, np.ndarray]], tmp: Path) -> None:
    seconds = _launch(scenario, tmp)
    single = run(False)
    ranks = [np.load(tmp / f"{scenario}{r}.npz", allow_pickle=False) for r in range(2)]
    worst = _compare(single, ranks)
    seen = [json.loads((tmp / f"{scenario}{r}.json").read_text()) for r in range(2)]
    if scenario == "equal":  # each process ran the model on its own part of the data
        assert max(s["rows"] for s in seen) < 0.7 * SEEN[0], (seen, SEEN[0])
    else:  # rank 0's search raised; rank 1 got its message
        assert "rank 0" in seen[1]["search_error"], seen
    print(f"{scenario}: 2 gloo processes in {seconds:.1f} s, largest relative error {worst:.2e}")


def test_two_processes_equal_one(tmp_path: Path) -> None:
    """Bases, edges, modules and the degeneracy report of two gloo processes (data sharded by
    modgraph, 4 blocks and 3) equal a single process's to 1e-10."""
    _check("equal", _equal_run, tmp_path)


def test_uneven_shards(tmp_path: Path) -> None:
    """One rank with no data, one with fewer batches, a Dataset, and a DataLoader sharded by a
    DistributedSampler: the same bases and edges as one process."""
    _check("uneven", _uneven_run, tmp_path)


def test_a_failing_rank_fails_the_others_within_the_timeout(tmp_path: Path) -> None:
    """Rank 1 raises in the middle of the first pass and stays alive; rank 0 raises a clear
    ModgraphDistributedError after about MODGRAPH_DIST_TIMEOUT seconds, without hanging."""
    _launch("fail", tmp_path)
    rank0 = json.loads((tmp_path / "fail0.json").read_text())
    rank1 = json.loads((tmp_path / "fail1.json").read_text())
    assert rank1["error"] == "RuntimeError"
    assert rank0["error"] == "ModgraphDistributedError", rank0
    assert "timeout" in rank0["message"] and "MODGRAPH_DIST_TIMEOUT" in rank0["message"]
    assert rank0["seconds"] < SHORT_TIMEOUT + 15, rank0
    print(f"rank 0 raised after {rank0['seconds']:.1f} s: {rank0['message'][:200]}")


def test_the_example_runs_under_torchrun(tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 examples/distributed.py --quick``: rank 0 alone prints and
    writes; the planted modules are found."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", str(ROOT / "examples" / "distributed.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, "--quick", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("2 process(es)") == 1, done.stdout
    assert "2 modules over" in done.stdout and "cross-module cost 0 nats" in done.stdout
    assert (tmp_path / "modules.json").is_file() and (tmp_path / "modules.graphml").is_file()


def test_distributed_true_without_torchrun_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    from modgraph import interaction_basis
    from modgraph.errors import ModgraphValueError

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModgraphValueError, match="torchrun"):
        interaction_basis(_Net(), _inputs(20, (5,)), progress=False, distributed=True)


def test_bad_timeout_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from modgraph.distributed import TIMEOUT_VARIABLE, _timeout
    from modgraph.errors import ModgraphValueError

    monkeypatch.setenv(TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ModgraphValueError, match=TIMEOUT_VARIABLE):
        _timeout()
    monkeypatch.setenv(TIMEOUT_VARIABLE, "2.5")
    assert _timeout().total_seconds() == 2.5


def test_sharding_deals_blocks_in_turn() -> None:
    """Rank r of W takes blocks r, r + W, ...: every row once, the same rows in every pass
    whatever the pass's batch size."""
    from modgraph.data import Shard, iter_batches

    x = torch.arange(10, dtype=F64)[:, None]
    cpu = torch.device("cpu")
    for size in (1, 3, 4):
        parts = [
            torch.cat(list(iter_batches(x, size, device=cpu, dtype=F64, shard=Shard(r, 2, 4))))
            for r in range(2)
        ]
        assert parts[0].flatten().tolist() == [0, 1, 2, 3, 8, 9]
        assert parts[1].flatten().tolist() == [4, 5, 6, 7]
    alone = list(iter_batches(x, 4, device=cpu, dtype=F64, shard=Shard(1, 3, 4)))
    assert [b.flatten().tolist() for b in alone] == [[4, 5, 6, 7]]
    assert list(iter_batches(x, 4, device=cpu, dtype=F64, shard=Shard(2, 3, 8))) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_with_data_on_the_cpu() -> None:
    """The pipeline on a CUDA model with CPU data (pinned, non-blocking copies) equals the CPU
    run; the user's model stays where it was."""
    from modgraph import find_modules

    net, x = _Net(), _inputs(200, (5,))
    cpu = find_modules(net, x, n_restarts=2, progress=False)
    gpu_net = _Net().cuda()
    gpu = find_modules(gpu_net, x, n_restarts=2, progress=False)
    assert next(gpu_net.parameters()).is_cuda
    for key, e in cpu.edges.items():
        np.testing.assert_allclose(gpu.edges[key], e, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(gpu.membership, cpu.membership)


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
