"""The dual-cache value codec: bit-exact round trips, and CorruptEntry (only) on anything malformed."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gotd.cache.duals.codec import (
    FORMAT_VERSION,
    MAGIC,
    CorruptEntry,
    PotentialEntry,
    decode_entry,
    encode_entry,
)

META = {
    "mode": "global",
    "eps": 0.1,
    "n_iter": 42,
    "marginal_error": 3.2e-7,
    "converged": True,
    "cost": 1.25,
    "pool_version": 7,
    "target_hash": "ab12",
    "f_sum": -0.5,
    "n": 300,
    "created_at": 1700000000.123456,
}


def _entry(m: int = 5, rows: int | None = 4, meta: dict[str, Any] | None = None) -> PotentialEntry:
    rng = np.random.default_rng(m)
    g = rng.standard_normal(m).astype(np.float32)
    r = None if rows is None else rng.integers(0, 2**40, rows, dtype=np.int64)
    return PotentialEntry(g=g, rows=r, meta=META if meta is None else meta)


def _split(blob: bytes) -> tuple[int, dict[str, Any], bytes]:
    """(version, header, array bytes) of a valid encoding."""
    _, version, n = struct.unpack_from("<7sHI", blob)
    return version, json.loads(blob[13 : 13 + n]), blob[13 + n : -8]


def _build(header: Any, arrays: bytes, *, version: int = FORMAT_VERSION, magic: bytes = MAGIC) -> bytes:
    """An encoding with a VALID checksum around arbitrary content: decode must judge the content."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = struct.pack("<7sHI", magic, version, len(raw)) + raw + arrays
    return body + struct.pack("<Q", xxhash.xxh64_intdigest(body))


def test_round_trip_is_bit_exact() -> None:
    g = np.array([0.1, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, np.nan], dtype=np.float32)
    g = np.concatenate([g, np.frombuffer(b"\x01\x00\xc0\x7f", dtype=np.float32)])  # NaN with a payload
    rows = np.array([0, 5, 2**62, -1], dtype=np.int64)
    entry = PotentialEntry(g=g, rows=rows, meta={**META, "nested": {"a": [1, 2.5, None]}, "bad": math.nan})
    back = decode_entry(encode_entry(entry))
    assert back.g.dtype == np.float32
    assert back.g.shape == g.shape
    assert back.g.tobytes() == g.tobytes()
    assert back.rows is not None
    assert back.rows.dtype == np.int64
    assert back.rows.tobytes() == rows.tobytes()
    assert {k: v for k, v in back.meta.items() if k != "bad"} == {**META, "nested": {"a": [1, 2.5, None]}}
    assert math.isnan(back.meta["bad"])


def test_rows_none_and_empty_arrays_round_trip() -> None:
    back = decode_entry(encode_entry(_entry(rows=None)))
    assert back.rows is None
    empty = decode_entry(encode_entry(PotentialEntry(np.zeros(0, np.float32), np.zeros(0, np.int64), {})))
    assert empty.g.shape == (0,)
    assert empty.rows is not None
    assert empty.rows.shape == (0,)
    assert dict(empty.meta) == {}


def test_idf_round_trips_and_a_bad_idf_is_corrupt() -> None:
    idf = np.array([1.0, 2.5, 7.25], dtype=np.float32)
    entry = PotentialEntry(np.ones(2, np.float32), None, {"cost": 1.0}, idf=idf)
    blob = encode_entry(entry)
    back = decode_entry(blob)
    assert back.idf is not None
    assert back.idf.tobytes() == idf.tobytes()
    assert back.f is None
    assert decode_entry(encode_entry(_entry())).idf is None
    _, header, arrays = _split(blob)
    g_desc, idf_desc = header["arrays"]
    assert idf_desc == {"name": "idf", "dtype": "<f4", "shape": [3], "offset": 8, "length": 12}
    for bad in ({**idf_desc, "dtype": "<f8", "length": 24}, {**idf_desc, "shape": [4]}):
        with pytest.raises(CorruptEntry):
            decode_entry(_build({**header, "arrays": [g_desc, bad]}, arrays))
    with pytest.raises(ValueError, match="idf"):
        PotentialEntry(np.ones(2, np.float32), None, {}, idf=idf.astype(np.float64))


