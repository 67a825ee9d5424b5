"""Figures: files by suffix, artist counts, subsampling, palette, errors (modgraph.plot)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure

import modgraph
from modgraph import ModuleResult
from modgraph.cluster import Partition, leiden_modules
from modgraph.graph import InteractionGraph
from modgraph.plot import (
    NO_MODULE_COLOR,
    module_colors,
    plot_interactions,
    plot_module_map,
    plot_modules,
)
from modgraph.plot.modules import _pick, _quotas
from modgraph.toy import block_diagonal_mlp

MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF"}


# ---------------------------------------------------------------------------- inputs
def planted_graph(
    sizes: list[int],
    n_blocks: int,
    n_isolated: int,
    *,
    seed: int = 0,
    layers: list[str] | None = None,
) -> InteractionGraph:
    """Adjacent layers joined block-diagonally (strong inside a block, none across); the last
    ``n_isolated`` features of every layer have no interactions at all."""
    rng = np.random.default_rng(seed)
    labels = []
    for k in sizes:
        lab = np.arange(k - n_isolated) % n_blocks
        labels.append(np.r_[lab, np.full(n_isolated, -1)])
    edges = []
    for a, b in zip(labels[:-1], labels[1:]):
        same = (b[:, None] == a[None, :]) & (a[None, :] >= 0)
        edges.append(np.where(same, rng.uniform(0.5, 5.0, same.shape), 0.0))
    if layers is None:
        layers = [f"L{i}" for i in range(len(sizes) - 1)] + ["output"]
    graph = InteractionGraph.from_matrices(
        edges, epsilon=0.1, layers=layers, importance=[rng.uniform(0.1, 1.0, k) for k in sizes]
    )
    return dataclasses.replace(graph, bases={})  # module_result wants bases


def fixed_result(graph: InteractionGraph, membership: np.ndarray) -> ModuleResult:
    """A result with a given membership (no search), e.g. for many modules or big layers."""
    ids = np.asarray(graph.node_ids)
    n = int(membership.max(initial=-1) + 1)
    partition = Partition(
        membership=membership.astype(np.int64),
        modules=[ids[membership == m].tolist() for m in range(n)],
        score=0.5,
        cross_cost=0.0,
        cross_fraction=0.0,
        resolution=1.0,
        seed=0,
        n_restarts=1,
    )
    return ModuleResult(graph, partition)


@pytest.fixture(scope="module")
def small() -> ModuleResult:
    graph = planted_graph([12, 16, 10, 6], n_blocks=2, n_isolated=2)
    return ModuleResult(graph, leiden_modules(graph, n_restarts=2))


@pytest.fixture(scope="module")
def wide() -> ModuleResult:
    """Layers of 200 features with 3 modules of uneven size plus features in no module."""
    sizes = [200, 200, 200, 30]
    graph = planted_graph(sizes, n_blocks=3, n_isolated=20, seed=1)
    rng = np.random.default_rng(2)
    m = np.concatenate([rng.choice([0, 0, 0, 1, 1, 2, -1], size=k) for k in sizes])
    return fixed_result(graph, m)


@pytest.fixture(scope="module")
def trained() -> ModuleResult:
    model = block_diagonal_mlp([[4, 6, 3], [4, 6, 3]], seed=0)
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return modgraph.find_modules(model, x, n_restarts=2, progress=False)


def scatters(fig: Figure) -> list[PathCollection]:
    return [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]


def lines(fig: Figure) -> list[LineCollection]:
    return [c for c in fig.axes[0].collections if isinstance(c, LineCollection)]


def expected_edges(result: ModuleResult, min_cost: float) -> int:
    return sum(
        int(np.count_nonzero(c > min_cost)) for c in result.interaction_graph.costs().values()
    )


# ---------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf", ".PNG"])
@pytest.mark.parametrize("kind", ["modules", "map", "interactions"])
def test_saves_by_suffix(small, tmp_path, suffix, kind) -> None:
    path = tmp_path / f"figure{suffix}"
    if kind == "modules":
        fig = plot_modules(small.interaction_graph, small.partition, path=path)
    elif kind == "map":
        fig = plot_module_map(small.interaction_graph, small.partition, path=str(path))
    else:
        fig = plot_interactions(small.interaction_graph, small.partition, "L1", path=path)
    assert isinstance(fig, Figure)
    data = path.read_bytes()
    assert len(data) > 500
    if suffix.lower() == ".svg":
        assert b"<svg" in data[:2000]
    else:
        assert data.startswith(MAGIC[suffix.lower()])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


@pytest.mark.parametrize("func", [plot_modules, plot_module_map])
def test_unknown_suffix_raises_before_drawing(small, tmp_path, func) -> None:
    for name in ("figure.jpg", "figure"):
        with pytest.raises(ValueError, match=r"\.pdf.*\.png.*\.svg") as info:
            func(small.interaction_graph, small.partition, path=tmp_path / name)
        assert func.__name__ in str(info.value)
    with pytest.raises(ValueError, match=r"suffix '\.eps'"):
        plot_interactions(
            small.interaction_graph, small.partition, "L0", path=tmp_path / "figure.eps"
        )
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_a_clear_error(small, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_modules(
            small.interaction_graph, small.partition, path=tmp_path / "nope" / "modules.png"
        )


# ---------------------------------------------------------------------------- plot_modules
def test_module_graph_artists(small) -> None:
    m = small.partition.membership
    assert small.n_modules == 2 and (m < 0).sum() == 8  # the planted structure was found
    fig = plot_modules(small.interaction_graph, small.partition)
    ax = fig.axes[0]
    colls = scatters(fig)
    # one scatter per module, then one for the features in no module
    assert len(colls) == small.n_modules + 1
    colors = module_colors(small.n_modules)
    for i, coll in enumerate(colls[:-1]):
        assert len(coll.get_offsets()) == np.count_nonzero(m == i)
        np.testing.assert_allclose(coll.get_facecolor()[0], colors[i])
    assert len(colls[-1].get_offsets()) == np.count_nonzero(m < 0)
    np.testing.assert_allclose(colls[-1].get_facecolor()[0], NO_MODULE_COLOR)
    # every edge above ε in a single LineCollection
    (edges,) = lines(fig)
    assert len(edges.get_segments()) == expected_edges(small, 0.0) > 0
    # layer names on the x axis; legend names every module and the features in no module
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert [s.split("\n")[0] for s in labels] == list(small.interaction_graph.layers)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["module 0 (18)", "module 1 (18)", "no module (8)"]
    assert not any("showing" in t.get_text() for t in ax.texts)


def test_min_cost_thins_edges(small) -> None:
    costs = np.concatenate([c.ravel() for c in small.interaction_graph.costs().values()])
    threshold = float(np.median(costs[costs > 0]))
    (edges,) = lines(plot_modules(small.interaction_graph, small.partition, min_cost=threshold))
    assert len(edges.get_segments()) == expected_edges(small, threshold)
    assert 0 < len(edges.get_segments()) < expected_edges(small, 0.0)
    (edges,) = lines(plot_modules(small.interaction_graph, small.partition, min_cost=1e9))
    assert len(edges.get_segments()) == 0


def test_edges_inside_modules_take_module_colour(small) -> None:
    fig = plot_modules(small.interaction_graph, small.partition)
    (edges,) = lines(fig)
    rgb = edges.get_colors()[:, :3]
    colors = module_colors(small.n_modules)[:, :3]
    # the planted graph has no cross-module edges: every edge has a module colour
    assert all(np.isclose(rgb[:, None, :], colors[None]).all(-1).any(-1))


def test_subsampled_layers_are_announced(wide) -> None:
    budget = 40
    fig = plot_modules(wide.interaction_graph, wide.partition, max_features_per_layer=budget)
    ax = fig.axes[0]
    notes = [t.get_text() for t in ax.texts if "showing" in t.get_text()]
    assert len(notes) == 1
    assert f"showing at most {budget} of up to 200 features per layer" in notes[0]
    assert "3 of 4 layers subsampled" in notes[0]
    g, m = wide.interaction_graph, wide.partition.membership
    # at most `budget` nodes per layer; every module present in a layer keeps a node there
    xs = np.concatenate([c.get_offsets()[:, 0] for c in scatters(fig)])
    per_layer = np.bincount(np.rint(xs).astype(int), minlength=len(g.layers))
    assert per_layer.tolist() == [budget, budget, budget, 30]
    colls = scatters(fig)
    assert len(colls) == wide.n_modules + 1
    for d in range(len(g.layers)):
        present = np.unique(m[g.offsets[d] : g.offsets[d + 1]])
        drawn = [i for i, c in enumerate(colls) if np.any(np.rint(c.get_offsets()[:, 0]) == d)]
        assert len(drawn) == present.size
    # edges: exactly those above ε among the drawn features
    picks = [
        _pick(m[g.offsets[d] : g.offsets[d + 1]], g.importance[name], budget)
        for d, name in enumerate(g.layers)
    ]
    expected = sum(
        int(np.count_nonzero(c[np.ix_(picks[d + 1], picks[d])] > 0))
        for d, c in enumerate(g.costs().values())
    )
    (edges,) = lines(fig)
    assert len(edges.get_segments()) == expected > 0
    # every segment starts and ends on a drawn node
    nodes = {tuple(np.round(p, 9)) for c in colls for p in c.get_offsets()}
    ends = np.asarray(edges.get_segments()).reshape(-1, 2)
    assert all(tuple(np.round(p, 9)) in nodes for p in ends)


def test_pick_keeps_most_important_per_module() -> None:
    membership = np.array([0] * 6 + [1] * 3 + [-1] * 3)
    importance = np.arange(12, dtype=float)
    picked = _pick(membership, importance, 6)
    # module 0 (6 of 12) gets 3 slots, module 1 and none (3 each) 1 or 2, most important first
    assert picked[:3].tolist() == [5, 4, 3]
    assert set(membership[picked]) == {0, 1, -1}
    assert picked.size == 6
    assert _pick(membership, importance, 50).size == 12


@pytest.mark.parametrize("budget", [1, 2, 3, 7, 50, 99])
def test_quotas_are_proportional(budget) -> None:
    counts = np.array([60, 25, 10, 4, 1])
    q = _quotas(counts, budget)
    assert q.sum() == min(budget, counts.sum())
    assert np.all(q <= counts)
    if budget >= counts.size:
        assert np.all(q >= 1)
    if budget >= 10 * counts.size:
        assert np.all(np.abs(q - budget * counts / counts.sum()) <= 1.5)


def test_legend_is_capped_and_palette_is_distinct() -> None:
    graph = planted_graph([30, 30, 30], n_blocks=25, n_isolated=5)
    m = np.concatenate([np.r_[np.arange(25), np.full(5, -1)] for _ in range(3)])
    result = fixed_result(graph, m)
    fig = plot_modules(result.interaction_graph, result.partition)
    colls = scatters(fig)
    assert len(colls) == 26
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(legend) == 22
    assert legend[20] == "+5 more modules" and legend[21].startswith("no module")
    faces = np.array([c.get_facecolor()[0] for c in colls[:-1]])
    assert len({tuple(np.round(f, 6)) for f in faces}) == 25


def test_palette() -> None:
    for n, gap in ((25, 0.09), (80, 0.06), (400, 0.02)):
        c = module_colors(n)
        assert c.shape == (n, 4)
        dist = np.linalg.norm(c[:, None, :3] - c[None, :, :3], axis=-1)
        assert dist[~np.eye(n, dtype=bool)].min() > gap  # distinct colours, in RGB distance
        assert np.linalg.norm(c[:, :3] - np.asarray(NO_MODULE_COLOR[:3]), axis=1).min() > 0.1
    assert module_colors(0).shape == (0, 4)
    assert module_colors(3, "viridis").shape == (3, 4)
    np.testing.assert_allclose(module_colors(2, ["red", "#0000ff"])[:, :3], [[1, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="at least 3"):
        module_colors(3, ["red", "blue"])
    with pytest.raises(ValueError, match="colormap"):
        module_colors(3, "not-a-colormap")


def test_bad_arguments(small) -> None:
    with pytest.raises(ValueError, match="max_features_per_layer"):
        plot_modules(small.interaction_graph, small.partition, max_features_per_layer=0)
    with pytest.raises(ValueError, match="min_cost"):
        plot_modules(small.interaction_graph, small.partition, min_cost=-1.0)
    # a ModuleResult where the graph goes: the message names both ways to plot it
    with pytest.raises(
        TypeError, match=r"needs an InteractionGraph.*result\.plot\(\).*ModuleResult"
    ):
        plot_modules(small, small.partition)


@pytest.mark.parametrize("func", [plot_modules, plot_module_map])
def test_bad_partition_type(small, func) -> None:
    g = small.interaction_graph
    for bad in (None, "module 0", 3, {0, 1}, small):
        with pytest.raises(TypeError, match=rf"{func.__name__}: partition must be a Partition"):
            func(g, bad)
    with pytest.raises(TypeError, match="partition must be a Partition"):
        plot_interactions(g, 1.5, "L0")
    with pytest.raises(TypeError, match="ints"):  # a sequence, but not of ints
        func(g, np.zeros(g.n_nodes))
    with pytest.raises(ValueError, match="shape"):  # too short
        func(g, small.partition.membership[:-1])


def test_no_module_at_all() -> None:
    graph = planted_graph([5, 4, 3], n_blocks=1, n_isolated=0)
    graph = dataclasses.replace(graph, edges={k: np.zeros_like(v) for k, v in graph.edges.items()})
    result = fixed_result(graph, np.full(graph.n_nodes, -1))
    fig = plot_modules(result.interaction_graph, result.partition)
    assert len(scatters(fig)) == 1
    (edges,) = lines(fig)
    assert len(edges.get_segments()) == 0
    plot_module_map(result.interaction_graph, result.partition)
    plot_interactions(result.interaction_graph, result.partition, "L0")


# ---------------------------------------------------------------------------- other views
def test_module_map_counts(small) -> None:
    fig = plot_module_map(small.interaction_graph, small.partition)
    ax = fig.axes[0]
    (image,) = ax.images
    g = small.interaction_graph
    assert image.get_array().shape[:2] == (small.n_modules + 1, len(g.layers))
    assert sum(int(t.get_text()) for t in ax.texts) == g.n_nodes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["module 0", "module 1", "none"]


def test_interactions_heatmap(small) -> None:
    fig = plot_interactions(small.interaction_graph, small.partition, "L0", log=False)
    ax = fig.axes[0]
    (image,) = ax.images
    E = small.edges[("L0", "L1")]
    shown = np.asarray(image.get_array())
    assert shown.shape == E.shape
    np.testing.assert_allclose(np.sort(shown.ravel()), np.sort(E.ravel()))
    # rows and columns grouped by module: 2 modules + none on each side → 2 boundaries each
    assert len(ax.lines) == 4
    assert len(ax.patches) == 2  # one outline per module block
    # off-block entries are zero: the planted graph has no cross-module interactions
    m_src = np.sort(
        np.where(small.partition.membership[:12] < 0, 99, small.partition.membership[:12])
    )
    m_dst = np.sort(
        np.where(small.partition.membership[12:28] < 0, 99, small.partition.membership[12:28])
    )
    assert np.all(shown[m_dst[:, None] != m_src[None, :]] == 0)
    plot_interactions(small.interaction_graph, small.partition, "L2", log=True)


def test_interactions_bad_layer(small) -> None:
    with pytest.raises(ValueError, match=r"'nope' is not a node layer.*\['L0', 'L1', 'L2'\]"):
        plot_interactions(small.interaction_graph, small.partition, "nope")
    with pytest.raises(ValueError, match=r"'output' is the last node layer.*\['L0', 'L1', 'L2'\]"):
        plot_interactions(small.interaction_graph, small.partition, "output")


# ---------------------------------------------------------------------------- graph first
def artists(fig: Figure) -> list[object]:
    """Everything drawn in the first axes: collections (kind, offsets, segments, colours),
    images, texts, tick labels, legend and title, rounded for comparison."""
    ax = fig.axes[0]

    def r(a: object) -> list[float]:
        return np.round(np.asarray(a, dtype=float), 9).ravel().tolist()

    out: list[object] = []
    for c in ax.collections:
        segments = c.get_segments() if isinstance(c, LineCollection) else []
        out.append((type(c).__name__, r(c.get_offsets()), [r(s) for s in segments]))
        out.append((r(c.get_facecolor()), r(c.get_edgecolor()), r(c.get_linewidths())))
    out += [r(np.asarray(i.get_array())) for i in ax.images]
    out += [t.get_text() for t in ax.texts]
    out += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    legend = ax.get_legend()
    out += [t.get_text() for t in legend.get_texts()] if legend is not None else []
    out.append(ax.get_title())
    return out


def test_staged_pipeline_with_public_functions(tmp_path) -> None:
    model = block_diagonal_mlp([[4, 6, 3], [4, 6, 3]], seed=0)
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    graph = modgraph.interaction_graph(model, x, progress=False)
    partition = modgraph.leiden_modules(graph, n_restarts=2)
    path = tmp_path / "modules.png"
    fig = plot_modules(graph, partition, path=path)
    assert path.read_bytes().startswith(MAGIC[".png"])
    n = len(partition.modules)
    assert len(scatters(fig)) == n + int((partition.membership < 0).any())
    title = fig.axes[0].get_title()
    assert title.startswith(f"{n} module") and f"Q_deg = {partition.score:.3f}" in title
    plot_module_map(graph, partition)
    plot_interactions(graph, partition, graph.layers[0])
    # the one-call path draws the same figure
    same = ModuleResult(graph, partition).plot()
    assert artists(same) == artists(fig)


def test_plain_membership_draws_as_the_partition(small) -> None:
    g, p = small.interaction_graph, small.partition
    as_dict = dict(small.module_of)
    as_array = np.asarray(p.membership)
    as_list = as_array.tolist()
    reference = [
        artists(plot_modules(g, p)),
        artists(plot_module_map(g, p)),
        artists(plot_interactions(g, p, "L1")),
    ]
    for membership in (as_dict, as_array, as_list):
        drawn = [
            artists(plot_modules(g, membership)),
            artists(plot_module_map(g, membership)),
            artists(plot_interactions(g, membership, "L1")),
        ]
        assert drawn == reference
    # the default title of a plain membership: Q_deg and the cross share computed at γ = 1
    assert p.resolution == 1.0
    title = plot_modules(g, as_dict).axes[0].get_title()
    assert f"Q_deg = {modgraph.modularity_score(g, as_dict):.3f}" in title
    assert f"Q_deg = {p.score:.3f}" in title


# ---------------------------------------------------------------------------- integration
def test_import_is_light() -> None:
    code = "import sys, modgraph.plot; assert 'matplotlib' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_trained_result_and_delegation(trained, tmp_path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    backend = matplotlib.get_backend()
    fig = trained.plot(path=tmp_path / "modules.png", title="planted")
    assert fig.axes[0].get_title() == "planted"
    assert len(scatters(fig)) == trained.n_modules + int((trained.partition.membership < 0).any())
    (edges,) = lines(fig)
    assert len(edges.get_segments()) == expected_edges(trained, 0.0)
    plot_module_map(trained.interaction_graph, trained.partition)
    plot_interactions(
        trained.interaction_graph, trained.partition, trained.interaction_graph.layers[0]
    )
    assert plt.get_fignums() == before  # nothing registered with pyplot
    assert matplotlib.get_backend() == backend

    fig, axes = plt.subplots(1, 2)
    try:
        assert plot_modules(trained.interaction_graph, trained.partition, ax=axes[0]) is fig
        assert plot_module_map(trained.interaction_graph, trained.partition, ax=axes[1]) is fig
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- hostile names
#: Layer names a model may have (any non-empty str without "."): mathtext, TeX, escapes,
#: control characters, unicode, emoji, very long.
HOSTILE = [
    "$\\frac$",
    "a$b",
    "50%",
    "x_{1}",
    "\\alpha",
    "$x$ and $$",
    "\\$y$",
    "Ωμέγα 層 🙂",
    " ",
    "two\nlines",
    "tab\there\x07",
    "long_" * 60,
]
#: Names drawn as they are (short, printable).
VERBATIM = [n for n in HOSTILE if n.isprintable() and len(n) <= 24]


def drawn(text: str) -> str:
    """What matplotlib draws for ``text``: it must not be mathtext; escaped dollars unescaped."""
    assert not matplotlib.cbook.is_math_text(text), text
    return text.replace("\\$", "$")


def check_texts(fig: Figure) -> None:
    """No text of ``fig`` is mathtext, except matplotlib's own log-axis tick labels."""
    for text in fig.findobj(matplotlib.text.Text):
        if not text.get_text().startswith("$\\mathdefault{"):
            drawn(text.get_text())


