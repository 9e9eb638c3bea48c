"""gotd.server.selection.modes: modes, the one ranking rule, determinism, top-k, global vs exact."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.lab.bench.ot import clustered, hashed_keys
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import c_transform
from gotd.server.selection.kmeans import kmeans_labels
from gotd.server.selection.modes import (
    Mode,
    SelectionConfig,
    id_keys,
    rank,
    resolve_mode,
    score,
    solve,
    summary_rows,
    top_k,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int, m: int, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(10, d, generator=gen), dim=1)
    x = centres[torch.randint(10, (n,), generator=gen)] + torch.randn(n, d, generator=gen) / math.sqrt(d)
    y = centres[torch.randint(2, (m,), generator=gen)] + torch.randn(m, d, generator=gen) / math.sqrt(d)
    ids = [f"doc-{(i * 7919) % 100_003:06d}" for i in range(n)]
    return torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1), ids


def _ranked(batches: Iterator[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    return [pair for batch in batches for pair in batch]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps"),
        ({"tol": -1.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"summary_size": 0}, "summary_size"),
        ({"summary_cells": -1}, "summary_cells"),
        ({"paper_domains": 0}, "paper_domains"),
        ({"exact_max_pool": -1}, "exact_max_pool"),
        ({"block_size": 0}, "block_size"),
        ({"mode": "bogus"}, "mode"),
    ],
)
def test_config_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SelectionConfig(**kwargs)


def test_config_accepts_mode_strings_and_resolves_auto() -> None:
    config = SelectionConfig(mode="global", exact_max_pool=100)  # type: ignore[arg-type]
    assert config.mode is Mode.GLOBAL
    auto = SelectionConfig(exact_max_pool=100)
    assert resolve_mode(Mode.AUTO, 100, auto) is Mode.EXACT
    assert resolve_mode(Mode.AUTO, 101, auto) is Mode.GLOBAL
    assert resolve_mode(Mode.PAPER, 10**6, auto) is Mode.PAPER


def test_summary_rows_picks_smallest_keys_whatever_the_row_order() -> None:
    keys = np.array([50, 3, 7, 3, 99, 1, 7], dtype=np.uint64)
    assert summary_rows(keys, 3).tolist() == [1, 3, 5]
    assert summary_rows(keys, 4).tolist() == [1, 2, 3, 5]  # tie at 7: the lower row
    assert summary_rows(keys, 100).tolist() == list(range(7))
    big = hashed_keys(50_000)
    perm = np.random.default_rng(0).permutation(len(big))
    assert set(big[summary_rows(big, 4096)].tolist()) == set(
        big[perm][summary_rows(big[perm], 4096)].tolist()
    )


def test_id_keys_are_stable_uint64() -> None:
    keys = id_keys(["a", "b", "a"])
    assert keys.dtype == np.uint64
    assert keys[0] == keys[2]
    assert keys[0] != keys[1]
    assert id_keys(["a"])[0] == keys[0]


@pytest.mark.parametrize("use_ids", [True, False])
def test_top_k_equals_full_sort_with_ties(use_ids: bool) -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 40, size=3000).astype(np.float32)
    ids = [f"id{v:05d}" for v in rng.permutation(3000)]
    eligible = rng.random(3000) < 0.7
    rows = np.flatnonzero(eligible)
    tie = [ids[r] for r in rows] if use_ids else rows.tolist()
    want = sorted(rows.tolist(), key=lambda r: (scores[r], tie[list(rows).index(r)] if use_ids else r))
    for k in (0, 1, 17, 500, len(rows), None, 10**6):
        got = top_k(scores, k, ids=ids if use_ids else None, eligible=eligible)
        expect = want if k is None else want[:k]
        assert [r for r, _ in got] == expect
        assert [s for _, s in got] == [float(scores[r]) for r in expect]


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.integers(-3, 3), min_size=1, max_size=60), k=st.integers(0, 70))
def test_top_k_property(values: list[int], k: int) -> None:
    scores = np.asarray(values, dtype=np.float64)
    ids = [f"z{(i * 37) % 101:03d}" for i in range(len(values))]
    got = [r for r, _ in top_k(scores, k, ids=ids)]
    assert got == sorted(range(len(values)), key=lambda r: (scores[r], ids[r]))[:k]


def test_top_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([0.0, np.nan]), 1)
    with pytest.raises(ValueError, match="k"):
        top_k(np.zeros(3), -1)
    with pytest.raises(ValueError, match="eligible"):
        top_k(np.zeros(3), 1, eligible=np.ones(3))


def test_score_is_the_one_ranking_rule() -> None:
    x, y, _ = _data(500, 60)
    potential = solve(x, y, SelectionConfig(mode=Mode.EXACT))
    assert potential.g.dtype == torch.float32
    assert potential.g.device.type == "cpu"
    want = calibrated_gradient(c_transform(x, y, potential.g.float(), eps=0.1)).float()
    assert torch.equal(score(x, y, potential), want)
    assert torch.equal(score(x, y, potential.g, eps=0.1), want)
    # a g that went through the cache's float32 bytes scores identically
    restored = torch.from_numpy(
        np.frombuffer(potential.g.numpy().astype("<f4").tobytes(), dtype="<f4").copy()
    )
    assert torch.equal(score(x, y, restored, eps=0.1), want)
    # translating g by a constant keeps the ranking
    assert [r for r, _ in top_k(score(x, y, potential.g + 0.25, eps=0.1).numpy(), 50)] == [
        r for r, _ in top_k(want.numpy(), 50)
    ]
    with pytest.raises(ValueError, match="eps"):
        score(x, y, potential.g)
    with pytest.raises(ValueError, match="eps"):
        score(x, y, potential, eps=0.2)
    bad = x.clone()
    bad[3, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        score(bad, y, potential)


def test_warm_start_reports_converged_at_once() -> None:
    x, y, _ = _data(800, 50)
    cold = solve(x, y, SelectionConfig(mode=Mode.EXACT))
    warm = solve(x, y, SelectionConfig(mode=Mode.EXACT), init_g=cold.g)
    assert cold.converged
    assert warm.converged
    assert warm.n_iter <= 2


@pytest.mark.parametrize("mode", [Mode.EXACT, Mode.GLOBAL, Mode.PAPER])
def test_ranking_of_ids_ignores_row_order(mode: Mode) -> None:
    x, y, ids = _data(1500, 40, seed=3)
    config = SelectionConfig(summary_size=400, summary_cells=16, paper_clusters=6)
    base = _ranked(rank(x, y, mode=mode, eps=0.1, ids=ids, config=config, batch_size=100))
    perm = torch.randperm(1500, generator=torch.Generator().manual_seed(9))
    moved = _ranked(rank(x[perm], y, mode=mode, eps=0.1, ids=[ids[i] for i in perm], config=config))
    assert [ids[r] for r, _ in base] == [ids[int(perm[r])] for r, _ in moved]
    assert [s for _, s in base] == pytest.approx([s for _, s in moved], abs=1e-6)


def test_rank_batches_and_order() -> None:
    x, y, ids = _data(700, 30, seed=4)
    batches = list(rank(x, y, mode="exact", eps=0.1, k=250, ids=ids, batch_size=100))
    assert [len(b) for b in batches] == [100, 100, 50]
    ranked = _ranked(iter(batches))
    assert [s for _, s in ranked] == sorted(s for _, s in ranked)
    with pytest.raises(ValueError, match="batch_size"):
        rank(x, y, mode="exact", eps=0.1, batch_size=0)


def test_paper_mode_ranks_only_the_closest_domains() -> None:
    x, y, ids = _data(900, 30, seed=5)
    domains = np.arange(900) % 3
    y = torch.nn.functional.normalize(x[domains == 1][:30] + 0.05 * torch.randn(30, 32), dim=1)
    config = SelectionConfig(paper_domains=1)
    potential = solve(x, y, replace(config, mode=Mode.PAPER), domains=domains)
    assert potential.mode is Mode.PAPER
    assert potential.rows is not None
    assert potential.rows.tolist() == np.flatnonzero(domains == 1).tolist()
    ranked = _ranked(rank(x, y, mode="paper", eps=0.1, domains=domains, config=config, ids=ids))
    assert sorted(r for r, _ in ranked) == potential.rows.tolist()


def test_kmeans_is_deterministic_and_order_free() -> None:
    x, _, ids = _data(1200, 5, seed=6)
    keys = id_keys(ids)
    labels = kmeans_labels(x, 8, keys=keys, seed=1)
    assert labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(8))
    perm = np.random.default_rng(2).permutation(1200)
    moved = kmeans_labels(x[torch.from_numpy(perm)], 8, keys=keys[perm], seed=1)
    assert moved.tolist() == labels[perm].tolist()


def test_global_with_caller_summary() -> None:
    x, y, _ = _data(2000, 40, seed=7)
    points, weights = x[:300], torch.linspace(1, 2, 300)
    potential = solve(x, y, SelectionConfig(mode=Mode.GLOBAL), summary=(points, weights))
    assert potential.mode is Mode.GLOBAL
    assert potential.converged
    assert potential.rows is None


def test_global_matches_exact_top5_on_clustered_data() -> None:
    x, y = clustered(20_000, seed=1), clustered(500, seed=2, pick=(0, 1, 2))
    keys = hashed_keys(20_000)
    k = 1000
    exact = solve(x, y, SelectionConfig(mode=Mode.EXACT), keys=keys)
    glob = solve(x, y, SelectionConfig(mode=Mode.GLOBAL, summary_size=4096), keys=keys)
    assert exact.converged
    assert glob.converged
    want = {r for r, _ in top_k(score(x, y, exact).numpy(), k)}
    got = {r for r, _ in top_k(score(x, y, glob).numpy(), k)}
    assert len(want & got) / k >= 0.99


@pytest.mark.parametrize("mode", [Mode.EXACT, Mode.GLOBAL, Mode.PAPER])
def test_solve_callback_abort_propagates(mode: Mode) -> None:
    x, y, _ = _data(600, 20, seed=8)
    calls: list[tuple[int, float]] = []

    def abort(iteration: int, error: float) -> None:
        calls.append((iteration, error))
        raise KeyboardInterrupt

    config = SelectionConfig(mode=mode, summary_size=200, paper_clusters=4)
    with pytest.raises(KeyboardInterrupt):
        solve(x, y, config, callback=abort)
    assert len(calls) == 1