def test_decoded_entry_is_read_only() -> None:
    back = decode_entry(encode_entry(_entry()))
    with pytest.raises(ValueError, match="read-only"):
        back.g[0] = 1.0
    with pytest.raises(TypeError):
        back.meta["mode"] = "exact"  # type: ignore[index]


def test_layout_magic_version_json_arrays_checksum() -> None:
    blob = encode_entry(_entry(m=3, rows=2))
    assert blob.startswith(MAGIC)
    version, header, arrays = _split(blob)
    assert version == FORMAT_VERSION
    assert header["arrays"] == [
        {"name": "g", "dtype": "<f4", "shape": [3], "offset": 0, "length": 12},
        {"name": "rows", "dtype": "<i8", "shape": [2], "offset": 12, "length": 16},
    ]
    assert len(arrays) == 28
    assert struct.unpack("<Q", blob[-8:])[0] == xxhash.xxh64_intdigest(blob[:-8])
    # the encoding is deterministic
    assert encode_entry(_entry(m=3, rows=2)) == blob


@pytest.mark.parametrize(
    ("g", "rows", "meta"),
    [
        (np.zeros(3, np.float64), None, {}),
        (np.zeros((2, 2), np.float32), None, {}),
        (np.zeros(3, np.float32), np.zeros(2, np.int32), {}),
        (np.zeros(3, np.float32), None, {1: "x"}),
        ([0.0], None, {}),
    ],
)
def test_entry_validates_its_fields(g: Any, rows: Any, meta: Any) -> None:
    with pytest.raises(ValueError, match="must"):
        PotentialEntry(g=g, rows=rows, meta=meta)


def test_meta_must_be_json_serialisable() -> None:
    with pytest.raises(ValueError, match="JSON"):
        encode_entry(PotentialEntry(np.zeros(1, np.float32), None, {"x": object()}))


@dataclass(frozen=True)
class Case:
    reason: str
    data: bytes


