"""Versioned binary codec for dual-cache values (the target potential and its solve metadata).

Layout of one encoded :class:`PotentialEntry` (all integers little-endian)::

    b"GOTDPOT"            magic, 7 bytes
    u16                   format version (FORMAT_VERSION)
    u32                   length L of the JSON header
    L bytes               JSON header, UTF-8: {"arrays": [...], "meta": {...}}
    raw arrays            the arrays the header describes, back to back, in header order
    u64                   xxh64 (seed 0) of every byte before it

Each array descriptor is ``{"name", "dtype", "shape", "offset", "length"}``; ``offset`` counts from the
first byte after the JSON header, ``length`` is ``prod(shape) * itemsize``. Arrays are raw little-endian
bytes (``<f4`` for the potential ``g``, the row values ``f`` and the IDF weights ``idf``, ``<i8`` for
``rows``), so a round trip is bit-exact. ``idf`` (the fused cost's IDF weights a potential was solved
under) was added to format version 1 as one more optional array: a reader that does not know it
rejects the value (a miss), and a value without it reads as before. No pickle:
a value from Redis is untrusted input, and :func:`decode_entry` either returns a well-formed entry or
raises :class:`CorruptEntry`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import xxhash

__all__ = ["FORMAT_VERSION", "MAGIC", "CorruptEntry", "PotentialEntry", "decode_entry", "encode_entry"]

MAGIC: Final = b"GOTDPOT"
FORMAT_VERSION: Final = 1

_PREFIX = struct.Struct("<7sHI")  # magic, version, JSON length
_CHECKSUM = struct.Struct("<Q")
_MIN_SIZE = _PREFIX.size + _CHECKSUM.size
# name -> (wire dtype, required)
_ARRAYS: Final[dict[str, tuple[str, bool]]] = {
    "g": ("<f4", True),
    "rows": ("<i8", False),
    "f": ("<f4", False),
    "idf": ("<f4", False),
}
_DESCRIPTOR_KEYS: Final = frozenset({"name", "dtype", "shape", "offset", "length"})


class CorruptEntry(ValueError):  # noqa: N818 (name fixed by the cache contract)
    """A cache value that is not a well-formed encoded :class:`PotentialEntry` of this format version."""


@dataclass(frozen=True, slots=True, eq=False)
class PotentialEntry:
    """A cached target potential with the metadata of the solve that produced it.

    Parameters
    ----------
    g : numpy.ndarray
        Target potential, shape ``(m,)``, dtype float32.
    rows : numpy.ndarray or None
        PAPER mode: the eligible pool rows (positions in the filtered pool) of the kept domains,
        shape ``(r,)``, dtype int64. None in the other modes.
    f : numpy.ndarray or None
        Row values of a potential epoch: the c-transform of ``g`` per pool row at one pool version
        (NaN for rows not scored), shape ``(n,)``, float32. None in a potential entry.
    idf : numpy.ndarray or None
        Fused cost: the IDF weights of the pool version the potential was solved at, shape
        ``(buckets,)``, float32 — the cost of the epoch, frozen with its ``g``. None otherwise.
    meta : Mapping[str, Any]
        JSON-serialisable solve metadata (mode, eps, n_iter, marginal_error, converged, cost,
        pool_version, target_hash, f_sum, n, created_at, ...). After a round trip it is a read-only
        mapping of JSON values (tuples come back as lists; non-finite floats survive as NaN/Infinity).

    Notes
    -----
    Equality is identity (``eq=False``): comparing arrays element-wise is the caller's choice.
    """

    g: np.ndarray
    rows: np.ndarray | None
    meta: Mapping[str, Any]
    f: np.ndarray | None = None
    idf: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.g, np.ndarray) or self.g.ndim != 1 or self.g.dtype != np.float32:
            raise ValueError("g must be a 1-D float32 array")
        if self.rows is not None and (
            not isinstance(self.rows, np.ndarray) or self.rows.ndim != 1 or self.rows.dtype != np.int64
        ):
            raise ValueError("rows must be None or a 1-D int64 array")
        for name in ("f", "idf"):
            array = getattr(self, name)
            if array is not None and (
                not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != np.float32
            ):
                raise ValueError(f"{name} must be None or a 1-D float32 array")
        if not isinstance(self.meta, Mapping) or not all(isinstance(k, str) for k in self.meta):
            raise ValueError("meta must be a mapping with str keys")


def encode_entry(entry: PotentialEntry) -> bytes:
    """Encode ``entry`` into the versioned binary format (see the module docstring).

    Parameters
    ----------
    entry : PotentialEntry
        The value to encode.

    Returns
    -------
    bytes
        The encoded value; ``decode_entry(encode_entry(e))`` gives ``g`` and ``rows`` with identical bytes.

    Raises
    ------
    ValueError
        If ``entry.meta`` is not JSON-serialisable.
    """
    arrays: list[tuple[str, np.ndarray]] = [("g", entry.g)]
    if entry.rows is not None:
        arrays.append(("rows", entry.rows))
    if entry.f is not None:
        arrays.append(("f", entry.f))
    if entry.idf is not None:
        arrays.append(("idf", entry.idf))
    descriptors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for name, array in arrays:
        dtype = _ARRAYS[name][0]
        blob = np.ascontiguousarray(array, dtype=dtype).tobytes()
        descriptors.append(
            {"name": name, "dtype": dtype, "shape": list(array.shape), "offset": offset, "length": len(blob)}
        )
        blobs.append(blob)
        offset += len(blob)
    try:
        header = json.dumps(
            {"arrays": descriptors, "meta": dict(entry.meta)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise ValueError(f"entry metadata is not JSON-serialisable: {err}") from err
    body = b"".join([_PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)), header, *blobs])
    return body + _CHECKSUM.pack(xxhash.xxh64_intdigest(body))


def decode_entry(data: bytes | bytearray | memoryview) -> PotentialEntry:
    """Decode a value written by :func:`encode_entry`, validating every field.

    Parameters
    ----------
    data : bytes
        The encoded value (bytes-like), e.g. as read from Redis.

    Returns
    -------
    PotentialEntry
        With read-only arrays (``g`` float32 ``(m,)``, ``rows`` int64 ``(r,)`` or None) and read-only meta.

    Raises
    ------
    CorruptEntry
        On anything wrong: not bytes, wrong magic or format version, bad lengths, checksum mismatch,
        malformed JSON header, unknown/missing array, wrong dtype or shape, truncated or trailing data.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptEntry(f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    if len(buf) < _MIN_SIZE:
        raise CorruptEntry(f"too short: {len(buf)} bytes")
    magic, version, header_len = _PREFIX.unpack_from(buf)
    if magic != MAGIC:
        raise CorruptEntry("bad magic")
    if version != FORMAT_VERSION:
        raise CorruptEntry(f"unsupported format version {version} (expected {FORMAT_VERSION})")
    data_start = _PREFIX.size + header_len
    data_end = len(buf) - _CHECKSUM.size
    if data_start > data_end:
        raise CorruptEntry("header length exceeds the value")
    (stored,) = _CHECKSUM.unpack_from(buf, data_end)
    if stored != xxhash.xxh64_intdigest(memoryview(buf)[:data_end]):
        raise CorruptEntry("checksum mismatch")
    header = _parse_header(buf[_PREFIX.size : data_start])
    arrays = _read_arrays(header["arrays"], buf, data_start, data_end)
    return PotentialEntry(
        g=arrays["g"],
        rows=arrays.get("rows"),
        meta=MappingProxyType(header["meta"]),
        f=arrays.get("f"),
        idf=arrays.get("idf"),
    )


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptEntry(f"malformed JSON header: {err}") from err
    if not isinstance(header, dict) or set(header) != {"arrays", "meta"}:
        raise CorruptEntry("JSON header must be an object with exactly 'arrays' and 'meta'")
    if not isinstance(header["meta"], dict) or not isinstance(header["arrays"], list):
        raise CorruptEntry("'meta' must be an object and 'arrays' a list")
    return header


def _read_arrays(descriptors: list[Any], buf: bytes, start: int, end: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for desc in descriptors:
        if not isinstance(desc, dict) or set(desc) != _DESCRIPTOR_KEYS:
            raise CorruptEntry("array descriptor must have exactly name, dtype, shape, offset, length")
        name, dtype, shape = desc["name"], desc["dtype"], desc["shape"]
        if not isinstance(name, str) or name not in _ARRAYS or name in arrays:
            raise CorruptEntry(f"unknown or repeated array {_short(name)}")
        if dtype != _ARRAYS[name][0]:
            raise CorruptEntry(f"array {name!r} has dtype {_short(dtype)}, expected {_ARRAYS[name][0]!r}")
        if not isinstance(shape, list) or len(shape) != 1 or not _is_count(shape[0]):
            raise CorruptEntry(
                f"array {name!r} must be 1-D with a non-negative length, got shape {_short(shape)}"
            )
        if not _is_count(desc["offset"]) or not _is_count(desc["length"]):
            raise CorruptEntry(f"array {name!r} has a bad offset or length")
        itemsize = np.dtype(dtype).itemsize
        if desc["length"] != math.prod(shape) * itemsize:
            raise CorruptEntry(f"array {name!r}: length does not match shape {shape}")
        if desc["offset"] != offset:
            raise CorruptEntry(f"array {name!r}: offset {_short(desc['offset'])} where {offset} was expected")
        if start + offset + desc["length"] > end:
            raise CorruptEntry(f"array {name!r} is truncated")
        array = np.frombuffer(buf, dtype=dtype, count=shape[0], offset=start + offset)
        array = array.astype(np.dtype(dtype).newbyteorder("="), copy=False)  # no copy on little-endian
        array.flags.writeable = False
        arrays[name] = array
        offset += desc["length"]
    if start + offset != end:
        raise CorruptEntry(f"{end - start - offset} bytes of trailing data after the arrays")
    for name, (_, required) in _ARRAYS.items():
        if required and name not in arrays:
            raise CorruptEntry(f"missing array {name!r}")
    return arrays


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: object) -> str:
    """``repr`` capped for error messages (a crafted header may hold huge values)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
