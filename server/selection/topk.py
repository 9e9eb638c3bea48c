"""Exact top-k of a score vector in rank order: ascending score, ties by candidate id (else by row)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["top_k"]


def top_k(
    scores: np.ndarray,
    k: int | None,
    *,
    ids: Sequence[str] | None = None,
    eligible: np.ndarray | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` best rows (most negative score first) as ``(row, score)`` pairs, ties broken exactly.

    ``np.argpartition`` finds the k-th smallest score; every row strictly below it is taken and the
    rows equal to it are taken in id order (row order without ids) until ``k`` are chosen, so the
    result is exact and O(n) for a pool of a million. Only the chosen rows are then sorted.

    Parameters
    ----------
    scores : numpy.ndarray, shape (n,)
        Scores (lower is better); NaN is rejected among the eligible rows.
    k : int or None
        How many rows; None (or more than are eligible) returns every eligible row.
    ids : sequence of str, length n, optional
        Candidate ids that break ties; without them rows break ties.
    eligible : numpy.ndarray of bool, shape (n,), optional
        Rows that may be returned; all when None.

    Returns
    -------
    list of (int, float)
        Rows of ``scores`` with their scores, in rank order.
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    n = scores.shape[0]
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0 or None, got {k!r}")
    if ids is not None and len(ids) != n:
        raise ValueError(f"ids must have length {n}, got {len(ids)}")
    if eligible is not None:
        eligible = np.asarray(eligible)
        if eligible.shape != (n,) or eligible.dtype != np.bool_:
            raise ValueError(f"eligible must be a bool array of shape ({n},)")
    rows: np.ndarray | None = None  # None: every row eligible, no index (8 bytes a row) and no copy
    values = scores
    if eligible is not None and not eligible.all():
        rows = np.flatnonzero(eligible)
        values = scores[rows]
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    count = len(values)
    take = count if k is None else min(k, count)
    if take == 0:
        return []
    if take < count:
        part = np.argpartition(values, take - 1)[:take]
        cut = values[part].max()
        below = np.flatnonzero(values < cut)
        at = np.flatnonzero(values == cut)
        if ids is not None and len(at) > take - len(below):
            at = np.asarray(sorted(at.tolist(), key=lambda i: ids[_row(rows, i)]), dtype=np.int64)
        chosen = np.sort(np.concatenate([below, at[: take - len(below)]]))
    else:
        chosen = np.arange(count, dtype=np.int64)
    ordered = chosen[np.argsort(values[chosen], kind="stable")]
    if ids is not None:
        ordered = _ties_by_id(ordered, values, rows, ids)
    out_rows = ordered if rows is None else rows[ordered]
    return list(zip(out_rows.tolist(), values[ordered].astype(np.float64).tolist(), strict=True))


def _row(rows: np.ndarray | None, i: int) -> int:
    """Pool row of position ``i`` among the eligible rows (``rows`` None: every row)."""
    return int(i) if rows is None else int(rows[i])


def _ties_by_id(
    ordered: np.ndarray, values: np.ndarray, rows: np.ndarray | None, ids: Sequence[str]
) -> np.ndarray:
    """Re-sort each run of equal scores in ``ordered`` by candidate id (runs are rare and short)."""
    v = values[ordered]
    same = np.flatnonzero(v[1:] == v[:-1])
    if len(same) == 0:
        return ordered
    ordered = ordered.copy()
    starts = same[np.concatenate([[True], same[1:] != same[:-1] + 1])]
    for start in starts.tolist():
        stop = start + 1
        while stop < len(v) and v[stop] == v[start]:
            stop += 1
        run = ordered[start:stop].tolist()
        ordered[start:stop] = sorted(run, key=lambda i: ids[_row(rows, i)])
    return ordered
