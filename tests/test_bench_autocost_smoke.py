"""`gotd bench autocost --quick`: the harness runs end to end and writes its report (no timing checks)."""

from __future__ import annotations

from pathlib import Path

from gotd.lab.bench.autocost import run


def test_quick_autocost_bench_writes_report(tmp_path: Path) -> None:
    report = run(tmp_path, quick=True)
    cold, cached = report["cold"], report["cached"]
    assert cold["auto"]["status"] == "validated"
    assert cold["explicit"]["status"] == "bypassed"
    assert (cold["auto"]["w"], cold["auto"]["eps"]) == (cold["explicit"]["w"], cold["explicit"]["eps"])
    assert cold["auto"]["cache_hit"] is False
    assert cached["auto"]["cache_hit"] is True
    assert cached["auto"]["validation_cache_hit"] is True
    steady = report["steady"]
    assert (steady["auto"]["w"], steady["auto"]["eps"]) == (
        steady["explicit"]["w"],
        steady["explicit"]["eps"],
    )
    for runs in report["cold_rounds"].values():
        assert [r["cache_hit"] for r in runs] == [False, False]
    assert set(report["ratios"]) == {"cold", "cold_auto_first", "cold_explicit_first", "steady", "cached"}
    text = (tmp_path / "autocost-smoke.md").read_text()
    assert "auto / explicit" in text
