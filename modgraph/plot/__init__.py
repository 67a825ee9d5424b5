"""Figures of module structure (matplotlib, safe under any backend).

Three views of an interaction graph and its modules (a :class:`~modgraph.Partition` from
:func:`~modgraph.leiden_modules`, or a plain membership), graph first:

- :func:`plot_modules`: the layered feature graph, features coloured by module and edges drawn
  by degeneracy cost (also :meth:`ModuleResult.plot`).
- :func:`plot_module_map`: a module × layer matrix of feature counts (which layers a module spans).
- :func:`plot_interactions`: the interaction matrix ``E`` of one layer pair as a heatmap, rows and
  columns sorted by module.

one of a :class:`~modgraph.DegeneracyReport`: :func:`plot_spectra`, the eigenvalue spectra
per node layer (also :meth:`DegeneracyReport.plot_spectra`), and one of ablation curves
(:mod:`modgraph.faithfulness`): :func:`plot_ablation`, one line per basis.

Every function draws into ``ax`` when given (else into a new :class:`matplotlib.figure.Figure`,
which is not registered with pyplot, so nothing needs closing and nothing pops up), returns the
figure, and saves it when ``path`` is given: PNG, SVG or PDF by the file suffix, written
atomically. matplotlib is imported inside the functions, so ``import modgraph`` stays light, and the
global backend is never changed.

Layer names come from the model and may hold anything (``$``, TeX, newlines, emoji): the figures
draw them literally, never as mathtext, on one line (control characters escaped as ``\\n``...),
shortened in the middle with "…" past 32 characters. A ``title`` you pass is your own text and is
drawn as given, mathtext included.
"""

from ._figure import SAVE_FORMATS
from .ablation import plot_ablation
from .colors import NO_MODULE_COLOR, module_colors
from .matrices import plot_interactions, plot_module_map
from .modules import plot_modules
from .spectra import plot_spectra

__all__ = [
    "NO_MODULE_COLOR",
    "SAVE_FORMATS",
    "module_colors",
    "plot_ablation",
    "plot_interactions",
    "plot_module_map",
    "plot_modules",
    "plot_spectra",
]
