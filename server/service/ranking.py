"""The ranking step of a Select: eligibility (exclusions, target near-duplicates), then the top-k.

With a near-copy threshold the top-k is the walk of
:func:`~gotd.server.selection.nearcopy.distinct_walk_graph`. Its walks are kept in memory keyed by what
determines them (pool snapshot, rows, the scores' digest, a hash of the eligible rows, threshold), so
a repeated Select reuses the walk, and a smaller k its prefix. Each walk's graph of near-copy pairs is
kept too, per pool, target family and threshold, with its rows named as pool rows: the next walk of
that family (the pool grew, a row changed, another exclusion set, a new epoch) reads the pairs of the
rows it shares with it and multiplies only the rows that are new to it or changed since. The walk is
the same with or without the graph (tests/test_copy_graph.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import xxhash

from gotd.client.types import NearCopy
from gotd.server.selection.costs import near_duplicates
from gotd.server.selection.nearcopy import (
    CopyGraph,
    DistinctRanking,
    check_near_copy_cosine,
    distinct_walk_graph,
)
from gotd.server.service.job import Emit, Job
from gotd.server.service.lru import Lru
from gotd.server.service.requests import RankedBatch, SelectParams
from gotd.server.service.scores import RowScores

__all__ = ["Ranker", "Ranking", "emit_ranking"]

#: Bytes of near-copy graphs kept (a graph is ~40 bytes per row walked plus 24 per pair).
GRAPH_BYTES = 64 << 20


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

    def __init__(
        self,
        default_cosine: float,
        walks: int = 32,
        graph_bytes: int = GRAPH_BYTES,
        on_walk: Callable[[str], None] = lambda _kind: None,
    ) -> None:
        self._default = check_near_copy_cosine(default_cosine)
        self._on_walk = on_walk
        self._walks: Lru[tuple[str, float, int], DistinctRanking] = Lru(walks)
        # (pool, uid, family, threshold) -> (pool version, graph over pool rows)
        self._graphs: Lru[tuple[str, str, str, float], tuple[int, CopyGraph]] = Lru(
            graph_bytes, sizeof=lambda item: item[1].nbytes + 64
        )

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
            eligible &= ~_named(job, params.exclude_ids)
        in_set = _named(job, id_set) if id_set else np.zeros_like(eligible)
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
            copies = tuple(NearCopy(ids[r], ids[of], c) for r, of, c in walk.skipped)
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
            self._on_walk("repeat")
            return known.prefix(k)
        graph_key = (a.name, a.uid, job.family, cosine)
        earlier = self._known_graph(graph_key, job)
        self._on_walk("full" if earlier is None else "graph")
        walk, graph = distinct_walk_graph(
            lambda want: scores.top(want, eligible),
            int(np.count_nonzero(eligible)),
            k,
            vectors=a.vectors,
            cosine=cosine,
            known=earlier,
            vector_rows=None if job.every_row else job.rows,
        )
        self._walks.put(key, walk)
        if graph is not None:
            pool_rows = job.rows[graph.rows]
            self._graphs.put(graph_key, (a.version, graph.relabel(np.ones(len(pool_rows), bool), pool_rows)))
        return walk

    def _known_graph(self, key: tuple[str, str, str, float], job: Job) -> CopyGraph | None:
        """The family's last graph, its rows renamed as the job's rows; rows written since it was made
        (changed) or no longer among the job's rows (deleted, another domain) leave it."""
        found = self._graphs.get(key)
        if found is None:
            return None
        version, graph = found
        a = job.arrays
        at = np.searchsorted(job.rows, graph.rows)
        present = at < len(job.rows)
        present[present] = job.rows[at[present]] == graph.rows[present]
        unchanged = np.zeros_like(present)
        unchanged[present] = a.row_versions[graph.rows[present]] <= np.uint64(version)
        return graph.relabel(present & unchanged, at)

    def forget(self) -> None:
        """Drop every kept walk and graph (a pool was deleted)."""
        self._walks.discard_where(lambda _key: True)
        self._graphs.discard_where(lambda _key: True)


def _named(job: Job, wanted: frozenset[str]) -> np.ndarray:
    """Bool mask over the job's rows: those whose id is in ``wanted``. The rows' stored id hashes
    (xxh64) find the candidates; only their ids are read and compared, so no id of the other rows is
    made."""
    hashes = np.fromiter(
        (xxhash.xxh64_intdigest(i.encode("utf-8")) for i in wanted), dtype=np.uint64, count=len(wanted)
    )
    hit = np.isin(job.keys(), hashes)
    found = np.flatnonzero(hit)
    if len(found):
        hit[found] = [cid in wanted for cid in job.ids_at(found)]
    return hit


def emit_ranking(
    metadata: Callable[[str, list[int]], Sequence[tuple[str, str, str | None]]],
    params: SelectParams,
    job: Job,
    order: list[tuple[int, float]],
    emit: Emit,
) -> None:
    """Stream the ranking ``order`` (job positions, scores) in batches, with each row's domain and
    metadata (``metadata(pool, rows)``, the store's) when the request asks for them."""
    size = params.batch_size or 1000
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        ids = job.ids_at([i for i, _ in chunk])
        batch = RankedBatch(tuple(ids), tuple(float(v) for _, v in chunk), start + 1)
        if params.include_metadata:
            meta = metadata(params.pool, [int(job.rows[i]) for i, _ in chunk])
            batch = replace(batch, domains=tuple(m[0] for m in meta), meta_json=tuple(m[1] for m in meta))
        emit(batch)
