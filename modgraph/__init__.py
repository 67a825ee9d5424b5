"""modgraph: find the modules inside a trained neural network.

Implements the interaction basis, interaction graph and degeneracy-based modularity of
arXiv 2405.10927 ("Using Degeneracy in the Loss Landscape for Mechanistic Interpretability").

>>> from modgraph import find_modules  # doctest: +SKIP
>>> result = find_modules(model, data)  # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from .api import find_modules
from .basis import InteractionBasis, interaction_basis
from .cluster import Partition, leiden_modules
from .degeneracy import DegeneracyReport, LayerDegeneracy, UnitSetDegeneracy, degeneracy_report
from .errors import ModgraphError, ModgraphTypeError, ModgraphValueError
from .faithfulness import (
    AblationCurve,
    BehaviouralLoss,
    SparsityReport,
    ablation_curve,
    behavioural_loss,
    edge_ablation_curve,
    sparsity_report,
)
from .graph import InteractionGraph
from .interactions import interaction_graph
from .io import read_graphml
from .modularity import PartitionCost, degeneracy_cost, modularity_score, partition_cost
from .options import Options
from .result import ModuleResult

__version__ = "0.1.0"

__all__ = [
    "AblationCurve",
    "BehaviouralLoss",
    "DegeneracyReport",
    "InteractionBasis",
    "InteractionGraph",
    "LayerDegeneracy",
    "ModgraphError",
    "ModgraphTypeError",
    "ModgraphValueError",
    "ModuleResult",
    "Options",
    "Partition",
    "PartitionCost",
    "SparsityReport",
    "UnitSetDegeneracy",
    "ablation_curve",
    "behavioural_loss",
    "degeneracy_cost",
    "degeneracy_report",
    "edge_ablation_curve",
    "find_modules",
    "interaction_basis",
    "interaction_graph",
    "leiden_modules",
    "modularity_score",
    "partition_cost",
    "read_graphml",
    "sparsity_report",
]
