"""The degeneracy report: the three sources of free parameter directions, measured (METHOD §1).

A parameter direction is *free* when moving along it leaves the network's outputs on the data
unchanged. :func:`degeneracy_report` measures, on a user's model and data, the three sources the
method starts from (arXiv 2405.10927 §1):

1. **Activations span a subspace.** ``G_l = Cov(a_l)`` of rank ``r_G < d``: the weights of the
   ``nn.Linear`` that reads layer ``l`` have ``d_next · (d − r_G)`` free directions.
2. **Gradients passed back span a subspace.** ``M'_l = E[J_lᵀ J_l]``, ``J_l = ∂out/∂a_l``, of rank
   ``r_M``: weights writing into ``ker M'_l`` are free to first order (so to second order in the
   loss). Reported separately, never subtracted from the parameter count.
3. **Synchronised ReLU-like units.** The firing matrix ``B[x, i] = 1[z_i(x) > 0]`` groups units
   that switch on the same data points (Hamming distance ``≤ hamming_tol``); on the data such a
   group is one linear block whose input rows and output columns can be mixed. Dead units free
   their weights, always-on units are linear and merge with their neighbours.

Everything is computed from streaming float64 sums: one pass records the node layers (the same
:class:`~modgraph.moments.Moments` accumulator as the interaction basis) together with the firing
counts ``n_i = Σ_x B[x, i]`` and the co-firing Gram ``K = BᵀB`` (``Hamming(i, j) = n_i + n_j −
2 K_ij``); a second pass is :func:`~modgraph.jacobian.global_jacobian_grams`. Source-3 directions are
counted *beyond* source 1, so that ``parameters − (source 1 + source 3)`` is an upper bound on the
effective parameter count. See ``docs/degeneracy.md`` for every formula.

The package has one room per concern: :mod:`.report` (the result types), :mod:`.render` (the
text table), :mod:`.firing` (the streaming firing statistics), :mod:`.counts` (the linear
algebra of the counts) and :mod:`.assemble` (the passes and the assembly). Its figure is
:func:`modgraph.plot.plot_spectra`, beside the other figures.
"""

from .assemble import degeneracy_report
from .attention import AttentionDegeneracy
from .report import DegeneracyReport, LayerDegeneracy, UnitSetDegeneracy

__all__ = [
    "AttentionDegeneracy",
    "DegeneracyReport",
    "LayerDegeneracy",
    "UnitSetDegeneracy",
    "degeneracy_report",
]
