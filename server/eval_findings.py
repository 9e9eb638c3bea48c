"""Findings of an evaluation, computed from its rows (so a rerun never leaves stale prose behind).

Every statement is a comparison of means or a per-topic win count; wins and losses of the GOT-D modes
against each baseline are both listed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["findings", "headline_k"]

GOTD_PREFIX = "gotd-"
BASELINES = ("dsir", "dsir-topk", "centroid", "random")
#: Metrics compared, with whether higher is better.
COMPARED = (("precision", True), ("ppl", False), ("ppl_budget", False), ("ot", False))
NAMES = {"precision": "precision", "ppl": "ppl", "ppl_budget": "ppl at equal tokens", "ot": "OT to held-out"}


def headline_k(ks: Sequence[float]) -> float:
    """The k of the headline comparison: the one closest to 5%."""
    return min(ks, key=lambda k: abs(k - 0.05))


def _mean(summary: Sequence[dict[str, Any]], method: str, k: float, key: str) -> float:
    for e in summary:
        if e["method"] == method and e["k_frac"] == k:
            return float(e[key])
    return math.nan


def _per_topic(rows: Sequence[dict[str, Any]], method: str, k: float, key: str) -> dict[str, float]:
    return {r["label"]: float(r[key]) for r in rows if r["method"] == method and r["k_frac"] == k}


def findings(
    summary: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    ks: Sequence[float],
) -> list[str]:
    """Markdown bullet lines: best method per metric and k, GOT-D against each baseline, time."""
    out: list[str] = []
    for k in ks:
        best = []
        for key, higher in COMPARED:
            vals = {m: _mean(summary, m, k, key) for m in methods}
            vals = {m: v for m, v in vals.items() if not math.isnan(v)}
            if vals:
                m = max(vals, key=vals.__getitem__) if higher else min(vals, key=vals.__getitem__)
                best.append(f"{NAMES[key]} `{m}` ({vals[m]:.4g})")
        out.append(f"- Best mean at k = {100 * k:g}%: " + "; ".join(best) + ".")
    k = headline_k(ks)
    gotd = [m for m in methods if m.startswith(GOTD_PREFIX)]
    bases = [m for m in methods if m in BASELINES or not m.startswith(GOTD_PREFIX)]
    for g in gotd:
        for b in bases:
            if b == "random":
                continue
            parts = []
            for key, higher in COMPARED[:3]:
                mine, theirs = _per_topic(rows, g, k, key), _per_topic(rows, b, k, key)
                topics = sorted(set(mine) & set(theirs))
                wins = sum((mine[t] > theirs[t]) if higher else (mine[t] < theirs[t]) for t in topics)
                diff = _mean(summary, g, k, key) - _mean(summary, b, k, key)
                verdict = "ahead" if (diff > 0) == higher and diff != 0 else "behind"
                parts.append(f"{NAMES[key]} {diff:+.3g} ({verdict}; better on {wins}/{len(topics)} topics)")
            out.append(f"- k = {100 * k:g}%, `{g}` vs `{b}`: " + "; ".join(parts) + ".")
    out += _losses(rows, gotd, bases, k)
    out += _timing(rows, methods, ks)
    unconverged = [r for r in rows if not r["ot_converged"]]
    if unconverged:
        out.append(
            f"- The OT-distance metric did not converge to tol for {len(unconverged)} rows (see JSON)."
        )
    return out


def _losses(rows: Sequence[dict[str, Any]], gotd: Sequence[str], bases: Sequence[str], k: float) -> list[str]:
    """Topics where the first GOT-D mode is beaten by the strongest baselines, by metric."""
    if not gotd:
        return []
    g = gotd[0]
    out = []
    for key, higher in COMPARED[:3]:
        mine = _per_topic(rows, g, k, key)
        lost = []
        for b in (b for b in bases if b != "random"):
            theirs = _per_topic(rows, b, k, key)
            worse = [
                t
                for t in sorted(mine)
                if t in theirs and ((mine[t] < theirs[t]) if higher else (mine[t] > theirs[t]))
            ]
            if worse:
                lost.append(f"`{b}` on {', '.join(worse)}")
        if lost:
            out.append(f"- `{g}` loses on {NAMES[key]} at k = {100 * k:g}% to " + "; to ".join(lost) + ".")
    return out


def _timing(rows: Sequence[dict[str, Any]], methods: Sequence[str], ks: Sequence[float]) -> list[str]:
    times = {}
    for m in methods:
        vals = sorted(float(r["seconds"]) for r in rows if r["method"] == m and r["k_frac"] == ks[0])
        if vals:
            times[m] = vals[len(vals) // 2]
    if not times:
        return []
    line = "- Median selection time per task: " + ", ".join(f"`{m}` {t:.3g} s" for m, t in times.items())
    for fast in ("gotd-global", "gotd-exact"):
        if fast in times and "dsir" in times and times[fast] > 0:
            line += f"; `{fast}` is {times['dsir'] / times[fast]:.3g}× faster than `dsir`"
    return [line + "."]
