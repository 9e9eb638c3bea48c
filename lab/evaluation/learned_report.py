"""Tables of docs/evaluation.md's "Learned cost" sections, from ``gotd eval`` results.

Reads the ``results.json`` of runs with ``gotd-auto-learned`` (the server's default grid: the fixed
settings and the learned ones), ``gotd-auto-fixed`` (the fixed settings only), their smaller
validations (``-f2``, ``-s512``), the learned settings without validation, the fixed settings of the grid
and the baselines (:mod:`gotd.lab.evaluation.autocost`; a merged report carries them all), and prints
per corpus, at one k: precision, perplexity and equal-token perplexity of each, mean ± standard error
across seeds, the hindsight-best fixed setting, and per validated variant its paired precision gain over
``gotd-auto-fixed``, the hindsight-best fixed setting and ``gotd-auto-learned``, how often it chose a
learned setting, the hindsight-best fixed setting and a per-task best, and its median validation time.

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


AUTO = (
    "gotd-auto-learned",
    "gotd-auto-learned-f2",
    "gotd-auto-learned-s512",
    BASE,
    "gotd-auto-fixed-f2",
    "gotd-auto-fixed-s512",
)
BASELINES = ("gotd-default", "dsir", "centroid", "tsds")


def _cells(rows: list[dict[str, Any]]) -> str:
    c = [_mean_se(rows, key) for key in ("precision", "ppl", "ppl_budget")]
    return f"{c[0][0]:.3f} ± {c[0][1]:.3f} | {c[1][0]:.0f} ± {c[1][1]:.0f} | {c[2][0]:.0f} ± {c[2][1]:.0f}"


def learned_tables(result: dict[str, Any], k_frac: float = 0.05) -> list[str]:
    """Markdown lines for one corpus's results: every validated variant, the learned settings without
    validation, every fixed setting and the baselines; paired gains; picks; validation time."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in result["rows"]:
        if abs(r["k_frac"] - k_frac) < 1e-9:
            by[r["method"]].append(r)
    mean = {m: _mean_se(rows, "precision")[0] for m, rows in by.items()}
    fixed = max((m for m in FIXED if m in by), key=lambda m: mean[m])
    learned = sorted((m for m in by if "-metric" in m), key=lambda m: -mean[m])
    grid = sorted((m for m in FIXED if m in by), key=lambda m: -mean[m])
    lines = [f"| k = {k_frac:.0%} | precision | ppl | ppl (equal tokens) |", "|---|---|---|---|"]
    for m in dict.fromkeys(x for x in (*AUTO, fixed, *learned, *grid, *BASELINES) if x in by):
        note = " (hindsight-best fixed)" if m == fixed else ""
        lines.append(f"| `{m}`{note} | {_cells(by[m])} |")
    lines.append("")
    for m in (x for x in AUTO if x in by):
        pairs = [(b, _paired(by, m, b)) for b in (BASE, fixed, LEARNED) if b in by and b != m]
        chosen = [r["diagnostics"].get("chosen", "") for r in by[m]]
        seconds = [r["diagnostics"]["validate_seconds"] for r in by[m]]
        best_task = [_task_best(by, r, [*FIXED, *learned]) for r in by[m]]
        lines.append(
            f"- `{m}`: "
            + "; ".join(f"− `{b}` {g[0]:+.3f} ± {g[1]:.3f}" for b, g in pairs)
            + f" (paired); learned setting chosen on {sum('-metric' in c for c in chosen)} of {len(chosen)}"
            f" tasks, the hindsight-best fixed on {sum(c == fixed for c in chosen)}, a per-task best on "
            f"{sum(c in b for c, b in zip(chosen, best_task, strict=True))}; validation median "
            f"{sorted(seconds)[len(seconds) // 2]:.2f} s per task."
        )
    return lines


def _task_best(by: dict[str, list[dict[str, Any]]], row: dict[str, Any], methods: list[str]) -> set[str]:
    """The settings that reached the best precision of ``methods`` on ``row``'s task."""
    at = {
        m: r["precision"]
        for m in methods
        for r in by.get(m, [])
        if (r["label"], r["seed"]) == (row["label"], row["seed"])
    }
    top = max(at.values())
    return {m for m, p in at.items() if p >= top}


def main(argv: list[str] | None = None) -> None:
    for path in argv if argv is not None else sys.argv[1:]:
        result = json.loads(Path(path).read_text())
        print(f"## {path}\n")
        print("\n".join(learned_tables(result)))
        print()


if __name__ == "__main__":
    main()
