"""The ``gotd`` command line.

Client commands (ingest, select, pools, ...) need only the contract and grpc. Commands that run work
locally (serve, demo, bench, eval) import server-side code lazily, inside the command.
On a failed RPC a client command prints ``error: STATUS_CODE_NAME: message`` on stderr and exits 1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer

from gotd.client.cli_eval import evaluate
from gotd.client.client import Client, TlsConfig
from gotd.client.types import RankedCandidate, SelectProgress, SelectSummary

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gotd: GOT-D data selection service")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks; each writes docs/benchmarks/<name>.md")
app.add_typer(bench_app, name="bench")
app.command("eval")(evaluate)
T = TypeVar("T")

Server = Annotated[str, typer.Option("--server", envvar="GOTD_SERVER", help="host:port of the gotd server")]
Token = Annotated[str | None, typer.Option("--token", envvar="GOTD_TOKEN", help="bearer token")]
TlsCa = Annotated[Path | None, typer.Option("--tls-ca", help="CA bundle to verify the server (enables TLS)")]
TlsCert = Annotated[Path | None, typer.Option("--tls-cert", help="client certificate (mTLS)")]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", help="client key (mTLS)")]
TlsName = Annotated[str | None, typer.Option("--tls-server-name", help="expected server name in its cert")]
Timeout = Annotated[float, typer.Option("--timeout", help="deadline of the call, seconds")]


def _client(server: str, token: str | None, ca: Path | None, cert: Path | None, key: Path | None,
            name: str | None, timeout: float) -> Client:  # fmt: skip
    tls = None
    if ca is not None or cert is not None:
        tls = TlsConfig(ca_cert=ca, client_cert=cert, client_key=key, server_name=name)
    return Client(server, token=token, tls=tls, timeout=timeout)


def _rpc(fn: Callable[[], T]) -> T:
    """Run an RPC; print ``error: CODE: message`` and exit 1 when it fails."""
    try:
        return fn()
    except grpc.RpcError as err:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        typer.echo(f"error: {code.name}: {details}", err=True)
        raise typer.Exit(1) from None


def _read(path: Path) -> Iterator[dict[str, Any]]:
    from gotd.cache.errors import GotdError
    from gotd.cache.record_files import read_records

    try:
        for batch in read_records(path, batch_size=512):
            for r in batch:
                item: dict[str, Any] = {"id": r.id, "domain": r.domain}
                if r.text is not None:
                    item["text"] = r.text
                if r.embedding is not None:
                    item["embedding"] = r.embedding.tolist()
                if r.meta:
                    item["meta"] = r.meta
                yield item
    except GotdError as err:
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option(help="host:port; port 0 picks a free port")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="directory of the store")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL of the dual cache")] = None,
    auth_token: Annotated[
        str | None, typer.Option(envvar="GOTD_AUTH_TOKEN", help="required bearer token")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="server certificate (PEM)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="server key (PEM)")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="CA of client certificates (mTLS)")] = None,
    model_path: Annotated[str | None, typer.Option(help="local sentence-transformers model")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML configuration file")] = None,
    max_concurrent_rpcs: Annotated[int | None, typer.Option(help="RPCs served at once")] = None,
    log_json: Annotated[bool | None, typer.Option("--log-json", help="JSON log lines")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to score on (needs gotd[ray])")] = None,
) -> None:
    """Run the gRPC server until SIGTERM (then stop gracefully)."""
    import asyncio

    from gotd.server.app import configure_logging
    from gotd.server.app import serve as run
    from gotd.server.config import ConfigError, load_settings

    try:
        settings = load_settings(
            config, listen=listen, data_dir=data_dir, redis_url=redis_url, auth_token=auth_token,
            metrics_port=metrics_port, tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            model_path=model_path, max_concurrent_rpcs=max_concurrent_rpcs, log_json=log_json,
            ray_address=ray_address,
        )  # fmt: skip
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if settings.ray_address is not None:
        from gotd.server.ray_backend import require_ray

        try:
            require_ray()
        except ImportError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_json)

    def ready(running: Any) -> None:
        typer.echo(f"gotd listening on {running.address}", err=False)
        if running.metrics_port is not None:
            typer.echo(f"metrics on 127.0.0.1:{running.metrics_port}")
        sys.stdout.flush()

    asyncio.run(run(settings, ready=ready))


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="records: .jsonl or .parquet")],
    pool: Annotated[str, typer.Option(help="pool name")],
    server: Server = "127.0.0.1:50051",
    batch_size: Annotated[int, typer.Option(help="records per atomic batch")] = 256,
    token: Token = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    tls_server_name: TlsName = None, timeout: Timeout = 3600.0,
    ray: Annotated[bool, typer.Option("--ray", help="embed on Ray into --data-dir (no server)")] = False,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster for --ray (default: local)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="store written by --ray")] = None,
) -> None:  # fmt: skip
    """Upsert the records of FILE into a pool (through the server, or with --ray into a store)."""
    from tqdm import tqdm

    if ray:
        _ingest_ray(file, pool, data_dir, batch_size, ray_address)
        return
    with _client(server, token, tls_ca, tls_cert, tls_key, tls_server_name, timeout) as client:
        records = tqdm(_read(file), desc=f"ingest {pool}", unit="rec", file=sys.stderr, disable=None)
        result = _rpc(lambda: client.ingest(pool, records, batch_size=batch_size))
    typer.echo(
        f"{result.pool}: inserted {result.inserted}, updated {result.updated}, unchanged {result.unchanged}, "
        f"embedded {result.embedded}; count {result.info.count}, version {result.info.version}"
    )


def _ingest_ray(file: Path, pool: str, data_dir: Path | None, batch_size: int, address: str | None) -> None:
    """``ingest --ray``: Ray is checked before any work; exit 2 naming the extra when it is missing."""
    from gotd.server.ray_backend import require_ray

    try:
        require_ray()
    except ImportError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if data_dir is None:
        typer.echo("error: --ray writes into a store: give --data-dir", err=True)
        raise typer.Exit(2)
    from gotd.cache.errors import GotdError
    from gotd.cache.store import Store
    from gotd.server.features import tf_rows
    from gotd.server.ray_ingest import ray_ingest

    try:
        with Store(data_dir, sketcher=tf_rows) as store:
            s = ray_ingest(file, store, pool=pool, batch_size=batch_size, ray_address=address)
            info = store.get_pool(pool)
    except GotdError as err:
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{pool}: inserted {s.inserted}, updated {s.updated}, unchanged {s.unchanged}, "
        f"embedded {s.embedded}; count {info.count}, version {info.version}"
    )


@app.command()
def select(
    pool: Annotated[str, typer.Option(help="pool name")],
    target: Annotated[Path, typer.Option(help="target records (.jsonl/.parquet: id + text or embedding)")],
    k: Annotated[int, typer.Option("-k", "--k", help="number of candidates")],
    server: Server = "127.0.0.1:50051",
    mode: Annotated[str, typer.Option(help="auto|exact|global|paper")] = "auto",
    eps: Annotated[float | None, typer.Option(help="entropic regularisation")] = None,
    cost: Annotated[str, typer.Option(help="auto (server default)|embedding|fused")] = "auto",
    embedding_weight: Annotated[float | None, typer.Option(help="fused: embedding weight")] = None,
    relative_eps: Annotated[float | None, typer.Option(help="epsilon / median pool-target cost")] = None,
    near_duplicate_cosine: Annotated[
        float | None, typer.Option(help="skip candidates with cosine above this to a target")
    ] = None,
    output: Annotated[Path | None, typer.Option(help="output JSONL (default stdout)")] = None,
    token: Token = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    tls_server_name: TlsName = None, timeout: Timeout = 3600.0,
) -> None:  # fmt: skip
    """Rank POOL for the targets in TARGET; one JSON object per line: id, score, rank."""
    targets = list(_read(target))
    out = output.open("w", encoding="utf-8") if output is not None else sys.stdout
    try:
        with _client(server, token, tls_ca, tls_cert, tls_key, tls_server_name, timeout) as client:

            def run() -> SelectSummary | None:
                summary = None
                events = client.select_stream(
                    pool,
                    targets,
                    k=k,
                    mode=mode,
                    eps=eps,
                    cost=cost,
                    embedding_weight=embedding_weight,
                    relative_eps=relative_eps,
                    near_duplicate_cosine=near_duplicate_cosine,
                )
                for event in events:
                    if isinstance(event, RankedCandidate):
                        out.write(
                            json.dumps({"id": event.id, "score": event.score, "rank": event.rank}) + "\n"
                        )
                    elif isinstance(event, SelectProgress):
                        typer.echo(f"\r{event.stage}: {event.done}/{event.total}", err=True, nl=False)
                    else:
                        summary = event
                return summary

            summary = _rpc(run)
    finally:
        if output is not None:
            out.close()
    if summary is not None:
        typer.echo(
            f"\nselected {summary.returned} of {summary.eligible} (mode {summary.mode}, cost "
            f"{summary.cost} w={summary.embedding_weight:g}, eps {summary.eps:.4g}, cache_hit "
            f"{summary.cache_hit}, converged {summary.converged}, {summary.total_ms:.0f} ms)",
            err=True,
        )


@app.command()
def pools(
    server: Server = "127.0.0.1:50051",
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    token: Token = None, tls_ca: TlsCa = None, tls_cert: TlsCert = None, tls_key: TlsKey = None,
    tls_server_name: TlsName = None, timeout: Timeout = 30.0,
) -> None:  # fmt: skip
    """One line per pool: NAME COUNT VERSION MODEL DIM."""
    with _client(server, token, tls_ca, tls_cert, tls_key, tls_server_name, timeout) as client:
        listed = _rpc(client.pools)
    for p in listed:
        if as_json:
            typer.echo(
                json.dumps(
                    {"name": p.name, "count": p.count, "version": p.version, "model": p.model, "dim": p.dim}
                )
            )
        else:
            typer.echo(f"{p.name} {p.count} {p.version} {p.model} {p.dim}")


@app.command("sketch-backfill")
def sketch_backfill(
    data_dir: Annotated[Path, typer.Option(help="data directory of the store (as given to serve)")],
    pool: Annotated[list[str] | None, typer.Option("--pool", help="pool (repeatable; default: all)")] = None,
    batch_rows: Annotated[int, typer.Option(help="rows per write transaction")] = 4096,
) -> None:  # fmt: skip
    """Compute the missing n-gram sketches of pools from their stored texts (enables the fused cost).

    LMDB is multi-process safe: this may run while a server uses the same data dir (it sees the new
    pool version on its next request). Idempotent: a rerun finishes an interrupted one.
    """
    from tqdm import tqdm

    from gotd.cache.errors import GotdError, NotFound
    from gotd.cache.store import Store
    from gotd.cache.store_env import ENV_DIRNAME
    from gotd.server.features import tf_rows

    try:
        if not (data_dir / ENV_DIRNAME / "data.mdb").is_file():
            raise NotFound(f"no store at {data_dir / ENV_DIRNAME}")
        with Store(data_dir, sketcher=tf_rows) as store:
            for name in pool or [p.name for p in store.list_pools()]:
                with tqdm(desc=f"sketch {name}", unit="row", file=sys.stderr, disable=None) as bar:

                    def show(done: int, total: int, bar: Any = bar) -> None:
                        bar.total = total
                        bar.update(done - bar.n)

                    r = store.backfill_sketches(name, batch_rows=batch_rows, progress=show)
                typer.echo(
                    f"{name}: sketched {r.rows_sketched}, without text {r.rows_without_text}; "
                    f"version {r.version}"
                )
    except GotdError as err:
        typer.echo(f"error: {err.code}: {err.message}", err=True)
        raise typer.Exit(1) from None


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="demo store (kept: a second run is fast)")] = Path(
        ".gotd-demo"
    ),
    pool_size: Annotated[int, typer.Option(help="candidates in the demo pool")] = 1500,
    topic: Annotated[str, typer.Option(help="target topic")] = "Mathematics",
) -> None:
    """End to end on the wiki corpus: serve, ingest, select, report precision and cold vs cached time."""
    from gotd.server.demo import run_demo

    run_demo(data_dir=data_dir, pool_size=pool_size, topic=topic)


def _bench(name: str, out: Path, quick: bool) -> None:
    import importlib

    module = importlib.import_module(f"gotd.server.bench_{name}")
    result = module.run(out, quick=quick)
    typer.echo(f"bench {name}: {json.dumps(result, default=str)[:2000]}")


Out = Annotated[Path, typer.Option("--out", help="output directory")]
Quick = Annotated[bool, typer.Option("--quick", help="tiny smoke version")]


@bench_app.command("ot")
def bench_ot(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
    """OT engine vs POT and the GEMM+logsumexp floor."""
    _bench("ot", out, quick)


@bench_app.command("ingest")
def bench_ingest(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
    """Ingest vs the bare encoder; vector ingest; bulk read."""
    _bench("ingest", out, quick)


@bench_app.command("service")
def bench_service(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
    """Cold vs cached Select, grown pool, first batch latency, concurrency, fused vs embedding cost."""
    _bench("service", out, quick)


@bench_app.command("ray")
def bench_ray(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
    """Sharded scoring on Ray workers vs the in-process pass (needs the ray extra)."""
    _bench("ray", out, quick)


@bench_app.command("all")
def bench_all(out: Out = Path("docs/benchmarks"), quick: Quick = False) -> None:
    """Every benchmark (ray only when the extra is installed)."""
    import importlib.util

    names = ["ot", "ingest", "service"] + (["ray"] if importlib.util.find_spec("ray") else [])
    for name in names:
        _bench(name, out, quick)


def main() -> None:
    """Console entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    app()


if __name__ == "__main__":
    main()
