"""Aggregates of evaluation rows: means per method and k, standard errors across seeds, label means.

A run evaluates one task per (label, seed). The summary means every metric over all of them per
(method, k); the spread that matters is the task draw's, so the standard error is taken across seeds
of the per-seed means (each a mean over labels). Per-topic comparisons use each label's mean over
seeds, so win counts stay counts of topics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MEAN_KEYS", "SE_KEYS", "label_means", "row_seed", "summarise"]

#: Numeric row fields averaged by :func:`summarise` and :func:`label_means`.
MEAN_KEYS = (
    "precision",
    "distinct_precision",
    "redundancy",
    "ceiling",
    "ot",
    "ppl",
    "ppl_budget",
    "budget",
    "tokens",
    "overlap_exact",
    "seconds",
)
#: Fields that also get a standard error across seeds (``<key>_se``).
SE_KEYS = ("precision", "distinct_precision", "ppl", "ppl_budget")


def row_seed(row: dict[str, Any]) -> int:
    """The seed of a row's task (0 for rows written before runs had several seeds)."""
    return int(row.get("seed", 0))


def _value(row: dict[str, Any], key: str) -> float:
    """A row's metric; NaN for metrics added after the row was written (near-copy metrics)."""
    return float(row.get(key, math.nan))


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size and np.isfinite(arr).any() else math.nan


def _group(rows: Sequence[dict[str, Any]], *fields: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[f] for f in fields), []).append(row)
    return groups


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over tasks per (method, k_frac) of every numeric metric, in first-seen order.

    Returns
    -------
    list of dict
        Per (method, k_frac): ``method, k_frac, tasks`` (rows averaged), ``seeds`` (distinct seeds),
        the mean of each of :data:`MEAN_KEYS`, ``<key>_se`` for each of :data:`SE_KEYS` (standard
        error across seeds of the per-seed means over labels; NaN with a single seed) and
        ``ot_converged`` (every row's OT distance converged).
    """
    out = []
    for (method, frac), group in _group(rows, "method", "k_frac").items():
        entry: dict[str, Any] = {"method": method, "k_frac": frac, "tasks": len(group)}
        by_seed: dict[int, list[dict[str, Any]]] = {}
        for row in group:
            by_seed.setdefault(row_seed(row), []).append(row)
        entry["seeds"] = len(by_seed)
        for key in MEAN_KEYS:
            entry[key] = _mean([_value(r, key) for r in group])
        for key in SE_KEYS:
            per_seed = np.array([_mean([_value(r, key) for r in rs]) for rs in by_seed.values()])
            entry[f"{key}_se"] = (
                float(per_seed.std(ddof=1) / math.sqrt(per_seed.size)) if per_seed.size > 1 else math.nan
            )
        entry["ot_converged"] = all(bool(r["ot_converged"]) for r in group)
        out.append(entry)
    return out


def label_means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (label, method, k_frac): the mean over seeds of each of :data:`MEAN_KEYS`.

    Other fields (``k``, ``diagnostics``, ...) are those of the first row of the group; ``seeds``
    counts the rows averaged and ``ot_converged`` is True when all converged. Rows keep first-seen
    order, so a single-seed run maps to itself.
    """
    out = []
    for group in _group(rows, "label", "method", "k_frac").values():
        row = dict(group[0])
        row.pop("seed", None)
        row.update({key: _mean([_value(r, key) for r in group]) for key in MEAN_KEYS})
        row["seeds"] = len(group)
        row["ot_converged"] = all(bool(r["ot_converged"]) for r in group)
        out.append(row)
    return out
