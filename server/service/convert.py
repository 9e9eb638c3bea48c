"""Conversions between ``gotd.v1`` messages and the engine's proto-free types, with input checks."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

from gotd.cache.errors import InvalidArgument
from gotd.cache.records import Record, validate_name
from gotd.cache.store.core import PoolInfo, TargetSetInfo
from gotd.cache.store.idsets import IdSetInfo
from gotd.server.selection.costs import Cost
from gotd.server.selection.modes import Mode
from gotd.server.service.requests import (
    Progress,
    RankedBatch,
    ScoreParams,
    ScoreResult,
    SelectEvent,
    SelectParams,
    SolverParams,
    TargetInput,
)
from gotd.v1 import selection_pb2 as pb

_MODES = {
    pb.SELECTION_MODE_UNSPECIFIED: None,
    pb.SELECTION_MODE_AUTO: Mode.AUTO,
    pb.SELECTION_MODE_EXACT: Mode.EXACT,
    pb.SELECTION_MODE_GLOBAL: Mode.GLOBAL,
    pb.SELECTION_MODE_PAPER: Mode.PAPER,
}
_COSTS = {pb.COST_UNSPECIFIED: None, pb.COST_EMBEDDING: Cost.EMBEDDING, pb.COST_FUSED: Cost.FUSED}


def record(message: pb.Record, *, max_text_bytes: int) -> Record:
    """One wire record as a validated :class:`Record`."""
    text = message.text if message.HasField("text") else None
    if text is not None and len(text.encode("utf-8", "surrogatepass")) > max_text_bytes:
        raise InvalidArgument(f"record {message.id!r}: text is over {max_text_bytes} bytes")
    embedding = np.asarray(message.embedding, dtype=np.float32) if len(message.embedding) else None
    meta = None
    if message.meta_json:
        try:
            meta = json.loads(message.meta_json)
        except json.JSONDecodeError as err:
            raise InvalidArgument(f"record {message.id!r}: meta_json is not valid JSON ({err.msg})") from None
        except RecursionError:
            raise InvalidArgument(f"record {message.id!r}: meta_json is nested too deeply") from None
    return Record.create(id=message.id, text=text, embedding=embedding, domain=message.domain, meta=meta)


def records(messages: Iterable[pb.Record], *, max_text_bytes: int) -> list[Record]:
    """Wire records as validated records (unique ids are checked by the consumer)."""
    return [record(m, max_text_bytes=max_text_bytes) for m in messages]


def solver(mode: int, options: pb.SolverOptions) -> SolverParams:
    """Solver parameters; range checks happen in the engine's configuration."""
    if mode not in _MODES:
        raise InvalidArgument(f"unknown selection mode {mode}")
    if options.cost not in _COSTS:
        raise InvalidArgument(f"unknown cost {options.cost}")
    return SolverParams(
        mode=_MODES[mode],  # type: ignore[index]
        eps=options.epsilon if options.HasField("epsilon") else None,
        tol=options.tolerance if options.HasField("tolerance") else None,
        max_iter=options.max_iterations if options.HasField("max_iterations") else None,
        summary_size=options.summary_size if options.HasField("summary_size") else None,
        paper_domains=options.paper_domains if options.HasField("paper_domains") else None,
        cost=_COSTS[options.cost],
        embedding_weight=options.embedding_weight if options.HasField("embedding_weight") else None,
        relative_eps=options.relative_epsilon if options.HasField("relative_epsilon") else None,
        max_staleness=options.max_staleness if options.HasField("max_staleness") else None,
    )


def target(spec: pb.TargetSpec, *, max_text_bytes: int) -> TargetInput:
    """The target of a request: a stored set's name or inline records."""
    which = spec.WhichOneof("source")
    if which == "target_set":
        if not spec.target_set:
            raise InvalidArgument("target.target_set must not be empty")
        return TargetInput(name=spec.target_set)
    if which == "records":
        return TargetInput(records=tuple(records(spec.records.records, max_text_bytes=max_text_bytes)))
    raise InvalidArgument("target is required: a target_set name or inline records")


