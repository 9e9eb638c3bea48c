"""Plain Redis helpers for the test suite (no pytest fixtures here: conftest.py wraps them).

- :class:`RedisServer`: a PRIVATE ``redis-server`` on a free 127.0.0.1 port, nothing persisted, that a
  test may stop and start again on the same port ("Redis stopped mid-run").
- :func:`shared_redis_url`: the machine's Redis (127.0.0.1:6379) with a dedicated db number; use a
  unique key prefix (:func:`unique_prefix`) and remove it afterwards with :func:`delete_prefix`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

__all__ = [
    "SHARED_HOST",
    "SHARED_PORT",
    "RedisServer",
    "delete_prefix",
    "free_port",
    "ping",
    "redis_server_binary",
    "shared_redis_available",
    "shared_redis_url",
    "unique_prefix",
]

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 6379


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server at ``host:port`` answers PING (raw RESP, no client to close)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_binary() -> str | None:
    """Path of ``redis-server`` on PATH, or None."""
    return shutil.which("redis-server")


def shared_redis_url(db: int) -> str:
    """URL of the machine's Redis at 127.0.0.1:6379 with database ``db`` (0..15)."""
    if not 0 <= db <= 15:
        raise ValueError("db must be in 0..15")
    return f"redis://{SHARED_HOST}:{SHARED_PORT}/{db}"


def shared_redis_available(timeout: float = 0.5) -> bool:
    """True when the machine's Redis answers."""
    return ping(SHARED_HOST, SHARED_PORT, timeout)


def unique_prefix(tag: str = "t") -> str:
    """A key prefix no other test (or process) uses, e.g. ``gotd-test:duals:1234:9f1c2a3b:``."""
    return f"gotd-test:{tag}:{os.getpid()}:{uuid.uuid4().hex[:8]}:"


def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN + UNLINK) and return how many were removed.

    Refuses an empty prefix, which would wipe the database.
    """
    if not prefix:
        raise ValueError("refusing to delete with an empty prefix")
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    removed = 0
    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += int(client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(client.unlink(*batch))
    return removed


def _server_pid(host: str, port: int, timeout: float = 0.2, password: str | None = None) -> int | None:
    """``process_id`` from ``INFO server`` of the Redis at ``host:port``, or None if it does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if password is not None:
                sock.sendall(f"AUTH {password}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return None
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while b"\r\n" not in reply or len(reply) < _bulk_end(reply):
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                reply += chunk
    except (OSError, ValueError):
        return None
    found = re.search(rb"process_id:(\d+)", reply)
    return int(found.group(1)) if found else None


def _bulk_end(reply: bytes) -> int:
    """Total length of a RESP bulk string reply ``$<n>\\r\\n<n bytes>\\r\\n`` (ValueError if not one)."""
    head, _, _ = reply.partition(b"\r\n")
    if not head.startswith(b"$"):
        raise ValueError("not a bulk string")
    return len(head) + 2 + int(head[1:]) + 2


class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 (``--save "" --appendonly no``) for one test.

    ``with RedisServer() as srv:`` starts it and waits until it answers; ``srv.stop()`` and
    ``srv.start()`` stop and restart it on the same port; leaving the block stops it (if running) and
    removes its scratch directory. The process is always waited for (no zombies, no ResourceWarning).

    Parameters
    ----------
    port : int, optional
        Port to listen on; a free one by default.
    extra_args : sequence of str
        More ``redis-server`` arguments, e.g. ``("--enable-debug-command", "local")``.
    startup_timeout : float
        Seconds to wait for the server to answer PING.
    password : str, optional
        ``requirepass``: clients must AUTH (``url`` then carries it).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        password: str | None = None,
    ) -> None:
        self.password = password
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self._binary = binary
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="gotd-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        if self.running:
            return
        # a restart keeps its port (clients hold the URL); only a first start may move to another one
        attempts = 1 if self._fixed_port or self._started_once else 3
        for attempt in range(attempts):
            if self._spawn_and_wait():
                self._started_once = True
                return
            if attempt + 1 < attempts:  # the free port was taken meanwhile: pick another one
                self.port = free_port()
        raise RuntimeError(f"redis-server did not start on port {self.port}: {self._log_tail()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and reap the process."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # the port is free once the process is gone; wait until nothing answers on it
        deadline = time.monotonic() + timeout
        while ping(self.host, self.port, 0.1) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        """Stop the server and remove its scratch directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _spawn_and_wait(self) -> bool:
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
            *(("--requirepass", self.password) if self.password is not None else ()),
            *self._extra_args,
        ]  # fmt: skip
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # exited: port in use, bad argument, ...
                proc.wait()
                return False
            if (
                _server_pid(self.host, self.port, password=self.password) == proc.pid
            ):  # ours, not a squatter on the port
                self._proc = proc
                return True
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        return False

    def _log_tail(self) -> str:
        try:
            return (self._dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
