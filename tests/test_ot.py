"""gotd.server.ot.sinkhorn against POT (float64 oracle), ot.emd, dense references and its own invariants."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.server.ot import sinkhorn as sinkhorn_module
from gotd.server.ot.exact import ExactSum
from gotd.server.ot.gradient import calibrated_gradient
from gotd.server.ot.sinkhorn import SinkhornResult, c_transform, c_transform_span, epsilon_schedule, sinkhorn
from gotd.server.selection.scoring import run_block_rows, score_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(
    n: int, m: int, d: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=1)
    y = torch.nn.functional.normalize(torch.randn(m, d, generator=gen, dtype=dtype) + 0.5, dim=1)
    return x, y


def _clustered(
    n: int, m: int, d: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(8, d, generator=gen, dtype=dtype), dim=1)
    lx, ly = torch.randint(8, (n,), generator=gen), torch.randint(3, (m,), generator=gen)
    x = centres[lx] + 0.8 * torch.randn(n, d, generator=gen, dtype=dtype) / math.sqrt(d)
    y = centres[ly] + 0.8 * torch.randn(m, d, generator=gen, dtype=dtype) / math.sqrt(d)
    return torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)


def _dense_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((x.double()[:, None, :] - y.double()[None, :, :]) ** 2).sum(-1)


def _dense_plan(x: torch.Tensor, y: torch.Tensor, res: SinkhornResult) -> torch.Tensor:
    n, m = x.shape[0], y.shape[0]
    logp = (res.f.double()[:, None] + res.g.double()[None, :] - _dense_cost(x, y)) / res.eps
    return logp.exp() / (n * m)


def _marginal_error(x: torch.Tensor, y: torch.Tensor, res: SinkhornResult) -> float:
    p = _dense_plan(x, y, res)
    n, m = p.shape
    return float((p.sum(1) - 1 / n).abs().sum() + (p.sum(0) - 1 / m).abs().sum())


@pytest.mark.parametrize(
    ("data", "n", "m", "d", "eps"),
    [
        pytest.param(_random, 300, 200, 16, 1.0, id="random-eps1"),
        pytest.param(_random, 300, 200, 16, 0.1, id="random-eps0.1"),
        pytest.param(_random, 240, 160, 16, 0.05, id="random-eps0.05"),
        pytest.param(_clustered, 1000, 300, 32, 0.1, id="clustered-eps0.1"),
        pytest.param(_clustered, 600, 300, 32, 0.05, id="clustered-eps0.05"),
    ],
)
@pytest.mark.parametrize("formed", [True, False], ids=["formed", "per-pass-gemm"])
def test_matches_pot_sinkhorn_log(
    monkeypatch: pytest.MonkeyPatch, data, n: int, m: int, d: int, eps: float, formed: bool
) -> None:
    """Both ways a pass gets its cross products: formed once per solve (every problem here fits in
    ``FORMED_COST_BYTES``) and one GEMM per block per pass."""
    if not formed:
        monkeypatch.setattr(sinkhorn_module, "FORMED_COST_BYTES", 0)
    x, y = data(n, m, d, seed=n + m)
    res = sinkhorn(x, y, eps=eps, tol=1e-11, max_iter=20000, block_size=97)
    assert res.converged
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    _, log = ot.bregman.sinkhorn_log(
        a, b, ot.dist(x.numpy(), y.numpy()), eps, numItermax=50000, stopThr=1e-13, log=True
    )
    f = eps * log["log_u"] - eps * np.log(a)
    g = eps * log["log_v"] - eps * np.log(b)
    shift = float(np.mean(f - res.f.numpy()))
    assert np.abs(f - shift - res.f.numpy()).max() <= 1e-4
    assert np.abs(g + shift - res.g.numpy()).max() <= 1e-4
    pot_cost = float(a @ f + b @ g)
    assert abs(res.cost - pot_cost) <= 1e-5 * abs(pot_cost)


def test_approaches_emd_as_eps_shrinks() -> None:
    x, y = _random(7, 5, 2, seed=3)
    cost = _dense_cost(x, y)
    exact = ot.emd2(np.full(7, 1 / 7), np.full(5, 1 / 5), cost.numpy())
    gaps = []
    for eps in (0.5, 0.1, 0.02, 0.005):
        res = sinkhorn(x, y, eps=eps, tol=1e-10, max_iter=200000)
        assert res.converged
        gaps.append(float((_dense_plan(x, y, res) * cost).sum()) - exact)
    assert all(gap >= -1e-9 for gap in gaps)
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.01 * exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps", [0.1, 0.01])
def test_marginals_hold_and_report_is_honest(dtype: torch.dtype, eps: float) -> None:
    x, y = _clustered(800, 120, 32, seed=5, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    res = sinkhorn(x, y, eps=eps, tol=tol, max_iter=5000)
    assert res.converged
    assert res.marginal_error <= tol
    assert res.f.dtype == dtype
    assert res.g.dtype == dtype
    assert torch.isfinite(res.f).all()
    assert torch.isfinite(res.g).all()
    assert _marginal_error(x, y, res) <= 2 * tol


def test_converged_false_when_max_iter_hit() -> None:
    x, y = _random(200, 100, 4, seed=1)
    res = sinkhorn(x, y, eps=0.01, tol=1e-9, max_iter=3, eps_scaling=False)
    assert not res.converged
    assert res.n_iter == 3
    assert res.marginal_error > 1e-9
    assert res.marginal_error == pytest.approx(_marginal_error(x, y, res), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_warm_start_from_converged_g_converges_at_once(dtype: torch.dtype) -> None:
    x, y = _clustered(600, 100, 16, seed=2, dtype=dtype)
    cold = sinkhorn(x, y, eps=0.05, tol=1e-5)
    warm = sinkhorn(x, y, eps=0.05, tol=1e-5, init_g=cold.g.float())
    assert cold.converged
    assert warm.converged
    assert warm.n_iter <= 2
    assert torch.allclose(warm.f, cold.f, atol=1e-4)


def test_epsilon_scaling_only_on_cold_starts() -> None:
    x, y = _random(300, 50, 4, seed=4)
    levels = len(epsilon_schedule(0.02, 4.0))
    seen: list[int] = []
    cold = sinkhorn(x, y, eps=0.02, tol=1e-7, max_iter=50000, callback=lambda it, err: seen.append(it))
    assert seen[0] == levels + 1
    assert cold.converged
    assert cold.n_iter > levels
    plain = sinkhorn(x, y, eps=0.02, tol=1e-7, max_iter=50000, eps_scaling=False)
    assert plain.converged
    assert torch.allclose(plain.f - plain.f.mean(), cold.f - cold.f.mean(), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blockwise_equals_single_block(dtype: torch.dtype) -> None:
    x, y = _clustered(301, 77, 8, seed=6, dtype=dtype)
    whole = sinkhorn(x, y, eps=0.1, tol=1e-6, block_size=10_000)
    tiny = sinkhorn(x, y, eps=0.1, tol=1e-6, block_size=3)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(whole.f, tiny.f, atol=atol)
    assert torch.allclose(whole.g, tiny.g, atol=atol)
    g = whole.g
    for block in (1, 7, 301, None):
        assert torch.allclose(c_transform(x, y, g, eps=0.1, block_size=block), whole.f, atol=atol)


def test_c_transform_matches_dense_formula() -> None:
    x, y = _random(50, 30, 5, seed=7)
    g = torch.linspace(-0.3, 0.4, 30, dtype=torch.float64)
    b = torch.linspace(1, 2, 30, dtype=torch.float64)
    want = -0.05 * torch.logsumexp((b / b.sum()).log() + (g - _dense_cost(x, y)) / 0.05, dim=1)
    assert torch.allclose(c_transform(x, y, g, eps=0.05, b=b, block_size=8), want, atol=1e-12)


def test_a_row_has_the_bits_of_the_full_pass_in_any_run_of_rows() -> None:
    """Float32: a ragged block computed in whole quanta (read back from the rows before it, or padded)
    and :func:`c_transform_span` (a run of rows scored in place) give each row the full pass's bits."""
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(3000, 32, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(100, 32, generator=gen), dim=1)
    g = torch.randn(100, generator=gen) * 0.05
    full = c_transform(x, y, g, eps=0.1)
    assert torch.equal(c_transform(x, y, g, eps=0.1, block_size=1024), full)  # last block: 952 rows
    for start, stop in [(0, 3000), (2990, 3000), (2500, 3000), (100, 700), (1, 1000), (0, 5), (1234, 2001)]:
        assert torch.equal(c_transform_span(x, start, stop, y, g, eps=0.1), full[start:stop])
        assert torch.equal(c_transform(x[start:stop].clone(), y, g, eps=0.1), full[start:stop])
        for block in (512, 576, 1024):  # smaller blocks of whole quanta (a run's blocks): the same bits
            assert torch.equal(
                c_transform_span(x, start, stop, y, g, eps=0.1, block_size=block), full[start:stop]
            )
    with pytest.raises(ValueError, match="start < stop"):
        c_transform_span(x, 5, 5, y, g, eps=0.1)


