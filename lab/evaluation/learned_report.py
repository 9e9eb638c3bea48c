"""Tables of docs/evaluation.md's "Learned metric" section, from ``gotd eval`` results.

Reads the ``results.json`` of runs with ``gotd-auto-fixed`` (the validation over the fixed grid: what
the server does by default), ``gotd-auto-learned`` (the same grid plus the learned-metric settings),
the fixed settings of the grid and the learned settings without validation
(:mod:`gotd.lab.evaluation.autocost`) and DSIR, and prints per corpus, at one k: precision, perplexity
and equal-token perplexity of each, mean ± standard error across seeds, the hindsight-best fixed and
learned settings, the paired precision gain of ``gotd-auto-learned`` over ``gotd-auto-fixed`` and how
many tasks the validation chose a learned setting on.

Run: ``python -m gotd.lab.evaluation.learned_report RESULTS.json [...]`` (one file per corpus).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from gotd.lab.evaluation.autocost import grid_name
from gotd.lab.evaluation.autocost_report import _mean_se
from gotd.server.selection.validation import FIXED_GRID

__all__ = ["learned_tables", "main"]

FIXED = [grid_name(s) for s in FIXED_GRID]
BASE, LEARNED = "gotd-auto-fixed", "gotd-auto-learned"


def _paired(rows: dict[str, list[dict[str, Any]]], a: str, b: str) -> tuple[float, float]:
    """Mean and standard error (across seeds) of the per-task precision difference ``a - b``."""
    other = {(r["label"], r["seed"]): r["precision"] for r in rows[b]}
    diffs = [{**r, "d": r["precision"] - other[r["label"], r["seed"]]} for r in rows[a]]
    return _mean_se(diffs, "d")


def learned_tables(result: dict[str, Any], k_frac: float = 0.05) -> list[str]:
    """Markdown lines for one corpus's results."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in result["rows"]:
        if abs(r["k_frac"] - k_frac) < 1e-9:
            by[r["method"]].append(r)
    mean = {m: _mean_se(rows, "precision")[0] for m, rows in by.items()}
    fixed = max((m for m in FIXED if m in by), key=lambda m: mean[m])
    learned = sorted((m for m in by if "-metric" in m), key=lambda m: -mean[m])
    methods = [BASE, LEARNED, fixed, *learned, "gotd-fused-w0.5-rel0.05", "dsir"]
    lines = [f"| k = {k_frac:.0%} | precision | ppl | ppl (equal tokens) |", "|---|---|---|---|"]
    for m in dict.fromkeys(x for x in methods if x in by):
        cells = [_mean_se(by[m], key) for key in ("precision", "ppl", "ppl_budget")]
        note = " (hindsight-best fixed)" if m == fixed else ""
        lines.append(
            f"| `{m}`{note} | {cells[0][0]:.3f} ± {cells[0][1]:.3f} | {cells[1][0]:.0f} ± {cells[1][1]:.0f} "
            f"| {cells[2][0]:.0f} ± {cells[2][1]:.0f} |"
        )
    if BASE in by and LEARNED in by:
        gain = _paired(by, LEARNED, BASE)
        chosen = [r["diagnostics"].get("chosen", "") for r in by[LEARNED]]
        picks = sum("-metric" in c for c in chosen)
        vs_best = _paired(by, LEARNED, fixed)
        lines += [
            "",
            f"- `{LEARNED}` − `{BASE}`: {gain[0]:+.3f} ± {gain[1]:.3f} precision (paired per task); "
            f"a learned setting chosen on {picks} of {len(chosen)} tasks; − hindsight-best fixed `{fixed}`: "
            f"{vs_best[0]:+.3f} ± {vs_best[1]:.3f}.",
        ]
    return lines


def main(argv: list[str] | None = None) -> None:
    for path in argv if argv is not None else sys.argv[1:]:
        result = json.loads(Path(path).read_text())
        print(f"## {path}\n")
        print("\n".join(learned_tables(result)))
        print()


if __name__ == "__main__":
    main()
