"""Near-copy-aware top-k over a real server: the ranking with dedup equals a brute-force walk over the
ranking without it; exact and near copies are skipped, the best-ranked copy kept (ties by id)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from gotd.client.client import Client
from gotd.client.types import RankedCandidate, SelectSummary
from gotd.lab.demo import BackgroundServer
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve, top_k
from gotd.server.selection.nearcopy import DEFAULT_NEAR_COPY_COSINE, distinct_top_k
from tests.conftest import clustered

COSINE = DEFAULT_NEAR_COPY_COSINE


def _pool(n: int = 400, seed: int = 1) -> dict[str, np.ndarray]:
    """``n`` distinct candidates plus copies of the first 40: 20 exact copies (ids sorting before and
    after the original's) and 20 near copies (cosine ~0.99)."""
    x = clustered(n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    vectors = {f"c{i:05d}": v for i, v in enumerate(x)}
    for i in range(20):
        vectors[f"{'a' if i % 2 else 'x'}copy{i:03d}"] = x[i].copy()
    for i in range(20, 40):
        v = x[i] + 0.1 * rng.standard_normal(x.shape[1]).astype(np.float32) / np.sqrt(x.shape[1])
        vectors[f"near{i:03d}"] = (v / np.linalg.norm(v)).astype(np.float32)
    return vectors


def _ingest(client: Client, vectors: dict[str, np.ndarray]) -> None:
    client.ingest(
        "pool", [{"id": cid, "embedding": v.tolist()} for cid, v in vectors.items()], batch_size=200
    )


def _targets(seed: int = 2) -> list[list[float]]:
    return clustered(30, seed=seed, centers=2).tolist()  # type: ignore[no-any-return]


def _walk(
    ranking: list[RankedCandidate], vectors: dict[str, np.ndarray], k: int
) -> tuple[list[str], list[tuple[str, str]]]:
    """Brute force: walk the full ranking without dedup, skip what is within COSINE of a kept one."""
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    for c in ranking:
        if len(kept) == k:
            break
        sims = [float(vectors[c.id] @ vectors[other]) for other in kept]
        if sims and max(sims) >= COSINE:
            skipped.append((c.id, kept[int(np.argmax(sims))]))
        else:
            kept.append(c.id)
    return kept, skipped


def _select(client: Client, k: int, **kwargs: Any) -> tuple[list[RankedCandidate], SelectSummary]:
    return client.select("pool", _targets(), k=k, eps=0.1, **kwargs)


@pytest.mark.parametrize("mode", ["exact", "global", "paper"])
def test_dedup_ranking_is_the_walk_over_the_plain_ranking(client: Client, mode: str) -> None:
    vectors = _pool()
    _ingest(client, vectors)
    full, off = _select(client, len(vectors), mode=mode, near_copy_cosine=0)
    assert off.near_copy_cosine == 0
    assert off.near_copies_skipped == 0
    ranked, summary = _select(client, 60, mode=mode, report_near_copies=True)
    kept, skipped = _walk(full, vectors, 60)
    assert [c.id for c in ranked] == kept
    assert [c.rank for c in ranked] == list(range(1, 61))
    assert summary.near_copy_cosine == COSINE
    assert summary.near_copies_skipped == len(skipped) > 0
    assert [(c.id, c.copy_of) for c in summary.near_copies] == skipped
    assert all(c.cosine >= COSINE for c in summary.near_copies)
    assert not summary.too_few_distinct
    scores = {c.id: c.score for c in full}
    assert [c.score for c in ranked] == [scores[i] for i in kept]


def test_every_copy_group_keeps_its_best_ranked_member_ties_by_id(client: Client) -> None:
    vectors = _pool()
    _ingest(client, vectors)
    full, _ = _select(client, len(vectors), near_copy_cosine=0)
    ranked, summary = _select(client, len(vectors))
    returned = {c.id for c in ranked}
    position = {c.id: i for i, c in enumerate(full)}
    for i in range(20):  # exact copies: equal scores, so the smaller id ranks first and is kept
        pair = sorted([f"c{i:05d}", f"{'a' if i % 2 else 'x'}copy{i:03d}"])
        assert pair[0] in returned
        assert pair[1] not in returned
        assert position[pair[0]] < position[pair[1]]
    for i in range(20, 40):
        pair = sorted([f"c{i:05d}", f"near{i:03d}"], key=position.__getitem__)
        assert pair[0] in returned
        assert pair[1] not in returned
    # k above the distinct candidates: every distinct one comes back, flagged as too few
    assert len(ranked) == len(vectors) - 40
    assert summary.near_copies_skipped == 40
    assert summary.too_few_distinct
    assert summary.k_exceeds_pool is False
    assert [c.id for c in ranked] == [c.id for c in full if c.id in returned]


def test_k_distinct_when_there_are_enough_and_fewer_flagged_when_not(client: Client) -> None:
    base = clustered(20, seed=5)
    vectors = {f"c{i:05d}": v for i, v in enumerate(base)}
    vectors |= {f"d{i:05d}": v.copy() for i, v in enumerate(base)}
    _ingest(client, vectors)
    ranked, summary = _select(client, 20)
    assert len(ranked) == 20
    assert not summary.too_few_distinct
    assert {c.id[1:] for c in ranked} == {f"{i:05d}" for i in range(20)}
    assert all(c.id.startswith("c") for c in ranked), "ties by id: c..... before d....."
    ranked, summary = _select(client, 30)
    assert len(ranked) == 20
    assert summary.too_few_distinct
    assert not summary.k_exceeds_pool
    assert summary.near_copies_skipped == 20
    assert summary.eligible == 40


def test_exclusion_lets_the_next_copy_through(client: Client) -> None:
    vectors = _pool()
    _ingest(client, vectors)
    full, _ = _select(client, len(vectors), near_copy_cosine=0)
    first = full[0].id
    ranked, summary = _select(client, 50, exclude_ids=[first])
    kept, skipped = _walk([c for c in full if c.id != first], vectors, 50)
    assert [c.id for c in ranked] == kept
    assert summary.near_copies_skipped == len(skipped)
    assert summary.eligible == len(vectors) - 1


def test_off_switch_gives_the_plain_ranking_exactly(client: Client) -> None:
    vectors = _pool(n=200)
    _ingest(client, vectors)
    off, summary = _select(client, 100, near_copy_cosine=0, mode="exact")
    x = torch.from_numpy(np.stack(list(vectors.values())))
    y = torch.tensor(_targets())
    y /= y.norm(dim=1, keepdim=True)
    potential = solve(x, y, SelectionConfig(mode=Mode.EXACT, eps=0.1, tol=1e-4))
    ids = list(vectors)
    expected = top_k(score(x, y, potential.g, eps=0.1).numpy(), 100, ids=ids)
    assert [c.id for c in off] == [ids[row] for row, _ in expected]
    assert summary.near_copies_skipped == 0
    assert summary.near_copy_cosine == 0
    returned = {c.id for c in off}
    pairs = [(f"c{i:05d}", f"{'a' if i % 2 else 'x'}copy{i:03d}") for i in range(20)]
    assert any(a in returned and b in returned for a, b in pairs), "the plain ranking keeps copies"


def test_repeated_and_smaller_selects_reuse_the_walk(client: Client) -> None:
    vectors = _pool()
    _ingest(client, vectors)
    full, _ = _select(client, len(vectors), near_copy_cosine=0)
    big, s_big = _select(client, 120, report_near_copies=True)
    small, s_small = _select(client, 30, report_near_copies=True)  # a prefix of the kept walk
    again, s_again = _select(client, 120, report_near_copies=True)
    for ranked, summary, k in ((big, s_big, 120), (small, s_small, 30), (again, s_again, 120)):
        kept, skipped = _walk(full, vectors, k)
        assert [c.id for c in ranked] == kept
        assert [(c.id, c.copy_of) for c in summary.near_copies] == skipped


def test_bad_threshold_is_invalid_argument(client: Client) -> None:
    import grpc

    _ingest(client, _pool(n=50))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(grpc.RpcError) as excinfo:
            _select(client, 5, near_copy_cosine=bad)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "near_copy_cosine" in (excinfo.value.details() or "")


def test_distinct_top_k_equals_a_brute_force_walk() -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(5, 300))
        v = rng.standard_normal((n, 8)).astype(np.float32)
        src = rng.integers(0, n, n // 3)
        v[: n // 3] = v[src] + 0.05 * rng.standard_normal((n // 3, 8)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        scores = np.round(rng.standard_normal(n), 1).astype(np.float32)  # many ties
        ids = [f"id{int(rng.integers(0, 10**6)):07d}-{i}" for i in range(n)]
        eligible = rng.random(n) > 0.2
        k, cosine = int(rng.integers(1, n + 5)), float(rng.choice([0.9, 0.95, 0.99]))
        got = distinct_top_k(scores, k, vectors=v, cosine=cosine, ids=ids, eligible=eligible,
                             block=int(rng.choice([3, 16, 512])))  # fmt: skip
        kept: list[int] = []
        skipped: list[tuple[int, int]] = []
        before: dict[int, int] = {}  # skipped row -> rows kept before it
        for row, _ in top_k(scores, None, ids=ids, eligible=eligible):
            if len(kept) == k:
                break
            sims = v[kept] @ v[row] if kept else np.zeros(0)
            if len(sims) and sims.max() >= cosine:
                skipped.append((row, kept[int(sims.argmax())]))
                before[row] = len(kept)
            else:
                kept.append(row)
        assert [r for r, _ in got.taken] == kept, trial
        assert [(r, of) for r, of, _ in got.skipped] == skipped, trial
        for j in range(1, len(kept) + 1):
            part = got.prefix(j)
            assert [r for r, _ in part.taken] == kept[:j]
            assert [(r, of) for r, of, _ in part.skipped] == [(r, of) for r, of in skipped if before[r] < j]


def _walks(server: BackgroundServer) -> dict[str, float]:
    counter = server.running.metrics.near_copy_walks
    return {kind: counter.labels(kind)._value.get() for kind in ("full", "graph", "repeat")}


def test_appended_and_updated_candidates_are_walked_afresh(server: BackgroundServer, client: Client) -> None:
    """After the pool changes, the walk reads the earlier walk's pairs (a graph walk) and multiplies
    only new and changed rows; its ranking is the brute-force walk's all the same."""
    vectors = _pool(n=200)
    _ingest(client, vectors)
    first, _ = _select(client, 20)
    assert _walks(server) == {"full": 1, "graph": 0, "repeat": 0}
    best = first[0].id
    added = {f"b{i}": vectors[best].copy() for i in range(3)}  # copies of the best, ids sorting first
    client.ingest("pool", [{"id": cid, "embedding": v.tolist()} for cid, v in added.items()])
    vectors |= added
    full, _ = _select(client, len(vectors), near_copy_cosine=0)
    ranked, _ = _select(client, 20)
    assert [c.id for c in ranked] == _walk(full, vectors, 20)[0]
    assert _walks(server) == {"full": 1, "graph": 1, "repeat": 0}
    group = [c.id for c in full if np.array_equal(vectors[c.id], vectors[best])]
    assert len(group) >= 4
    assert group[0] in {c.id for c in ranked}  # the best-ranked copy is kept
    assert set(group[1:]).isdisjoint(c.id for c in ranked)
    moved = clustered(1, seed=77)[0]  # b1 is no longer a copy of anything
    client.ingest("pool", [{"id": "b1", "embedding": moved.tolist()}])
    vectors["b1"] = moved
    full, _ = _select(client, len(vectors), near_copy_cosine=0)
    ranked, _ = _select(client, 20)
    assert [c.id for c in ranked] == _walk(full, vectors, 20)[0]
    gone = [ranked[0].id, "b0", "b2"]  # the best candidate and its copies leave: the next copy is kept
    client.delete_records("pool", gone)
    for cid in gone:
        vectors.pop(cid, None)
    full, _ = _select(client, len(vectors), near_copy_cosine=0)
    ranked, summary = _select(client, 20, report_near_copies=True)
    kept, skipped = _walk(full, vectors, 20)
    assert [c.id for c in ranked] == kept
    assert [(c.id, c.copy_of) for c in summary.near_copies] == skipped
    assert _walks(server) == {"full": 1, "graph": 3, "repeat": 0}
    client.delete_pool("pool")
    _ingest(client, _pool(n=200, seed=3))
    again, _ = _select(client, 20)
    fresh, _ = _select(client, 400, near_copy_cosine=0)
    assert [c.id for c in again] == _walk(fresh, _pool(n=200, seed=3), 20)[0]
