"""Server-side commands of ``gotd`` (extra ``gotd[server]``): serve, sketch-backfill, ingest --ray.

Reached through the dispatcher in :mod:`gotd.client.cli`, which imports this module only when one of
these commands runs and names the extra to install when it is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gotd.cache.errors import GotdError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gotd server commands")


def _fail(err: GotdError) -> typer.Exit:
    typer.echo(f"error: {err.code}: {err.message}", err=True)
    return typer.Exit(1)


def _require_ray() -> None:
    from gotd.server.ray.runtime import require_ray

    try:
        require_ray()
    except ImportError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    listen: Annotated[str | None, typer.Option(help="host:port; port 0 picks a free port")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="directory of the store")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL of the dual cache")] = None,
    auth_token: Annotated[
        str | None, typer.Option(envvar="GOTD_AUTH_TOKEN", help="required bearer token")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port")] = None,
    metrics_host: Annotated[str | None, typer.Option(help="address the Prometheus port binds")] = None,
    trusted_proxy: Annotated[
        bool | None,
        typer.Option(
            "--trusted-proxy",
            help="serve a non-loopback address without token or TLS (a proxy authenticates)",
        ),
    ] = None,
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

    from gotd.server.service.app import configure_logging
    from gotd.server.service.app import serve as run
    from gotd.server.service.config import ConfigError, load_settings

    try:
        settings = load_settings(
            config, listen=listen, data_dir=data_dir, redis_url=redis_url, auth_token=auth_token,
            metrics_port=metrics_port, metrics_host=metrics_host, trusted_proxy=trusted_proxy,
            tls_cert=tls_cert, tls_key=tls_key, tls_client_ca=tls_client_ca,
            model_path=model_path, max_concurrent_rpcs=max_concurrent_rpcs, log_json=log_json,
            ray_address=ray_address,
        )  # fmt: skip
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    if settings.ray_address is not None:
        _require_ray()
    configure_logging(settings.log_level, settings.log_json)

    def ready(running: Any) -> None:
        typer.echo(f"gotd listening on {running.address}", err=False)
        if running.metrics_port is not None:
            typer.echo(f"metrics on port {running.metrics_port}")
        sys.stdout.flush()

    asyncio.run(run(settings, ready=ready))


def ingest_ray(file: Path, pool: str, data_dir: Path | None, batch_size: int, address: str | None) -> None:
    """``gotd ingest --ray``: embed on Ray into a store (no server); exit 2 naming a missing extra."""
    _require_ray()
    if data_dir is None:
        typer.echo("error: --ray writes into a store: give --data-dir", err=True)
        raise typer.Exit(2)
    from gotd.cache.store.core import Store
    from gotd.server.ray.ingest import ray_ingest
    from gotd.server.selection.sketches import tf_sparse

    try:
        with Store(data_dir, sketcher=tf_sparse) as store:
            s = ray_ingest(file, store, pool=pool, batch_size=batch_size, ray_address=address)
            info = store.get_pool(pool)
    except GotdError as err:
        raise _fail(err) from None
    typer.echo(
        f"{pool}: inserted {s.inserted}, updated {s.updated}, unchanged {s.unchanged}, "
        f"embedded {s.embedded}; count {info.count}, version {info.version}"
    )


@app.command()
def compact(
    data_dir: Annotated[Path, typer.Option(help="data directory of the store (as given to serve)")],
    output: Annotated[Path, typer.Option(help="new data directory (must not hold a store)")],
) -> None:
    """Copy a store without its free pages (evicted embeddings, deleted pools): a smaller data dir.

    Safe beside a running server; point the server at OUTPUT once the copy is done.
    """
    import shutil

    from gotd.cache.store.core import INDEX_DIRNAME
    from gotd.cache.store.env import compact_copy

    try:
        before, after = compact_copy(data_dir, output)
    except (FileNotFoundError, FileExistsError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if (data_dir / INDEX_DIRNAME).is_dir():
        shutil.copytree(data_dir / INDEX_DIRNAME, output / INDEX_DIRNAME, dirs_exist_ok=True)
    typer.echo(f"compacted {data_dir} into {output}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")


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

    from gotd.cache.errors import NotFound
    from gotd.cache.store.core import Store
    from gotd.cache.store.env import ENV_DIRNAME
    from gotd.server.selection.sketches import tf_sparse

    try:
        if not (data_dir / ENV_DIRNAME / "data.mdb").is_file():
            raise NotFound(f"no store at {data_dir / ENV_DIRNAME}")
        with Store(data_dir, sketcher=tf_sparse) as store:
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
        raise _fail(err) from None
