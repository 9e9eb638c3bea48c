"""The validated cost (gotd.server.selection.validation): deterministic; finds the feature that separates.

Two synthetic tasks built so that only one half of the fused cost can tell the target from the pool:
the n-gram task (targets share an outlet's boilerplate phrase; embeddings are noise for everyone) and
the embedding task (targets' embeddings cluster; texts are random words for everyone).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from gotd.server.ot.dense import sinkhorn_dense
from gotd.server.ot.sinkhorn import sinkhorn
from gotd.server.selection.sketches import document_frequency, idf_from_df, tf_rows
from gotd.server.selection.validation import (
    DEFAULT_GRID,
    FALLBACK,
    Setting,
    Validation,
    ValidationConfig,
    validate,
)

WORDS = [f"word{i}" for i in range(300)]
N_POOL, N_TARGET, N_POSITIVE, D = 500, 60, 10, 32


def _texts(rng: np.random.Generator, count: int, phrase: str | None) -> list[str]:
    out = []
    for _ in range(count):
        body = " ".join(rng.choice(WORDS, size=25).tolist())
        out.append(f"{phrase} {body} {phrase}" if phrase else body)
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return out


def _task(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Pool (``N_POSITIVE`` rows like the targets) and targets where only ``kind`` features separate.

    ``ngram``: the targets and positives carry an outlet's short phrase; every embedding is noise.
    ``embedding``: their embeddings share a direction; every text is random words.
    """
    rng = np.random.default_rng(seed)
    like = N_POSITIVE + N_TARGET
    phrase = "herald staff report" if kind == "ngram" else None
    texts = _texts(rng, N_POOL - N_POSITIVE, None) + _texts(rng, like, phrase)
    noise = rng.normal(size=(N_POOL + N_TARGET, D))
    if kind == "embedding":
        noise[N_POOL - N_POSITIVE :] += rng.normal(size=D) * 0.35
    vectors = _unit(noise)
    tf = tf_rows(texts)
    pool_tf = tf[:N_POOL]
    return {
        "pool_vectors": vectors[:N_POOL],
        "pool_tf": pool_tf,
        "pool_keys": (np.arange(N_POOL, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)),
        "idf": idf_from_df(document_frequency(pool_tf), N_POOL),
        "target_vectors": vectors[N_POOL:],
        "target_tf": tf[N_POOL:],
    }


#: The tasks here have 60 targets: validate from 30 (the server's default threshold is 100).
SMALL = ValidationConfig(min_targets=30)


def _run(
    task: dict[str, np.ndarray], *, fraction: float = 0.05, config: ValidationConfig | None = None
) -> Validation:
    return validate(**task, seed=7, fraction=fraction, config=config or SMALL)


def test_ngram_task_picks_the_ngram_end() -> None:
    # the default setting finds every held-out member here too: only the argmax rule leaves it
    result = _run(_task("ngram"), config=replace(SMALL, margin=0.0))
    assert not result.fallback
    assert result.chosen.embedding_weight <= 0.1, result
    by = {s.setting: s for s in result.scores}
    assert by[result.chosen].recall > max(
        s.recall for s in result.scores if s.setting.embedding_weight == 1.0
    )


def test_embedding_task_picks_the_embedding_end() -> None:
    result = _run(_task("embedding"))
    # random texts give every pair about the same sketch cost: a weight below 1 only rescales the
    # embedding half against epsilon, so the end is "mostly embedding", never the pure n-gram cost
    assert result.chosen.embedding_weight >= 0.3, result
    by = {s.setting: s for s in result.scores}
    assert by[result.chosen].recall > max(
        s.recall for s in result.scores if s.setting.embedding_weight == 0.0
    )


def test_deterministic_and_reports_every_setting() -> None:
    task = _task("ngram", seed=1)
    first, again = _run(task), _run(task)
    assert first == again
    assert [s.setting for s in first.scores] == list(DEFAULT_GRID)
    assert first.held_out == N_TARGET
    assert first.pool_sample == N_POOL
    for s in first.scores:
        assert 0.0 <= s.recall <= 1.0
        assert 0.0 < s.mrr <= 1.0
        assert 0.0 <= s.auc <= 1.0


