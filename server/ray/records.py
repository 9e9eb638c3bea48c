"""Record files as a Ray Data source: JSONL split by byte ranges, Parquet by row groups.

Each read task validates its records with the same rules as :func:`gotd.cache.record_files.read_records`
(messages name ``file:line`` or ``file:row i``) and yields Arrow tables with the columns of
:data:`SCHEMA`. Every node that runs a read task must see the file at the same path.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from gotd.cache.errors import InvalidArgument
from gotd.cache.record_files import batch_records, line_record, parquet_columns
from gotd.cache.records import DEFAULT_MAX_TEXT_BYTES, Record

__all__ = ["SCHEMA", "Piece", "plan_pieces", "read_piece", "record_source"]

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("domain", pa.string()),
        ("meta_json", pa.string()),
        ("where", pa.string()),
    ]
)
_SCAN = 16 << 20
_ROWS_PER_TABLE = 1024


@dataclass(frozen=True, slots=True)
class Piece:
    """A part of a record file: bytes ``[start, stop)`` from line ``first`` (JSONL), or row groups."""

    start: int
    stop: int
    first: int
    row_groups: tuple[int, ...] = ()
    records: int = 0


def plan_pieces(path: Path, pieces: int) -> tuple[list[Piece], int]:
    """Split ``path`` into about ``pieces`` parts at record boundaries; also return the records."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _plan_jsonl(path, pieces)
    if suffix in (".parquet", ".pq"):
        return _plan_parquet(path, pieces)
    raise InvalidArgument(f"{path}: unknown record file type {suffix!r} (use .jsonl or .parquet)")


def _plan_jsonl(path: Path, pieces: int) -> tuple[list[Piece], int]:
    """Byte ranges that start at line starts, with their first line numbers (one scan of the file)."""
    size = path.stat().st_size
    step = max(1, -(-size // max(1, pieces)))
    cuts = [(0, 1)]
    lines, offset, want = 0, 0, step
    last_newline_at_end = True
    with path.open("rb") as handle:
        while chunk := handle.read(_SCAN):
            while want < offset + len(chunk):
                at = chunk.find(b"\n", max(0, want - 1 - offset))
                if at < 0:
                    break
                cut = offset + at + 1
                if cut < size:
                    cuts.append((cut, lines + chunk.count(b"\n", 0, at + 1) + 1))
                want = max(want + step, cut + 1)
            lines += chunk.count(b"\n")
            last_newline_at_end = chunk.endswith(b"\n")
            offset += len(chunk)
    records = lines + (0 if last_newline_at_end or size == 0 else 1)
    bounds = [*cuts, (size, 0)]
    out = [Piece(a, b, line) for (a, line), (b, _) in itertools.pairwise(bounds) if b > a]
    return out or [Piece(0, 0, 1)], records


def _plan_parquet(path: Path, pieces: int) -> tuple[list[Piece], int]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as err:  # pyarrow raises several types for a bad file
        raise InvalidArgument(f"{path}: not a readable Parquet file ({err})") from None
    groups = meta.num_row_groups
    count = max(1, min(pieces, groups))
    out: list[Piece] = []
    first = 0
    for i in range(count):
        chosen = tuple(range(groups * i // count, groups * (i + 1) // count))
        rows = sum(meta.row_group(g).num_rows for g in chosen)
        out.append(Piece(0, 0, first, chosen, rows))
        first += rows
    return out, first


def read_piece(path: Path, piece: Piece, max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> Iterator[pa.Table]:
    """The validated records of one piece as Arrow tables of :data:`SCHEMA`."""
    rows: list[tuple[str, Record]] = []
    source = (
        _parquet_rows(path, piece, max_text_bytes)
        if piece.row_groups
        else _jsonl_rows(path, piece, max_text_bytes)
    )
    for item in source:
        rows.append(item)
        if len(rows) >= _ROWS_PER_TABLE:
            yield _table(rows)
            rows = []
    if rows:
        yield _table(rows)


def _jsonl_rows(path: Path, piece: Piece, max_text_bytes: int) -> Iterator[tuple[str, Record]]:
    with path.open("rb") as handle:
        handle.seek(piece.start)
        offset, lineno = piece.start, piece.first
        while offset < piece.stop:
            raw = handle.readline()
            if not raw:
                break
            where = f"{path}:{lineno}"
            offset += len(raw)
            lineno += 1
            record = line_record(raw, where, max_text_bytes)
            if record is not None:
                yield where, record


def _parquet_rows(path: Path, piece: Piece, max_text_bytes: int) -> Iterator[tuple[str, Record]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet_columns(path, parquet.schema_arrow.names)
    row = piece.first
    for batch in parquet.iter_batches(row_groups=list(piece.row_groups), columns=columns):
        yield from batch_records(batch, columns, path=path, first_row=row, max_text_bytes=max_text_bytes)
        row += batch.num_rows


def _table(rows: list[tuple[str, Record]]) -> pa.Table:
    records = [r for _, r in rows]
    return pa.table(
        {
            "id": [r.id for r in records],
            "text": [r.text for r in records],
            "embedding": [None if r.embedding is None else r.embedding for r in records],
            "domain": [r.domain for r in records],
            "meta_json": [r.meta_json for r in records],
            "where": [w for w, _ in rows],
        },
        schema=SCHEMA,
    )


def record_source(path: Path, pieces: list[Piece], records: int, max_text_bytes: int) -> Any:
    """A ``ray.data.Datasource`` with one read task per piece (built here so Ray is imported lazily)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class RecordFileDatasource(Datasource):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]

        def estimate_inmemory_data_size(self) -> int | None:
            return int(path.stat().st_size)

        def get_read_tasks(
            self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
        ) -> list[Any]:
            tasks = []
            for piece in pieces:
                size = piece.stop - piece.start if not piece.row_groups else 0
                meta = BlockMetadata(
                    num_rows=piece.records or None,
                    size_bytes=size or None,
                    input_files=(str(path),),
                    exec_stats=None,
                )
                tasks.append(
                    ReadTask(
                        functools.partial(read_piece, path, piece, max_text_bytes),
                        meta,
                        schema=SCHEMA,
                        per_task_row_limit=per_task_row_limit,
                    )
                )
            return tasks

        def get_name(self) -> str:
            return "GotdRecords"

    return RecordFileDatasource()
