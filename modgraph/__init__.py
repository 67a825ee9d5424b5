"""modgraph: find the modules inside a trained neural network.

Implements the interaction basis, interaction graph and degeneracy-based modularity of
arXiv 2405.10927 ("Using Degeneracy in the Loss Landscape for Mechanistic Interpretability").
"""

from .basis import InteractionBasis, interaction_basis
from .errors import ModgraphError, ModgraphTypeError, ModgraphValueError

__version__ = "0.1.0"

__all__ = [
    "InteractionBasis",
    "ModgraphError",
    "ModgraphTypeError",
    "ModgraphValueError",
    "interaction_basis",
]
