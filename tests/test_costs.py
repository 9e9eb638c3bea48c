"""Fused cost, relative epsilon and target-span projection: math against brute force and POT."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.cache.errors import FailedPrecondition, InvalidArgument
from gotd.server.ot.geometry import median_cost, project_to_targets, worth_projecting
from gotd.server.selection.costs import (
    Cost,
    CostConfig,
    SketchFactors,
    complete_sketches,
    near_duplicates,
    pool_features,
    resolve_cost,
    target_features,
)
from gotd.server.selection.modes import Mode, SelectionConfig, rank, relative_eps, solve
from gotd.server.selection.sketches import (
    document_frequency,
    fuse,
    fused_matrix,
    idf_from_df,
    tf_rows,
    unit_sketches,
)

TEXTS = [
    "The cat sat on the mat.",
    "A dog barked at the mailman twice.",
    "Integrals and derivatives are the core of calculus.",
    "The cat chased the dog around the garden.",
    "Linear algebra studies vector spaces and linear maps.",
    "Shakespeare wrote plays and sonnets in early modern English.",
]


def _units(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1))


def test_tf_rows_are_per_text_and_zero_without_text() -> None:
    rows = tf_rows([TEXTS[0], None, "", TEXTS[0]], buckets=64)
    assert rows.dtype == np.float16
    assert rows.shape == (4, 64)
    assert np.any(rows[0] != 0)
    assert not np.any(rows[1])
    assert not np.any(rows[2])
    assert np.array_equal(rows[0], rows[3])
    assert np.array_equal(tf_rows([TEXTS[0]], buckets=64)[0], rows[0])  # independent of the batch


def test_document_frequency_counts_nonzero_rows_per_bucket() -> None:
    tf = tf_rows(TEXTS, buckets=32)
    assert np.array_equal(document_frequency(tf), (tf != 0).sum(0))
    idf = idf_from_df(document_frequency(tf), len(TEXTS))
    assert idf.dtype == np.float32
    assert np.all(idf >= 1.0)


def test_fused_matrix_equals_fuse_of_unit_sketches() -> None:
    rng = np.random.default_rng(0)
    tf = tf_rows(TEXTS, buckets=128)
    idf = idf_from_df(document_frequency(tf), len(TEXTS))
    e = _units(rng, len(TEXTS), 8)
    got = fused_matrix(e, tf, idf, 0.3)
    want = fuse(e, unit_sketches(tf, idf), 0.3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(w=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_fused_cost_is_the_weighted_sum_of_the_two_costs(w: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tf = tf_rows(TEXTS, buckets=64)
    idf = idf_from_df(document_frequency(tf), len(TEXTS))
    e = _units(rng, len(TEXTS), 5)
    s = unit_sketches(tf, idf)
    fused = fused_matrix(e, tf, idf, w)
    want = w * _sqdist(e[:3], e[3:]) + (1 - w) * _sqdist(s[:3], s[3:])
    np.testing.assert_allclose(_sqdist(fused[:3], fused[3:]), want, atol=2e-5)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 12), d=st.integers(2, 64), seed=st.integers(0, 2**16))
def test_projection_keeps_every_candidate_target_distance(n: int, m: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    y = torch.from_numpy(rng.standard_normal((m, d)).astype(np.float32))
    xp, yp = project_to_targets(x, y)
    assert xp.shape == (n, min(m, d) + 1)
    assert yp.shape == (m, min(m, d) + 1)
    scale = float((x.double() ** 2).sum(1).max() + (y.double() ** 2).sum(1).max())
    np.testing.assert_allclose(
        _sqdist(xp.numpy(), yp.numpy()), _sqdist(x.numpy(), y.numpy()), atol=2e-5 * scale
    )


def test_worth_projecting_only_when_it_halves_the_dimension() -> None:
    assert worth_projecting(100, 1408)
    assert worth_projecting(191, 384)
    assert not worth_projecting(192, 384)
    assert not worth_projecting(1000, 384)


def test_median_cost_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x, y = _units(rng, 50, 7), _units(rng, 9, 7)
    assert median_cost(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
        float(np.median(_sqdist(x, y))), rel=1e-9
    )
    with pytest.raises(ValueError, match="non-empty"):
        median_cost(torch.zeros(0, 3), torch.zeros(2, 3))


def test_projected_solve_matches_pot_and_the_unprojected_solve() -> None:
    rng = np.random.default_rng(2)
    x, y = _units(rng, 300, 96), _units(rng, 12, 96)
    eps = 0.1
    on = solve(torch.from_numpy(x), torch.from_numpy(y), SelectionConfig(mode=Mode.EXACT, eps=eps))
    off = solve(
        torch.from_numpy(x), torch.from_numpy(y), SelectionConfig(mode=Mode.EXACT, eps=eps, project=False)
    )
    assert on.converged
    assert off.converged
    np.testing.assert_allclose(on.g.numpy(), off.g.numpy(), atol=2e-4)
    cost = _sqdist(x, y)
    a, b = np.full(300, 1 / 300), np.full(12, 1 / 12)
    _, log = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", stopThr=1e-9, numItermax=10000, log=True)
    g_pot = eps * np.asarray(log["log_v"])  # defined up to a constant shift
    g = on.g.numpy().astype(np.float64)
    np.testing.assert_allclose(g - g.mean(), g_pot - g_pot.mean(), atol=2e-3)


def test_relative_eps_is_a_multiple_of_the_median_and_row_order_free() -> None:
    rng = np.random.default_rng(3)
    x, y = torch.from_numpy(_units(rng, 2000, 16)), torch.from_numpy(_units(rng, 30, 16))
    keys = rng.integers(0, 2**63, size=2000, dtype=np.uint64)
    eps = relative_eps(x, y, keys, 0.05)
    perm = rng.permutation(2000)
    assert relative_eps(x[torch.from_numpy(perm)], y, keys[perm], 0.05) == pytest.approx(eps, rel=1e-12)
    assert 0.05 * 1.5 < eps < 0.05 * 2.5  # unit vectors in 16-d: costs near 2
    p = solve(x, y, SelectionConfig(mode=Mode.EXACT, relative_eps=0.05), keys=keys)
    assert p.eps == pytest.approx(eps, rel=1e-12)
    assert p.converged


def test_relative_eps_is_validated() -> None:
    with pytest.raises(ValueError, match="relative_eps"):
        SelectionConfig(relative_eps=0.0)
    with pytest.raises(ValueError, match="relative_eps"):
        SelectionConfig(relative_eps=float("nan"))


def test_fused_ranking_uses_the_ngram_signal() -> None:
    """Same embedding, different words: the fused cost prefers the one sharing words with the targets."""
    rng = np.random.default_rng(4)
    e = _units(rng, 1, 8)
    texts = ["calculus integrals derivatives limits", "gardening tomatoes compost soil"]
    targets = ["integrals and derivatives in calculus", "limits of derivatives"]
    pool_tf = tf_rows(texts + TEXTS)
    vectors = np.vstack([e, e, _units(rng, len(TEXTS), 8)])
    feats = pool_features(vectors, pool_tf, Cost.FUSED, 0.5)
    y_vec = torch.from_numpy(_units(rng, 2, 8))
    y = target_features(feats, y_vec, tf_rows(targets))
    batches = rank(feats.x, y, mode=Mode.EXACT, eps=0.05)
    rows = [r for batch in batches for r, _ in batch]
    assert rows.index(0) < rows.index(1)
    emb = pool_features(vectors, None, Cost.EMBEDDING, 1.0)
    assert emb.x.data_ptr() == torch.from_numpy(vectors).data_ptr() or np.array_equal(emb.x.numpy(), vectors)
    assert target_features(emb, y_vec, None) is y_vec


def test_resolve_cost_rules() -> None:
    auto, fused, emb = CostConfig(), CostConfig(cost=Cost.FUSED), CostConfig(cost=Cost.EMBEDDING)
    assert resolve_cost(auto, pool="p", pool_sketched=True, target_sketched=True) is Cost.FUSED
    assert resolve_cost(auto, pool="p", pool_sketched=False, target_sketched=True) is Cost.EMBEDDING
    assert resolve_cost(emb, pool="p", pool_sketched=True, target_sketched=True) is Cost.EMBEDDING
    one = CostConfig(cost=Cost.FUSED, embedding_weight=1.0)
    assert resolve_cost(one, pool="p", pool_sketched=False, target_sketched=False) is Cost.EMBEDDING
    with pytest.raises(FailedPrecondition, match="pool 'p' and the target set"):
        resolve_cost(fused, pool="p", pool_sketched=False, target_sketched=False)
    with pytest.raises(FailedPrecondition, match="the target set"):
        resolve_cost(fused, pool="p", pool_sketched=True, target_sketched=False)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="embedding_weight"):
            CostConfig(embedding_weight=bad)
    with pytest.raises(ValueError, match="cost must be"):
        CostConfig(cost="manhattan")  # type: ignore[arg-type]


def test_complete_sketches() -> None:
    tf = tf_rows(TEXTS)
    assert complete_sketches(tf)
    assert not complete_sketches(None)
    assert not complete_sketches(tf[:0])
    assert not complete_sketches(np.vstack([tf, tf_rows([None])]))


def test_the_idf_alone_is_the_factors_idf_and_serves_them() -> None:
    """The cost validation computes only the IDF weights; the factors computed later from them are the
    factors computed from scratch, bit for bit (deleted rows left out of both)."""
    tf = tf_rows(TEXTS * 3)
    deleted = np.zeros(len(tf), dtype=bool)
    deleted[[1, 4]] = True
    for gone in (None, deleted):
        idf = SketchFactors.pool_idf(tf, gone)
        whole = SketchFactors.of(tf, gone)
        assert idf.tobytes() == whole.idf.tobytes()
        later = SketchFactors.of(tf, gone, idf)
        assert later.idf is idf
        assert later.inverse_norms.tobytes() == whole.inverse_norms.tobytes()
    assert SketchFactors.pool_idf(tf, deleted).tobytes() != SketchFactors.pool_idf(tf).tobytes()


_SPECIAL16 = np.array([0.0, -0.0, 1.0, -1.0, 6e-8, -6e-8, np.inf, np.nan, 65504.0], dtype=np.float16)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 9),
    width=st.sampled_from([1, 3, 4, 8, 12]),
    picks=st.lists(st.integers(0, len(_SPECIAL16) - 1), min_size=1, max_size=108),
    zero_rows=st.lists(st.integers(0, 8), max_size=3),
)
def test_complete_sketches_reads_float16_bits_like_floats(
    rows: int, width: int, picks: list[int], zero_rows: list[int]
) -> None:
    """The packed float16 test (uint64 words, sign bit ignored) answers as the float comparison does:
    signed zeros, subnormals, inf and NaN, widths that do and do not pack."""
    values = _SPECIAL16[np.resize(np.asarray(picks), rows * width)].reshape(rows, width)
    values[[r for r in zero_rows if r < rows]] = np.float16(-0.0)
    expected = bool(np.any(values.astype(np.float32) != 0, axis=1).all())
    assert complete_sketches(np.ascontiguousarray(values)) is expected
    assert complete_sketches(values.astype(np.float32)) is expected


def test_near_duplicates_against_brute_force() -> None:
    rng = np.random.default_rng(5)
    x, y = _units(rng, 500, 6), _units(rng, 4, 6)
    x[7] = y[2]
    got = near_duplicates(x, y, 0.95)
    want = (x.astype(np.float64) @ y.T.astype(np.float64)).max(1) > 0.95
    assert got[7]
    assert np.array_equal(got, want)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(InvalidArgument, match="near_duplicate_cosine"):
            near_duplicates(x, y, bad)
