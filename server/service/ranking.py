"""The ranking step of a Select: eligibility (exclusions, target near-duplicates), then the top-k.

With a near-copy threshold the top-k is the walk of :func:`~gotd.server.selection.nearcopy.distinct_walk`;
its walks are kept in memory keyed by what determines them (pool snapshot, rows, the scores' digest,
a hash of the eligible rows, threshold), so a repeated Select reuses the walk, and a smaller k its prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import xxhash

from gotd.client.types import NearCopy
from gotd.server.selection.costs import near_duplicates
from gotd.server.selection.nearcopy import DistinctRanking, check_near_copy_cosine, distinct_walk
from gotd.server.service.job import Job
from gotd.server.service.lru import Lru
from gotd.server.service.requests import SelectParams
from gotd.server.service.scores import RowScores

__all__ = ["Ranker", "Ranking"]


@dataclass(frozen=True, slots=True)
class Ranking:
    """What a Select returns and what its Summary says about it."""

    order: list[tuple[int, float]]
    eligible: int
    near_duplicates: int
    near_copy_cosine: float
    near_copies_skipped: int
    too_few_distinct: bool
    near_copies: tuple[NearCopy, ...]
    excluded_by_set: int = 0


class Ranker:
    """Ranks a job's scores for one request; thread-safe (the walk cache is locked)."""

    def __init__(self, default_cosine: float, walks: int = 32) -> None:
        self._default = check_near_copy_cosine(default_cosine)
        self._walks: Lru[tuple[str, float, int], DistinctRanking] = Lru(walks)

    def rank(
        self, params: SelectParams, job: Job, scores: RowScores, id_set: frozenset[str] = frozenset()
    ) -> Ranking:
        """The ranking of ``job``'s rows by ``scores`` under the request's filters (``id_set``: the
        ids of the request's exclusion set).

        Only prefixes of the ranking are read (``scores.top``): ``k`` rows, or as many more as the
        near-copy walk needs, so scores held by shards come back as top-k pairs, never whole.
        """
        eligible = np.ones(len(job.rows), dtype=bool)
        if params.exclude_ids:
            eligible &= ~np.isin(job.ids, np.array(sorted(params.exclude_ids), dtype=object))
        in_set = (
            np.isin(job.ids, np.array(sorted(id_set), dtype=object)) if id_set else np.zeros_like(eligible)
        )
        eligible &= ~in_set
        ranking = self._rank(params, job, scores, eligible)
        return replace(ranking, excluded_by_set=int(in_set.sum()))

    def _rank(self, params: SelectParams, job: Job, scores: RowScores, eligible: np.ndarray) -> Ranking:
        n_dups = 0
        if params.near_duplicate_cosine is not None:
            dups = near_duplicates(job.embeddings(), job.target.vectors.numpy(), params.near_duplicate_cosine)
            n_dups = int((dups & eligible).sum())
            eligible &= ~dups
        n_eligible = int(eligible.sum())
        cosine = self._default if params.near_copy_cosine is None else params.near_copy_cosine
        if check_near_copy_cosine(cosine) == 0.0:
            order = scores.top(params.k, eligible)
            return Ranking(order, n_eligible, n_dups, 0.0, 0, False, ())
        walk = self._walk(job, scores, eligible, cosine, params.k)
        copies: tuple[NearCopy, ...] = ()
        if params.report_near_copies:
            ids = job.ids
            copies = tuple(NearCopy(str(ids[r]), str(ids[of]), c) for r, of, c in walk.skipped)
        short = len(walk.taken) < min(params.k, n_eligible)
        return Ranking(walk.taken, n_eligible, n_dups, cosine, len(walk.skipped), short, copies)

    def _walk(
        self, job: Job, scores: RowScores, eligible: np.ndarray, cosine: float, k: int
    ) -> DistinctRanking:
        a = job.arrays
        digest = xxhash.xxh3_128(scores.digest.encode())
        for part in (job.rows, eligible):
            digest.update(part.tobytes())
        key = (f"{a.name}:{a.uid}:v{a.version}:{digest.hexdigest()}", cosine, len(job.rows))
        known = self._walks.get(key)
        if known is not None and known.serves(k):
            return known.prefix(k)
        walk = distinct_walk(
            lambda want: scores.top(want, eligible),
            int(np.count_nonzero(eligible)),
            k,
            vectors=job.embeddings(),
            cosine=cosine,
        )
        self._walks.put(key, walk)
        return walk

    def forget(self) -> None:
        """Drop every kept walk (a pool was deleted)."""
        self._walks.discard_where(lambda _key: True)