def select_params(request: pb.SelectRequest, *, max_text_bytes: int) -> SelectParams:
    """A Select request as engine parameters."""
    if not request.pool:
        raise InvalidArgument("pool is required")
    return SelectParams(
        pool=request.pool,
        target=target(request.target, max_text_bytes=max_text_bytes),
        k=request.k,
        solver=solver(request.mode, request.solver),
        exclude_ids=frozenset(request.exclude_ids),
        domains=tuple(dict.fromkeys(request.domains)),
        batch_size=request.batch_size,
        include_metadata=request.include_metadata,
        near_duplicate_cosine=(
            request.near_duplicate_cosine if request.HasField("near_duplicate_cosine") else None
        ),
        near_copy_cosine=request.near_copy_cosine if request.HasField("near_copy_cosine") else None,
        report_near_copies=request.report_near_copies,
        exclude_set=request.exclude_set and validate_name(request.exclude_set, kind="exclude_set"),
        record_into=request.record_into and validate_name(request.record_into, kind="record_into"),
    )


def score_params(request: pb.ScoreRequest, *, max_text_bytes: int) -> ScoreParams:
    """A Score request as engine parameters."""
    if not request.pool:
        raise InvalidArgument("pool is required")
    return ScoreParams(
        pool=request.pool,
        target=target(request.target, max_text_bytes=max_text_bytes),
        ids=tuple(request.ids),
        solver=solver(request.mode, request.solver),
    )


def select_event(event: SelectEvent) -> pb.SelectResponse:
    """One engine event as a stream message."""
    if isinstance(event, Progress):
        return pb.SelectResponse(
            progress=pb.Progress(stage=int(event.stage), done=event.done, total=event.total)  # type: ignore[arg-type]
        )
    if isinstance(event, RankedBatch):
        return pb.SelectResponse(batch=ranked_batch(event))
    return pb.SelectResponse(summary=event.to_pb())


def ranked_batch(batch: RankedBatch) -> pb.RankedBatch:
    """A batch of ranked candidates, built from its columns (domain and metadata set when it has them)."""
    if batch.domains or batch.meta_json:
        return pb.RankedBatch(candidates=[c.to_pb() for c in batch.candidates])
    out = pb.RankedBatch()
    add = out.candidates.add  # built in place: no message built apart and copied in
    ranks = range(batch.first_rank, batch.first_rank + len(batch.ids))
    for i, s, r in zip(batch.ids, batch.scores, ranks, strict=True):
        add(id=i, score=s, rank=r)
    return out


def score_result(result: ScoreResult) -> pb.ScoreResponse:
    """Scores in request order."""
    e = result.epoch
    return pb.ScoreResponse(
        scores=[pb.ScoredCandidate(id=cid, score=value) for cid, value in result.scores],
        pool_version=result.pool_version,
        cache_hit=result.cache_hit,
        epoch=pb.Epoch(
            pool_version=e.pool_version, rows_scored=e.rows_scored, staleness=e.staleness, solved=e.solved
        ),
        validation=None if result.validation is None else result.validation.to_pb(),
    )


def pool_info(info: PoolInfo) -> pb.PoolInfo:
    """A pool's description."""
    return pb.PoolInfo(name=info.name, count=info.live, version=info.version, model=info.model, dim=info.dim)


def id_set_info(info: IdSetInfo) -> pb.IdSetInfo:
    """An id set's description."""
    return pb.IdSetInfo(pool=info.pool, name=info.name, count=info.count)


def target_set_info(info: TargetSetInfo) -> pb.TargetSetInfo:
    """A target set's description."""
    return pb.TargetSetInfo(
        name=info.name, count=info.count, model=info.model, dim=info.dim, content_hash=info.content_hash
    )
