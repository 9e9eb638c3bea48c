"""The API's typed values: one definition each, read with ``from_pb`` and sent with ``to_pb``."""

from __future__ import annotations

import pytest

from gotd.client.client import Client
from gotd.client.types import (
    CostValidation,
    NearCopy,
    RankedCandidate,
    SelectSummary,
    SettingScore,
    SolverOptions,
)
from gotd.v1 import selection_pb2 as pb


def _summary(validation: CostValidation | None) -> SelectSummary:
    return SelectSummary(
        7, 1000, 990, 10, False, "global", 0.05, 1.25, 42, 1e-5, True, False, True, 12, "abc",
        1.0, 2.0, 3.0, 4.0, 11.0, cost="fused", embedding_weight=0.3, near_duplicates_excluded=2,
        near_copy_cosine=0.95, near_copies_skipped=1, too_few_distinct=False,
        near_copies=(NearCopy("c2", "c1", 0.97),), rank_ms=0.5, epoch_version=6, rows_scored=100,
        staleness=0.1, solved=False, validate_ms=0.25, validation=validation, recorded=3,
        record_set_count=9, excluded_by_set=4,
    )  # fmt: skip


def test_summary_round_trips_through_the_wire() -> None:
    settings = (
        SettingScore(0.3, 0.05, 0.8, 0.5, 0.9),
        SettingScore(1.0, None, 0.6, 0.4, 0.7),
        SettingScore(0.5, 0.05, 0.9, 0.6, 0.9, metric_strength=0.03),
    )
    validation = CostValidation("validated", "best of 3", 0.3, 0.05, settings, 0.01, 40, 5000, True)
    learned = CostValidation(
        "validated", "best of 3", 0.5, 0.05, settings, 0.01, 40, 5000, False, metric_strength=0.03
    )
    assert [s.label for s in settings] == ["w0.3-rel0.05", "w1-relabs", "w0.5-rel0.05-metric0.03"]
    assert "learned metric of strength 0.03" in learned.describe()
    for summary in (_summary(validation), _summary(learned), _summary(None)):
        assert SelectSummary.from_pb(pb.Summary.FromString(summary.to_pb().SerializeToString())) == summary
    ranked = RankedCandidate("c1", -0.5, 1, "web", '{"a": 1}')
    assert RankedCandidate.from_pb(ranked.to_pb()) == ranked


def test_solver_options_leave_unset_fields_to_the_server() -> None:
    message = SolverOptions(eps=0.1, max_staleness=0.0).to_pb()
    assert message.HasField("epsilon")
    assert message.HasField("max_staleness")
    assert not message.HasField("tolerance")
    assert not message.HasField("embedding_weight")
    assert message.cost == pb.COST_UNSPECIFIED
    assert SolverOptions(mode="paper").mode_pb == pb.SELECTION_MODE_PAPER
    with pytest.raises(ValueError, match="mode must be one of"):
        SolverOptions(mode="fast")
    with pytest.raises(ValueError, match="cost must be one of"):
        SolverOptions(cost="cosine")


def test_client_refuses_unknown_solver_keywords() -> None:
    with Client("127.0.0.1:1", timeout=1) as client, pytest.raises(TypeError, match="epsilon"):
        next(client.select_stream("pool", ["a"], k=1, epsilon=0.1))
