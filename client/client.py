"""Typed Python client of the gotd service. Needs only grpc and the ``gotd.v1`` contract.

Retries are declarative (gRPC service config): only UNAVAILABLE, with capped exponential backoff.
That is safe for every RPC: selection is deterministic and ingest is an idempotent upsert.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from gotd.client.types import (
    DeleteResult,
    IdSetInfo,
    IdSetPage,
    IngestResult,
    PoolInfo,
    RankedCandidate,
    ScoredCandidate,
    SelectEvent,
    SelectProgress,
    SelectSummary,
    SolverOptions,
    TargetSetInfo,
)
from gotd.v1 import selection_pb2 as pb
from gotd.v1 import selection_pb2_grpc as pb_grpc

_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "gotd.v1.SelectionService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "3s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
Targets = str | Sequence[str] | Sequence[Mapping[str, Any]] | Sequence[Sequence[float]]


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS for the channel: server CA bundle, and a client certificate for mTLS."""

    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read_optional(self.ca_cert),
            private_key=_read_optional(self.client_key),
            certificate_chain=_read_optional(self.client_cert),
        )


def _read_optional(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


def to_record(item: Mapping[str, Any] | str, default_id: str) -> pb.Record:
    """A record mapping ``{"id", "text"?, "embedding"?, "domain"?, "meta"?}`` (or a bare text)."""
    if isinstance(item, str):
        return pb.Record(id=default_id, text=item)
    meta = item.get("meta")
    message = pb.Record(
        id=str(item.get("id", default_id)),
        domain=str(item.get("domain") or ""),
        meta_json=json.dumps(meta) if meta is not None else "",
    )
    if item.get("text") is not None:
        message.text = str(item["text"])
    embedding = item.get("embedding")
    if embedding is not None:
        message.embedding.extend(embedding.tolist() if hasattr(embedding, "tolist") else embedding)
    return message


def target_spec(targets: Targets) -> pb.TargetSpec:
    """A target set name, texts, record mappings or embedding vectors as a ``TargetSpec``."""
    if isinstance(targets, str):
        return pb.TargetSpec(target_set=targets)
    out = []
    for i, item in enumerate(targets):
        if isinstance(item, str | Mapping):
            out.append(to_record(item, f"t{i}"))
        else:
            values = item.tolist() if hasattr(item, "tolist") else item
            out.append(pb.Record(id=f"t{i}", embedding=values))  # type: ignore[arg-type]
    return pb.TargetSpec(records=pb.TargetRecords(records=out))


class Client:
    """Synchronous client. ``timeout`` (seconds) is the default deadline of every call."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls: TlsConfig | None = None,
        timeout: float = 600.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        options = [
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, tls.credentials(), options=options)
        self._stub = pb_grpc.SelectionServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _kw(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}

    def ingest(
        self,
        pool: str,
        records: Iterable[Mapping[str, Any]],
        *,
        batch_size: int = 256,
        timeout: float | None = None,
    ) -> IngestResult:
        """Upsert records into ``pool`` in batches (one atomic batch per message)."""

        def batches() -> Iterator[pb.IngestRequest]:
            batch: list[pb.Record] = []
            for i, item in enumerate(records):
                batch.append(to_record(item, str(i)))
                if len(batch) >= batch_size:
                    yield pb.IngestRequest(pool=pool, records=batch)
                    batch = []
            if batch:
                yield pb.IngestRequest(pool=pool, records=batch)

        response = self._stub.Ingest(batches(), **self._kw(timeout))
        return IngestResult.from_pb(response)

    def select_stream(
        self,
        pool: str,
        targets: Targets,
        *,
        k: int,
        solver: SolverOptions | None = None,
        exclude_ids: Sequence[str] = (),
        exclude_set: str = "",
        record_into: str = "",
        domains: Sequence[str] = (),
        near_duplicate_cosine: float | None = None,
        near_copy_cosine: float | None = None,
        report_near_copies: bool = False,
        batch_size: int = 0,
        include_metadata: bool = False,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[SelectEvent]:
        """Stream of progress, ranked candidates (one per item, in rank order) and the summary.

        The solver is ``solver`` with any :class:`~gotd.client.types.SolverOptions` field given as a
        keyword (``mode``, ``eps``, ``cost``, ``max_staleness``, ...) put over it.
        ``near_duplicate_cosine`` drops candidates that close to a target; ``near_copy_cosine`` skips
        candidates that close to one already returned (None: the server's default, 0: off), and
        ``report_near_copies`` lists them in the summary.
        ``exclude_set`` names an id set of the pool whose ids are not returned; ``record_into`` one
        that the returned ids are added to once the whole ranking was sent (nothing when the call
        fails first; the summary's ``recorded`` counts the new ids).
        """
        chosen = _solver(solver, options)
        request = pb.SelectRequest(
            pool=pool,
            target=target_spec(targets),
            k=k,
            mode=chosen.mode_pb,
            solver=chosen.to_pb(),
            exclude_ids=list(exclude_ids),
            exclude_set=exclude_set,
            record_into=record_into,
            domains=list(domains),
            batch_size=batch_size,
            include_metadata=include_metadata,
            near_duplicate_cosine=near_duplicate_cosine,
            near_copy_cosine=near_copy_cosine,
            report_near_copies=report_near_copies,
        )
        for message in self._stub.Select(request, **self._kw(timeout)):
            which = message.WhichOneof("message")
            if which == "progress":
                yield SelectProgress.from_pb(message.progress)
            elif which == "batch":
                yield from (RankedCandidate.from_pb(c) for c in message.batch.candidates)
            elif which == "summary":
                yield SelectSummary.from_pb(message.summary)

    def select(
        self, pool: str, targets: Targets, *, k: int, **kwargs: Any
    ) -> tuple[list[RankedCandidate], SelectSummary]:
        """The whole ranking and its summary (progress dropped)."""
        ranked: list[RankedCandidate] = []
        summary: SelectSummary | None = None
        for event in self.select_stream(pool, targets, k=k, **kwargs):
            if isinstance(event, RankedCandidate):
                ranked.append(event)
            elif isinstance(event, SelectSummary):
                summary = event
        if summary is None:
            raise RuntimeError("the Select stream ended without a summary")
        return ranked, summary

    def score(
        self,
        pool: str,
        targets: Targets,
        ids: Sequence[str],
        *,
        solver: SolverOptions | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> list[ScoredCandidate]:
        """Scores of the given candidate ids, in order (solver options as :meth:`select_stream`)."""
        chosen = _solver(solver, options)
        request = pb.ScoreRequest(
            pool=pool,
            target=target_spec(targets),
            ids=list(ids),
            mode=chosen.mode_pb,
            solver=chosen.to_pb(),
        )
        response = self._stub.Score(request, **self._kw(timeout))
        return [ScoredCandidate(s.id, s.score) for s in response.scores]

    def put_target_set(self, name: str, targets: Targets, *, timeout: float | None = None) -> TargetSetInfo:
        """Store a named target set (texts, record mappings or embeddings)."""
        spec = target_spec(targets)
        request = pb.PutTargetSetRequest(name=name, records=list(spec.records.records))
        return TargetSetInfo.from_pb(self._stub.PutTargetSet(request, **self._kw(timeout)).info)

    def get_target_set(self, name: str, *, timeout: float | None = None) -> tuple[TargetSetInfo, list[str]]:
        response = self._stub.GetTargetSet(pb.GetTargetSetRequest(name=name), **self._kw(timeout))
        return TargetSetInfo.from_pb(response.info), list(response.ids)

    def delete_target_set(self, name: str, *, timeout: float | None = None) -> None:
        self._stub.DeleteTargetSet(pb.DeleteTargetSetRequest(name=name), **self._kw(timeout))

    def pools(self, *, timeout: float | None = None) -> list[PoolInfo]:
        response = self._stub.ListPools(pb.ListPoolsRequest(), **self._kw(timeout))
        return [PoolInfo.from_pb(p) for p in response.pools]

    def pool(self, name: str, *, timeout: float | None = None) -> PoolInfo:
        return PoolInfo.from_pb(self._stub.GetPool(pb.GetPoolRequest(name=name), **self._kw(timeout)).info)

    def delete_pool(self, name: str, *, timeout: float | None = None) -> None:
        self._stub.DeletePool(pb.DeletePoolRequest(name=name), **self._kw(timeout))

    def delete_records(self, pool: str, ids: Iterable[str], *, timeout: float | None = None) -> DeleteResult:
        """Delete candidates from ``pool`` (one atomic batch); ids not in the pool are counted."""
        request = pb.DeleteRecordsRequest(pool=pool, ids=list(ids))
        return DeleteResult.from_pb(self._stub.DeleteRecords(request, **self._kw(timeout)))

    def put_id_set(
        self, pool: str, name: str, ids: Iterable[str], *, append: bool = False, timeout: float | None = None
    ) -> tuple[IdSetInfo, int]:
        """Store ``ids`` as the id set ``name`` of ``pool`` (or add them, ``append``); returns the set and
        the ids written that it did not hold."""
        request = pb.PutIdSetRequest(pool=pool, name=name, ids=list(ids), append=append)
        response = self._stub.PutIdSet(request, **self._kw(timeout))
        return IdSetInfo.from_pb(response.info), response.added

    def get_id_set(
        self, pool: str, name: str, *, page_size: int = 0, timeout: float | None = None
    ) -> tuple[IdSetInfo, list[str]]:
        """An id set and all its ids, sorted, read page by page (``page_size`` 0: the server's
        default; ``timeout`` per page). The set as of the last page; ids written while the pages are
        read are seen by the pages not read yet."""
        page = self.get_id_set_page(pool, name, page_size=page_size, timeout=timeout)
        ids = list(page.ids)
        while page.next_page_token:
            page = self.get_id_set_page(
                pool, name, page_size=page_size, page_token=page.next_page_token, timeout=timeout
            )
            ids.extend(page.ids)
        return page.info, ids

    def get_id_set_page(
        self, pool: str, name: str, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> IdSetPage:
        """One page of an id set's sorted ids (``page_token``: the previous page's next_page_token)."""
        request = pb.GetIdSetRequest(pool=pool, name=name, page_size=page_size, page_token=page_token)
        return IdSetPage.from_pb(self._stub.GetIdSet(request, **self._kw(timeout)))

    def delete_id_set(self, pool: str, name: str, *, timeout: float | None = None) -> None:
        self._stub.DeleteIdSet(pb.DeleteIdSetRequest(pool=pool, name=name), **self._kw(timeout))

    def id_sets(self, pool: str, *, timeout: float | None = None) -> list[IdSetInfo]:
        """The id sets of ``pool``, sorted by name."""
        response = self._stub.ListIdSets(pb.ListIdSetsRequest(pool=pool), **self._kw(timeout))
        return [IdSetInfo.from_pb(s) for s in response.sets]


def _solver(solver: SolverOptions | None, options: dict[str, Any]) -> SolverOptions:
    """``solver`` (default: the server's settings) with the keyword options put over it."""
    base = solver if solver is not None else SolverOptions()
    unknown = sorted(set(options) - set(SolverOptions.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(unknown)}")
    return replace(base, **options)
