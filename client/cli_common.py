"""What the ``gotd`` client commands share: the connection options (:func:`connected`), the connection,
and one way of reporting a failed RPC or a bad input file (one ``error: ...`` line on stderr, exit 1)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Connection:
    """How a command reaches the server: the options every client command takes."""

    server: str
    token: str | None
    tls_ca: Path | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_server_name: str | None
    timeout: float

    def open(self) -> Client:
        """A client for the server (TLS when a CA bundle or a client certificate is given)."""
        tls = None
        if self.tls_ca is not None or self.tls_cert is not None:
            tls = TlsConfig(
                ca_cert=self.tls_ca, client_cert=self.tls_cert, client_key=self.tls_key,
                server_name=self.tls_server_name,
            )  # fmt: skip
        return Client(self.server, token=self.token, tls=tls, timeout=self.timeout)


_OPTIONS: dict[str, tuple[Any, object]] = {  # name: (typer annotation, default); the timeout's is per command
    "server": (Server, "127.0.0.1:50051"),
    "token": (Token, None),
    "tls_ca": (TlsCa, None),
    "tls_cert": (TlsCert, None),
    "tls_key": (TlsKey, None),
    "tls_server_name": (TlsName, None),
    "timeout": (Timeout, None),
}


def connected(timeout: float) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the connection options: it takes ``conn: Connection`` (a keyword), typer sees
    ``--server``, ``--token``, the TLS options and ``--timeout`` (default ``timeout`` seconds) instead."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "conn"]
        options = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=annotation,
                default=timeout if name == "timeout" else default,
            )
            for name, (annotation, default) in _OPTIONS.items()
        ]

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            conn = Connection(**{name: kwargs.pop(name) for name in _OPTIONS})
            command(*args, conn=conn, **kwargs)

        run.__signature__ = signature.replace(parameters=[*own, *options])  # type: ignore[attr-defined]
        return run

    return wrap


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
