"""`gotd bench service --quick`: the harness runs end to end and writes its report (no timing checks)."""

from __future__ import annotations

from pathlib import Path

from gotd.server.bench_service import run


def test_quick_service_bench_writes_report(tmp_path: Path) -> None:
    report = run(tmp_path, quick=True)
    (scenario,) = report["scenarios"]
    assert scenario["cache_hit"] is True
    assert scenario["grown_warm_started"] is True
    assert report["concurrency"]["requests"] == 16
    text = (tmp_path / "service-smoke.md").read_text()
    assert "cached speed-up" in text
    assert (tmp_path / "service-smoke.png").stat().st_size > 1000
