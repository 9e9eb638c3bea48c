"""What the ``gotd`` client commands share: the connection options, the connection, and one way of
reporting a failed RPC or a bad input file (one ``error: ...`` line on stderr, exit 1)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import grpc
import typer

from gotd.client.client import Client, TlsConfig
from gotd.client.records import RecordFileError, read_items

T = TypeVar("T")

Server = Annotated[str, typer.Option("--server", envvar="GOTD_SERVER", help="host:port of the gotd server")]
Token = Annotated[str | None, typer.Option("--token", envvar="GOTD_TOKEN", help="bearer token")]
TlsCa = Annotated[Path | None, typer.Option("--tls-ca", help="CA bundle to verify the server (enables TLS)")]
TlsCert = Annotated[Path | None, typer.Option("--tls-cert", help="client certificate (mTLS)")]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", help="client key (mTLS)")]
TlsName = Annotated[str | None, typer.Option("--tls-server-name", help="expected server name in its cert")]
Timeout = Annotated[float, typer.Option("--timeout", help="deadline of the call, seconds")]


def connect(server: str, token: str | None, ca: Path | None, cert: Path | None, key: Path | None,
            name: str | None, timeout: float) -> Client:  # fmt: skip
    tls = None
    if ca is not None or cert is not None:
        tls = TlsConfig(ca_cert=ca, client_cert=cert, client_key=key, server_name=name)
    return Client(server, token=token, tls=tls, timeout=timeout)


class InputError(Exception):
    """A client-side input error, raised from inside a request stream and reported once."""


def rpc(fn: Callable[[], T], inputs: list[InputError] | None = None) -> T:
    """Run an RPC; print one ``error: ...`` line and exit 1 when it (or its input) fails.

    ``inputs`` collects input errors raised inside a request stream: grpc reports those as a cancelled
    call, so the input error is the one worth showing.
    """
    try:
        return fn()
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except grpc.RpcError as err:
        if inputs:
            typer.echo(f"error: {inputs[0]}", err=True)
            raise typer.Exit(1) from None
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        typer.echo(f"error: {code.name}: {details}", err=True)
        raise typer.Exit(1) from None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a file; a bad file or record raises :class:`InputError` (one message, no traceback)."""
    try:
        yield from read_items(path)
    except RecordFileError as err:
        raise InputError(str(err)) from None
