"""Faithfulness: do the dropped directions and the cut interactions matter to the network?

A module map claims that the features a basis drops, and the interactions below ε, do not matter
to what the network computes. This package tests that claim on the user's model, by ablation,
and compares the interaction basis with the baselines ``"pca"`` and ``"neuron"``:

- ``loss``: :func:`behavioural_loss`, the mean squared change of the output an ablated forward
  causes (and the change of a metric such as accuracy), scored in one pass for many forwards;
- ``ablate``: the ablated forwards themselves, through the session's hooks (features of a node
  layer; interactions of a layer pair);
- ``curves``: :func:`ablation_curve` (loss against features kept) and
  :func:`edge_ablation_curve` (loss against edges kept), per layer and basis;
- ``epsilon``: ε per layer pair from edge ablations (:func:`ablation_epsilon`, and
  ``find_modules(epsilon="ablation")``);
- ``sparsity``: :func:`sparsity_report`, the edges that carry 50 / 90 / 99 % of the weight.

The curves are drawn by :func:`modgraph.plot.plot_ablation`; docs/faithfulness.md shows them for
a pretrained MNIST MLP and the two-task MLP.
"""

from .curves import AblationCurve, ablation_curve, edge_ablation_curve
from .epsilon import EpsilonChoice, ablation_epsilon
from .loss import BehaviouralLoss, behavioural_loss
from .sparsity import SparsityReport, SparsityRow, sparsity_report

__all__ = [
    "AblationCurve",
    "BehaviouralLoss",
    "EpsilonChoice",
    "SparsityReport",
    "SparsityRow",
    "ablation_curve",
    "ablation_epsilon",
    "behavioural_loss",
    "edge_ablation_curve",
    "sparsity_report",
]
