"""Settings: flags over env over TOML over defaults, validated before the port opens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gotd.server.service.config import ConfigError, load_settings


def test_precedence_flags_env_file_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gotd.toml"
    config.write_text('eps = 0.05\ntol = 0.001\nlisten = "127.0.0.1:7000"\n')
    monkeypatch.setenv("GOTD_TOL", "0.002")
    monkeypatch.setenv("GOTD_MAX_ITER", "77")
    settings = load_settings(config, max_iter=5)
    assert settings.eps == 0.05  # file
    assert settings.tol == 0.002  # env over file
    assert settings.max_iter == 5  # flag over env
    assert settings.host_port == ("127.0.0.1", 7000)
    assert settings.exact_max_pool == 20_000  # default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eps": 0.0}, "eps"),
        ({"listen": "nohost"}, "listen"),
        ({"listen": "127.0.0.1:99999"}, "listen"),
        ({"redis_url": "http://x"}, "redis_url"),
        ({"tls_cert": Path("/nonexistent.pem"), "tls_key": Path("/nonexistent.key")}, "file not found"),
        ({"tls_cert": Path("/etc/hostname")}, "go together"),
        ({"max_concurrent_rpcs": 0}, "max_concurrent_rpcs"),
    ],
)
def test_invalid_settings_name_the_problem(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**overrides)


def test_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gotd.toml"
    config.write_text("epsilon_typo = 0.1\n")
    with pytest.raises(ConfigError, match="epsilon_typo"):
        load_settings(config)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_serve_refuses_bad_settings_before_opening_a_port(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gotd.client.cli", "serve", "--listen", "127.0.0.1:0"]
    command += ["--data-dir", str(tmp_path), "--redis-url", "ftp://nope"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "redis_url" in result.stderr
    assert "listening" not in result.stdout
