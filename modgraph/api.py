"""``find_modules``: interaction basis → interaction graph → Leiden on degeneracy costs.

A short function over the stages a user can also call one by one (:func:`interaction_basis`,
:func:`interaction_graph`, :func:`leiden_modules`): it validates every option once, here, then
runs the same stage bodies with the validated :class:`~modgraph.options.Options`.

In a distributed run (``docs/distributed.md``) every process measures the same graph from the
combined sums; rank 0 alone runs the Leiden search and broadcasts the partition (as tensors:
the membership and the scores, nothing pickled), so every process returns the same
:class:`~modgraph.result.ModuleResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validate import check_model
from .cluster import Partition, search_modules
from .distributed import Group, ModgraphDistributedError, resolve
from .errors import ModgraphValueError
from .faithfulness.epsilon import ablation_graph
from .graph import InteractionGraph
from .interactions import measure_graph
from .modularity import module_lists
from .options import ABLATION, Options
from .result import ModuleResult

__all__ = ["find_modules"]

_WHERE = "find_modules"


def find_modules(
    model: nn.Module,
    data: Any,
    layers: Iterable[str] | None = None,
    *,
    resolution: float = 1.0,
    n_modules: int | None = None,
    min_module_share: float | None = None,
    epsilon: float | str | None = None,
    tau: float = 1e-4,
    ties: str = "keep",
    precision: str = "float64",
    edge_samples: int | None = None,
    cache_mb: float = 0.0,
    loss_tolerance: float | None = None,
    variant: str = "local",
    basis: str = "interaction",
    n_restarts: int = 8,
    seed: int = 0,
    n_alpha: int = 1,
    rtol: float = 1e-10,
    batch_size: int = 256,
    n_random_sources: int | None = None,
    dtype: torch.dtype | None = torch.float64,
    device: torch.device | str | None = None,
    output: Callable[[Any], torch.Tensor] | None = None,
    output_basis: str = "identity",
    progress: bool | None = None,
    positions: Sequence[int] | None = None,
    distributed: bool | None = None,
) -> ModuleResult:
    """Find the modules of a trained network (arXiv 2405.10927).

    Computes the interaction basis of every node layer, the interaction strengths between
    features of adjacent layers, their degeneracy costs ``½ max(0, ln(E/ε))``, and the partition
    of features that maximises the degeneracy-based modularity ``Q_deg`` (Leiden, best of
    ``n_restarts`` seeded runs).

    Parameters
    ----------
    model : torch.nn.Module
        Never modified (see :func:`interaction_basis`).
    data : Tensor (N, ...), Dataset, DataLoader or re-iterable of batches
    layers : list of str, optional
        Node layers (inputs of these modules); default: every ``nn.Linear``; ``"output"`` last.
    resolution : float > 0
        ``γ`` of ``Q_deg``: larger gives more, smaller modules.
    n_modules : int, optional
        The coarsest partition into exactly this many modules, each holding at least
        ``min_module_share`` of the total interaction strength (the search finds the
        resolution: passing ``resolution`` too raises; see :func:`leiden_modules`).
    min_module_share : float in [0, 1), optional
        With ``n_modules``: modules holding a smaller share of the total interaction strength
        are fragments, attached to the module they link to most (default ``0.1 / n_modules``;
        0 counts every module). Without ``n_modules`` it raises instead of being ignored.
    epsilon : float or "ablation", optional
        Interaction tolerance; default ``τ · tr Cov(output)``. ``"ablation"``: one ε per
        layer pair, the largest such that cutting every edge below it (by edge ablation, the
        other pairs intact) changes the output by at most ``loss_tolerance · tr Cov(output)``
        in mean square (bisection on the pair's edge values, one pass over the data per step;
        see :func:`modgraph.faithfulness.ablation_epsilon`). The choice is recorded as
        ``result.pair_epsilon`` (the graph's ``pair_epsilon``).
    tau : float
        ``τ`` of the default ε.
    loss_tolerance : float > 0, optional
        With ``epsilon="ablation"``: the bound on the relative mean squared change of the
        output (default 1e-2: the ablated network keeps 99 % of the output's variance).
        Raises without ``epsilon="ablation"``.
    ties : {"keep", "rotate"}
        ``"rotate"``: turn features whose Λ tie within sampling error into the orientation
        with the least degeneracy cost (see :func:`interaction_graph`).
    precision, edge_samples, cache_mb
        As for :func:`interaction_graph`: the edge kernel's products, edges from a subsample
        with a standard error, and records kept between passes.
    variant : {"local", "global"}
        Interaction-basis variant.
    basis : {"interaction", "pca", "neuron"}
        ``"interaction"`` (default): the interaction basis. For comparisons, the same graph in
        a baseline basis of every hidden layer: ``"pca"`` (covariance eigenvectors, unscaled) or
        ``"neuron"`` (the neurons themselves); no Jacobian pass is needed for these.
    n_restarts : int
        Leiden runs (seeds derived from ``seed``); the best by ``Q_deg`` is kept.
    seed : int
        Seed of the Leiden restarts and of random sources.
    n_alpha : int
        Quadrature points of the integrated gradient (1: gradient × input).
    rtol, batch_size, n_random_sources, dtype, device, output, output_basis, progress, positions
        As for :func:`interaction_basis`.
    distributed : bool, optional
        As for :func:`interaction_basis`; rank 0 alone runs the Leiden search and every process
        returns the same result (write files on rank 0). With ``epsilon="ablation"`` every
        process runs on the whole data instead (see ``docs/distributed.md``).

    Returns
    -------
    ModuleResult

    Examples
    --------
    >>> import torch
    >>> from modgraph import find_modules
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> result = find_modules(model, torch.randn(256, 4), progress=False)
    >>> result.n_modules >= 1
    True
    """
    check_model(model, _WHERE)
    options = Options.from_arguments(locals(), _WHERE)
    if options.epsilon == ABLATION:
        # the ablations sum per process: every process runs on the whole data instead
        options = dataclasses.replace(options, distributed=False)
        graph = ablation_graph(model, data, layers, options)
    else:
        graph = measure_graph(model, data, layers, None, options)
    group = resolve(options.distributed, torch.device("cpu"), _WHERE)
    if group is None:
        return ModuleResult(graph, search_modules(graph, options))
    return ModuleResult(graph, _search_on_rank_zero(group, graph, options))


#: Status codes rank 0 broadcasts before the partition.
_OK, _VALUE_ERROR, _OTHER_ERROR = 0, 1, 2


def _search_on_rank_zero(group: Group, graph: InteractionGraph, options: Options) -> Partition:
    """:func:`search_modules` on rank 0, its partition broadcast to every process as tensors
    (status and ints, the membership, the scores); an error on rank 0 is raised everywhere."""
    header = torch.zeros(3, dtype=torch.int64)
    partition = None
    if group.rank == 0:
        try:
            partition = search_modules(graph, options)
        except Exception as exc:
            status = _VALUE_ERROR if isinstance(exc, ModgraphValueError) else _OTHER_ERROR
            group.broadcast(torch.tensor([status, 0, 0], dtype=torch.int64))
            group.broadcast_text(f"{type(exc).__name__}: {exc}")
            raise
        header = torch.tensor([_OK, partition.seed, partition.n_restarts], dtype=torch.int64)
    status, seed, n_restarts = (int(v) for v in group.broadcast(header))
    if status != _OK:
        message = f"the module search failed on rank 0 ({group.broadcast_text('')})"
        raise (ModgraphValueError if status == _VALUE_ERROR else ModgraphDistributedError)(message)
    n = graph.n_nodes
    membership = torch.zeros(n, dtype=torch.int64)
    scores = torch.zeros(4, dtype=torch.float64)
    if partition is not None:
        membership = torch.from_numpy(np.asarray(partition.membership, dtype=np.int64).copy())
        scores = torch.tensor(
            [partition.score, partition.cross_cost, partition.cross_fraction, partition.resolution],
            dtype=torch.float64,
        )
    membership, scores = group.broadcast(membership), group.broadcast(scores)
    if partition is not None:
        return partition
    labels = membership.numpy().copy()
    modules = module_lists(labels, graph.node_ids)
    labels.setflags(write=False)
    score, cross_cost, cross_fraction, resolution = (float(v) for v in scores)
    return Partition(
        membership=labels,
        modules=modules,
        score=score,
        cross_cost=cross_cost,
        cross_fraction=cross_fraction,
        resolution=resolution,
        seed=seed,
        n_restarts=n_restarts,
    )
