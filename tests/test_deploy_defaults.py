"""Safe deployment defaults (issue 18): exposure needs a token or TLS, metrics host, label bounds."""

from __future__ import annotations

import logging
import re
import shlex
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gotd.client.client import Client
from gotd.server.service.config import ConfigError, load_settings
from gotd.server.service.metrics import OTHER_POOLS, Metrics
from tests.conftest import clustered, vector_records

ROOT = Path(__file__).resolve().parents[1]


def _dockerfile_env() -> dict[str, str]:
    """The ``ENV`` of the server image, as the container sees it."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(part.split("=", 1) for part in shlex.split(line[4:])))
    return env


@pytest.mark.parametrize(
    ("extra", "starts"),
    [
        ({}, False),
        ({"GOTD_AUTH_TOKEN": "s3cret"}, True),
        ({"GOTD_TRUSTED_PROXY": "true"}, True),
        ({"GOTD_LISTEN": "127.0.0.1:50051"}, True),
    ],
)
def test_the_image_refuses_to_serve_exposed_without_token_or_tls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: dict[str, str], starts: bool
) -> None:
    env = _dockerfile_env() | extra
    assert env["GOTD_LISTEN"].startswith("0.0.0.0:") or "GOTD_LISTEN" in extra
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GOTD_DATA_DIR", str(tmp_path))
    if starts:
        settings = load_settings()
        assert settings.metrics_host == "0.0.0.0"  # the image's metrics port is reachable
    else:
        with pytest.raises(ConfigError, match="GOTD_TRUSTED_PROXY"):
            load_settings()


@pytest.mark.parametrize(
    ("listen", "ok"),
    [("0.0.0.0:0", False), ("[::]:0", False), ("10.1.2.3:0", False), ("gotd.internal:0", False),
     ("127.0.0.1:0", True), ("localhost:0", True), ("[::1]:0", True)],
)  # fmt: skip
def test_only_loopback_listens_without_token_or_tls(listen: str, ok: bool) -> None:
    if ok:
        assert load_settings(listen=listen).listen == listen
    else:
        with pytest.raises(ConfigError, match="neither auth_token nor TLS"):
            load_settings(listen=listen)


def test_a_token_over_plaintext_is_a_startup_warning(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gotd.server.service.app"):
        make_server(auth_token="s3cret")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("bearer token is accepted over plaintext" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gotd.server.service.app"):
        make_server()
    assert not [r for r in caplog.records if "plaintext" in r.getMessage()]


def test_metrics_host_is_a_setting(make_server: Any) -> None:
    srv = make_server(metrics_port=0, metrics_host="0.0.0.0")
    assert srv.running.metrics.http_address == ("0.0.0.0", srv.running.metrics_port)
    default = make_server(metrics_port=0)
    assert default.running.metrics.http_address == ("127.0.0.1", default.running.metrics_port)


def _pool_series(body: str) -> dict[str, float]:
    found = re.findall(r'^gotd_pool_candidates\{pool="([^"]*)"\} (\S+)$', body, flags=re.M)
    return {name: float(value) for name, value in found}


def test_pool_labels_are_bounded_and_the_rest_summed(make_server: Any) -> None:
    srv = make_server(metrics_port=0, metrics_max_pools=3)
    sizes = {f"p{i}": 5 + i for i in range(7)}
    with Client(srv.address, timeout=120) as client:
        for i, (name, n) in enumerate(sizes.items()):
            client.ingest(name, vector_records(clustered(n, seed=i)))
        client.delete_pool("p6")
        client.delete_pool("p0")
    url = f"http://127.0.0.1:{srv.running.metrics_port}/metrics"
    series = _pool_series(urllib.request.urlopen(url, timeout=10).read().decode())
    assert series == {"p1": 6.0, "p2": 7.0, OTHER_POOLS: 8.0 + 9.0 + 10.0}


def test_metrics_pool_labels_unit() -> None:
    metrics = Metrics(max_pools=2)
    for i in range(1000):
        metrics.set_pool_size(f"user-{i}", 1)
    metrics.set_pool_size("user-0", 4)
    labels = {labels[0] for labels in metrics.pool_candidates._metrics}
    assert labels == {"user-0", "user-1", OTHER_POOLS}
    assert metrics.pool_candidates.labels(OTHER_POOLS)._value.get() == 998.0
    metrics.forget_pool("user-5")
    assert metrics.pool_candidates.labels(OTHER_POOLS)._value.get() == 997.0
