"""Record files (JSONL, Parquet) read into plain mappings: the file format shared by client and server.

A record file holds one object per record with the schema::

    {"id": str, "text"?: str, "embedding"?: [float, ...], "domain"?: str, "meta"?: {...}}

This module is pure Python (pyarrow only when a Parquet file is read, extra ``gotd[parquet]``), so the
base client install can read files. It checks the *shape* of each record (an object with a string
``id``, no id twice in a file, finite numbers in ``embedding``) and names the place of every error
(``data.jsonl:17: ...``, ``data.parquet:row 3: ...``); the server validates the rest. The server's
readers (:mod:`gotd.cache.record_files`, the Ray source) build their validated records on
:func:`iter_mappings`, :func:`parse_line` and :func:`batch_rows`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = [
    "JSONL_SUFFIXES",
    "PARQUET_SUFFIXES",
    "RecordFileError",
    "batch_rows",
    "iter_mappings",
    "parquet_columns",
    "parse_line",
    "read_ids",
    "read_items",
]

JSONL_SUFFIXES: Final = (".jsonl", ".ndjson")
PARQUET_SUFFIXES: Final = (".parquet", ".pq")
COLUMNS: Final = ("id", "text", "embedding", "domain", "meta")


class RecordFileError(ValueError):
    """A record file that cannot be read; the message names the file and the line or row."""


class MissingParquetError(RecordFileError, ImportError):
    """A Parquet file was given but pyarrow is not installed."""


def parse_line(raw: bytes, where: str) -> dict[str, Any] | None:
    """The JSON object on one JSONL line (``where`` names it in errors); None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordFileError(f"{where}: not valid UTF-8 (byte {err.start})") from None
    if not line.strip():
        return None
    try:
        item = json.loads(line)
    except ValueError as err:
        raise RecordFileError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(item, dict):
        raise RecordFileError(f"{where}: a record must be a JSON object, got {type(item).__name__}")
    return item


def parquet_columns(path: Path | str, names: Sequence[str]) -> list[str]:
    """The record columns present in a Parquet schema's ``names`` (an ``id`` column is required)."""
    if "id" not in names:
        raise RecordFileError(f"{path}: Parquet file has no 'id' column")
    return [c for c in COLUMNS if c in names]


def _decode(value: object, where: str, name: str) -> object:
    """Binary columns are decoded as strict UTF-8; everything else passes through."""
    if isinstance(value, bytes) and name != "embedding":
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordFileError(f"{where}: {name} is not valid UTF-8 (byte {err.start})") from None
    return value


def batch_rows(
    batch: Any, columns: Sequence[str], *, path: Path | str, first_row: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, mapping)`` of every row of a pyarrow record batch, rows numbered from ``first_row``.

    Null cells are left out of the mapping, as an absent key is in JSONL.
    """
    data = {name: batch.column(name).to_pylist() for name in columns}
    for i in range(batch.num_rows):
        where = f"{path}:row {first_row + i}"
        item = {name: _decode(data[name][i], where, name) for name in columns}
        yield where, {k: v for k, v in item.items() if v is not None}


def _jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            item = parse_line(raw, where)
            if item is not None:
                yield where, item


def _parquet(path: Path, batch_size: int) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingParquetError(
            f"reading {path} needs pyarrow, which is not installed: pip install 'gotd[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise RecordFileError(f"{path}: not a readable Parquet file ({err})") from None
    columns = parquet_columns(path, parquet.schema_arrow.names)
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            yield from batch_rows(batch, columns, path=path, first_row=row)
            row += batch.num_rows
    except RecordFileError:
        raise
    except Exception as err:  # pyarrow decoding errors (bad UTF-8 in a string column, ...)
        raise RecordFileError(f"{path}:row {row}: cannot decode ({err})") from None


def iter_mappings(path: Path | str, batch_size: int = 512) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, mapping)`` for every record of a ``.jsonl``/``.ndjson`` or ``.parquet``/``.pq`` file.

    Raises
    ------
    RecordFileError
        For a missing file, an unknown extension, a line that is not a JSON object, or an unreadable
        Parquet file (:class:`MissingParquetError` when pyarrow is not installed).
    """
    path = Path(path)
    if not path.is_file():
        raise RecordFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl(path)
    if suffix in PARQUET_SUFFIXES:
        return _parquet(path, batch_size)
    raise RecordFileError(f"{path}: unknown record file type {suffix!r} (use .jsonl or .parquet)")


def _check_shape(item: dict[str, Any], where: str) -> dict[str, Any]:
    record_id = item.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise RecordFileError(f"{where}: 'id' must be a non-empty string")
    text, embedding = item.get("text"), item.get("embedding")
    if text is None and embedding is None:
        raise RecordFileError(f"{where}: record {record_id!r} needs a 'text' or an 'embedding'")
    if text is not None and not isinstance(text, str):
        raise RecordFileError(f"{where}: 'text' must be a string")
    if embedding is not None:
        if not isinstance(embedding, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in embedding
        ):
            raise RecordFileError(f"{where}: 'embedding' must be a list of numbers")
        if not all(math.isfinite(v) for v in embedding):
            raise RecordFileError(f"{where}: 'embedding' has NaN or Inf")
    return item


def read_items(path: Path | str) -> Iterator[dict[str, Any]]:
    """The records of a file as mappings for :meth:`gotd.client.Client.ingest`, shape-checked.

    Raises
    ------
    RecordFileError
        As :func:`iter_mappings`, and for a record without a string id, without text and embedding,
        with a non-numeric or non-finite embedding, or whose id occurred earlier in the file.
    """
    seen: dict[str, str] = {}
    for where, item in iter_mappings(path):
        _check_shape(item, where)
        first = seen.setdefault(item["id"], where)
        if first != where:
            raise RecordFileError(f"{where}: duplicate id {item['id']!r} (first at {first})")
        yield item


def read_ids(path: Path | str) -> Iterator[str]:
    """The ids of a file: the ``id`` of every record of a ``.jsonl``/``.parquet`` record file, else one
    id per line of a text file (what ``gotd id-sets show`` prints; blank lines skipped, the line ending
    and surrounding whitespace stripped).

    Raises
    ------
    RecordFileError
        As :func:`iter_mappings`, for a record without a string id, and for a line that is not UTF-8.
    """
    path = Path(path)
    if path.suffix.lower() in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        for where, item in iter_mappings(path):
            if not isinstance(item.get("id"), str) or not item["id"]:
                raise RecordFileError(f"{where}: 'id' must be a non-empty string")
            yield item["id"]
        return
    if not path.is_file():
        raise RecordFileError(f"{path}: no such file")
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise RecordFileError(f"{path}:{lineno}: not valid UTF-8 (byte {err.start})") from None
            if line:
                yield line
