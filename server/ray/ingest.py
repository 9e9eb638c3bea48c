"""Distributed ingest on Ray Data: read and validate in parallel, embed on an actor pool, one writer.

Pipeline: :mod:`gotd.server.ray.records` read tasks (validated records, JSONL byte ranges or Parquet
row groups) → ``map_batches`` on an actor pool of :class:`Encoder` (each actor loads the encoder once;
CPU or GPU) → the driver, the store's single writer, upserts the embedded records in batches of
``batch_size``, in file order.

Why a failure never duplicates rows: Ray restarts a dead encoder actor and re-runs its batch; only
the successful attempt's output reaches the driver, and the driver writes by id (an upsert of an id
that is stored with the same content changes nothing), so a batch delivered twice, a retried task or
a re-run of the whole file leaves one row per id. Texts stored under the same id with the same text
keep their stored vector, as in the local ingest.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gotd.cache.errors import FailedPrecondition, GotdError, InvalidArgument, NotFound
from gotd.cache.records import DEFAULT_MAX_TEXT_BYTES, Record, validate_name
from gotd.cache.store.core import Store
from gotd.server.ingest.pipeline import IngestSummary
from gotd.server.ray.records import plan_pieces, record_source
from gotd.server.ray.runtime import init_ray, require_ray

__all__ = ["Encoder", "ray_ingest"]

LOG = logging.getLogger(__name__)


class Encoder:
    """The map function of the actor pool: embeds the text-only rows of a batch.

    Adds the columns ``vector`` (list<float32>, null where the record brought an embedding),
    ``model`` and ``model_dim`` (the encoder's space).
    """

    def __init__(self, model_path: str | None, batch_size: int, device: str | None, threads: int) -> None:
        import torch

        from gotd.server.ingest.embedder import Embedder

        torch.set_num_threads(threads)
        self.embedder = Embedder(model_path, device=device, batch_size=batch_size)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from gotd.server.ingest.embedder import embed_counting

        needs = batch.column("embedding").is_null().to_pylist()
        texts = batch.column("text").to_pylist()
        todo = [i for i, need in enumerate(needs) if need]
        vectors: list[Any] = [None] * batch.num_rows
        if todo:
            fresh, _ = embed_counting(self.embedder, None, [str(texts[i]) for i in todo])
            for j, i in enumerate(todo):
                vectors[i] = fresh[j]
        batch = batch.append_column("vector", pa.array(vectors, type=pa.list_(pa.float32())))
        batch = batch.append_column("model", pa.array([self.embedder.model_id] * batch.num_rows, pa.string()))
        return batch.append_column("model_dim", pa.array([self.embedder.dim] * batch.num_rows, pa.int32()))


@dataclass(slots=True)
class _Writer:
    """The single writer: model/dimension checks as the local ingest, stored-vector reuse, upsert."""

    store: Store
    pool: str
    seen: dict[str, str] = field(default_factory=dict)
    totals: dict[str, int] = field(
        default_factory=lambda: {"inserted": 0, "updated": 0, "unchanged": 0, "embedded": 0}
    )
    batches: int = 0
    version: int = 0

    def write(self, table: Any) -> int:
        ids = table.column("id").to_pylist()
        wheres = table.column("where").to_pylist()
        for rid, where in zip(ids, wheres, strict=True):
            first = self.seen.get(rid)
            if first is not None:
                raise InvalidArgument(f"{where}: duplicate id {rid!r} (first at {first})")
            self.seen[rid] = where
        texts = table.column("text").to_pylist()
        given, given_len = _lists(table.column("embedding"))
        encoded, _ = _lists(table.column("vector"))
        model, dim = self._space(table, ids, given, given_len, encoded)
        wrong = np.flatnonzero(given & (given_len != dim))
        if len(wrong):
            rid = ids[int(wrong[0])]
            raise FailedPrecondition(
                f"pool {self.pool!r}: record {rid!r} has an embedding of dimension "
                f"{int(given_len[wrong[0]])}, the pool's model ({model}) has {dim}"
            )
        vectors = np.empty((len(ids), dim), dtype=np.float32)
        vectors[given] = _values(table.column("embedding"), dim)
        vectors[encoded] = _values(table.column("vector"), dim)
        domains = table.column("domain").to_pylist()
        metas = table.column("meta_json").to_pylist()
        records = [
            Record(rid, texts[i], vectors[i] if given[i] else None, domains[i] or "", json.loads(metas[i]))
            for i, rid in enumerate(ids)
        ]
        self._reuse_stored(ids, texts, encoded, vectors)
        result = self.store.upsert(self.pool, records, model=model, dim=dim, vectors=vectors)
        self.batches += 1
        self.version = result.version
        self.totals["inserted"] += result.inserted
        self.totals["updated"] += result.updated
        self.totals["unchanged"] += result.unchanged
        self.totals["embedded"] += int(encoded.sum())
        return len(ids)

    def _space(
        self, table: Any, ids: list[str], given: np.ndarray, given_len: np.ndarray, encoded: np.ndarray
    ) -> tuple[str, int]:
        """As :meth:`gotd.server.ingest.pipeline.Ingestor._space`, with the encoder's space from the batch."""
        enc_model = str(table.column("model")[0].as_py())
        enc_dim = int(table.column("model_dim")[0].as_py())
        try:
            info = self.store.get_pool(self.pool)
        except NotFound:
            info = None
        if info is not None:
            if encoded.any() and (info.model, info.dim) != (enc_model, enc_dim):
                rid = ids[int(np.flatnonzero(encoded)[0])]
                raise FailedPrecondition(
                    f"pool {self.pool!r} holds {info.model} embeddings (dim {info.dim}) but record {rid!r} "
                    f"has only a text and this ingest embeds with {enc_model}; send embeddings instead"
                )
            return info.model, info.dim
        if encoded.any() or not given.any():
            return enc_model, enc_dim
        first = int(given_len[np.flatnonzero(given)[0]])
        return (enc_model, enc_dim) if first == enc_dim else (f"external-{first}d", first)

    def _reuse_stored(
        self, ids: list[str], texts: list[Any], encoded: np.ndarray, vectors: np.ndarray
    ) -> None:
        """Keep the stored vector of a text-only record whose stored text is the same (idempotent re-runs)."""
        todo = np.flatnonzero(encoded).tolist()
        if not todo:
            return
        try:
            stored = self.store.get_records(self.pool, [ids[i] for i in todo])
        except NotFound:
            return
        for i in todo:
            old = stored.get(ids[i])
            if old is not None and old.text == texts[i] and old.vector.shape == vectors[i].shape:
                vectors[i] = old.vector


def ray_ingest(
    path: Path | str,
    store: Store,
    *,
    pool: str,
    model_path: str | None = None,
    batch_size: int = 256,
    ray_address: str | None = None,
    actors: int = 2,
    progress: bool = True,
    device: str | None = None,
    encode_batch_size: int = 256,
    read_tasks: int | None = None,
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
    encoder: type[Encoder] = Encoder,
) -> IngestSummary:
    """Ingest a JSONL or Parquet record file into ``store`` with Ray Data.

    Parameters
    ----------
    path : Path or str
        Record file (same schema as :func:`gotd.cache.record_files.read_records`), visible to every node
        that runs a read task.
    store : Store
        The store; only this process writes to it.
    pool : str
        Pool name.
    model_path : str or None
        Local sentence-transformers model for the encoder actors (None: all-MiniLM-L6-v2).
    batch_size : int
        Records per store transaction.
    ray_address : str or None
        Ray cluster to use; None starts a local Ray (shut down afterwards) unless one is running.
    actors : int
        Encoder actors (one CPU, or one GPU when ``device`` is CUDA, each).
    progress : bool
        Progress bar on stderr.
    device : str or None
        Encoder device (None: CUDA when the actor sees one, else CPU).
    encode_batch_size : int
        Records per ``map_batches`` call (the unit Ray retries).
    read_tasks : int or None
        Read tasks (default ``4 * actors``).
    encoder : type
        The actor class (a subclass may add behaviour, e.g. fault injection in tests).

    Returns
    -------
    IngestSummary
        Totals; ``embedded`` counts records embedded by the actors.

    Raises
    ------
    ImportError
        Before any work, when Ray is not installed (naming ``gotd[ray]``).
    InvalidArgument, FailedPrecondition
        As the local ingest (bad file, bad record naming ``file:line``, duplicate id, model mismatch);
        batches written before the error stay written and re-running is idempotent.
    """
    ray = require_ray()
    validate_name(pool, kind="pool")
    if batch_size < 1 or actors < 1 or encode_batch_size < 1:
        raise InvalidArgument("batch_size, actors and encode_batch_size must be >= 1")
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    started = time.perf_counter()
    pieces, estimate = plan_pieces(path, read_tasks or 4 * actors)
    owns = init_ray(ray_address)
    gpu = device is not None and device.startswith("cuda")
    writer = _Writer(store, pool)
    context = ray.data.DataContext.get_current()
    keep_order, keep_progress = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True  # rows land in file order, as in the local ingest
    context.enable_progress_bars = False
    try:
        dataset = ray.data.read_datasource(
            record_source(path, pieces, estimate, max_text_bytes), override_num_blocks=len(pieces), num_cpus=0
        ).map_batches(
            encoder,
            fn_constructor_kwargs={
                "model_path": model_path,
                "batch_size": 64,
                "device": device,
                "threads": 1,
            },
            batch_size=encode_batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=0 if gpu else 1,
            num_gpus=1 if gpu else 0,
        )
        _drain(dataset, writer, pool, estimate, batch_size, progress)
    finally:
        context.execution_options.preserve_order = keep_order
        context.enable_progress_bars = keep_progress
        if owns:
            ray.shutdown()
    if writer.batches == 0:
        raise InvalidArgument(f"{path}: holds no records")
    summary = IngestSummary(
        pool=pool,
        batches=writer.batches,
        version=writer.version,
        seconds=time.perf_counter() - started,
        **writer.totals,
    )
    LOG.info(
        "ray-ingested %s into %s: %d records in %d batches (%d new, %d updated, %d embedded) in %.1f s",
        path,
        pool,
        summary.records,
        summary.batches,
        summary.inserted,
        summary.updated,
        summary.embedded,
        summary.seconds,
    )
    return summary


def _drain(dataset: Any, writer: _Writer, pool: str, estimate: int, batch_size: int, progress: bool) -> None:
    """Write the dataset's batches as they arrive; a worker's GotdError surfaces as itself."""
    from tqdm import tqdm

    with tqdm(
        desc=f"ingest {pool} (ray)", total=estimate or None, unit="rec", file=sys.stderr, disable=not progress
    ) as bar:
        try:
            for table in dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
                bar.update(writer.write(table))
        except Exception as err:
            if isinstance(err, GotdError) and type(err).__module__.startswith("gotd."):
                raise  # the writer's own (duplicate id, model mismatch)
            cause = _gotd_cause(err)
            if cause is None:
                raise
            raise cause from None


def _gotd_cause(err: BaseException) -> GotdError | None:
    """The worker's GotdError inside Ray's wrappers, re-made as a plain instance of its own class."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, GotdError):
            # Ray re-raises a task's exception as a subclass of both RayTaskError and its class.
            kind = next(
                c for c in type(current).__mro__ if issubclass(c, GotdError) and "Ray" not in c.__name__
            )
            return kind(current.message)
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__ or current.__context__
    return None


def _lists(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of a list column are present, and their lengths."""
    array = column.combine_chunks()
    present = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = np.asarray(array.value_lengths().fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return present, lengths


def _values(column: Any, dim: int) -> np.ndarray:
    """The present rows of a list<float32> column as a ``(count, dim)`` matrix."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
