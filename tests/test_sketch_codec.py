"""Sparse sketch rows and the stored chunk encodings: exact round trips on any float16 rows."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gotd.cache.sketch_rows import SparseRows
from gotd.cache.store.layout import PoolRecord
from gotd.cache.store.sketch import load_sketches, write_sketch_rows
from gotd.cache.store.sketch_codec import chunk_length, decode_chunk, decode_into, decode_sparse, encode_chunk
from gotd.cache.store.sketchstats import read_rows
from gotd.server.selection.sketches import tf_rows, tf_sparse


@st.composite
def dense_rows(draw: st.DrawFn, *, max_rows: int = 12, max_width: int = 40) -> np.ndarray:
    """Float16 rows of any bit patterns, mostly zero, with whole zero rows and whole full rows."""
    n = draw(st.integers(0, max_rows))
    width = draw(st.integers(1, max_width))
    bits = draw(arrays(np.uint16, (n, width), elements=st.integers(0, 0xFFFF)))
    keep = draw(arrays(np.bool_, (n, width), elements=st.booleans()))
    kind = draw(arrays(np.int8, (n,), elements=st.integers(0, 2)))  # 0 sparse, 1 empty, 2 full
    bits = np.where(keep & (draw(st.integers(0, 3)) > 0), bits, 0).astype(np.uint16)
    bits[kind == 1] = 0
    full = kind == 2
    bits[full] = np.where(bits[full] == 0, 0x3C00, bits[full])  # every bucket set (1.0 where zero)
    return bits.view(np.float16)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype == np.float16
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))


@settings(max_examples=300, deadline=None)
@given(dense_rows())
def test_sparse_rows_round_trip_bit_for_bit(rows: np.ndarray) -> None:
    sparse = SparseRows.from_dense(rows)
    assert sparse.shape == rows.shape
    _same_bits(sparse.dense(), rows)
    np.testing.assert_array_equal(sparse.row_any(), rows.any(axis=1))
    assert sparse.any() == bool(rows.any())
    for i in range(len(rows)):  # buckets ascending, one entry per non-zero bit pattern
        row = sparse.rows(i, i + 1)
        np.testing.assert_array_equal(row.indices, np.flatnonzero(rows[i].view(np.uint16)))


@settings(max_examples=300, deadline=None)
@given(dense_rows())
def test_chunk_encoding_round_trip_bit_for_bit(rows: np.ndarray) -> None:
    raw = encode_chunk(SparseRows.from_dense(rows))
    width = rows.shape[1]
    sparse_size = 4 + 2 * len(rows) + 4 * int(np.count_nonzero(rows.view(np.uint16))) + 1
    assert len(raw) % 2 == (1 if sparse_size < rows.nbytes else 0)  # sparse only when smaller
    assert len(raw) == min(sparse_size, rows.nbytes)
    assert chunk_length(raw, width) == len(rows)
    _same_bits(decode_chunk(raw, width), rows)
    _same_bits(decode_chunk(memoryview(raw), width), rows)
    _same_bits(decode_sparse(raw, width).dense(), rows)
    out = np.zeros((len(rows) + 2, width), dtype=np.float16)
    decode_into(raw, width, out[1 : 1 + len(rows)])
    _same_bits(out[1 : 1 + len(rows)], rows)
    assert not out[[0, -1]].any()


def test_the_first_format_a_dense_chunk_reads_as_it_was_written() -> None:
    rows = tf_rows(["a dense chunk as gotd wrote it before", None, "", "two words"])
    raw = rows.tobytes()  # the value the first format stored: float16 rows, row-major
    assert chunk_length(raw, rows.shape[1]) == 4
    _same_bits(decode_chunk(raw, rows.shape[1]), rows)
    _same_bits(decode_sparse(raw, rows.shape[1]).dense(), rows)


def test_all_zero_full_and_wide_chunks() -> None:
    zero = SparseRows.zeros(256, 1024)
    raw = encode_chunk(zero)
    assert len(raw) == 4 + 2 * 256 + 1
    _same_bits(decode_chunk(raw, 1024), np.zeros((256, 1024), np.float16))
    full = np.full((3, 8), 0.5, dtype=np.float16)
    raw = encode_chunk(SparseRows.from_dense(full))
    assert raw == full.tobytes()  # not smaller sparse: written dense
    wide = np.zeros((2, 1 << 16), dtype=np.float16)
    wide[0, [0, 65535]] = 1.0
    raw = encode_chunk(SparseRows.from_dense(wide))
    assert raw == wide.tobytes()  # buckets past a u16: dense
    _same_bits(decode_chunk(raw, 1 << 16), wide)


def test_malformed_chunks_are_refused() -> None:
    raw = encode_chunk(SparseRows.from_dense(tf_rows(["some words here"], buckets=64)))
    with pytest.raises(ValueError, match="unknown encoding"):
        chunk_length(raw[:-1] + b"\x07", 64)
    with pytest.raises(ValueError, match="does not hold"):
        chunk_length(raw[:-3] + raw[-1:], 64)
    with pytest.raises(ValueError, match="past the width"):
        chunk_length(raw, 8)
    with pytest.raises(ValueError, match="partial row"):
        chunk_length(bytes(6), 4)


@settings(max_examples=200, deadline=None)
@given(dense_rows(max_rows=20), st.data())
def test_take_rows_and_concat_agree_with_dense_indexing(rows: np.ndarray, data: st.DataObject) -> None:
    sparse = SparseRows.from_dense(rows)
    n = len(rows)
    picked = np.array(data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=30 if n else 0)), np.int64)
    _same_bits(sparse.take(picked).dense(), rows[picked])
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    _same_bits(sparse.rows(lo, hi).dense(), rows[lo:hi])
    both = SparseRows.concat(
        [sparse.rows(0, lo), SparseRows.zeros(2, rows.shape[1]), sparse.rows(lo, n)], rows.shape[1]
    )
    _same_bits(both.dense(), np.concatenate([rows[:lo], np.zeros((2, rows.shape[1]), np.float16), rows[lo:]]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=60)), max_size=12), st.sampled_from([5, 64, 1024]))
def test_tf_sparse_is_tf_rows_without_the_dense_rows(texts: list[str | None], buckets: int) -> None:
    sparse = tf_sparse(texts, buckets=buckets)
    dense = tf_rows(texts, buckets=buckets)
    _same_bits(sparse.dense(), dense)
    from_dense = SparseRows.from_dense(dense)  # the same entries, in the same order
    np.testing.assert_array_equal(sparse.indptr, from_dense.indptr)
    np.testing.assert_array_equal(sparse.indices, from_dense.indices)
    np.testing.assert_array_equal(sparse.values.view(np.uint16), from_dense.values.view(np.uint16))


@st.composite
def writes(draw: st.DrawFn) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Upserts into a pool of at most 14 rows: sorted rows, and their rows (None: zero rows)."""
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for _ in range(draw(st.integers(1, 6))):
        rows = np.array(sorted(draw(st.sets(st.integers(0, 13), min_size=1, max_size=8))), dtype=np.int64)
        if draw(st.booleans()):
            bits = draw(
                arrays(np.uint16, (len(rows), 6), elements=st.sampled_from([0, 0, 0, 0x3C00, 0xB800, 0x3555]))
            )
            out.append((rows, bits.view(np.float16)))
        else:
            out.append((rows, None))
    return out


