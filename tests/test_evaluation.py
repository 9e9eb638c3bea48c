"""Evaluation harness (issue 7): metrics on hand-made inputs, task building, methods, a smoke run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gotd.lab.corpora.wiki import Doc
from gotd.lab.evaluation.embed import embed_corpus, embedding_cache_path
from gotd.lab.evaluation.methods import (
    MethodOptions,
    available_methods,
    make_method,
    order_by_score,
    register_method,
)
from gotd.lab.evaluation.run import run
from gotd.lab.evaluation.tasks import SelectionInput, TaskSpec, build_task, selection_input

HAS_SELECTION = importlib.util.find_spec("gotd.server.selection.modes") is not None
HAS_DSIR = importlib.util.find_spec("data_selection") is not None

# -- tasks ----------------------------------------------------------------------------------------

LABELS = ["x"] * 60 + ["y"] * 200 + ["z"] * 140


def test_task_sets_are_disjoint_and_shaped() -> None:
    spec = TaskSpec(pool_size=150, target_size=20, heldout_size=10, pool_fraction=0.2, seed=3)
    task = build_task(LABELS, "x", spec)
    sets = [set(task.target.tolist()), set(task.heldout.tolist()), set(task.pool.tolist())]
    assert [len(s) for s in sets] == [20, 10, 150]
    assert not (sets[0] & sets[1])
    assert not (sets[0] & sets[2])
    assert not (sets[1] & sets[2])
    assert all(LABELS[i] == "x" for i in [*task.target, *task.heldout])
    assert task.pool_is_target.tolist() == [LABELS[i] == "x" for i in task.pool]
    assert task.positives == 30  # 20% of 150, all that remain of 60 - 30
    assert task.ceiling(60) == pytest.approx(0.5)
    assert task.positives < task.pool.size / 2  # a minority


def test_tasks_are_deterministic_per_seed_and_label() -> None:
    spec = TaskSpec(pool_size=100, target_size=10, heldout_size=10, pool_fraction=0.1, seed=0)
    a, b = build_task(LABELS, "y", spec), build_task(LABELS, "y", spec)
    assert np.array_equal(a.pool, b.pool)
    assert np.array_equal(a.target, b.target)
    c = build_task(LABELS, "y", dataclasses.replace(spec, seed=1))
    assert not np.array_equal(a.pool, c.pool)


def test_task_positives_are_capped_and_bad_shapes_refused() -> None:
    spec = TaskSpec(pool_size=300, target_size=20, heldout_size=20, pool_fraction=0.3)
    assert build_task(LABELS, "x", spec).positives == 20  # 60 - 40 left, not 90
    with pytest.raises(ValueError, match="need more than"):
        build_task(LABELS, "x", TaskSpec(pool_size=100, target_size=50, heldout_size=10))
    with pytest.raises(ValueError, match="pool_fraction"):
        TaskSpec(pool_fraction=0.6)


def test_selection_input_is_the_label_free_view_of_a_task() -> None:
    fields = {f.name for f in dataclasses.fields(SelectionInput)}
    assert fields == {"pool_texts", "pool_vectors", "target_texts", "target_vectors", "seed"}
    task = build_task(LABELS, "z", TaskSpec(pool_size=50, target_size=5, heldout_size=5, pool_fraction=0.2))
    texts = [f"text {i}" for i in range(len(LABELS))]
    vectors = np.eye(len(LABELS), 8, dtype=np.float32)
    inp = selection_input(task, texts, vectors, seed=0)
    assert inp.pool_texts == tuple(texts[i] for i in task.pool)
    assert np.array_equal(inp.target_vectors, vectors[task.target])


# -- methods --------------------------------------------------------------------------------------


def _input(n: int = 40, seed: int = 0) -> SelectionInput:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    texts = tuple(f"candidate number {i}" for i in range(n))
    return SelectionInput(texts, x, ("target one", "target two"), x[:2].copy(), seed)


def test_order_by_score_breaks_ties_by_row() -> None:
    assert order_by_score(np.array([1.0, 3.0, 3.0, 2.0]), 3).tolist() == [1, 2, 3]
    assert order_by_score(np.array([1.0, 3.0, 3.0]), 2, descending=False).tolist() == [0, 1]


def test_centroid_and_random_rank_validly() -> None:
    inp = _input()
    centroid = make_method("centroid", MethodOptions()).rank(inp, 5)
    assert set(centroid[:2].tolist()) == {0, 1}  # the targets' own vectors are in the pool
    r1 = make_method("random", MethodOptions()).rank(inp, 10)
    r2 = make_method("random", MethodOptions()).rank(inp, 10)
    assert np.array_equal(r1, r2)
    assert np.unique(r1).size == 10


def test_registry_refuses_unknown_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        make_method("nope", MethodOptions())
    with pytest.raises(ValueError, match="already registered"):
        register_method("random", lambda n, o: make_method("centroid", o))
    assert {"gotd-global", "gotd-exact", "gotd-paper", "dsir", "centroid", "random"} <= set(
        available_methods()
    )


@pytest.mark.skipif(not HAS_DSIR, reason="data-selection (extra 'eval') is not installed")
def test_dsir_prefers_target_like_texts(tmp_path: Path) -> None:
    pool = tuple(
        ["the cat sat on the mat with another cat"] * 3 + ["stock market prices fell sharply today"] * 5
    )
    inp = SelectionInput(
        pool, np.zeros((8, 2), np.float32), ("a cat on a mat", "the cat"), np.zeros((2, 2), np.float32), 0
    )
    for name in ("dsir", "dsir-topk"):
        top = make_method(name, MethodOptions(workdir=tmp_path)).rank(inp, 3)
        assert sorted(top.tolist()) == [0, 1, 2]


# -- embedding cache ------------------------------------------------------------------------------


class _CountingEncoder:
    model_id = "fake"
    dim = 4
    calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        type(self).calls += 1
        out = np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_corpus_embeddings_are_encoded_once_and_cached(tmp_path: Path) -> None:
    ids, texts = ["a", "b", "c"], ["one", "three", "five!"]
    _CountingEncoder.calls = 0
    first = embed_corpus(ids, texts, _CountingEncoder, model_id="fake", cache_dir=tmp_path, chunk=2)
    second = embed_corpus(ids, texts, _CountingEncoder, model_id="fake", cache_dir=tmp_path)
    assert (first.cached, second.cached, _CountingEncoder.calls) == (False, True, 2)
    assert np.array_equal(first.vectors, second.vectors)
    assert second.vectors.dtype == np.float32
    assert second.encode_seconds == pytest.approx(first.encode_seconds)
    path = embedding_cache_path(ids, texts, model_id="fake", cache_dir=tmp_path)
    assert path == second.path
    assert path.is_file()
    assert embedding_cache_path(ids, ["one", "three", "five"], model_id="fake", cache_dir=tmp_path) != path
    with pytest.raises(ValueError, match="expected"):
        embed_corpus(ids, ["x", "y", "z"], _CountingEncoder, model_id="other", cache_dir=tmp_path)


# -- end to end -----------------------------------------------------------------------------------

WORDS = {
    "sea": ["ocean", "wave", "tide", "coral", "reef", "fish", "salt", "harbour", "sailor", "ship"],
    "sky": ["cloud", "rain", "storm", "wind", "sun", "star", "moon", "thunder", "bird", "kite"],
    "rock": ["stone", "granite", "cliff", "mountain", "cave", "fossil", "quartz", "lava", "ridge", "sand"],
}


def _toy_corpus(seed: int = 0) -> tuple[list[Doc], np.ndarray]:
    """Texts drawn from per-label vocabularies with shared filler; vectors = normalised label mixtures."""
    rng = np.random.default_rng(seed)
    filler = ["the", "a", "of", "and", "in", "is", "with"]
    docs, vectors = [], []
    centers = np.eye(3, 12, dtype=np.float32)
    for i in range(360):
        label = list(WORDS)[i % 3]
        words = rng.choice(WORDS[label] + filler, size=int(rng.integers(5, 25))).tolist()
        docs.append(Doc(id=f"d{i:03d}", text=" ".join(words), topic=label))
        v = centers[i % 3] + 0.9 * rng.standard_normal(12).astype(np.float32)
        vectors.append(v / np.linalg.norm(v))
    return docs, np.stack(vectors)


def test_smoke_run_writes_a_report(tmp_path: Path) -> None:
    docs, vectors = _toy_corpus()
    methods = ["centroid", "random"] + (["dsir"] if HAS_DSIR else [])
    methods += ["gotd-global", "gotd-exact", "gotd-paper"] if HAS_SELECTION else []
    result = run(
        tmp_path,
        topics=["sea", "rock"],
        pool_size=80,
        target_size=20,
        heldout_size=10,
        pool_fraction=0.2,
        ks=(0.05, 0.1),
        methods=methods,
        corpus=docs,
        embeddings=vectors,
        command="pytest",
        repeats=2,
        report_name="toy",
        corpus_name="toy words",
    )
    rows = result["rows"]
    assert len(rows) == 2 * len(methods) * 2
    assert {r["k"] for r in rows} == {4, 8}
    mean = {(e["method"], e["k_frac"]): e for e in result["summary"]}
    assert mean["centroid", 0.1]["precision"] > mean["random", 0.1]["precision"]
    for r in rows:
        assert 0 <= r["precision"] <= r["ceiling"] + 1e-12
        assert r["ppl_budget"] > 0
        assert r["tokens"] >= r["budget"]
    budgets = {(r["label"], r["k"]): r["budget"] for r in rows}
    assert all(r["budget"] == budgets[r["label"], r["k"]] for r in rows)  # one budget per task and k
    for r in rows:
        if r["method"].startswith("gotd-"):
            assert r["diagnostics"]["converged"] is True
            assert r["diagnostics"]["n_iter"] >= 1
    report = (tmp_path / "toy.md").read_text(encoding="utf-8")
    assert "## k = 5% of the pool" in report
    assert "`centroid`" in report
    assert "pytest" in report
    assert "toy words" in report
    assert (tmp_path / "toy" / "quality.png").stat().st_size > 0
    assert (tmp_path / "toy" / "time.png").stat().st_size > 0
    saved = json.loads((tmp_path / "toy" / "results.json").read_text(encoding="utf-8"))
    assert len(saved["rows"]) == len(rows)


def test_methods_receive_texts_and_vectors_only(tmp_path: Path) -> None:
    seen: list[object] = []

    class Spy:
        name = "spy"

        def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
            seen.append(inp)
            return np.arange(k, dtype=np.int64)

    register_method("spy-test", lambda n, o: Spy(), replace=True)
    _run_sky(tmp_path, "spy-test", repeats=1)
    _, vectors = _toy_corpus()
    assert len(seen) == 1
    inp = seen[0]
    assert type(inp) is SelectionInput
    labels = set(WORDS)
    assert not any(labels & set(t.split()) for t in (*inp.pool_texts, *inp.target_texts))
    assert len(inp.pool_texts) == 60
    assert inp.pool_vectors.shape == (60, vectors.shape[1])


def _run_sky(tmp_path: Path, method: str, **options: Any) -> dict[str, Any]:
    """One small task ("sky") of the toy corpus, ranked by ``method`` alone."""
    docs, vectors = _toy_corpus()
    return run(
        tmp_path,
        topics=["sky"],
        pool_size=60,
        target_size=10,
        heldout_size=10,
        pool_fraction=0.2,
        methods=[method],
        corpus=docs,
        embeddings=vectors,
        plots=False,
        **options,
    )


def test_invalid_rankings_are_rejected(tmp_path: Path) -> None:
    class Repeats:
        name = "repeats"

        def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
            return np.zeros(k, dtype=np.int64)

    register_method("repeats-test", lambda n, o: Repeats(), replace=True)
    with pytest.raises(RuntimeError, match="invalid ranking"):
        _run_sky(tmp_path, "repeats-test")


@pytest.mark.slow
def test_quick_run_with_the_real_model(tmp_path: Path) -> None:
    """The CI smoke version end to end: real MiniLM embeddings (encoded into tmp_path), every method."""
    result = run(tmp_path / "docs", quick=True, cache_dir=tmp_path / "cache")
    assert len(result["settings"]["topics"]) == 2
    assert result["embedding"]["texts"] > 0
    mean = {(e["method"], e["k_frac"]): e for e in result["summary"]}
    assert mean["centroid", 0.1]["precision"] > mean["random", 0.1]["precision"]


def test_nondeterministic_methods_are_rejected(tmp_path: Path) -> None:
    class Drifts:
        name = "drifts"
        calls = 0

        def rank(self, inp: SelectionInput, k: int) -> np.ndarray:
            self.calls += 1
            return np.arange(self.calls, self.calls + k, dtype=np.int64)

    register_method("drifts-test", lambda n, o: Drifts(), replace=True)
    with pytest.raises(RuntimeError, match="not deterministic"):
        _run_sky(tmp_path, "drifts-test", repeats=2)


def test_learned_cost_methods_run_and_report(tmp_path: Path) -> None:
    """The learned-cost methods of the evaluation (validated and fixed, the diagonal and discriminator
    variants) rank validly on the toy corpus, and learned_report reads their results."""
    from gotd.lab.evaluation.learned_report import learned_tables

    docs, vectors = _toy_corpus()
    methods = [
        "gotd-auto-fixed",
        "gotd-auto-learned",
        "gotd-auto-learned-s512",
        "gotd-fused-w0.5-rel0.05",
        "gotd-fused-w0.5-rel0.05-metric0.03",
        "gotd-fused-w0.5-rel0.05-diag4",
        "gotd-fused-w0.5-rel0.05-sq4",
        "gotd-discriminator",
    ]
    result = run(
        tmp_path, topics=["sea", "rock"], pool_size=80, target_size=20, heldout_size=10, pool_fraction=0.2,
        ks=(0.1,), methods=methods, corpus=docs, embeddings=vectors, command="pytest", repeats=1,
        report_name="learned", corpus_name="toy words", plots=False,
    )  # fmt: skip
    assert {r["method"] for r in result["rows"]} == set(methods)
    lines = learned_tables(result, k_frac=0.1)
    assert any(line.startswith("| `gotd-auto-learned`") for line in lines)
    assert any("learned setting chosen on" in line for line in lines)
