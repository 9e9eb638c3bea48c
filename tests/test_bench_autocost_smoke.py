"""`gotd bench autocost --quick`: the harness runs end to end and writes its report (no timing checks)."""

from __future__ import annotations

from pathlib import Path

from gotd.lab.bench.autocost import GRIDS, run


def test_quick_autocost_bench_writes_report(tmp_path: Path) -> None:
    report = run(tmp_path, quick=True)
    assert set(report["grids"]) == set(GRIDS)
    for grid in report["grids"].values():
        cold, cached = grid["cold"], grid["cached"]
        assert cold["auto"]["status"] == "validated"
        assert cold["explicit"]["status"] == cold["default"]["status"] == "bypassed"
        assert cold["auto"]["w"] == cold["explicit"]["w"]
        if cold["auto"]["metric"] == 0:  # a learned column changes the cost's median, hence the epsilon
            assert cold["auto"]["eps"] == cold["explicit"]["eps"]
        assert cold["auto"]["cache_hit"] is False
        assert cached["auto"]["cache_hit"] is True
        assert cached["auto"]["validation_cache_hit"] is True
        steady = grid["steady"]
        assert steady["auto"]["w"] == steady["explicit"]["w"]
        if steady["auto"]["metric"] == 0:
            assert steady["auto"]["eps"] == steady["explicit"]["eps"]
        for runs in grid["cold_rounds"].values():
            assert [r["cache_hit"] for r in runs] == [False, False]
        assert set(grid["ratios"]) == {
            "cold",
            "cold_default",
            "cold_auto_first",
            "cold_explicit_first",
            "steady",
            "cached",
        }
    text = (tmp_path / "autocost-smoke.md").read_text()
    assert "auto / explicit" in text
    assert "## Grid `fixed`" in text