@settings(max_examples=150, deadline=None)
@given(writes())
def test_chunk_rewrites_match_a_dense_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[np.ndarray, np.ndarray | None]]
) -> None:
    """``write_sketch_rows`` over chunks of 4 rows (new chunks, rows past a chunk's end, gaps, zero
    rows, first-format chunks read back) against the same writes into one dense array, and the rows'
    previous sketches it returns against the model's."""
    pool = PoolRecord(
        name="p",
        num=1,
        uid="u",
        count=14,
        version=1,
        model="m",
        dim=2,
        dtype="float32",
        chunk_rows=4,
        created=0.0,
        updated=0.0,
        sketch_buckets=6,
        sketch_rows=4,
    )
    model = np.zeros((14, 6), dtype=np.float16)
    env = lmdb.open(str(tmp_path_factory.mktemp("lmdb")), max_dbs=1, map_size=1 << 24)
    db = env.open_db(b"sketches")
    try:
        for k, (rows, values) in enumerate(ops):
            with env.begin(write=True) as txn:
                if k == 1:  # the chunks so far as the first format wrote them
                    for key, raw in list(txn.cursor(db=db)):
                        txn.put(key, decode_chunk(raw, 6).tobytes(), db=db)
                before = write_sketch_rows(
                    txn, db, pool, rows, None if values is None else SparseRows.from_dense(values)
                )
            _same_bits(before.dense(), model[rows])  # the rows' previous sketches, returned
            model[rows] = 0 if values is None else values
            with env.begin(buffers=True) as txn:
                got = load_sketches(txn, db, pool)
                some = np.flatnonzero(np.arange(14) % (k + 2) != 1)
                _same_bits(read_rows(txn, db, pool, some), model[some])  # rows decoded alone
            if got is None:
                assert not model.view(np.uint16).any()
            else:
                _same_bits(got.dense(), model)
    finally:
        env.close()
