"""Sparse parts of compact rows (issue 15): a :class:`SparsePart` reads, multiplies, selects and ships
as the dense :class:`Part` of the same rows.

The reference is the dense part of the same stored float16 rows. Products are the same terms summed in
another order, so they agree to float32 rounding (a relative tolerance stated per check); densified
rows, selections and spans agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gotd.cache.sketch_rows import SparseRows
from gotd.server.ot.rows import (
    Part,
    SparsePart,
    StackedRows,
    addmm_rows,
    rows_of,
    sq_norms,
    take,
    target_parts,
)


def _rows(seed: int, n: int, width: int, density: float) -> tuple[torch.Tensor, SparsePart, Part]:
    """Random float16 rows (some all zero) as a sparse and a dense part with the same factors."""
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, width)).astype(np.float16)
    dense[rng.random((n, width)) >= density] = 0
    dense[rng.random(n) < 0.2] = 0  # zero rows
    cols = torch.from_numpy(rng.uniform(0.5, 2.0, width).astype(np.float32))
    inv = torch.from_numpy(rng.uniform(0.1, 1.0, n).astype(np.float32))
    data = torch.from_numpy(dense)
    row, col = np.nonzero(dense)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
    sparse = SparsePart(
        torch.from_numpy(indptr),
        torch.from_numpy(col.astype(np.int16)),
        torch.from_numpy(dense[row, col]),
        width,
        0.6,
        cols,
        inv,
    )
    return data, sparse, Part(data, 0.6, cols, inv)


def _assert_products_close(got: torch.Tensor, want: torch.Tensor, scale: torch.Tensor) -> None:
    """Equal up to float32 rounding of sums of a few hundred terms of magnitude ``scale`` per row."""
    bound = 1e-5 * scale.clamp_min(1.0)
    assert bool(((got - want).abs() <= bound).all()), float((got - want).abs().max())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 300),
    width=st.integers(1, 200),
    m=st.integers(1, 30),
    density=st.floats(0.0, 1.0),
    span=st.tuples(st.integers(0, 300), st.integers(0, 300)),
)
def test_sparse_part_multiplies_as_the_dense_part(
    seed: int, n: int, width: int, m: int, density: float, span: tuple[int, int]
) -> None:
    data, sparse, dense = _rows(seed, n, width, density)
    start, stop = sorted(min(n, s) for s in span)
    e = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((n, 8)).astype(np.float16))
    xs = StackedRows((Part(e, 0.8), sparse))
    xd = StackedRows((Part(e, 0.8), dense))
    y = torch.from_numpy(np.random.default_rng(seed + 2).standard_normal((m, 8 + width)).astype(np.float32))
    bias = torch.from_numpy(np.random.default_rng(seed + 3).standard_normal((1, m)).astype(np.float32))
    ys, yd = target_parts(xs, y), target_parts(xd, y)
    # the magnitude of the summed terms, per row and target: what float32 rounding is relative to
    scale = addmm_rows(
        bias.abs(),
        StackedRows((Part(e.abs(), 0.8), Part(data.abs(), 0.6, dense.columns, dense.rows))),
        start,
        stop,
        tuple(t.abs() for t in yd),
        alpha=2.0,
    )
    want = addmm_rows(bias, xd, start, stop, yd, alpha=-2.0)
    _assert_products_close(addmm_rows(bias, xs, start, stop, ys, alpha=-2.0), want, scale)
    out = torch.full((stop - start, m), float("nan"))
    got = addmm_rows(bias, xs, start, stop, ys, alpha=-2.0, out=out)
    assert got.data_ptr() == out.data_ptr()
    _assert_products_close(out, want, scale)
    # the sparse part first: it opens the accumulator
    first = StackedRows((sparse, Part(e, 0.8)))
    flipped = torch.cat([y[:, 8:], y[:, :8]], 1)
    _assert_products_close(
        addmm_rows(bias, first, start, stop, target_parts(first, flipped), alpha=-2.0), want, scale
    )
    # a subset of the targets (the columns of a block pass)
    cols = torch.arange(0, m, 2)
    _assert_products_close(
        addmm_rows(bias[:, cols], xs, start, stop, tuple(t[cols] for t in ys), alpha=-2.0),
        want[:, cols],
        scale[:, cols],
    )
    # densified rows, norms, selections and shipped spans are those of the dense part
    assert torch.equal(sparse.dense(start, stop), dense.dense(start, stop))
    assert torch.equal(xs.dense(start, stop), xd.dense(start, stop))
    torch.testing.assert_close(sq_norms(xs), sq_norms(xd), rtol=2e-6, atol=1e-30)
    index = torch.from_numpy(np.random.default_rng(seed + 4).integers(0, n, size=min(n, 40)))
    assert isinstance(take(xs, index).parts[1], SparsePart)
    assert torch.equal(rows_of(xs, index), rows_of(xd, index))
    shipped = xs.span(start, stop)
    assert isinstance(shipped.parts[1], SparsePart)
    assert shipped.shape == (stop - start, 8 + width)
    assert torch.equal(shipped.dense(), xd.dense(start, stop))


def test_sparse_part_holds_its_entries_and_factors_only() -> None:
    data, sparse, dense = _rows(3, 1000, 1024, 0.09)
    nnz = int(torch.count_nonzero(data))
    assert sparse.nbytes == 8 * 1001 + 2 * nnz + 2 * nnz + 4 * 1000
    assert sparse.nbytes < dense.nbytes / 3
    x = StackedRows((sparse,))
    assert x.shape == (1000, 1024)
    assert x.nbytes == sparse.nbytes


def test_sparse_parts_are_checked() -> None:
    ptr = torch.tensor([0, 1, 3])
    idx, val = torch.tensor([0, 1, 2], dtype=torch.int16), torch.ones(3, dtype=torch.float16)
    with pytest.raises(ValueError, match="indptr"):
        SparsePart(torch.tensor([0, 1, 2]), idx, val, 4)
    with pytest.raises(ValueError, match="indptr"):
        SparsePart(ptr.to(torch.int32), idx, val, 4)
    with pytest.raises(ValueError, match="one entry each"):
        SparsePart(ptr, idx[:2], val, 4)
    with pytest.raises(ValueError, match="int16"):
        SparsePart(ptr, idx.float(), val, 4)
    with pytest.raises(ValueError, match="columns"):
        SparsePart(ptr, idx, val, 4, columns=torch.ones(3))
    with pytest.raises(ValueError, match="rows"):
        SparsePart(ptr, idx, val, 4, rows=torch.ones(3))
    with pytest.raises(ValueError, match="same number of rows"):
        StackedRows((SparsePart(ptr, idx, val, 4), Part(torch.zeros(3, 2))))


def _stored(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    dense = rng.standard_normal((n, width)).astype(np.float16)
    dense[rng.random((n, width)) >= 0.3] = 0
    return dense


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n_old=st.integers(0, 40),
    grow=st.integers(0, 20),
    width=st.integers(1, 40),
    frac=st.floats(0.0, 1.0),
)
def test_sparse_rows_replaced_equal_the_dense_model(
    seed: int, n_old: int, grow: int, width: int, frac: float
) -> None:
    """What a grown snapshot does to its sparse rows: extend with zero rows, then set some rows."""
    rng = np.random.default_rng(seed)
    n = n_old + grow
    old = _stored(rng, n_old, width)
    positions = np.flatnonzero(rng.random(n) < frac).astype(np.int64)
    new = _stored(rng, len(positions), width)
    model = np.zeros((n, width), dtype=np.float16)
    model[:n_old] = old
    model[positions] = new
    got = SparseRows.from_dense(old).compact().replaced(positions, SparseRows.from_dense(new).compact(), n)
    assert got.indices.dtype == np.int16
    np.testing.assert_array_equal(got.dense().view(np.uint16), model.view(np.uint16))
    np.testing.assert_array_equal(got.indptr, SparseRows.from_dense(model).indptr)
    # and the other ways a snapshot's rows are read
    assert np.array_equal(got.pick(slice(2, 7)).dense(), model[2:7])
    assert np.array_equal(got.pick(positions).dense(), model[positions])
    assert [start for start, _ in got.blocks(7)] == list(range(0, n, 7))
    assert np.array_equal(np.concatenate([b.dense() for _, b in got.blocks(7)] or [model[:0]]), model)
    assert got.nbytes == 8 * (n + 1) + 4 * len(got.values)


@pytest.mark.parametrize("rows", [4096, 4607, 4608, 9000, 12_345])
@pytest.mark.parametrize("per_row_bias", [False, True])
def test_dense_part_upcasts_in_slices_with_the_bits_of_one_gemm(rows: int, per_row_bias: bool) -> None:
    """A block longer than ``UPCAST_ROWS`` is multiplied slice by slice (a rest under
    ``MIN_SLICE_ROWS`` joins the last slice): every entry has the bits of one GEMM over the block."""
    from gotd.server.ot import parts
    from gotd.server.ot.sinkhorn import MIN_GEMM_ROWS

    assert parts.MIN_SLICE_ROWS == MIN_GEMM_ROWS
    assert all(b - a >= MIN_GEMM_ROWS for a, b in parts._slices(3, 3 + rows))
    rng = np.random.default_rng(rows)
    data = torch.from_numpy(rng.standard_normal((rows + 7, 48)).astype(np.float16))
    factor = torch.from_numpy(rng.uniform(0.5, 2.0, rows + 7).astype(np.float32))
    part = Part(data, 0.7, torch.from_numpy(rng.uniform(0.5, 2.0, 48).astype(np.float32)), factor)
    y = torch.from_numpy(rng.standard_normal((33, 48)).astype(np.float32))
    yt = part.target_side(y)
    bias = torch.from_numpy(rng.standard_normal((rows, 33) if per_row_bias else (33,)).astype(np.float32))
    whole = (data[3 : 3 + rows].float() * factor[3 : 3 + rows, None]).contiguous()
    expected = torch.addmm(bias, whole, yt.T, alpha=-2.0)
    assert torch.equal(part.addmm(bias, 3, 3 + rows, yt, -2.0, None), expected)
    out = torch.empty(rows, 33)
    assert torch.equal(part.addmm(bias, 3, 3 + rows, yt, -2.0, out), expected)
    acc = bias.expand(rows, 33).clone()
    part.add_to(acc, 3, 3 + rows, yt, -2.0)
    assert torch.equal(acc, torch.addmm(bias.expand(rows, 33), whole, yt.T, alpha=-2.0))
