"""Hashed n-gram sketches and fused features (gotd.server.features, issue 10)."""

from __future__ import annotations

import numpy as np
import pytest

from gotd.server.eval_tasks import SelectionInput
from gotd.server.features import (
    SketchCache,
    fuse,
    hashed_counts,
    idf_weights,
    median_cost,
    ngrams,
    sketch,
)

TEXTS = [
    "The cat sat on the mat.",
    "A dog chased the cat around the garden.",
    "Quantum chromodynamics describes the strong interaction.",
    "The cat sat on the mat.",
    "",
]
BUCKETS = 1 << 10


def _sketches(texts: list[str], idf: bool = True) -> np.ndarray:
    counts = [hashed_counts(t, buckets=BUCKETS) for t in texts]
    return sketch(counts, BUCKETS, idf=idf_weights(counts, BUCKETS) if idf else None)


def _sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return ((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1)


def test_ngrams_are_uni_and_bigrams() -> None:
    assert ngrams("The cat, sat") == ["the", "cat", ",", "sat", "the cat", "cat ,", ", sat"]
    assert ngrams("a b", order=1) == ["a", "b"]
    with pytest.raises(ValueError, match="order"):
        ngrams("a", order=0)


def test_sketch_is_deterministic() -> None:
    a, b = _sketches(TEXTS), _sketches(TEXTS)
    assert np.array_equal(a, b)
    idx1, val1 = hashed_counts(TEXTS[1], buckets=BUCKETS)
    idx2, val2 = hashed_counts(TEXTS[1], buckets=BUCKETS)
    assert np.array_equal(idx1, idx2)
    assert np.array_equal(val1, val2)
    idx3, _ = hashed_counts(TEXTS[1], buckets=BUCKETS, seed=1)
    assert not np.array_equal(idx1, idx3)  # the seed changes the hash


def test_sketch_rows_are_unit_norm_and_empty_text_is_zero() -> None:
    for idf in (True, False):
        s = _sketches(TEXTS, idf=idf)
        assert s.shape == (len(TEXTS), BUCKETS)
        assert s.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(s[:-1], axis=1), 1.0, atol=1e-6)
        assert not s[-1].any()


def test_identical_texts_are_at_distance_zero() -> None:
    s = _sketches(TEXTS)
    assert float(_sq(s[:1], s[3:4])[0, 0]) == 0.0
    assert float(_sq(s[:1], s[1:2])[0, 0]) > 0.1


def test_signed_hashing_uses_both_signs() -> None:
    _, val = hashed_counts(" ".join(f"w{i}" for i in range(200)), buckets=1 << 16)
    assert (val > 0).any()
    assert (val < 0).any()


@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_fused_distance_is_weighted_sum_of_costs(w: float) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(TEXTS) - 1, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    s = _sketches(TEXTS[:-1])
    x = fuse(emb, s, w)
    assert x.shape == (emb.shape[0], 16 + BUCKETS)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    expected = w * _sq(emb, emb) + (1 - w) * _sq(s, s)
    np.testing.assert_allclose(_sq(x, x), expected, atol=1e-5)


def test_fuse_rejects_bad_weight_and_shapes() -> None:
    with pytest.raises(ValueError, match="w must be"):
        fuse(np.zeros((2, 3)), np.zeros((2, 4)), 1.5)
    with pytest.raises(ValueError, match="sketches"):
        fuse(np.zeros((2, 3)), np.zeros((3, 4)), 0.5)


def test_median_cost_matches_dense() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    assert median_cost(x, y) == pytest.approx(float(np.median(_sq(x, y))), rel=1e-9)
    assert median_cost(rng.normal(size=(3000, 8)), y, max_rows=100) > 0


def test_cache_computes_each_text_once() -> None:
    cache = SketchCache(buckets=BUCKETS)
    first = cache.counts(TEXTS)
    assert len(cache) == len(set(TEXTS))
    again = cache.counts(TEXTS[:2])
    assert again[0] is first[0]
    assert again[1] is first[1]


def test_projection_keeps_costs_and_fused_selector_ranks() -> None:
    from gotd.server.eval_fused import FusedSelector, project_to_targets
    from gotd.server.eval_methods import MethodOptions, make_method

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(40, 30)), rng.normal(size=(6, 30))
    xp, yp = project_to_targets(x, y)
    assert xp.shape == (40, 7)
    np.testing.assert_allclose(_sq(xp, yp), _sq(x, y), atol=1e-9)

    pool = [f"text number {i} about {'cats' if i % 2 else 'quantum physics'}" for i in range(40)]
    targets = ["a text about cats", "cats and more cats", "text about cats"]
    emb = rng.normal(size=(43, 12)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[40] = emb[0]  # a near-duplicate of target 0 in the pool
    inp = SelectionInput(tuple(pool), emb[3:], tuple(targets), emb[:3], seed=0)
    sel = FusedSelector("f", 0.3, exclude_dups=True)
    ranked = sel.rank(inp, 40)
    assert sorted(ranked.tolist()) == list(range(40))
    assert ranked[-1] == 37
    assert sel.diagnostics["excluded"] == 1
    assert sel.diagnostics["converged"]
    assert np.array_equal(ranked, sel.rank(inp, 40))
    assert np.mean([r % 2 for r in ranked[:10]]) > 0.5  # the n-gram cost prefers the "cats" texts
    assert isinstance(make_method("gotd-fused-w0.5-c0.1-nodup", MethodOptions()), FusedSelector)
