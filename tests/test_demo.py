"""`gotd demo` end to end on a small slice of the wiki corpus (real model, real server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gotd.lab.corpora.wiki import load_wiki
from gotd.lab.demo import run_demo, split_task


def test_split_task_holds_out_targets_from_the_pool() -> None:
    pool, targets = split_task(load_wiki(), "Mathematics", 500, seed=3)
    assert len(targets) == 40
    assert {d.topic for d in targets} == {"Mathematics"}
    assert {d.id for d in pool}.isdisjoint(d.id for d in targets)
    assert len(pool) == 500


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_demo(data_dir=tmp_path / "demo", pool_size=60, topic="Mathematics", k=10)
    out = capsys.readouterr().out
    assert "precision of 'Mathematics' in the top 10" in out
    assert result["cache_hit"] is True
    assert result["same_ranking"] is True  # the cached Select ranks exactly as the cold one
    topic_of = {d.id: d.topic for d in load_wiki()}
    pool, _targets = split_task(load_wiki(), "Mathematics", 60)
    ranked_ids = [cid for cid, _ in result["ranking"]]
    assert len(ranked_ids) == 10
    assert set(ranked_ids) <= {d.id for d in pool}
    assert result["precision"] == sum(topic_of[cid] == "Mathematics" for cid in ranked_ids) / 10
    assert result["precision"] > result["base_rate"]  # better than a random draw from the pool
    # A second run re-uses the embedding cache: nothing is embedded again, and ranks identically.
    again = run_demo(data_dir=tmp_path / "demo", pool_size=60, topic="Mathematics", k=10)
    assert "0 embedded" in capsys.readouterr().out
    assert again["ranking"] == result["ranking"]
