"""Compact pool rows (issue 15): the fused cost per block from the stored parts equals the materialised one.

References are today's float32 fused rows (:func:`fused_matrix`); every comparison is on full
rankings or full vectors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gotd.cache.sketch_rows import SparseRows
from gotd.server.ot.blocks import Geometry
from gotd.server.ot.geometry import project_to_targets
from gotd.server.ot.rows import Part, SparsePart, StackedRows, addmm_rows, rows_of, sq_norms, take
from gotd.server.ot.sinkhorn import c_transform, sinkhorn
from gotd.server.selection import kmeans
from gotd.server.selection.costs import Cost, pool_features, target_features
from gotd.server.selection.kmeans import id_keys, kmeans_labels, stratified_weights
from gotd.server.selection.modes import Mode, SelectionConfig, score, solve
from gotd.server.selection.sketches import fused_matrix, tf_rows

VOCAB = [f"w{i}" for i in range(400)]


def _texts(rng: np.random.Generator, n: int, topic: int) -> list[str]:
    """Texts whose words lean toward one of four topics (a quarter of the vocabulary each)."""
    out = []
    for _ in range(n):
        own = rng.integers(topic * 100, topic * 100 + 100, size=int(rng.integers(8, 30)))
        other = rng.integers(0, 400, size=4)
        out.append(" ".join(VOCAB[i] for i in np.concatenate([own, other])))
    return out


def _pool(
    n: int, m: int, seed: int = 0, d: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d))
    topics = rng.integers(0, 4, size=n)
    e = centres[topics] + 0.7 * rng.standard_normal((n, d))
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    texts = [_texts(rng, 1, int(t))[0] for t in topics]
    ye = centres[0] + 0.7 * rng.standard_normal((m, d))
    ye = (ye / np.linalg.norm(ye, axis=1, keepdims=True)).astype(np.float32)
    return e, tf_rows(texts, buckets=256), ye, tf_rows(_texts(rng, m, 0), buckets=256)


def _overlap(a: np.ndarray, b: np.ndarray, frac: float) -> float:
    k = max(1, int(len(a) * frac))
    return len(set(np.argsort(a, kind="stable")[:k]) & set(np.argsort(b, kind="stable")[:k])) / k


def _both(
    w: float = 0.5, n: int = 3000, m: int = 40, *, sparse: bool = False
) -> tuple[StackedRows, torch.Tensor, torch.Tensor]:
    """Compact fused rows (from dense stored rows, or ``sparse`` as a snapshot keeps them), the
    materialised float32 fused rows, and the targets."""
    e, tf, ye, ytf = _pool(n, m)
    stored = SparseRows.from_dense(tf).compact() if sparse else tf
    feats = pool_features(e, stored, Cost.FUSED, w)
    assert isinstance(feats.x, StackedRows)
    y = target_features(feats, torch.from_numpy(ye), ytf)
    assert feats.idf is not None
    return feats.x, torch.from_numpy(fused_matrix(e, tf, feats.idf, w)), y


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_stacked_rows_read_as_the_materialised_fused_rows(w: float, sparse: bool) -> None:
    x, dense, _y = _both(w, sparse=sparse)
    assert x.shape == tuple(dense.shape)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.dense(), dense, rtol=0, atol=1e-6)
    idx = torch.tensor([5, 0, 2999, 17])
    torch.testing.assert_close(rows_of(x, idx), dense[idx], rtol=0, atol=1e-6)
    assert isinstance(take(x, idx), StackedRows)
    if sparse:  # float32 embeddings, row pointers, 4 bytes an entry, one factor
        part = x.parts[1]
        assert isinstance(part, SparsePart)
        assert x.nbytes == 3000 * (16 * 4 + 8 + 4) + 8 + 4 * len(part.values)
    else:  # float32 embeddings, float16 sketches, one factor
        assert x.nbytes == 3000 * (16 * 4 + 256 * 2 + 4)


@pytest.mark.parametrize("sparse", [False, True])
def test_per_block_cost_equals_the_materialised_one(sparse: bool) -> None:
    x, dense, y = _both(sparse=sparse)
    geo_c, geo_d = Geometry.of(x, y, 700), Geometry.of(dense, y, 700)
    torch.testing.assert_close(geo_c.xn, geo_d.xn, rtol=0, atol=2e-6)
    h = torch.linspace(-1, 1, y.shape[0])
    for start, stop in geo_c.blocks():
        got = addmm_rows(h, x, start, stop, geo_c.ys, alpha=-2.0)
        want = torch.addmm(h, dense[start:stop], y.T, alpha=-2.0)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        cost = (
            geo_c.xn[start:stop, None] + geo_c.yn - 2 * addmm_rows(0 * h, x, start, stop, geo_c.ys, alpha=1.0)
        )
        ref = torch.cdist(dense[start:stop].double(), y.double()).square()
        torch.testing.assert_close(cost.double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_passes_on_compact_rows_equal_the_dense_passes(sparse: bool) -> None:
    x, dense, y = _both(sparse=sparse)
    g = torch.linspace(-0.2, 0.3, y.shape[0])
    torch.testing.assert_close(
        c_transform(x, y, g, eps=0.05), c_transform(dense, y, g, eps=0.05), rtol=0, atol=1e-5
    )
    res_c = sinkhorn(x, y, eps=0.05, block_size=512)
    res_d = sinkhorn(dense, y, eps=0.05, block_size=512)
    assert res_c.n_iter == res_d.n_iter
    assert res_c.converged
    assert res_d.converged
    torch.testing.assert_close(res_c.g, res_d.g, rtol=0, atol=1e-4)
    xq_c, yq_c = project_to_targets(x, y)
    xq_d, yq_d = project_to_targets(dense, y)
    torch.testing.assert_close(xq_c, xq_d, rtol=0, atol=1e-5)
    torch.testing.assert_close(yq_c, yq_d)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("mode", [Mode.EXACT, Mode.GLOBAL, Mode.PAPER])
def test_rankings_match_the_materialised_fused_rankings(mode: Mode, sparse: bool) -> None:
    x, dense, y = _both(n=6000, sparse=sparse)
    keys = id_keys([f"c{i}" for i in range(x.shape[0])])
    config = SelectionConfig(mode=mode, eps=0.05, summary_size=1500, summary_cells=32, paper_domains=2)
    got_p, want_p = solve(x, y, config, keys=keys), solve(dense, y, config, keys=keys)
    assert (got_p.rows is None) == (want_p.rows is None)
    if got_p.rows is not None and want_p.rows is not None:
        assert np.array_equal(got_p.rows, want_p.rows)
        rows = torch.from_numpy(got_p.rows)
        x_s, dense_s = take(x, rows), dense[rows]
    else:
        x_s, dense_s = x, dense
    got, want = score(x_s, y, got_p).numpy(), score(dense_s, y, want_p).numpy()
    assert _overlap(got, want, 0.05) >= 0.999
    assert np.corrcoef(got, want)[0, 1] > 0.99999


def test_kmeans_helpers_read_compact_rows_like_dense_ones() -> None:
    x, dense, _ = _both(n=2000)
    keys = id_keys([f"c{i}" for i in range(x.shape[0])])
    assert np.array_equal(
        kmeans_labels(x, 6, keys=keys, block_size=300), kmeans_labels(dense, 6, keys=keys, block_size=300)
    )
    rows = np.arange(0, 2000, 7)
    np.testing.assert_array_equal(
        stratified_weights(x, rows, keys, cells=12, block_size=300),
        stratified_weights(dense, rows, keys, cells=12, block_size=300),
    )


def test_kmeans_helpers_walk_compact_rows_in_small_blocks_with_the_same_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, dense, _ = _both(n=3000)
    monkeypatch.setattr(kmeans, "_COMPACT_BLOCK_BYTES", 8 * x.shape[1] * 500)  # 500-row blocks
    assert kmeans._block_rows(x, 65536) == 500
    assert kmeans._block_rows(dense, 65536) == 65536
    keys = id_keys([f"c{i}" for i in range(x.shape[0])])
    rows = np.arange(0, 3000, 5)
    np.testing.assert_array_equal(
        stratified_weights(x, rows, keys, cells=16), stratified_weights(dense, rows, keys, cells=16)
    )


def test_summary_cells_of_store_width_compact_rows_are_those_of_the_dense_fused_rows() -> None:
    """The cell assignment of the summary's stratified weights multiplies compact rows part by part
    (no dense fused block). On float16 384-d embeddings with 1,024-bucket sketches, as the store keeps
    them, every row lands in the same cell as with the materialised fused rows, so the weights, the
    summary solve and the global ranking are those of the dense path."""
    rng = np.random.default_rng(5)
    n, d = 4000, 384
    centres = rng.standard_normal((8, d))
    topics = rng.integers(0, 4, size=n)
    e = centres[rng.integers(0, 8, size=n)] + 0.5 * rng.standard_normal((n, d)) / math.sqrt(d)
    e = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
    tf = tf_rows([_texts(rng, 1, int(t))[0] for t in topics])
    feats = pool_features(e, tf, Cost.FUSED, 0.5)
    assert isinstance(feats.x, StackedRows)
    assert feats.idf is not None
    dense = torch.from_numpy(fused_matrix(e.astype(np.float32), tf, feats.idf, 0.5))
    keys = id_keys([f"c{i}" for i in range(n)])
    rows = np.arange(0, n, 3)
    for cells in (16, 64):
        np.testing.assert_array_equal(
            stratified_weights(feats.x, rows, keys, cells=cells),
            stratified_weights(dense, rows, keys, cells=cells),
        )


def test_parts_are_checked() -> None:
    data = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="columns"):
        Part(data, columns=torch.ones(2))
    with pytest.raises(ValueError, match="rows"):
        Part(data, rows=torch.ones(3))
    with pytest.raises(ValueError, match="same number of rows"):
        StackedRows((Part(data), Part(torch.zeros(5, 2))))
    with pytest.raises(ValueError, match="at least one"):
        StackedRows(())
    x = StackedRows((Part(data, math.sqrt(0.5)),))
    with pytest.raises(ValueError, match="y must have shape"):
        x.against(torch.zeros(2, 4))


def test_squared_norms_are_summed_part_by_part() -> None:
    """No concatenated block: the parts' squared norms are added (float rounding apart from the dense
    rows' norms); one part gives the dense rows' norms bit for bit."""
    rng = np.random.default_rng(8)
    e = torch.from_numpy(rng.standard_normal((70_000, 24)).astype(np.float16))
    s = torch.from_numpy(np.abs(rng.standard_normal((70_000, 40))).astype(np.float16))
    cols = torch.from_numpy(rng.uniform(0.5, 2.0, 40).astype(np.float32))
    inv = torch.from_numpy(rng.uniform(0.1, 1.0, 70_000).astype(np.float32))
    two = StackedRows((Part(e, 0.8), Part(s, 0.6, columns=cols, rows=inv)))
    want = torch.linalg.vector_norm(two.dense(), dim=1).square_()
    assert torch.allclose(sq_norms(two), want, rtol=1e-6, atol=0)
    one = StackedRows((Part(e),))
    assert torch.equal(sq_norms(one), torch.linalg.vector_norm(one.dense(), dim=1).square_())
