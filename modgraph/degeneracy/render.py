"""The text table of a degeneracy report, rendered from its JSON form.

``str(report)`` is ``render_report(report.to_dict())``; a ``degeneracy.json`` written by
``report.to_json(path)`` or ``modgraph report --out`` renders the same after ``json.load``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["render_report"]


def render_report(report: Mapping[str, Any]) -> str:
    """The text table of a report given as :meth:`DegeneracyReport.to_dict` returns it: totals,
    one row per node layer and per unit set, and the notes."""
    totals = report["totals"]
    tol = (
        f"{report['hamming_tol']}"
        if isinstance(report["hamming_tol"], int)
        else f"{report['hamming_tol']:g} ({report['hamming_points']} points)"
    )
    lines = [
        f"Degeneracy report: {report['n_parameters']:,} parameters, {report['n_samples']:,} samples, "
        f"rtol={report['rtol']:g}, hamming_tol={tol}",
        f"  free directions, source 1 (activations span a subspace):  {totals['free_activation']:,}",
        f"  free directions, source 3 (synchronised units, beyond 1): {totals['free_synchronised']:,}",
        f"  upper bound on the effective parameter count:             "
        f"{totals['effective_parameters_bound']:,}",
        f"  free to second order only, source 2 (not in the bound):   {totals['free_second_order']:,}",
        "",
    ]
    head = ("layer", "width", "rank G", "read by", "free (1)", "rank M'", "free (2)")
    rows = []
    notes = []
    for layer in report["layers"]:
        reader = layer["reader"] or "-"
        free2 = "n/a" if layer["free_second_order"] is None else str(layer["free_second_order"])
        rows.append(
            (
                layer["name"],
                str(layer["width"]),
                str(layer["activation_rank"]),
                reader,
                str(layer["free_activation"]),
                str(layer["jacobian_rank"]),
                free2,
            )
        )
        if layer["reader_note"]:
            notes.append(f"  {layer['name']}: {layer['reader_note']}")
    lines += _table(head, rows)
    if notes:
        lines += ["", "Notes on layers:", *notes]
    if report["unit_sets"]:
        lines.append("")
        head = (
            "units of",
            "activation",
            "width",
            "dead",
            "always on",
            "groups (sizes)",
            "Σ(k²−k)",
            "free (3)",
        )
        rows = []
        notes = []
        for u in report["unit_sets"]:
            if u["analysable"]:
                sizes = ",".join(str(s) for s in u["group_sizes"]) or "-"
                rows.append(
                    (
                        u["layer"],
                        u["activation"],
                        str(u["width"]),
                        str(len(u["dead"])),
                        str(len(u["always_on"])),
                        f"{len(u['groups'])} ({sizes})",
                        str(u["mixing_directions"]),
                        str(u["free_directions"]),
                    )
                )
            elif u["activation"] == "linear":
                rows.append(
                    (
                        u["layer"],
                        "linear",
                        str(u["width"]),
                        "-",
                        "-",
                        "-",
                        "-",
                        str(u["free_directions"]),
                    )
                )
            else:
                rows.append(
                    (u["layer"], u["activation"], str(u["width"]), "-", "-", "-", "-", "n/a")
                )
            if u["note"]:
                notes.append(f"  {u['layer']}: {u['note']}")
        lines += _table(head, rows)
        if notes:
            lines += ["", "Notes on units:", *notes]
    if report.get("attention"):
        lines.append("")
        rows = []
        for a in report["attention"]:
            sizes = ",".join(str(len(g)) for g in a["groups"]) or "-"
            diff = np.asarray(a["max_difference"], dtype=np.float64).reshape(a["n_heads"], -1)
            pairs = diff[np.triu_indices(a["n_heads"], 1)]
            closest = f"{pairs.min():.3g}" if pairs.size else "-"
            rows.append((a["module"], str(a["n_heads"]), f"{len(a['groups'])} ({sizes})", closest))
        head = ("attention", "heads", "groups (sizes)", "closest pair")
        lines += _table(head, rows)
    return "\n".join(lines)


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(r) for r in rows)]
