"""Near-copy stress of the evaluation (issue 16): copies, stressed tasks, the new metrics, TSDS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gotd.cache.store.embeddings import normalise_text
from gotd.lab.evaluation import run as eval_run
from gotd.lab.evaluation.stress import (
    BOILERPLATE,
    copied_rows,
    distinct_precision,
    make_copy,
    parse_near_copies,
    redundancy,
)
from gotd.lab.evaluation.tasks import SelectionInput
from gotd.lab.evaluation.tsds import TsdsSelector, tsds_probabilities
from tests.test_evaluation import _toy_corpus


def test_parse_near_copies() -> None:
    assert parse_near_copies("0.1") == (0.1, 4)
    assert parse_near_copies("0.25,2") == (0.25, 2)
    for bad in ("", "x", "0", "1.5", "0.1,0", "0.1,2,3"):
        with pytest.raises(ValueError, match="FRAC"):
            parse_near_copies(bad)


def test_copies_are_exact_recased_boilerplate_and_a_word_dropped() -> None:
    text = "The Quick brown fox jumps over the lazy dog"
    exact, recased, boiler, dropped = (make_copy(text, v, "id7") for v in range(4))
    assert exact == text
    assert recased != text
    assert recased.lower() == text.lower()
    assert boiler.startswith(text + " ")
    assert boiler[len(text) + 1 :] in BOILERPLATE
    assert len(dropped.split()) == len(text.split()) - 1
    assert set(dropped.split()) <= set(text.split())
    assert make_copy(text, 5, "id7") == make_copy(text, 5, "id7")  # deterministic


def test_copied_rows_are_a_fixed_share_by_id() -> None:
    ids = [f"doc{i}" for i in range(5000)]
    rows = copied_rows(ids, 0.1)
    assert 400 < rows.size < 600
    assert np.array_equal(rows, copied_rows(list(ids), 0.1))
    assert set(copied_rows(ids, 0.05).tolist()) <= set(rows.tolist())


def test_redundancy_and_distinct_precision() -> None:
    source = np.array([10, 10, 11, 12, 12, 12, 13])
    is_target = np.array([True, True, False, True, True, True, False])
    top = np.array([0, 1, 3, 4])  # 10, 10, 12, 12
    assert redundancy(top, source) == 0.5
    assert distinct_precision(top, source, is_target) == 0.5
    assert redundancy(np.array([0, 2, 3]), source) == 0.0


def test_stressed_run_keeps_k_on_the_clean_pool_and_dedup_removes_redundancy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, vectors = _toy_corpus()
    copies = {
        make_copy(normalise_text(d.text), variant, d.id): v
        for d, v in zip(docs, vectors, strict=True)
        for variant in range(4)
    }

    def encoder(model_path: object, cache_dir: object) -> object:
        def encode(texts: list[str]) -> np.ndarray:  # a changed copy: its source's vector, nudged
            noise = np.random.default_rng(0).standard_normal((len(texts), vectors.shape[1]))
            return np.stack([copies[t] for t in texts]) + 0.02 * noise.astype(np.float32)

        return encode

    monkeypatch.setattr(eval_run, "text_encoder", encoder)
    methods = ["gotd-default", "gotd-default-copies", "tsds", "centroid"]
    common = dict(topics=["sea", "rock"], pool_size=80, target_size=20, heldout_size=10, pool_fraction=0.2)
    result = eval_run.run(
        tmp_path, **common, ks=(0.1,), methods=methods, corpus=docs, embeddings=vectors,  # type: ignore[arg-type]
        near_copies=(0.3, 4), plots=False, repeats=1, report_name="stress",
    )  # fmt: skip
    rows = {(r["label"], r["method"]): r for r in result["rows"]}
    assert {r["k"] for r in result["rows"]} == {8}  # 10% of the clean pool of 80
    for label in ("sea", "rock"):
        assert rows[label, "gotd-default"]["redundancy"] == 0.0
        assert rows[label, "gotd-default"]["distinct_precision"] <= rows[label, "gotd-default"]["precision"]
    assert max(rows[label, "gotd-default-copies"]["redundancy"] for label in ("sea", "rock")) > 0
    assert result["settings"]["near_copies"] == [0.3, 4]
    report = (tmp_path / "stress.md").read_text(encoding="utf-8")
    assert "Near-copy stress" in report
    assert "distinct precision" in report
    clean = eval_run.run(
        tmp_path, **common, ks=(0.1,), methods=["gotd-default"], corpus=docs, embeddings=vectors,  # type: ignore[arg-type]
        plots=False, repeats=1, report_name="clean",
    )  # fmt: skip
    for r in clean["rows"]:
        assert r["redundancy"] == 0.0
        assert r["distinct_precision"] == r["precision"]


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = rng.standard_normal((200, 16)).astype(np.float32)
    targets = pool[:10] + 0.05 * rng.standard_normal((10, 16)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    return pool, targets


def test_tsds_probabilities_are_a_distribution_near_the_targets() -> None:
    pool, targets = _blobs()
    p = tsds_probabilities(pool, targets)
    assert p.shape == (200,)
    assert (p >= 0).all()
    assert abs(p.sum() - 1) < 1e-9
    assert (p[:10] > 0).all()  # every target's nearest candidate gets mass
    nearest = np.sqrt(np.maximum(2 - 2 * pool @ targets.T, 0)).min(axis=1)
    assert nearest[p > 0].max() <= nearest[p == 0].min() + 0.3  # mass goes to the targets' neighbourhoods
    assert nearest[p > 0].mean() < nearest[p == 0].mean()


def test_tsds_copies_share_their_mass() -> None:
    pool, targets = _blobs()
    alone = tsds_probabilities(pool, targets, sigma=0.75)
    copied = np.concatenate([pool, np.repeat(pool[:1], 4, axis=0)])
    shared = tsds_probabilities(copied, targets, sigma=0.75)
    group = shared[[0, *range(200, 204)]]
    assert np.median(group) < alone[0]  # the density term divides a copy's share
    no_kde = tsds_probabilities(copied, targets, sigma=0.0)
    assert no_kde[[0, *range(200, 204)]].sum() > group.sum()


def test_tsds_selector_ranks_k_distinct_rows() -> None:
    pool, targets = _blobs()
    inp = SelectionInput(tuple("t" for _ in pool), pool, tuple("q" for _ in targets), targets, seed=0)
    ranked = TsdsSelector("tsds").rank(inp, 30)
    assert ranked.shape == (30,)
    assert np.unique(ranked).size == 30
    assert set(range(10)) & set(ranked[:15].tolist())