def check_name(label: str, name: str) -> None:
    """``label`` shows layer ``name`` literally: verbatim, or (control characters, very long)
    on one line, its control characters escaped, at most 40 characters, with an ellipsis."""
    if name in VERBATIM:
        assert label == name
        return
    assert "\n" not in label and len(label) <= 40
    assert label[:3] == name[:3]
    if len(name) > 40:
        assert "…" in label


@pytest.fixture(scope="module")
def hostile() -> ModuleResult:
    names = [*HOSTILE[1:], HOSTILE[0]]  # a mathtext name as the last layer too
    graph = planted_graph([6, 8, 5, 7, 6, 4, 5, 6, 5, 4, 6, 3], 2, 1, layers=names)
    return ModuleResult(graph, leiden_modules(graph, n_restarts=1))


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@pytest.mark.parametrize("n_layers", [4, 12])  # tick labels "name\n(k)", and rotated names only
@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_hostile_layer_names_are_drawn_literally(hostile, tmp_path, n_layers, suffix) -> None:
    g0 = hostile.interaction_graph
    keep = list(g0.layers[-n_layers:])
    graph = InteractionGraph.from_matrices(
        [g0.edges[pair] for pair in zip(keep[:-1], keep[1:])],
        epsilon=g0.epsilon,
        layers=keep,
        importance=[g0.importance[name] for name in keep],
    )
    partition = leiden_modules(graph, n_restarts=1)
    names = list(graph.layers)

    def ticks(ax) -> list[str]:
        labels = [drawn(t.get_text()) for t in ax.get_xticklabels()]
        if "\n(" in labels[0]:  # "name\n(k)"
            assert [t.rsplit("\n(", 1)[1] for t in labels] == [f"{k})" for k in graph.sizes]
            labels = [t.rsplit("\n(", 1)[0] for t in labels]
        return labels

    for func in (plot_modules, plot_module_map):
        path = tmp_path / f"{func.__name__}{suffix}"
        fig = func(graph, partition, path=path)
        assert path.stat().st_size > 500
        for label, name in zip(ticks(fig.axes[0]), names, strict=True):
            check_name(label, name)
        check_texts(fig)
    for source, target in zip(names[:-1], names[1:]):
        path = tmp_path / f"interactions{suffix}"
        fig = plot_interactions(graph, partition, source, path=path)
        assert path.stat().st_size > 500
        ax = fig.axes[0]
        label = drawn(ax.get_xlabel())
        check_name(label.split("'", 1)[1].rsplit("'", 1)[0], source)
        label = drawn(ax.get_ylabel())
        check_name(label.split("'", 1)[1].rsplit("'", 1)[0], target)
        title = drawn(ax.get_title())
        assert title.startswith("interactions '") and title.endswith("'")
        check_texts(fig)
    # result.plot draws the same figure; a title given by the user is drawn as given (mathtext)
    path = tmp_path / f"result{suffix}"
    fig = ModuleResult(dataclasses.replace(graph, bases={}), partition).plot(
        path=path, title="$\\epsilon$ modules"
    )
    assert path.stat().st_size > 500
    assert fig.axes[0].get_title() == "$\\epsilon$ modules"


