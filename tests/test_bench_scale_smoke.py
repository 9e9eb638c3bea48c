"""`gotd bench scale --quick`: a real server process, the report with its goal rows (no timing checks)."""

from __future__ import annotations

from pathlib import Path

from gotd.lab.bench.scale import run


def test_quick_scale_bench_writes_report(tmp_path: Path) -> None:
    report = run(tmp_path, quick=True)
    assert [r["n"] for r in report["sizes"]] == [20_000, 60_000]
    for r in [*report["sizes"], report["fused"]]:
        for cost in ("embedding", "fused") if r["texts"] else ("embedding",):
            assert r[cost]["cold"]["cost"] == cost
            assert r[cost]["cold"]["cache_hit"] is False
            assert r[cost]["cached"]["cache_hit"] is True
            assert r[cost]["cold"]["rss_peak"] >= r[cost]["cold"]["anon_peak"] > 0
    assert [i["kind"] for i in report["ingest"]] == ["vectors", "vectors", "vectors+texts"]
    vectors_only = report["sizes"][0]  # float16 vectors and nothing else, stored as held
    assert vectors_only["stored_bytes"] == vectors_only["snapshot_bytes"] >= vectors_only["n"] * 2 * 8
    fused = report["fused"]  # sparse sketches on disk and in the snapshot, both well under dense rows
    assert fused["sketch_entries"] > 0
    assert fused["stored_bytes"] < fused["snapshot_bytes"] < fused["dense_snapshot_bytes"]
    text = (tmp_path / "scale-quick.md").read_text()
    assert "## Goals (issue 15)" in text
    assert "fused cold Select <= 2x" in text
    assert (tmp_path / "scale-quick.png").stat().st_size > 1000
