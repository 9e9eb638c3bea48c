"""The ``gotd`` command line: client commands here, server and lab commands dispatched by extra.

Client commands (``ingest``, ``select``, ``pools``; ``id-sets`` and ``delete-records`` from
:mod:`gotd.client.cli_manage`, the shared options in :mod:`gotd.client.cli_common`) run on the base
install: the contract, grpc, typer and tqdm. ``serve`` and ``sketch-backfill`` live in
:mod:`gotd.server.cli` (extra ``gotd[server]``), ``demo``, ``eval`` and ``bench`` in
:mod:`gotd.lab.cli` (extra ``gotd[lab]``); this module imports them only when such a command runs,
and says which extra to install when it is missing.

Every failure prints one line ``error: ...`` on stderr: ``error: STATUS_CODE_NAME: message`` for a
failed RPC (exit 1), ``error: message`` for a bad input file (exit 1); usage errors exit 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from tqdm import tqdm

from gotd.client import cli_manage
from gotd.client.cli_common import (
    Connection,
    InputError,
    connected,
    read_records,
    rpc,
)
from gotd.client.types import COSTS, MODES, RankedCandidate, SelectProgress, SelectSummary, SolverOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gotd: GOT-D data selection service")


def _read_all(path: Path, what: str) -> list[dict[str, Any]]:
    items = rpc(lambda: list(read_records(path)))
    if not items:
        typer.echo(f"error: {path}: no records ({what} needs at least one)", err=True)
        raise typer.Exit(1)
    return items


def _choice(value: str, choices: Mapping[str, object], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)
    return value


class _Progress:
    """Select progress on stderr: one tqdm bar per stage on a terminal, nothing when stderr is not one."""

    def __init__(self) -> None:
        self._stage = ""
        self._bar: tqdm[Any] | None = None

    def show(self, event: SelectProgress) -> None:
        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total or None, desc=event.stage, file=sys.stderr, disable=None)
        if self._bar is not None:
            self._bar.total = event.total or self._bar.total
            self._bar.update(event.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@app.command()
@connected(timeout=3600.0)
def ingest(
    file: Annotated[Path, typer.Argument(help="records: .jsonl or .parquet")],
    pool: Annotated[str, typer.Option(help="pool name")],
    batch_size: Annotated[int, typer.Option(help="records per atomic batch", min=1)] = 256,
    ray: Annotated[bool, typer.Option("--ray", help="embed on Ray into --data-dir (no server)")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster for --ray (default: local)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="store written by --ray")] = None,
    *,
    conn: Connection,
) -> None:
    """Upsert the records of FILE into a pool (through the server, or with --ray into a store)."""
    if ray:
        _extra_module("ingest --ray", "gotd.server.cli", "server").ingest_ray(
            file, pool, data_dir, batch_size, ray_address
        )
        return
    items = read_records(file)
    first = rpc(lambda: next(items, None))
    if first is None:
        typer.echo(f"error: {file}: no records to ingest", err=True)
        raise typer.Exit(1)

    failures: list[InputError] = []

    def records() -> Iterator[dict[str, Any]]:
        yield first
        sent = 1
        try:
            for item in items:
                yield item
                sent += 1
        except InputError as err:
            if sent >= batch_size:  # whole batches went out before the bad record
                err = InputError(
                    f"{err} (the batches before it, up to {sent - sent % batch_size} records, may have been "
                    "ingested; ingest is an idempotent upsert: fix the file and run it again)"
                )
            failures.append(err)
            raise err from None

    with conn.open() as client:
        shown = tqdm(records(), desc=f"ingest {pool}", unit="rec", file=sys.stderr, disable=None)
        result = rpc(lambda: client.ingest(pool, shown, batch_size=batch_size), failures)
    typer.echo(
        f"{result.pool}: inserted {result.inserted}, updated {result.updated}, unchanged {result.unchanged}, "
        f"embedded {result.embedded}; count {result.info.count}, version {result.info.version}"
    )


@app.command()
@connected(timeout=3600.0)
def select(
    pool: Annotated[str, typer.Option(help="pool name")],
    target: Annotated[Path, typer.Option(help="target records (.jsonl/.parquet: id + text or embedding)")],
    k: Annotated[int, typer.Option("-k", "--k", help="number of candidates", min=1)],
    mode: Annotated[str, typer.Option(help="auto|exact|global|paper")] = "auto",
    eps: Annotated[float | None, typer.Option(help="entropic regularisation")] = None,
    cost: Annotated[str, typer.Option(help="auto (server default)|embedding|fused")] = "auto",
    embedding_weight: Annotated[float | None, typer.Option(help="fused: embedding weight")] = None,
    relative_eps: Annotated[float | None, typer.Option(help="epsilon / median pool-target cost")] = None,
    near_duplicate_cosine: Annotated[
        float | None, typer.Option(help="skip candidates with cosine above this to a target")
    ] = None,
    near_copy_cosine: Annotated[
        float | None,
        typer.Option(help="skip candidates within this cosine of one returned (default: server's; 0: off)"),
    ] = None,
    max_staleness: Annotated[
        float | None,
        typer.Option(help="reuse the potential while at most this share of the pool changed (0: solve)"),
    ] = None,
    exclude_set: Annotated[str, typer.Option(help="id set of the pool whose ids are not returned")] = "",
    record_into: Annotated[
        str, typer.Option(help="id set the returned ids are added to (created when absent)")
    ] = "",
    output: Annotated[Path | None, typer.Option(help="output JSONL (default stdout)")] = None,
    *,
    conn: Connection,
) -> None:
    """Rank POOL for the targets in TARGET; one JSON object per line: id, score, rank."""
    _choice(mode, MODES, "--mode")
    _choice(cost, COSTS, "--cost")
    if output is not None and not output.parent.is_dir():
        typer.echo(f"error: --output {output}: folder {output.parent} does not exist", err=True)
        raise typer.Exit(1)
    targets = _read_all(target, "a target set")
    progress = _Progress()
    out = output.open("w", encoding="utf-8") if output is not None else sys.stdout
    try:
        with conn.open() as client:

            def run() -> SelectSummary | None:
                summary = None
                solver = SolverOptions(
                    mode=mode, eps=eps, cost=cost, embedding_weight=embedding_weight,
                    relative_eps=relative_eps, max_staleness=max_staleness,
                )  # fmt: skip
                events = client.select_stream(
                    pool, targets, k=k, solver=solver, near_duplicate_cosine=near_duplicate_cosine,
                    near_copy_cosine=near_copy_cosine,
                    exclude_set=exclude_set, record_into=record_into,
                )  # fmt: skip
                for event in events:
                    if isinstance(event, RankedCandidate):
                        row = {"id": event.id, "score": event.score, "rank": event.rank}
                        out.write(json.dumps(row) + "\n")
                    elif isinstance(event, SelectProgress):
                        progress.show(event)
                    else:
                        summary = event
                return summary

            try:
                summary = rpc(run)
            finally:
                progress.close()
    finally:
        if output is not None:
            out.close()
    if summary is not None:
        short = " (too few distinct)" if summary.too_few_distinct else ""
        typer.echo(
            f"selected {summary.returned} of {summary.eligible} (mode {summary.mode}, cost "
            f"{summary.cost} w={summary.embedding_weight:g}{_validated(summary)}, eps {summary.eps:.4g}, "
            "near-copies skipped "
            f"{summary.near_copies_skipped}{short}, cache_hit "
            f"{summary.cache_hit}, converged {summary.converged}, epoch v{summary.epoch_version} "
            f"(staleness {summary.staleness:.3g}, {'solved' if summary.solved else 'reused'}, "
            f"{summary.rows_scored} rows scored), {summary.total_ms:.0f} ms)",
            err=True,
        )
    if summary is not None and record_into:
        typer.echo(
            f"recorded {summary.recorded} new ids into {record_into} ({summary.record_set_count} ids)",
            err=True,
        )


@app.command()
@connected(timeout=30.0)
def pools(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    *,
    conn: Connection,
) -> None:
    """One line per pool: NAME COUNT VERSION MODEL DIM."""
    with conn.open() as client:
        listed = rpc(client.pools)
    for p in listed:
        if as_json:
            row = {"name": p.name, "count": p.count, "version": p.version, "model": p.model, "dim": p.dim}
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{p.name} {p.count} {p.version} {p.model} {p.dim}")


# gotd id-sets ..., gotd delete-records (client commands kept in their own module)
app.add_typer(cli_manage.id_sets, name="id-sets")
app.command("delete-records")(cli_manage.delete_records)


# What each extra brings that the base install lacks (checked before a dispatched command runs).
EXTRA_PROBES: dict[str, tuple[str, ...]] = {
    "server": ("torch", "numpy", "sentence_transformers", "faiss", "lmdb", "redis", "xxhash"),
    "lab": ("torch", "numpy", "matplotlib", "ot", "data_selection"),
}


def _extra_module(command: str, module: str, extra: str) -> ModuleType:
    """Import the module of a server or lab command; exit 2 naming the extra when it is not installed."""
    absent = [name for name in EXTRA_PROBES.get(extra, ()) if importlib.util.find_spec(name) is None]
    try:
        if absent:
            raise ImportError(name=absent[0])
        return importlib.import_module(module)
    except ImportError as err:
        missing = f" ({err.name} is not installed)" if err.name else ""
        typer.echo(
            f"error: 'gotd {command}' needs the {extra} extra{missing}: pip install 'gotd[{extra}]'", err=True
        )
        raise typer.Exit(2) from None


# Commands that run work in this process: name -> (module, extra, one-line help).
DISPATCHED: dict[str, tuple[str, str, str]] = {
    "serve": ("gotd.server.cli", "server", "Run the gRPC server until SIGTERM (extra: server)."),
    "sketch-backfill": ("gotd.server.cli", "server", "Sketch older pools from stored texts (extra: server)."),
    "compact": ("gotd.server.cli", "server", "Copy a store without its free pages (extra: server)."),
    "demo": ("gotd.lab.cli", "lab", "End to end on the wiki corpus (extra: lab)."),
    "eval": ("gotd.lab.cli", "lab", "Selection quality on a labelled corpus vs baselines (extra: lab)."),
    "bench": ("gotd.lab.cli", "lab", "Benchmarks, written to docs/benchmarks/ (extra: lab)."),
}


def _dispatch(name: str, module: str, extra: str, text: str) -> None:
    settings = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

    @app.command(name, help=text, context_settings=settings, add_help_option=False)
    def forward(ctx: typer.Context) -> None:
        target = _extra_module(name, module, extra)
        command = typer.main.get_command(target.app)
        command.main(args=[name, *ctx.args], prog_name="gotd", standalone_mode=True)


for _name, (_module, _extra, _text) in DISPATCHED.items():
    _dispatch(_name, _module, _extra, _text)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # grpc logs a traceback when a request stream raises; the CLI reports that input error itself.
    logging.getLogger("grpc._channel").setLevel(logging.CRITICAL)
    app()


def _validated(summary: SelectSummary) -> str:
    """`` (validated)``, `` (fallback)``, ...: how the cost setting was chosen (nothing when unknown)."""
    v = summary.validation
    return "" if v is None else f" ({v.status}{', cached' if v.cache_hit else ''})"


if __name__ == "__main__":
    main()
