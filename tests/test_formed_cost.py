"""A dense solve forms its cross products once (issue 15): same numbers as the per-pass GEMM, to rounding.

The global mode's summary (8,192 rows against 1k targets: 32 MB of products) no longer runs the GEMM on
every Sinkhorn pass, and the summary's cell assignment multiplies compact rows part by part. Both
change float rounding only: POT agrees with either path to the same tolerance (tests/test_ot.py), and
the global ranking of a fused pool keeps its top 5% against the previous code (both changes undone).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gotd.server.ot import sinkhorn as sinkhorn_module
from gotd.server.ot.blocks import Geometry
from gotd.server.ot.rows import Part, StackedRows
from gotd.server.ot.sinkhorn import sinkhorn
from gotd.server.selection import modes
from gotd.server.selection.costs import Cost, pool_features, target_features
from gotd.server.selection.kmeans import id_keys, stratified_weights
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve
from gotd.server.selection.sketches import fused_matrix, tf_rows
from tests.test_ot import _clustered

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_products_are_formed_only_for_a_problem_that_fits() -> None:
    x, y = _clustered(50, 20, 8, seed=1, dtype=torch.float32)
    geo = Geometry.of(x, y, None)
    assert geo.with_cross(50 * 20 * 4).cross is not None
    assert geo.with_cross(50 * 20 * 4 - 1).cross is None
    formed = geo.with_cross(1 << 20).cross
    assert formed is not None
    assert torch.equal(formed, x @ y.T)
    # compact rows are formed too, with the same GEMMs as their float32 values: the same bits
    compact = Geometry.of(StackedRows((Part(x.half()),)), y, 16).with_cross(1 << 20).cross
    rounded = Geometry.of(x.half().float(), y, 16).with_cross(1 << 20).cross
    assert compact is not None
    assert rounded is not None
    assert torch.equal(compact, rounded)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_formed_products_give_the_per_pass_gemm_potentials_to_rounding(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, atol: float
) -> None:
    x, y = _clustered(700, 90, 16, seed=4, dtype=dtype)
    g0 = torch.zeros(90, dtype=dtype)
    g0[:3] = -20.0  # underflowing columns: the streaming logsumexp reads the formed products too
    runs = []
    for limit in (sinkhorn_module.FORMED_COST_BYTES, 0):
        monkeypatch.setattr(sinkhorn_module, "FORMED_COST_BYTES", limit)
        runs.append(
            (
                sinkhorn(x, y, eps=0.1, tol=1e-6, block_size=64),
                sinkhorn(x, y, eps=0.01, init_g=g0, max_iter=2, tol=1e-12, block_size=64),
                sinkhorn(x, y, eps=0.05, tol=1e-6, eps_scaling=True),
            )
        )
    for formed, gemm in zip(*runs, strict=True):
        assert formed.converged == gemm.converged  # pass counts may differ by one at a float32 tolerance
        assert torch.allclose(formed.g, gemm.g, atol=atol)
        assert torch.allclose(formed.f, gemm.f, atol=atol)


def _texts(rng: np.random.Generator, topic: int) -> str:
    own = rng.integers(topic * 100, topic * 100 + 100, size=int(rng.integers(8, 30)))
    return " ".join(f"w{i}" for i in np.concatenate([own, rng.integers(0, 400, size=4)]))


def test_global_ranking_of_a_fused_pool_keeps_its_top_five_percent_against_the_previous_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Previous code: the summary's cells assigned from dense fused blocks and the summary's cost
    rebuilt by a GEMM on every pass. Float16 embeddings and 1,024-bucket sketches as stored."""
    rng = np.random.default_rng(15)
    n, m, d = 12_000, 200, 64
    centres = rng.standard_normal((8, d))
    topics = rng.integers(0, 4, size=n + m)
    e = centres[rng.integers(0, 8, size=n + m)] + 2.0 * rng.standard_normal((n + m, d)) / math.sqrt(d)
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
    tf = tf_rows([_texts(rng, int(t)) for t in topics])
    feats = pool_features(e[:n], tf[:n], Cost.FUSED, 0.5)
    y = target_features(feats, torch.from_numpy(e[n:].astype(np.float32)), tf[n:])
    assert feats.idf is not None
    assert isinstance(feats.x, StackedRows)
    keys = id_keys([f"c{i:06d}" for i in range(n)])
    config = SelectionConfig(mode=Mode.GLOBAL, summary_size=2048, summary_cells=64, relative_eps=0.05)
    new = solve(feats.x, y, config, keys=keys)

    dense = torch.from_numpy(fused_matrix(e[:n].astype(np.float32), tf[:n], feats.idf, 0.5))
    monkeypatch.setattr(sinkhorn_module, "FORMED_COST_BYTES", 0)
    monkeypatch.setattr(  # the dense fused pool takes the previous cell assignment (one GEMM per block)
        modes,
        "stratified_weights",
        lambda x, rows, keys, *, cells: stratified_weights(dense, rows, keys, cells=cells),
    )
    old = solve(feats.x, y, config, keys=keys)
    assert new.n_iter == old.n_iter
    assert new.eps == old.eps
    assert torch.allclose(new.g, old.g, atol=1e-4)
    top = n // 20
    kept = np.intersect1d(
        np.argsort(score(feats.x, y, new).numpy(), kind="stable")[:top],
        np.argsort(score(feats.x, y, old).numpy(), kind="stable")[:top],
    )
    assert len(kept) >= 0.999 * top