def _cases() -> list[Case]:
    good = encode_entry(_entry(m=4, rows=3))
    _, header, arrays = _split(good)
    g_desc, rows_desc = header["arrays"]

    def with_arrays(*descs: dict[str, Any], data: bytes = arrays, meta: Any = header["meta"]) -> bytes:
        return _build({"arrays": list(descs), "meta": meta}, data)

    return [
        Case("empty", b""),
        Case("random bytes", bytes(range(256)) * 2),
        Case("only magic", MAGIC),
        Case("wrong magic", b"GOTDPOX" + good[7:]),
        Case("wrong magic, valid checksum", _build(header, arrays, magic=b"NOTGOTD")),
        Case("future version", _build(header, arrays, version=FORMAT_VERSION + 1)),
        Case("version 0", _build(header, arrays, version=0)),
        Case("truncated by one byte", good[:-1]),
        Case("truncated to half", good[: len(good) // 2]),
        Case("extended by one byte", good + b"\x00"),
        Case("checksum flipped", good[:-1] + bytes([good[-1] ^ 1])),
        Case("payload flipped", good[:20] + bytes([good[20] ^ 0x40]) + good[21:]),
        Case("header length too large", good[:9] + struct.pack("<I", 10**6) + good[13:]),
        Case("header not JSON", _build(b"{not json", arrays)),
        Case("header not UTF-8", _build(b'{"a":"\xff"}', arrays)),
        Case("header a list", _build([1, 2], arrays)),
        Case("header extra key", _build({**header, "x": 1}, arrays)),
        Case("meta not an object", _build({**header, "meta": [1]}, arrays)),
        Case("deeply nested JSON", _build(b"[" * 100000 + b"]" * 100000, arrays)),
        Case(
            "g stored as float64",
            with_arrays({**g_desc, "dtype": "<f8", "length": 32}, data=arrays + bytes(16)),
        ),
        Case("g big-endian", with_arrays({**g_desc, "dtype": ">f4"}, rows_desc)),
        Case(
            "rows as int32",
            with_arrays(g_desc, {**rows_desc, "dtype": "<i4", "length": 12}, data=arrays[:-12]),
        ),
        Case("g 2-D", with_arrays({**g_desc, "shape": [2, 2]}, rows_desc)),
        Case("g scalar", with_arrays({**g_desc, "shape": []}, rows_desc)),
        Case("shape negative", with_arrays({**g_desc, "shape": [-4]}, rows_desc)),
        Case("shape a bool", with_arrays({**g_desc, "shape": [True], "length": 4}, data=arrays[:4])),
        Case("shape a float", with_arrays({**g_desc, "shape": [4.0]}, rows_desc)),
        Case("length disagrees with shape", with_arrays({**g_desc, "shape": [3]}, rows_desc)),
        Case("offset gap", with_arrays(g_desc, {**rows_desc, "offset": 20})),
        Case("overlapping arrays", with_arrays(g_desc, {**rows_desc, "offset": 0})),
        Case("array past the end", with_arrays(g_desc, rows_desc, data=arrays[:-8])),
        Case("trailing bytes after arrays", with_arrays(g_desc, rows_desc, data=arrays + b"\x00" * 8)),
        Case("missing g", with_arrays({**rows_desc, "offset": 0}, data=arrays[16:])),
        Case("unknown array", with_arrays(g_desc, {**rows_desc, "name": "f"})),
        Case("repeated array", with_arrays(g_desc, {**g_desc, "offset": 16})),
        Case("descriptor missing a field", with_arrays({k: v for k, v in g_desc.items() if k != "offset"})),
        Case("descriptor not an object", with_arrays("g")),  # type: ignore[arg-type]
        Case("name not a string", with_arrays({**g_desc, "name": 1}, rows_desc)),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.reason)
def test_malformed_values_raise_corrupt_entry(case: Case) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(case.data)


def test_non_bytes_is_corrupt_and_corrupt_is_a_value_error() -> None:
    with pytest.raises(CorruptEntry):
        decode_entry("GOTDPOT")  # type: ignore[arg-type]
    assert issubclass(CorruptEntry, ValueError)
    blob = encode_entry(_entry())
    assert decode_entry(bytearray(blob)).g.tobytes() == decode_entry(memoryview(blob)).g.tobytes()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(
    g=hnp.arrays(np.float32, st.integers(0, 64)),
    rows=st.none() | hnp.arrays(np.int64, st.integers(0, 16)),
    meta=st.dictionaries(st.text(max_size=8), _json, max_size=5),
)
def test_round_trip_property(g: np.ndarray, rows: np.ndarray | None, meta: dict[str, Any]) -> None:
    back = decode_entry(encode_entry(PotentialEntry(g=g, rows=rows, meta=meta)))
    assert back.g.tobytes() == g.tobytes()
    assert (back.rows is None) == (rows is None)
    if rows is not None and back.rows is not None:
        assert back.rows.tobytes() == rows.tobytes()
    assert json.dumps(dict(back.meta), sort_keys=True) == json.dumps(meta, sort_keys=True)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_corrupt_entry(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(data)


_VALID = encode_entry(_entry(m=6, rows=2))


@given(st.data())
def test_mutated_encodings_raise_corrupt_entry(data: st.DataObject) -> None:
    blob = bytearray(_VALID)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if kind == "flip":
        blob[pos] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        del blob[pos:]
    elif kind == "insert":
        blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        del blob[pos : pos + data.draw(st.integers(1, 16))]
    with pytest.raises(CorruptEntry):
        decode_entry(bytes(blob))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bodies_with_fresh_checksums_never_raise_anything_else(data: st.DataObject) -> None:
    """Past the checksum, the parser itself must reject (or accept) any content without crashing."""
    body = bytearray(_VALID[:-8])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        if data.draw(st.booleans()):
            body[pos] = data.draw(st.integers(0, 255))
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    blob = bytes(body) + struct.pack("<Q", xxhash.xxh64_intdigest(bytes(body)))
    try:
        entry = decode_entry(blob)
    except CorruptEntry:
        return
    assert entry.g.dtype == np.float32
    assert entry.g.ndim == 1
    assert entry.rows is None or (entry.rows.dtype == np.int64 and entry.rows.ndim == 1)