def test_default_kept_unless_the_gain_clears_the_margin() -> None:
    task = _task("embedding")
    argmax = _run(task, config=replace(SMALL, margin=0.0))
    assert argmax.chosen != FALLBACK
    assert not argmax.kept_default
    by = {s.setting: s.recall for s in argmax.scores}
    assert by[argmax.chosen] > by[FALLBACK]
    assert _run(task) == argmax  # the lead clears one standard error of the paired gain
    tied = _run(_task("ngram"))  # the default already finds every member: no gain to take
    assert tied.kept_default
    assert tied.chosen == FALLBACK
    cautious = _run(task, config=replace(SMALL, margin=1e6))
    assert cautious.kept_default
    assert cautious.chosen == FALLBACK
    assert cautious.scores == argmax.scores  # the scores are reported either way


def test_noise_keeps_the_default() -> None:
    # targets drawn like the pool: no setting can find them, any lead is noise
    task = _task("embedding", seed=6)
    rng = np.random.default_rng(6)
    pick = rng.choice(N_POOL, N_TARGET, replace=False)
    noise = dict(task, target_vectors=task["pool_vectors"][pick], target_tf=task["pool_tf"][pick])
    result = _run(noise)
    assert result.chosen == FALLBACK
    assert result.kept_default or max(s.recall for s in result.scores) == next(
        s.recall for s in result.scores if s.setting == FALLBACK
    )


def test_folds_in_threads_give_the_same_result() -> None:
    task = _task("ngram", seed=4)
    assert _run(task, config=replace(SMALL, threads=1)) == _run(task, config=replace(SMALL, threads=3))


def test_pool_row_order_does_not_matter() -> None:
    task = _task("ngram", seed=2)
    perm = np.random.default_rng(3).permutation(N_POOL)
    shuffled = dict(task, **{k: task[k][perm] for k in ("pool_vectors", "pool_tf", "pool_keys")})
    assert _run(task) == _run(shuffled)


def test_small_target_set_falls_back() -> None:
    task = _task("ngram")
    small = dict(task, target_vectors=task["target_vectors"][:10], target_tf=task["target_tf"][:10])
    result = _run(small)
    assert result == Validation(FALLBACK, (), 0.05, 0, 0, fallback=True)


def test_bounded_sample_and_folds() -> None:
    config = replace(SMALL, pool_sample=100, max_held_out=5, max_train=20, grid=DEFAULT_GRID[:2])
    result = _run(_task("embedding"), config=config)
    assert result.pool_sample == 100
    assert result.held_out == 15
    assert len(result.scores) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": ()}, "grid"),
        ({"grid": (FALLBACK, FALLBACK)}, "distinct"),
        ({"folds": 1}, "folds"),
        ({"pool_sample": 0}, "pool_sample"),
        ({"min_targets": 2}, "min_targets"),
        ({"threads": 0}, "threads"),
        ({"margin": -1.0}, "margin"),
    ],
)
def test_config_is_validated(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(ValidationConfig(), **change)


@pytest.mark.parametrize(("w", "c"), [(-0.1, 0.05), (1.1, 0.05), (0.5, 0.0), (0.5, float("nan"))])
def test_setting_is_validated(w: float, c: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Setting(w, c)


def test_fraction_is_validated() -> None:
    with pytest.raises(ValueError, match="fraction"):
        _run(_task("ngram"), fraction=0.0)


def test_dense_sinkhorn_matches_the_blockwise_solver() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(_unit(rng.normal(size=(70, 8))).astype(np.float64))
    y = torch.from_numpy(_unit(rng.normal(size=(20, 8))).astype(np.float64))
    cost = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    dense = sinkhorn_dense(cost, eps=0.05, tol=1e-10, max_iter=5000)
    blocks = sinkhorn(x, y, eps=0.05, tol=1e-10, max_iter=5000, eps_scaling=False)
    assert dense.converged
    assert blocks.converged
    shift = float((dense.g - blocks.g).mean())  # potentials are defined up to a constant
    torch.testing.assert_close(dense.g - shift, blocks.g, atol=1e-7, rtol=0)
    torch.testing.assert_close(dense.f + shift, blocks.f, atol=1e-7, rtol=0)
    assert dense.cost == pytest.approx(blocks.cost, abs=1e-9)


def test_dense_sinkhorn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        sinkhorn_dense(torch.zeros(0, 3), eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        sinkhorn_dense(torch.zeros(2, 3), eps=0.0)
