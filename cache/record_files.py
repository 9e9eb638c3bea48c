"""Readers of JSONL and Parquet record files (validated by :func:`gotd.cache.records.record_from_mapping`).

A record file holds one object per record with the schema::

    {"id": str, "text"?: str, "embedding"?: [float, ...], "domain"?: str, "meta"?: {...}}

Errors name the place in the file (``data.jsonl:17: ...``). Light (json; pyarrow only when a Parquet
file is read): the CLI client imports it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gotd.cache.errors import InvalidArgument
from gotd.cache.records import DEFAULT_MAX_TEXT_BYTES, MissingDependencyError, Record, record_from_mapping

__all__ = ["batch_records", "decode_column_value", "line_record", "parquet_columns", "read_records"]

LOG = logging.getLogger(__name__)


def line_record(raw: bytes, where: str, max_text_bytes: int) -> Record | None:
    """The record on one JSONL line (``where`` names it in errors); None for a blank line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"{where}: not valid UTF-8 (byte {err.start})") from None
    if not line.strip():
        return None
    try:
        item = json.loads(line)
    except ValueError as err:
        raise InvalidArgument(f"{where}: not valid JSON ({err})") from None
    return record_from_mapping(item, where, max_text_bytes)


def _jsonl(path: Path, max_text_bytes: int) -> Iterator[tuple[str, Record]]:
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            record = line_record(raw, where, max_text_bytes)
            if record is not None:
                yield where, record


def _parquet(path: Path, batch_size: int, max_text_bytes: int) -> Iterator[tuple[str, Record]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            f"reading {path} needs pyarrow, which is not installed: pip install pyarrow"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InvalidArgument(f"{path}: not a readable Parquet file ({err})") from None
    columns = parquet_columns(path, parquet.schema_arrow.names)
    row = 0
    try:
        batches = parquet.iter_batches(batch_size=batch_size, columns=columns)
        for batch in batches:
            yield from batch_records(batch, columns, path=path, first_row=row, max_text_bytes=max_text_bytes)
            row += batch.num_rows
    except InvalidArgument:
        raise
    except Exception as err:  # pyarrow decoding errors (bad UTF-8 in a string column, ...)
        raise InvalidArgument(f"{path}:row {row}: cannot decode ({err})") from None


def decode_column_value(value: object, where: str, name: str) -> object:
    """Binary columns are decoded as strict UTF-8; everything else passes through."""
    if isinstance(value, bytes) and name != "embedding":
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InvalidArgument(f"{where}: {name} is not valid UTF-8 (byte {err.start})") from None
    return value


def read_records(
    path: Path | str, batch_size: int = 512, *, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
) -> Iterator[list[Record]]:
    """Read a record file in batches of validated records.

    Parameters
    ----------
    path : Path or str
        A ``.jsonl``/``.ndjson`` file (one JSON object a line; blank lines skipped) or a
        ``.parquet``/``.pq`` file with columns ``id`` and optionally ``text``, ``embedding``
        (list of floats), ``domain`` and ``meta`` (JSON string or struct).
    batch_size : int
        Records per yielded list (the last one may be shorter).
    max_text_bytes : int
        Largest accepted text, in UTF-8 bytes.

    Yields
    ------
    list of Record
        Batches in file order. An id that occurs twice anywhere in the file is an error.

    Raises
    ------
    InvalidArgument
        For an unknown extension, an unreadable file, or a bad record, naming ``file:line``
        (``file:row i`` for Parquet). Batches yielded before the bad record stay yielded.
    MissingDependencyError
        For a Parquet file when pyarrow is not installed.
    """
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    suffix = path.suffix.lower()
    items: Iterator[tuple[str, Record]]
    if suffix in (".jsonl", ".ndjson"):
        items = _jsonl(path, max_text_bytes)
    elif suffix in (".parquet", ".pq"):
        items = _parquet(path, batch_size, max_text_bytes)
    else:
        raise InvalidArgument(f"{path}: unknown record file type {suffix!r} (use .jsonl or .parquet)")
    seen: dict[str, str] = {}
    batch: list[Record] = []
    for where, record in items:
        first = seen.get(record.id)
        if first is not None:
            raise InvalidArgument(f"{where}: duplicate id {record.id!r} (first at {first})")
        seen[record.id] = where
        batch.append(record)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
    LOG.debug("read %d records from %s", len(seen), path)


def parquet_columns(path: Path | str, names: Sequence[str]) -> list[str]:
    """The record columns present in a Parquet schema's ``names`` (an ``id`` column is required)."""
    if "id" not in names:
        raise InvalidArgument(f"{path}: Parquet file has no 'id' column")
    return [c for c in ("id", "text", "embedding", "domain", "meta") if c in names]


def batch_records(
    batch: Any, columns: Sequence[str], *, path: Path | str, first_row: int, max_text_bytes: int
) -> Iterator[tuple[str, Record]]:
    """``(where, record)`` of every row of a pyarrow record batch, rows numbered from ``first_row``."""
    data = {name: batch.column(name).to_pylist() for name in columns}
    for i in range(batch.num_rows):
        where = f"{path}:row {first_row + i}"
        item = {name: decode_column_value(data[name][i], where, name) for name in columns}
        yield (
            where,
            record_from_mapping({k: v for k, v in item.items() if v is not None}, where, max_text_bytes),
        )