class Hostile(torch.nn.Module):
    """An MLP whose submodules have hostile names."""

    def __init__(self, names: list[str], width: int = 4) -> None:
        super().__init__()
        self.names = names
        for name in names:
            self.add_module(name, torch.nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.names[:-1]:
            x = torch.tanh(self._modules[name](x))
        return self._modules[self.names[-1]](x)


@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_hostile_names_in_spectra(tmp_path, suffix) -> None:
    from modgraph.plot import plot_spectra

    # an analysis refuses node layer names GraphML cannot hold (a BEL character) before it starts
    names = [n for n in HOSTILE[:6] + HOSTILE[-5:] if "\x07" not in n]
    model = Hostile(names).double()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    report = modgraph.degeneracy_report(model, x, progress=False)
    assert [layer.name for layer in report.layers] == [*names, "output"]
    path = tmp_path / f"spectra{suffix}"
    fig = plot_spectra(report, path=path)
    assert path.stat().st_size > 500
    shown = [ax for ax in fig.axes if ax.get_visible()]
    for ax, name in zip(shown, report.layers, strict=True):
        label = drawn(ax.get_title()).rsplit(": d=", 1)[0]
        check_name(label, name.name)
    # all layers in one axes: the names are in the legend
    path = tmp_path / f"spectra_one{suffix}"
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_spectra(report, ax=ax, path=path) is fig
    assert path.stat().st_size > 500
    legend = [drawn(t.get_text()) for t in ax.get_legend().get_texts()]
    for name in names:
        assert any(check_label_in(text, name) for text in legend), name
    check_texts(fig)


def check_label_in(text: str, name: str) -> bool:
    """Whether legend entry ``text`` ("name: G (activations)"...) names layer ``name``."""
    label = text.rsplit(": ", 1)[0]
    try:
        check_name(label, name)
    except AssertionError:
        return False
    return True
