"""Find modules with the data split over several processes (torch.distributed, gloo on CPU).

The model is an MLP 9-24-20-5 made of two independent sub-networks (``block_diagonal_mlp``); the
data are every pair of points of the two blocks' inputs (as in ``examples/invariance.py``), so
the two planted modules are exact. Every process streams its own shard of the data; modgraph
adds up the float64 sums of all processes, so every process fits the same bases and edges;
rank 0 runs the Leiden search and every process returns the same result. Rank 0 alone prints
and writes the files.

Run::

    torchrun --nproc_per_node=2 examples/distributed.py [--out out/examples/distributed] [--quick]

or, on one process, ``python examples/distributed.py``. On GPUs (one process per GPU), pass
``--device cuda``: modgraph then starts an NCCL process group. Writes ``modules.json`` and
``modules.graphml``. See ``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

from modgraph import degeneracy_report, find_modules
from modgraph.toy import block_diagonal_mlp

BLOCKS = [[5, 12, 10, 3], [4, 12, 10, 2]]


def product_data(n1: int, n2: int, seed: int) -> torch.Tensor:
    """Every pair of ``n1`` points of block 1 (5 inputs) and ``n2`` points of block 2 (4)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n1, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(n2, 4, generator=gen, dtype=torch.float64)
    return torch.cat([a.repeat_interleave(n2, 0), b.repeat(n1, 1)], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/examples/distributed")
    parser.add_argument("--quick", action="store_true", help="fewer data points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL)")
    args = parser.parse_args(argv)
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = torch.device(args.device)
    if device.type == "cuda" and under_torchrun:  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    model = block_diagonal_mlp(BLOCKS, seed=args.seed)
    n1, n2 = (20, 20) if args.quick else (60, 60)
    x = product_data(n1, n2, seed=args.seed + 3)  # the same tensor in every process

    start = time.perf_counter()
    # distributed=True starts the process group from torchrun's environment (gloo on CPU,
    # NCCL on CUDA); each process then takes every other block of batch_size rows
    options = dict(device=device, batch_size=256, progress=False, distributed=under_torchrun)
    result = find_modules(model, x, **options)
    report = degeneracy_report(model, x, **options)
    seconds = time.perf_counter() - start

    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if rank == 0:  # every process holds the same result: one writes the files
        os.makedirs(args.out, exist_ok=True)
        result.to_json(os.path.join(args.out, "modules.json"))
        result.to_graphml(os.path.join(args.out, "modules.graphml"))
        print(f"{world} process(es), {x.shape[0]} data points, {seconds:.1f} s")
        print(result.summary())
        print(f"free directions (degeneracy report): {report.free_directions}")
    if dist.is_initialized():
        dist.destroy_process_group()  # modgraph started it; the script ends it
    return 0


if __name__ == "__main__":
    sys.exit(main())