def test_score_rows_in_run_blocks_has_the_bits_of_the_full_pass() -> None:
    """:func:`score_rows` scores the rows written since an epoch in blocks of ``RUN_BLOCK_BYTES`` of
    cost (1,024 rows at m = 1,000), a run in place or gathered rows: each row keeps the full pass's
    bits (one block of 16,384 rows)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(5000, 16, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(1000, 16, generator=gen), dim=1)
    g = torch.randn(1000, generator=gen) * 0.05
    assert run_block_rows(y) == 1024
    full = c_transform(x, y, g, eps=0.1).numpy()
    for rows in (np.arange(1500, 5000), np.arange(0, 3333), np.arange(7, 5000, 3)):
        assert np.array_equal(score_rows(x, rows, y, g, eps=0.1), full[rows])


def test_underflowing_columns_are_recomputed_exactly() -> None:
    x, y = _random(120, 40, 6, seed=8)
    g0 = torch.zeros(40, dtype=torch.float64)
    g0[:3] = -20.0  # exp((g - C) / eps) underflows to 0 for every candidate in these columns
    res = sinkhorn(x, y, eps=0.01, init_g=g0, max_iter=2, tol=1e-12, block_size=16)
    cost = _dense_cost(x, y)
    f1 = -0.01 * torch.logsumexp(math.log(1 / 40) + (g0 - cost) / 0.01, dim=1)
    g1 = -0.01 * torch.logsumexp(math.log(1 / 120) + (f1[:, None] - cost) / 0.01, dim=0)
    assert torch.isfinite(res.g).all()
    assert torch.allclose(res.g, g1, atol=1e-9)


def test_callback_abort_propagates() -> None:
    x, y = _random(100, 20, 4, seed=9)

    class StopError(Exception):
        pass

    def on_iter(iteration: int, error: float) -> None:
        assert iteration >= 1
        assert error >= 0
        if iteration >= 2:
            raise StopError

    with pytest.raises(StopError):
        sinkhorn(x, y, eps=0.01, tol=1e-12, callback=on_iter, eps_scaling=False)

    def on_block(done: int, total: int) -> None:
        assert total == 100
        if done >= 30:
            raise StopError

    with pytest.raises(StopError):
        c_transform(x, y, torch.zeros(20, dtype=torch.float64), eps=0.1, block_size=10, callback=on_block)


def test_calibrated_gradient_formula_and_order() -> None:
    f = torch.tensor([0.3, -1.0, 2.5, 0.3, 0.0], dtype=torch.float64)
    want = torch.stack([f[i] - (f.sum() - f[i]) / 4 for i in range(5)])
    got = calibrated_gradient(f)
    assert torch.allclose(got, want, atol=1e-15)
    assert torch.equal(torch.argsort(got, stable=True), torch.argsort(f, stable=True))
    assert calibrated_gradient(f.float()).dtype == torch.float32
    assert torch.equal(calibrated_gradient(torch.tensor([1.5])), torch.tensor([1.5]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"eps": 0.1, "tol": 0.0}, "tol"),
        ({"eps": 0.1, "max_iter": 0}, "max_iter"),
        ({"eps": 0.1, "a": -torch.ones(10, dtype=torch.float64)}, "positive"),
        ({"eps": 0.1, "b": torch.ones(3, dtype=torch.float64)}, "shape"),
        ({"eps": 0.1, "init_g": torch.full((4,), math.inf)}, "finite"),
        ({"eps": 0.1, "block_size": 0}, "block_size"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    x, y = _random(10, 4, 3, seed=0)
    with pytest.raises(ValueError, match=match):
        sinkhorn(x, y, **kwargs)


def test_shape_and_dtype_mismatches_raise() -> None:
    x, y = _random(10, 4, 3, seed=0)
    with pytest.raises(ValueError, match="d"):
        sinkhorn(x, y[:, :2], eps=0.1)
    with pytest.raises(ValueError, match="float32"):
        sinkhorn(x, y.float(), eps=0.1)
    with pytest.raises(ValueError, match="shape"):
        c_transform(x, y, torch.zeros(5, dtype=torch.float64), eps=0.1)


small = st.integers(min_value=2, max_value=24)


@settings(max_examples=15, deadline=None)
@given(n=small, m=small, seed=st.integers(0, 10_000))
def test_permutation_equivariance(n: int, m: int, seed: int) -> None:
    x, y = _random(n, m, 3, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    base = sinkhorn(x, y, eps=0.2, tol=1e-10, max_iter=10000)
    moved = sinkhorn(x[perm], y, eps=0.2, tol=1e-10, max_iter=10000)
    assert torch.allclose(moved.f, base.f[perm], atol=1e-7)
    assert torch.allclose(moved.g, base.g, atol=1e-7)
    assert moved.cost == pytest.approx(base.cost, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(n=small, m=small, seed=st.integers(0, 10_000), shift=st.floats(-5.0, 5.0))
def test_translating_g_keeps_the_ranking(n: int, m: int, seed: int, shift: float) -> None:
    x, y = _random(n, m, 3, seed=seed)
    g = torch.randn(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.1
    f = c_transform(x, y, g, eps=0.1)
    moved = c_transform(x, y, g + shift, eps=0.1)
    assert torch.allclose(moved, f - shift, atol=1e-9)
    assert torch.allclose(calibrated_gradient(moved), calibrated_gradient(f), atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(n=small, m=small, seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_weight_scaling_changes_nothing(n: int, m: int, seed: int, scale: float) -> None:
    x, y = _random(n, m, 3, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    base = sinkhorn(x, y, eps=0.2, a=a, b=b, tol=1e-10, max_iter=10000)
    scaled = sinkhorn(x, y, eps=0.2, a=a * scale, b=b / scale, tol=1e-10, max_iter=10000)
    assert torch.allclose(scaled.f, base.f, atol=1e-7)
    assert torch.allclose(scaled.g, base.g, atol=1e-7)
    assert scaled.converged
    assert scaled.cost == pytest.approx(base.cost, abs=1e-9)


def test_on_block_runs_before_every_block_and_can_stop_a_pass() -> None:
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(1000, 8, generator=gen), torch.randn(20, 8, generator=gen)
    calls = []
    res = sinkhorn(x, y, eps=0.5, block_size=100, eps_scaling=False, on_block=lambda: calls.append(1))
    assert len(calls) == 10 * res.n_iter  # 10 blocks per pass

    class StopError(Exception):
        pass

    seen = []

    def stop_in_first_pass() -> None:
        seen.append(1)
        if len(seen) == 3:
            raise StopError

    with pytest.raises(StopError):
        sinkhorn(x, y, eps=0.5, block_size=100, eps_scaling=False, on_block=stop_in_first_pass)
    assert len(seen) == 3  # stopped inside the first pass, not at its end


def test_an_exact_sum_kept_by_parts_is_fsum_of_the_values() -> None:
    """Values leaving and joining a kept sum (large cancelling terms, subnormals, repeats): the sum
    rounds to ``math.fsum`` of the values held, and the calibrated gradient given it is the one that
    sums by itself, bit for bit."""
    rng = np.random.default_rng(3)
    held = np.concatenate(
        [rng.normal(size=5000) * 10.0 ** rng.integers(-30, 30, 5000), [3e38, -3e38, 1e-45, 3.0, 3.0]]
    ).astype(np.float32)
    total = ExactSum.of(held)
    for _ in range(20):
        out = rng.choice(len(held), size=int(rng.integers(1, 200)), replace=False)
        new = (rng.normal(size=int(rng.integers(0, 300))) * 1e6).astype(np.float32)
        total = total - ExactSum.of(held[out]) + ExactSum.of(new)
        held = np.concatenate([np.delete(held, out), new])
        assert total.to_float() == math.fsum(held.astype(np.float64).tolist())
    f = torch.from_numpy(held)
    assert torch.equal(calibrated_gradient(f, total=total.to_float()), calibrated_gradient(f))
