"""Target sets: turn a named set or inline records into unit vectors in the pool's embedding space."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xxhash

from gotd.cache.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from gotd.cache.records import Record, validate_name
from gotd.cache.store.core import PoolInfo, Store, TargetSetInfo
from gotd.cache.store.embeddings import EmbeddingCache
from gotd.server.ingest.embedder import Embedder, embed_with_cache
from gotd.server.selection.sketches import tf_rows
from gotd.server.service.requests import Progress, Stage, TargetInput


@dataclass(frozen=True, slots=True)
class Target:
    """Resolved target set: ``vectors`` (m, d) float32 unit rows and their content hash.

    :attr:`sketches` (m, buckets) float16 holds the n-gram sketch rows of the targets sent as text
    (zero rows for targets sent as embeddings only), or None when no target has one. Stored sets
    bring theirs (``stored_sketches``); inline texts are sketched on first use only, so a request with
    the embedding cost never pays for it.
    """

    ids: tuple[str, ...]
    vectors: torch.Tensor
    content_hash: str
    stored_sketches: np.ndarray | None = None
    texts: tuple[str | None, ...] = ()
    _memo: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sketches(self) -> np.ndarray | None:
        if self.stored_sketches is not None or not any(self.texts):
            return self.stored_sketches
        if "tf" not in self._memo:
            self._memo["tf"] = tf_rows(self.texts)
        return self._memo["tf"]

    @property
    def count(self) -> int:
        return len(self.ids)


def content_hash(model: str, vectors: np.ndarray) -> str:
    """Hash of the model id and the float32 vectors: names a target set in cache keys."""
    h = xxhash.xxh3_128()
    h.update(model.encode())
    h.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    return h.hexdigest()


class TargetResolver:
    """Embeds and validates targets; stores and reads named target sets."""

    def __init__(self, store: Store, embedder: Embedder, cache: EmbeddingCache, *, max_targets: int) -> None:
        self._store = store
        self._embedder = embedder
        self._cache = cache
        self._max_targets = max_targets

    def resolve(self, spec: TargetInput, pool: PoolInfo, emit: Callable[[Any], None]) -> Target:
        """The target of a request, checked against ``pool``'s model and dimension."""
        if spec.name is not None:
            info, ids, vectors = self._store.get_target_set(spec.name)
            if info.model != pool.model or info.dim != pool.dim:
                raise FailedPrecondition(
                    f"target set {spec.name!r} was embedded with {info.model} (dim {info.dim}) but pool "
                    f"{pool.name!r} uses {pool.model} (dim {pool.dim})"
                )
            return Target(
                tuple(ids),
                torch.from_numpy(np.asarray(vectors, dtype=np.float32)),
                info.content_hash,
                self._store.get_target_sketches(spec.name),
            )
        names, matrix = self.embed_records(spec.records, model=pool.model, dim=pool.dim, emit=emit)
        texts = tuple(r.text for r in spec.records)
        return Target(names, torch.from_numpy(matrix), content_hash(pool.model, matrix), texts=texts)

    def embed_records(
        self,
        records: Sequence[Record],
        *,
        model: str,
        dim: int,
        emit: Callable[[Any], None] = lambda _e: None,
    ) -> tuple[tuple[str, ...], np.ndarray]:
        """Unit vectors (m, d) float32 of target records (texts embedded through the cache)."""
        if not records:
            raise InvalidArgument("the target set is empty")
        if len(records) > self._max_targets:
            raise ResourceExhausted(f"{len(records)} targets exceed the limit of {self._max_targets}")
        seen: set[str] = set()
        for record in records:
            if record.id in seen:
                raise InvalidArgument(f"duplicate target id {record.id!r}")
            seen.add(record.id)
        vectors = np.empty((len(records), dim), dtype=np.float32)
        to_embed = [i for i, r in enumerate(records) if r.embedding is None]
        for i, record in enumerate(records):
            if record.embedding is not None:
                if record.embedding.shape != (dim,):
                    raise FailedPrecondition(
                        f"target {record.id!r}: embedding has dimension {record.embedding.shape[-1]}, "
                        f"the pool's model has {dim}"
                    )
                vectors[i] = record.embedding
        if to_embed:
            if model != self._embedder.model_id or dim != self._embedder.dim:
                raise FailedPrecondition(
                    f"target texts would be embedded with {self._embedder.model_id} but the pool uses "
                    f"{model} (dim {dim}); send embeddings instead"
                )
            emit(Progress(Stage.EMBED, 0, len(to_embed)))
            texts = [str(records[i].text) for i in to_embed]
            vectors[to_embed] = embed_with_cache(self._embedder, self._cache, texts)
            emit(Progress(Stage.EMBED, len(to_embed), len(to_embed)))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
            raise InvalidArgument("target embeddings must be finite and non-zero")
        vectors /= norms
        return tuple(r.id for r in records), vectors

    def put(self, name: str, records: Sequence[Record]) -> TargetSetInfo:
        """Embed and store a named target set in the server's model space."""
        validate_name(name)
        ids, vectors = self.embed_records(records, model=self._embedder.model_id, dim=self._embedder.dim)
        return self._store.put_target_set(
            name,
            list(ids),
            vectors,
            model=self._embedder.model_id,
            dim=self._embedder.dim,
            texts=[r.text for r in records],
        )
