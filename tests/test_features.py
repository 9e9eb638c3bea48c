"""Hashed n-gram sketches and fused features (gotd.server.selection.sketches, issue 10)."""

from __future__ import annotations

import numpy as np
import pytest

from gotd.lab.evaluation.tasks import SelectionInput
from gotd.server.selection.sketches import (
    document_frequency,
    fuse,
    hashed_counts,
    idf_from_df,
    ngrams,
    tf_rows,
    unit_sketches,
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
    tf = tf_rows(texts, buckets=BUCKETS)
    weights = idf_from_df(document_frequency(tf), len(texts)) if idf else np.ones(BUCKETS, np.float32)
    return unit_sketches(tf, weights)


def _sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1))


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


def test_tf_rows_hold_sublinear_signed_counts() -> None:
    idx, val = hashed_counts(TEXTS[0], buckets=BUCKETS)
    row = tf_rows([TEXTS[0]], buckets=BUCKETS)[0].astype(np.float32)
    np.testing.assert_allclose(row[idx], np.sign(val) * np.log1p(np.abs(val)), rtol=1e-3)
    assert np.count_nonzero(row) == len(idx)


def test_sketch_rows_are_unit_norm_and_empty_text_is_zero() -> None:
    for idf in (True, False):
        s = _sketches(TEXTS, idf=idf)
        assert s.shape == (len(TEXTS), BUCKETS)
        assert s.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(s[:-1], axis=1), 1.0, atol=1e-6)
        assert not s[-1].any()


def test_idf_downweights_common_buckets() -> None:
    tf = tf_rows(TEXTS, buckets=BUCKETS)
    idf = idf_from_df(document_frequency(tf), len(TEXTS))
    (the,) = hashed_counts("the", buckets=BUCKETS)[0]
    (quantum,) = hashed_counts("quantum", buckets=BUCKETS)[0]
    assert idf[the] < idf[quantum]
    with pytest.raises(ValueError, match="idf must have shape"):
        unit_sketches(tf, idf[:-1])


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


def test_fused_selector_ranks_by_words_and_sets_near_duplicates_last() -> None:
    from gotd.lab.evaluation.fused import FusedSelector
    from gotd.lab.evaluation.methods import MethodOptions, make_method
    from gotd.server.selection.costs import Cost

    rng = np.random.default_rng(2)
    pool = [f"text number {i} about {'cats' if i % 2 else 'quantum physics'}" for i in range(40)]
    targets = ["a text about cats", "cats and more cats", "text about cats"]
    emb = rng.normal(size=(43, 12)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[40] = emb[0]  # pool row 37 is a near-duplicate of target 0
    inp = SelectionInput(tuple(pool), emb[3:], tuple(targets), emb[:3], seed=0)
    sel = FusedSelector("f", Cost.FUSED, 0.3, dup_cosine=0.95)
    ranked = sel.rank(inp, 40)
    assert sorted(ranked.tolist()) == list(range(40))
    assert ranked[-1] == 37
    assert sel.diagnostics["excluded"] == 1
    assert sel.diagnostics["converged"]
    assert np.array_equal(ranked, sel.rank(inp, 40))
    assert np.mean([r % 2 for r in ranked[:10]]) > 0.5  # the n-gram cost prefers the "cats" texts
    rel = make_method("gotd-fused-w0.5-rel0.05", MethodOptions())
    assert isinstance(rel, FusedSelector)
    rel.rank(inp, 10)
    assert rel.diagnostics["eps"] > 0.0
    assert rel.diagnostics["eps"] != pytest.approx(0.1)
    assert isinstance(make_method("gotd-default", MethodOptions()), FusedSelector)
