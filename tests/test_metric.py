"""The learned cost (gotd.server.selection.metric) and its column in the fused rows.

Deterministic for the same rows; the discriminant direction along the discriminating columns; zero at
strength 0 or without pool rows; scaled to its strength; the column the compact rows compute equals the
materialised projection; the validation's learned setting fitted on pool rows outside its ranked
sample and refitted for the selection exactly as :func:`learned_metric` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gotd.server.ot.rows import StackedRows
from gotd.server.selection.config import summary_rows
from gotd.server.selection.costs import Cost, fused_rows, fused_targets, pool_features, target_features
from gotd.server.selection.grid import FALLBACK, Setting
from gotd.server.selection.metric import LearnedMetric, discriminant, fit_metric
from gotd.server.selection.sketches import (
    document_frequency,
    fused_matrix,
    idf_from_df,
    tf_rows,
    unit_sketches,
)
from gotd.server.selection.validation import ValidationConfig, _negatives, learned_metric, validate
from tests.test_validation import _task

D, BUCKETS = 16, 24


def _halves(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    e = rng.normal(size=(n, D))
    e[:, 3] += shift  # the discriminating embedding column
    s = np.abs(rng.normal(size=(n, BUCKETS)))
    s[:, 5] += shift  # and sketch column
    return e.astype(np.float32), s.astype(np.float32)


def test_fit_is_deterministic_and_points_along_the_discriminating_columns() -> None:
    rng = np.random.default_rng(0)
    pos, neg = _halves(rng, 60, shift=1.5), _halves(rng, 200)
    a = fit_metric(pos, neg, weight=0.5, strength=1.0)
    b = fit_metric((pos[0].copy(), pos[1].copy()), (neg[0].copy(), neg[1].copy()), weight=0.5, strength=1.0)
    assert a.factors.tobytes() == b.factors.tobytes()
    assert a.digest == b.digest
    assert int(np.argmax(np.abs(a.embedding))) == 3
    assert int(np.argmax(np.abs(a.sketch))) == 5
    assert a.project(pos).mean() > a.project(neg).mean(), "targets score higher along the direction"


def test_strength_scales_the_spread_and_zero_is_the_plain_cost() -> None:
    rng = np.random.default_rng(1)
    pos, neg = _halves(rng, 40, shift=1.0), _halves(rng, 120)
    fitted = discriminant(pos, neg)
    rows = np.concatenate([np.concatenate(pos, 1), np.concatenate(neg, 1)]).astype(np.float64)
    variance = rows.var(0)
    for w, strength in ((0.5, 1.0), (0.3, 0.25)):
        spread = w * variance[:D].sum() + (1 - w) * variance[D:].sum()
        metric = fitted.metric(w, strength)
        assert float(metric.project(neg).astype(np.float64).var()) == pytest.approx(
            strength * spread, rel=1e-4
        )
    for metric in (
        fitted.metric(0.5, 0.0),
        fit_metric(pos, (neg[0][:0], neg[1][:0]), weight=0.5, strength=1.0),
    ):
        assert not metric.factors.any()
    with pytest.raises(ValueError, match="strength"):
        fitted.metric(0.5, -1.0)
    with pytest.raises(ValueError, match="finite"):
        LearnedMetric(np.full(D, np.nan, np.float32), np.ones(BUCKETS, np.float32))
    split = LearnedMetric.split(fitted.metric(0.5, 1.0).factors, D)
    assert split.digest == fitted.metric(0.5, 1.0).digest


def test_the_learned_column_equals_the_materialised_projection() -> None:
    rng = np.random.default_rng(2)
    texts = [" ".join(rng.choice([f"w{i}" for i in range(40)], size=12).tolist()) for i in range(30)]
    tf = tf_rows(texts)
    vectors = rng.normal(size=(30, D)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    idf = idf_from_df(document_frequency(tf[:20]), 20)
    metric = LearnedMetric(
        rng.normal(size=D).astype(np.float32), rng.normal(size=tf.shape[1]).astype(np.float32)
    )
    for stored in (vectors, vectors.astype(np.float16)):
        plain = pool_features(stored[:20], tf[:20], Cost.FUSED, 0.3)
        learned = pool_features(stored[:20], tf[:20], Cost.FUSED, 0.3, metric=metric)
        assert isinstance(learned.x, StackedRows)
        pool32 = stored[:20].astype(np.float32)
        column = pool32 @ metric.embedding + unit_sketches(tf[:20], idf) @ metric.sketch
        expected = np.concatenate([fused_matrix(pool32, tf[:20], idf, 0.3), column[:, None]], axis=1)
        assert np.allclose(learned.x.dense().numpy(), expected, atol=1e-5)
        assert learned.tag != plain.tag
        epoch = fused_rows(stored[:20], tf[:20], 0.3, idf, metric)  # under a potential epoch's IDF
        assert isinstance(epoch, StackedRows)
        assert np.allclose(epoch.dense().numpy(), expected, atol=1e-5)
        assert metric.digest in learned.tag
        y = target_features(learned, torch.from_numpy(vectors[20:]), tf[20:])
        target_column = metric.project((vectors[20:], unit_sketches(tf[20:], idf)))
        scaled = np.concatenate(
            [fused_matrix(vectors[20:], tf[20:], idf, 0.3), target_column[:, None]], axis=1
        )
        assert np.allclose(y.numpy(), scaled, atol=1e-6)
        epoch_y = fused_targets(torch.from_numpy(vectors[20:]), tf[20:], idf, 0.3, metric)
        assert np.array_equal(epoch_y.numpy(), y.numpy())
        # the cross products the OT passes take from the compact rows: one GEMM per part
        parts = learned.x.against(y)
        cross = sum(p.scaled(0, 20) @ t.T for p, t in zip(learned.x.parts, parts, strict=True))
        assert torch.allclose(cross, torch.from_numpy(expected) @ y.T, atol=1e-4)


LEARNED = Setting(0.5, 0.05, 0.25)


def test_the_validation_fits_outside_its_sample_and_refits_for_the_selection() -> None:
    task = _task("ngram")
    config = ValidationConfig(min_targets=30, pool_sample=200, fit_sample=150, grid=(LEARNED,))
    keys = np.asarray(task["pool_keys"], dtype=np.uint64)
    sample = summary_rows(keys, config.pool_sample)
    negatives = _negatives(task["pool_vectors"], task["pool_tf"], keys, sample, task["idf"], config)
    assert len(negatives[0]) == 150
    outside = np.setdiff1d(summary_rows(keys, 350), sample)
    assert np.array_equal(negatives[0], task["pool_vectors"][outside])
    first = validate(**task, seed=7, fraction=0.05, config=config)
    again = validate(**task, seed=7, fraction=0.05, config=config)
    assert first.chosen == LEARNED
    assert first.metric is not None
    assert again.metric is not None
    assert first.metric.digest == again.metric.digest
    refit = learned_metric(**task, setting=LEARNED, config=config)
    assert refit.digest == first.metric.digest
    plain = validate(**task, seed=7, fraction=0.05, config=ValidationConfig(min_targets=30, grid=(FALLBACK,)))
    assert plain.metric is None


def test_fixed_grid_scores_do_not_change_with_learned_settings_added() -> None:
    task = _task("embedding")
    fixed = (FALLBACK, Setting(0.1, 0.05))
    base = validate(**task, seed=3, fraction=0.05, config=ValidationConfig(min_targets=30, grid=fixed))
    more = validate(
        **task, seed=3, fraction=0.05, config=ValidationConfig(min_targets=30, grid=(*fixed, LEARNED))
    )
    assert more.scores[:2] == base.scores
    assert [s.setting.label for s in more.scores] == [
        "w0.5-rel0.05",
        "w0.1-rel0.05",
        "w0.5-rel0.05-metric0.25",
    ]
