"""Findings of an evaluation, computed from its rows (so a rerun never leaves stale prose behind).

Every statement is a comparison of means or a per-topic win count; wins and losses of the GOT-D modes
against each baseline are both listed. With several seeds, per-topic comparisons use each label's mean
over the seeds (:func:`gotd.lab.evaluation.summary.label_means`), so counts are counts of topics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gotd.lab.evaluation.summary import label_means, row_seed

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
    """Markdown bullet lines: best method per metric and k, GOT-D against each baseline, time.

    Parameters
    ----------
    summary : sequence of dict
        Means per (method, k_frac), as :func:`gotd.lab.evaluation.summary.summarise` returns them.
    rows : sequence of dict
        Every (label, seed, method, k) row of the run.
    methods : sequence of str
        Methods in report order.
    ks : sequence of float
        Selection sizes as fractions of the pool.

    Returns
    -------
    list of str
        Markdown bullets.
    """
    out: list[str] = []
    topic_rows = label_means(rows)
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
                mine, theirs = _per_topic(topic_rows, g, k, key), _per_topic(topic_rows, b, k, key)
                topics = sorted(set(mine) & set(theirs))
                wins = sum((mine[t] > theirs[t]) if higher else (mine[t] < theirs[t]) for t in topics)
                ties = sum(mine[t] == theirs[t] for t in topics)
                diff = _mean(summary, g, k, key) - _mean(summary, b, k, key)
                verdict = "tied" if diff == 0 else "ahead" if (diff > 0) == higher else "behind"
                parts.append(
                    f"{NAMES[key]} {diff:+.3g} ({verdict}; topics better/tied/worse "
                    f"{wins}/{ties}/{len(topics) - wins - ties})"
                )
            out.append(f"- k = {100 * k:g}%, `{g}` vs `{b}`: " + "; ".join(parts) + ".")
    for g in gotd:
        out += _losses(topic_rows, g, bases, k)
    out += _solver(rows, gotd, k)
    out += _identical(rows, gotd, k)
    out += _budget_setter(rows, k)
    out += _timing(rows, methods, ks)
    unconverged = [r for r in rows if not r["ot_converged"]]
    if unconverged:
        out.append(
            f"- The OT-distance metric did not converge to tol for {len(unconverged)} rows (see JSON)."
        )
    return out


def _losses(rows: Sequence[dict[str, Any]], g: str, bases: Sequence[str], k: float) -> list[str]:
    """Topics where GOT-D mode ``g`` is beaten by a (non-random) baseline, by metric."""
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


def _solver(rows: Sequence[dict[str, Any]], gotd: Sequence[str], k: float) -> list[str]:
    """Convergence of the GOT-D solves (as each selector reported it), one line per mode."""
    out = []
    for g in gotd:
        diag = [r.get("diagnostics") or {} for r in rows if r["method"] == g and r["k_frac"] == k]
        diag = [d for d in diag if "converged" in d]
        if not diag:
            continue
        iters = sorted(int(d["n_iter"]) for d in diag)
        line = (
            f"- `{g}` solves: {sum(bool(d['converged']) for d in diag)}/{len(diag)} converged, "
            f"max marginal error {max(float(d['marginal_error']) for d in diag):.2g}, "
            f"median {iters[len(iters) // 2]} Sinkhorn passes"
        )
        domains = [int(d["domains"]) for d in diag if "domains" in d]
        if domains:
            line += f"; closest domains kept per task: {', '.join(map(str, domains))}"
        out.append(line + ".")
    return out


def _identical(rows: Sequence[dict[str, Any]], gotd: Sequence[str], k: float) -> list[str]:
    """Note GOT-D modes whose top k equals ``gotd-exact``'s on every task."""
    same = [
        g
        for g in gotd
        if g != "gotd-exact"
        and (vals := [float(r["overlap_exact"]) for r in rows if r["method"] == g and r["k_frac"] == k])
        and all(v == 1.0 for v in vals)
    ]
    if not same:
        return []
    return [
        f"- {', '.join(f'`{g}`' for g in same)} selected exactly `gotd-exact`'s top k on every task at "
        f"k = {100 * k:g}% (with a pool no larger than the `global` summary size, the summary is the whole "
        "pool, so both modes solve the same problem)."
    ]


def _budget_setter(rows: Sequence[dict[str, Any]], k: float) -> list[str]:
    """Which method's selection set the equal-token budget (the fewest tokens), and how small it is."""
    at_k = [r for r in rows if r["k_frac"] == k]
    setters: dict[str, int] = {}
    for r in at_k:
        if r["tokens"] == r["budget"]:
            setters[r["method"]] = setters.get(r["method"], 0) + 1
    if not setters:
        return []
    tasks = {(r["label"], row_seed(r)) for r in at_k}
    per_text = {
        m: sum(r["tokens"] for r in at_k if r["method"] == m) / sum(r["k"] for r in at_k if r["method"] == m)
        for m in {r["method"] for r in at_k}
    }
    who = ", ".join(f"`{m}` on {n}/{len(tasks)} tasks" for m, n in sorted(setters.items()))
    sizes = ", ".join(f"`{m}` {v:.0f}" for m, v in sorted(per_text.items(), key=lambda kv: kv[1]))
    return [
        f"- The equal-token budget at k = {100 * k:g}% was set by {who} (fewest tokens selected). "
        f"Mean tokens per selected text: {sizes}."
    ]


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
