"""Smoke test of ``gotd bench ingest --quick``: it runs and writes its report and plot."""

from __future__ import annotations

from pathlib import Path

from gotd.lab.bench.ingest import run
from gotd.server.ingest.embedder import Embedder
from tests._store_helpers import model

__all__ = ["model"]


def test_quick_bench_writes_report(tmp_path: Path, model: Embedder) -> None:
    result = run(tmp_path, quick=True, embedder=model)
    report = (tmp_path / "ingest.md").read_text(encoding="utf-8")
    assert "Text ingest vs bare" in report
    assert "Bulk read" in report
    assert (tmp_path / "ingest.png").stat().st_size > 1000
    text = result["text"]
    assert set(text) >= {"texts", "bare_texts_per_s", "ingest_texts_per_s", "ratio", "cpu_ratio", "pairs"}
    assert set(text) >= {"file_ratio", "file_cpu_ratio"}
    assert text["pairs"] >= 1  # the ratio is a median of bare/ingest pairs timed side by side
    assert result["vectors"]["ingest_vectors_per_s"] > 0
    assert result["read"]["cold_gb_per_s"] > 0
    # the report prints this run's ratios, not figures of another run
    assert f"**{text['ratio']:.2f}×**" in report
    assert f"**{text['file_ratio']:.2f}×**" in report
