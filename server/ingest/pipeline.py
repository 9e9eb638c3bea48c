"""The ingest pipeline: validate a batch, embed what needs embedding (through the cache), upsert it whole.

Per batch: every record is checked before anything is embedded or written; texts of records without
an embedding are embedded unless the store already holds the same text for that id (then its stored
vector is reused) or the embedding cache knows the text; the batch is then one store transaction.
A bad record anywhere in the batch means nothing of the batch is written.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gotd.cache.errors import FailedPrecondition, GotdError, InvalidArgument, NotFound
from gotd.cache.record_files import read_records
from gotd.cache.records import DEFAULT_MAX_TEXT_BYTES, Record, check_unique_ids, validate_name
from gotd.cache.store.core import PoolInfo, Store, UpsertResult
from gotd.cache.store.embeddings import EmbeddingCache
from gotd.server.ingest.embedder import Embedder, embed_counting

__all__ = ["IngestSummary", "Ingestor"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """Totals of a file ingest."""

    pool: str
    batches: int
    inserted: int
    updated: int
    unchanged: int
    embedded: int
    version: int
    seconds: float

    @property
    def records(self) -> int:
        return self.inserted + self.updated + self.unchanged


class Ingestor:
    """Turns records into stored unit vectors: validation, embedding with the cache, atomic upsert.

    Parameters
    ----------
    store : Store
        The candidate store.
    embedder : Embedder
        Encoder of texts; its ``model_id`` and ``dim`` name the space of pools it creates.
    embcache : EmbeddingCache or None
        Text-embedding cache (None disables it).
    """

    def __init__(self, store: Store, embedder: Embedder, embcache: EmbeddingCache | None) -> None:
        self.store = store
        self.embedder = embedder
        self.embcache = embcache

    def _space(self, pool: str, records: Sequence[Record]) -> tuple[str, int]:
        """Model id and dimension of the batch: the pool's, else the embedder's, else the vectors'."""
        try:
            info: PoolInfo | None = self.store.get_pool(pool)
        except NotFound:
            info = None
        if info is not None:
            return info.model, info.dim
        needs_encoder = any(r.embedding is None for r in records)
        first = next((r.embedding for r in records if r.embedding is not None), None)
        if needs_encoder or first is None or first.shape[0] == self.embedder.dim:
            return self.embedder.model_id, self.embedder.dim
        return f"external-{first.shape[0]}d", int(first.shape[0])

    def ingest_batch(self, pool: str, records: Sequence[Record]) -> UpsertResult:
        """Validate, embed and upsert one batch atomically.

        Returns
        -------
        UpsertResult
            Counts, the pool version after the batch, and ``embedded`` = texts sent to the encoder.

        Raises
        ------
        InvalidArgument
            Bad pool name, empty batch, duplicate ids (naming the id).
        FailedPrecondition
            An embedding's dimension or the encoder's model does not match the pool.
        """
        validate_name(pool, kind="pool")
        if not records:
            raise InvalidArgument(f"pool {pool!r}: an ingest batch needs at least one record")
        check_unique_ids(records)
        model, dim = self._space(pool, records)
        given = [r.embedding for r in records if r.embedding is not None and r.embedding.shape == (dim,)]
        if len(given) == len(records):  # all precomputed, right dimension: one stacked copy
            result = self.store.upsert(pool, records, model=model, dim=dim, vectors=np.stack(given))
            return replace(result, embedded=0)
        vectors = np.empty((len(records), dim), dtype=np.float32)
        to_embed: list[int] = []
        for i, record in enumerate(records):
            if record.embedding is None:
                to_embed.append(i)
            elif record.embedding.shape[0] != dim:
                raise FailedPrecondition(
                    f"pool {pool!r}: record {record.id!r} has an embedding of dimension "
                    f"{record.embedding.shape[0]}, the pool's model ({model}) has {dim}"
                )
            else:
                vectors[i] = record.embedding
        embedded = 0
        if to_embed:
            if model != self.embedder.model_id or dim != self.embedder.dim:
                first = records[to_embed[0]].id
                raise FailedPrecondition(
                    f"pool {pool!r} holds {model} embeddings (dim {dim}) but record {first!r} has only a "
                    f"text and this server embeds with {self.embedder.model_id}; send embeddings instead"
                )
            to_embed = self._reuse_stored(pool, records, to_embed, vectors)
        if to_embed:
            texts = [str(records[i].text) for i in to_embed]
            vectors[to_embed], embedded = embed_counting(self.embedder, self.embcache, texts)
        result = self.store.upsert(pool, records, model=model, dim=dim, vectors=vectors)
        return replace(result, embedded=embedded)

    def _reuse_stored(
        self, pool: str, records: Sequence[Record], todo: list[int], vectors: np.ndarray
    ) -> list[int]:
        """Fill the vectors of records whose stored text is the same; return the rest of ``todo``."""
        stored = self.store.get_records(pool, [records[i].id for i in todo])
        if not stored:
            return todo
        rest = []
        for i in todo:
            old = stored.get(records[i].id)
            if old is not None and old.text == records[i].text:
                vectors[i] = old.vector
            else:
                rest.append(i)
        return rest

    def prefetch(self, pool: str, records: Sequence[Record]) -> int:
        """Embed, into the cache, the texts of ``records`` that a later ingest would encode.

        One encoder call over a window of several batches sorts all their texts by length (less
        padding than batch by batch); the batches then find their texts in the cache. Texts the store
        already holds for the same id, or the cache knows, are skipped. Returns the texts encoded.
        """
        if self.embcache is None:
            return 0
        try:
            info: PoolInfo | None = self.store.get_pool(pool)
        except NotFound:
            info = None
        if info is not None and (info.model, info.dim) != (self.embedder.model_id, self.embedder.dim):
            return 0
        todo = [i for i, r in enumerate(records) if r.embedding is None and r.text is not None]
        if info is not None and todo:
            stored = self.store.get_records(pool, [records[i].id for i in todo])
            todo = [
                i for i in todo if (old := stored.get(records[i].id)) is None or old.text != records[i].text
            ]
        if not todo:
            return 0
        return embed_counting(self.embedder, self.embcache, [str(records[i].text) for i in todo])[1]

    def ingest_file(
        self,
        pool: str,
        path: Path | str,
        batch_size: int = 256,
        progress: bool = True,
        *,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        embed_window: int = 2048,
    ) -> IngestSummary:
        """Ingest a JSONL or Parquet record file in atomic batches, with a progress bar on stderr.

        Texts are embedded a window of about ``embed_window`` records ahead (see :meth:`prefetch`);
        each batch of ``batch_size`` records is still one transaction. A bad record stops the ingest
        with the batches before it committed (re-running the file after fixing it is idempotent).
        """
        from tqdm import tqdm

        validate_name(pool, kind="pool")
        started = time.perf_counter()
        totals = {"inserted": 0, "updated": 0, "unchanged": 0, "embedded": 0}
        batches = 0
        version = 0
        window: list[list[Record]] = []

        def flush() -> None:
            nonlocal batches, version
            if len(window) > 1:
                totals["embedded"] += self.prefetch(pool, [r for batch in window for r in batch])
            for batch in window:
                result = self.ingest_batch(pool, batch)
                batches += 1
                version = result.version
                for name in totals:
                    totals[name] += getattr(result, name)
                bar.update(len(batch))
            window.clear()

        with tqdm(desc=f"ingest {pool}", unit="rec", file=sys.stderr, disable=not progress) as bar:
            try:
                for batch in read_records(path, batch_size, max_text_bytes=max_text_bytes):
                    window.append(batch)
                    if sum(len(b) for b in window) >= embed_window:
                        flush()
            except GotdError:
                flush()  # the good batches read before the bad record are committed first
                raise
            flush()
        if batches == 0:
            raise InvalidArgument(f"{path}: holds no records")
        summary = IngestSummary(
            pool=pool, batches=batches, version=version, seconds=time.perf_counter() - started, **totals
        )
        LOG.info(
            "ingested %s into %s: %d records in %d batches (%d new, %d updated, %d embedded) in %.1f s",
            path,
            pool,
            summary.records,
            batches,
            summary.inserted,
            summary.updated,
            summary.embedded,
            summary.seconds,
        )
        return summary
