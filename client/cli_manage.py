"""``gotd id-sets`` (list, show, delete the named id sets of a pool) and ``gotd delete-records``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gotd.client.cli_common import (
    Connection,
    InputError,
    connected,
    rpc,
)
from gotd.client.records import RecordFileError, read_ids

id_sets = typer.Typer(no_args_is_help=True, help="Named id sets of a pool (list, show, delete).")
PoolOpt = Annotated[str, typer.Option("--pool", help="pool name")]


@id_sets.command("list")
@connected(timeout=30.0)
def id_sets_list(
    pool: PoolOpt,
    *,
    conn: Connection,
) -> None:
    """One line per id set of POOL: NAME COUNT."""
    with conn.open() as client:
        for s in rpc(lambda: client.id_sets(pool)):
            typer.echo(f"{s.name} {s.count}")


@id_sets.command("show")
@connected(timeout=120.0)
def id_sets_show(
    name: Annotated[str, typer.Argument(help="id set name")],
    pool: PoolOpt,
    *,
    conn: Connection,
) -> None:
    """The ids of the set NAME, one a line (sorted); the count on stderr."""
    with conn.open() as client:
        info, ids = rpc(lambda: client.get_id_set(pool, name))
    for record_id in ids:
        typer.echo(record_id)
    typer.echo(f"{info.name}: {info.count} ids", err=True)


@id_sets.command("delete")
@connected(timeout=30.0)
def id_sets_delete(
    name: Annotated[str, typer.Argument(help="id set name")],
    pool: PoolOpt,
    *,
    conn: Connection,
) -> None:
    """Delete the id set NAME of POOL."""
    with conn.open() as client:
        rpc(lambda: client.delete_id_set(pool, name))
    typer.echo(f"deleted id set {name} of pool {pool}", err=True)


@connected(timeout=300.0)
def delete_records(
    pool: Annotated[str, typer.Argument(help="pool name")],
    ids: Annotated[list[str] | None, typer.Argument(help="candidate ids to delete")] = None,
    ids_file: Annotated[
        Path | None,
        typer.Option(help="ids, one a line (as `gotd id-sets show` prints), or .jsonl/.parquet records"),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Delete candidates of POOL (the IDS given and those of --ids-file) in one atomic batch."""
    wanted = list(ids or [])
    if ids_file is not None:
        wanted += rpc(lambda: _ids_of(ids_file))
    if not wanted:
        raise typer.BadParameter("give ids as arguments or --ids-file", param_hint="IDS")
    with conn.open() as client:
        result = rpc(lambda: client.delete_records(pool, wanted))
    typer.echo(
        f"{result.pool}: deleted {result.deleted}, not found {result.not_found}; "
        f"count {result.info.count}, version {result.info.version}"
    )


def _ids_of(path: Path) -> list[str]:
    try:
        return list(read_ids(path))
    except RecordFileError as err:
        raise InputError(str(err)) from None
