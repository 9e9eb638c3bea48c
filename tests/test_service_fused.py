"""Select and Score with the fused cost, a relative epsilon and near-duplicate exclusion, over gRPC.

A real server on 127.0.0.1 port 0, real LMDB in tmp_path, real Redis, the real default model on a
small slice of the wiki corpus.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from gotd.client.client import Client
from gotd.lab.corpora.wiki import load_wiki
from tests.conftest import clustered, vector_records

TOPIC = "Mathematics"


@pytest.fixture(scope="module")
def wiki_slice() -> tuple[list[dict[str, Any]], list[str], set[str]]:
    """60 pool records (20 of the topic), 4 held-apart target texts of the topic, the topic's ids."""
    docs = load_wiki()
    maths = [d for d in docs if d.topic == TOPIC][:24]
    others = [d for d in docs if d.topic != TOPIC][::97][:40]
    pool = [{"id": d.id, "text": d.text[:600]} for d in maths[4:] + others]
    return pool, [d.text[:600] for d in maths[:4]], {d.id for d in maths[4:]}


@pytest.fixture
def text_client(client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]) -> Client:
    client.ingest("wiki", wiki_slice[0])
    return client


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()  # type: ignore[no-any-return]


def test_text_pool_defaults_to_the_fused_cost_and_caches_it(
    text_client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]
) -> None:
    _, targets, topic_ids = wiki_slice
    ranked, summary = text_client.select("wiki", targets, k=10)
    assert summary.cost == "fused"
    assert summary.embedding_weight == pytest.approx(0.5)
    assert summary.converged
    precision = np.mean([r.id in topic_ids for r in ranked])
    assert precision >= 0.7, f"fused precision {precision} on a 1/3 topic pool"
    again, second = text_client.select("wiki", targets, k=10)
    assert second.cache_hit
    assert [r.id for r in again] == [r.id for r in ranked]
    emb_ranked, emb = text_client.select("wiki", targets, k=10, cost="embedding")
    assert emb.cost == "embedding"
    assert emb.embedding_weight == 1.0
    assert not emb.cache_hit, "another cost must not hit the fused potential"
    assert [r.score for r in emb_ranked] != [r.score for r in ranked]
    w3, third = text_client.select("wiki", targets, k=10, cost="fused", embedding_weight=0.3)
    assert third.cost == "fused"
    assert third.embedding_weight == pytest.approx(0.3)
    assert not third.cache_hit
    assert [r.score for r in w3] != [r.score for r in ranked]


def test_score_agrees_with_select_under_the_fused_cost(
    text_client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]
) -> None:
    _, targets, _ = wiki_slice
    ranked, _ = text_client.select("wiki", targets, k=60, cost="fused")
    scores = text_client.score("wiki", targets, [r.id for r in ranked[:5]], cost="fused")
    for r, s in zip(ranked[:5], scores, strict=True):
        assert s.id == r.id
        assert s.score == pytest.approx(r.score, abs=1e-5)


def test_named_target_set_with_texts_keeps_its_sketches(
    text_client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]
) -> None:
    _, targets, _ = wiki_slice
    text_client.put_target_set("maths", targets)
    by_name, summary = text_client.select("wiki", "maths", k=10)
    assert summary.cost == "fused"
    inline, _ = text_client.select("wiki", targets, k=10)
    assert [r.id for r in by_name] == [r.id for r in inline]


def test_fused_cost_needs_sketches_on_both_sides(
    text_client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]
) -> None:
    x = clustered(50, seed=3)
    text_client.ingest("vectors", vector_records(x))
    _, summary = text_client.select("vectors", [x[0], x[1]], k=5)
    assert summary.cost == "embedding", "auto falls back to the embedding cost without sketches"
    with pytest.raises(grpc.RpcError) as err:
        text_client.select("vectors", [x[0]], k=5, cost="fused")
    assert _code(err) is grpc.StatusCode.FAILED_PRECONDITION
    assert "sketches" in str(err.value.details())
    # a text pool with targets sent as embeddings only
    _, targets, _ = wiki_slice
    vec = text_client.select("wiki", targets, k=3)[0]
    assert vec
    target_vectors = [np.asarray(v, dtype=np.float32) for v in clustered(2, seed=4)]
    _, fallback = text_client.select("wiki", target_vectors, k=3)
    assert fallback.cost == "embedding"
    with pytest.raises(grpc.RpcError) as err:
        text_client.select("wiki", target_vectors, k=3, cost="fused")
    assert _code(err) is grpc.StatusCode.FAILED_PRECONDITION
    assert "the target set" in str(err.value.details())


def test_relative_epsilon_scales_with_the_cost(
    text_client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]
) -> None:
    _, targets, _ = wiki_slice
    _, small = text_client.select("wiki", targets, k=5, relative_eps=0.03)
    _, large = text_client.select("wiki", targets, k=5, relative_eps=0.06)
    assert small.converged
    assert large.converged
    assert 0.01 < small.eps < 0.2
    assert large.eps == pytest.approx(2 * small.eps, rel=1e-6)
    with pytest.raises(grpc.RpcError) as err:
        text_client.select("wiki", targets, k=5, eps=0.1, relative_eps=0.05)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most one" in str(err.value.details())


def test_near_duplicates_of_the_targets_are_not_returned(
    text_client: Client, wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]]
) -> None:
    _, targets, _ = wiki_slice
    text_client.ingest("wiki", [{"id": "copy-of-target", "text": targets[0]}])
    ranked, summary = text_client.select("wiki", targets, k=5)
    assert "copy-of-target" in [r.id for r in ranked]
    assert summary.near_duplicates_excluded == 0
    kept, excluding = text_client.select("wiki", targets, k=5, near_duplicate_cosine=0.95)
    assert "copy-of-target" not in [r.id for r in kept]
    assert excluding.near_duplicates_excluded >= 1
    assert excluding.eligible == summary.eligible - excluding.near_duplicates_excluded
    assert [r.id for r in kept] == [r.id for r in ranked if r.id != "copy-of-target"] + [
        r.id for r in kept[len(ranked) - 1 :]
    ]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"cost": "fused", "embedding_weight": 1.5}, "embedding_weight"),
        ({"near_duplicate_cosine": 0.0}, "near_duplicate_cosine"),
        ({"near_duplicate_cosine": 1.5}, "near_duplicate_cosine"),
        ({"relative_eps": -1.0}, "relative_eps"),
    ],
)
def test_bad_cost_options_are_invalid_arguments(
    text_client: Client,
    wiki_slice: tuple[list[dict[str, Any]], list[str], set[str]],
    options: dict[str, Any],
    needle: str,
) -> None:
    _, targets, _ = wiki_slice
    with pytest.raises(grpc.RpcError) as err:
        text_client.select("wiki", targets, k=5, **options)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in str(err.value.details())
