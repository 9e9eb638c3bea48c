"""`gotd bench service --quick`: the harness runs end to end and writes its report (no timing checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gotd.lab.bench.service import run


def test_quick_service_bench_writes_report(tmp_path: Path) -> None:
    report = run(tmp_path, quick=True)
    (scenario,) = report["scenarios"]
    assert scenario["cache_hit"] is True
    # pool +5% within the default staleness bound: the potential epoch serves, only new rows are scored
    assert scenario["grown_solved"] is False
    assert 0 < scenario["grown_rows_scored"] <= scenario["n"] // 10
    assert report["concurrency"]["requests"] == 16
    (costs,) = report["costs"]["scenarios"]
    for cost in ("embedding", "fused"):
        assert costs["cold"][cost]["cost"] == cost
        assert costs["cold"][cost]["mode"] == "exact"
        assert costs["cold"][cost]["cache_hit"] is False
        assert costs["cached"][cost]["cache_hit"] is True
        assert costs["cached_inline"][cost]["cache_hit"] is True
        assert costs["steady"][cost]["cache_hit"] is False
    assert costs["auto"]["cost"] in {"fused", "embedding"}  # the validated setting (w = 1: embedding)
    assert set(costs["ratios"]) == {"cold", "cached", "cached_inline", "steady"}
    for phase, ratio in costs["ratios"].items():  # each ratio pairs two Selects of this run
        assert ratio == pytest.approx(costs[phase]["fused"]["s"] / costs[phase]["embedding"]["s"])
    assert scenario["cached_speedup"] == pytest.approx(scenario["cold_s"] / scenario["cached_s"])
    assert scenario["grown_speedup"] == pytest.approx(scenario["cold_s"] / scenario["grown_s"])
    assert report["costs"]["store_ingest"]["sketched_per_s"] > 0
    text = (tmp_path / "service-smoke.md").read_text()
    assert "cached speed-up" in text
    assert "## Fused cost vs embedding cost" in text
    assert (tmp_path / "service-smoke.png").stat().st_size > 1000
    assert (tmp_path / "service-smoke-costs.png").stat().st_size > 1000
