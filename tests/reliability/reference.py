"""Reference rankings for the reliability suite: what a default server must answer for committed data.

The library's own pieces (solve, score, the near-copy walk), run in the test process on the vectors the
store holds, give the ranking a server with default settings returns on a cold solve: the suite
compares full rankings (ids and scores) with it, not lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import xxhash

from gotd.client.types import RankedCandidate
from gotd.server.selection.config import Mode, SelectionConfig, resolve_mode
from gotd.server.selection.modes import score, solve
from gotd.server.selection.nearcopy import DEFAULT_NEAR_COPY_COSINE, distinct_top_k

Ranking = list[tuple[str, float]]

#: Scores of the server and of the reference agree to float32 rounding (same rule, same inputs).
SCORE_RTOL = 1e-5


def _unit(matrix: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    x = np.asarray(matrix, dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def store_keys(ids: Sequence[str]) -> np.ndarray:
    """The id hashes the store keeps per row (xxh64 of the UTF-8 id): they choose the global summary."""
    return np.fromiter(
        (xxhash.xxh64_intdigest(i.encode("utf-8")) for i in ids), dtype=np.uint64, count=len(ids)
    )


def reference_scores(
    vectors: np.ndarray, ids: Sequence[str], targets: np.ndarray, *, eps: float = 0.1
) -> np.ndarray:
    """Scores of every pool row (row order of ``vectors``) under the server's default settings."""
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    y = torch.from_numpy(_unit(targets))
    config = SelectionConfig(eps=eps)
    config = replace(config, mode=resolve_mode(Mode.AUTO, len(ids), config))
    potential = solve(x, y, config, keys=store_keys(ids))
    return score(x, y, potential).numpy()


def reference_ranking(
    vectors: np.ndarray, ids: Sequence[str], targets: np.ndarray, k: int, *, eps: float = 0.1
) -> Ranking:
    """The top ``k`` (id, score) of a default Select: ascending score, ties by id, near-copies skipped."""
    scores = reference_scores(vectors, ids, targets, eps=eps)
    walk = distinct_top_k(
        scores,
        k,
        vectors=np.asarray(vectors, dtype=np.float32),
        cosine=DEFAULT_NEAR_COPY_COSINE,
        ids=list(ids),
    )
    return [(ids[row], float(value)) for row, value in walk.taken]


def as_ranking(ranked: Sequence[RankedCandidate]) -> Ranking:
    return [(c.id, c.score) for c in ranked]


def same_ranking(got: Ranking, want: Ranking, *, rtol: float = SCORE_RTOL) -> bool:
    """Same ids in the same order, scores equal to ``rtol``."""
    if [i for i, _ in got] != [i for i, _ in want]:
        return False
    return bool(np.allclose([s for _, s in got], [s for _, s in want], rtol=rtol, atol=rtol))


def assert_same_ranking(got: Ranking, want: Ranking, *, rtol: float = SCORE_RTOL) -> None:
    assert same_ranking(got, want, rtol=rtol), f"ranking differs from the reference:\n{got}\n{want}"
