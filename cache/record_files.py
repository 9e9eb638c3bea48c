"""Validated records from JSONL and Parquet files (the file format: :mod:`gotd.client.records`).

The file format is read once, in :mod:`gotd.client.records`; this module turns each mapping into a
:class:`~gotd.cache.records.Record` with the server's rules (:func:`~gotd.cache.records.record_from_mapping`)
and reports every error as :class:`~gotd.cache.errors.InvalidArgument` naming the place in the file
(``data.jsonl:17: ...``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gotd.cache.errors import InvalidArgument
from gotd.cache.records import DEFAULT_MAX_TEXT_BYTES, MissingDependencyError, Record, record_from_mapping
from gotd.client import records as files

__all__ = ["batch_records", "line_record", "parquet_columns", "read_records"]

LOG = logging.getLogger(__name__)


@contextmanager
def _as_invalid_argument() -> Iterator[None]:
    """File-format errors of :mod:`gotd.client.records` as the server's error kinds."""
    try:
        yield
    except files.MissingParquetError as err:
        raise MissingDependencyError(str(err)) from None
    except files.RecordFileError as err:
        raise InvalidArgument(str(err)) from None


def line_record(raw: bytes, where: str, max_text_bytes: int) -> Record | None:
    """The record on one JSONL line (``where`` names it in errors); None for a blank line."""
    with _as_invalid_argument():
        item = files.parse_line(raw, where)
    return None if item is None else record_from_mapping(item, where, max_text_bytes)


def parquet_columns(path: Path | str, names: Sequence[str]) -> list[str]:
    """The record columns present in a Parquet schema's ``names`` (an ``id`` column is required)."""
    with _as_invalid_argument():
        return files.parquet_columns(path, names)


def batch_records(
    batch: Any, columns: Sequence[str], *, path: Path | str, first_row: int, max_text_bytes: int
) -> Iterator[tuple[str, Record]]:
    """``(where, record)`` of every row of a pyarrow record batch, rows numbered from ``first_row``."""
    with _as_invalid_argument():
        rows = list(files.batch_rows(batch, columns, path=path, first_row=first_row))
    for where, item in rows:
        yield where, record_from_mapping(item, where, max_text_bytes)


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
    with _as_invalid_argument():
        items = files.iter_mappings(path, batch_size)
    seen: dict[str, str] = {}
    batch: list[Record] = []
    while True:
        with _as_invalid_argument():
            nxt = next(items, None)
        if nxt is None:
            break
        where, item = nxt
        record = record_from_mapping(item, where, max_text_bytes)
        first = seen.setdefault(record.id, where)
        if first != where:
            raise InvalidArgument(f"{where}: duplicate id {record.id!r} (first at {first})")
        batch.append(record)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
    LOG.debug("read %d records from %s", len(seen), path)
