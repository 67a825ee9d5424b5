"""Outputs of the public stages on fixed models, for the refactor guard (tests/test_golden.py).

``python -m tests.golden.outputs`` stores them (``golden.npz`` for arrays, ``golden.json`` for
the rest); the test recomputes them with today's code and compares to 1e-12. The stored files
were written by the code of commit 882d230, before the architecture refactor (issue 11); the one
edit since is an empty ``"attention": []`` in every stored degeneracy report, the key issue 13
added (none of these models has an attention module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modgraph import (
    degeneracy_report,
    find_modules,
    interaction_basis,
    interaction_graph,
    leiden_modules,
    modularity_score,
)
from modgraph.toy import block_diagonal_mlp, digits_as_mnist, load_mnist_mlp, obfuscate
from tests.blocks import product_data
from tests.zoo import cases

HERE = Path(__file__).resolve().parent
ARRAYS = HERE / "golden.npz"
OTHERS = HERE / "golden.json"

#: Runs per zoo case: (label, keyword options of interaction_basis).
RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("local", {}),
    ("global", {"variant": "global", "output_basis": "pca"}),
    ("random", {"n_random_sources": 3, "seed": 7}),
)


def _bases_graph(
    prefix: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    options: dict[str, Any],
    arrays: dict[str, np.ndarray],
    n_alpha: int = 1,
) -> Any:
    bases = interaction_basis(model, x, progress=False, **options)
    for name, b in bases.items():
        for field in ("mean", "C", "C_pinv", "eigenvalues", "gram_eigenvalues"):
            arrays[f"{prefix}/basis/{name}/{field}"] = np.asarray(getattr(b, field))
        arrays[f"{prefix}/basis/{name}/jacobian_eigenvalues"] = b.jacobian_eigenvalues
    graph = interaction_graph(model, x, bases, n_alpha=n_alpha, progress=False)
    for (src, dst), E in graph.edges.items():
        arrays[f"{prefix}/edges/{src}->{dst}"] = np.asarray(E)
    return graph


def _partition(prefix: str, graph: Any, others: dict[str, Any], **kwargs: Any) -> None:
    p = leiden_modules(graph, **kwargs)
    others[prefix] = {
        "membership": p.membership.tolist(),
        "score": p.score,
        "cross_cost": p.cross_cost,
        "cross_fraction": p.cross_fraction,
        "resolution": p.resolution,
        "q_weight": modularity_score(graph, p.membership, weight="weight"),
        "q_sqrt": modularity_score(graph, p.membership, weight="sqrt_weight"),
        "epsilon": graph.epsilon,
    }


def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every stored output, recomputed with the code in this checkout."""
    torch.set_num_threads(1)
    arrays: dict[str, np.ndarray] = {}
    others: dict[str, Any] = {}
    for case in cases(300):
        for label, options in RUNS:
            prefix = f"{case.name}/{label}"
            graph = _bases_graph(prefix, case.model, case.x, options, arrays)
            _partition(f"{prefix}/leiden", graph, others, seed=3, n_restarts=4)
        prefix = f"{case.name}/alpha"
        _bases_graph(prefix, case.model, case.x, {}, arrays, n_alpha=3)
        others[f"{case.name}/report"] = degeneracy_report(
            case.model, case.x, progress=False
        ).to_dict()
        others[f"{case.name}/report_hamming"] = degeneracy_report(
            case.model, case.x, hamming_tol=0.05, progress=False
        ).to_dict()

    # planted modules, obfuscated, coarsest two-module split
    model = block_diagonal_mlp([[5, 12, 10, 8, 3], [4, 12, 10, 8, 2]], seed=0, linear_at=(2,))
    twin = obfuscate(model, seed=1, n_duplicate=2, n_dead=2)
    x = product_data(30, 25, 5, 4, seed=3)
    for name, m in (("planted", model), ("planted_twin", twin)):
        r = find_modules(m, x, progress=False)
        _partition(f"{name}/find_modules", r.interaction_graph, others, seed=0)
        r2 = find_modules(m, x, n_modules=2, progress=False)
        others[f"{name}/n_modules"] = {
            "membership": r2.partition.membership.tolist(),
            "resolution": r2.resolution,
            "score": r2.score,
        }
        others[f"{name}/report"] = degeneracy_report(m, x, progress=False).to_dict()

    # the pretrained MNIST MLP on the first 600 digits
    mnist = load_mnist_mlp()
    digits, _ = digits_as_mnist()
    r = find_modules(mnist, digits[:600], seed=1, progress=False)
    for (src, dst), E in r.interaction_graph.edges.items():
        arrays[f"mnist/edges/{src}->{dst}"] = np.asarray(E)
    for name, b in r.bases.items():
        arrays[f"mnist/basis/{name}/eigenvalues"] = np.asarray(b.eigenvalues)
    others["mnist/find_modules"] = {
        "membership": r.partition.membership.tolist(),
        "score": r.score,
        "cross_fraction": r.cross_fraction,
        "summary": r.summary(),
    }
    return arrays, others


def main() -> None:
    arrays, others = compute()
    np.savez_compressed(ARRAYS, **arrays)
    OTHERS.write_text(json.dumps(others, indent=1, sort_keys=True) + "\n")
    print(f"stored {len(arrays)} arrays and {len(others)} records")


if __name__ == "__main__":
    main()
