"""Server configuration: one frozen, validated :class:`Settings`.

Sources, highest precedence first: command-line flags, environment variables ``GOTD_*``, an optional
TOML file (``--config``), defaults. Everything is validated before the port opens, so a bad value
stops the server with a clear message instead of failing a request later.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from gotd.cache.store.embeddings import DEFAULT_MAX_ENTRIES
from gotd.server.selection.config import DEFAULT_SUMMARY_SIZE
from gotd.server.selection.costs import DEFAULT_EMBEDDING_WEIGHT
from gotd.server.selection.nearcopy import DEFAULT_NEAR_COPY_COSINE

_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")

ModeName = Literal["auto", "exact", "global", "paper"]


def redact_url(url: str) -> str:
    """``url`` with its credentials (``user:password@``) replaced by ``***@``: safe to print or log."""
    return re.sub(r"//[^@/]*@", "//***@", url)


class ConfigError(ValueError):
    """Invalid configuration; the message says which setting and why."""


class Settings(BaseSettings):
    """All settings of ``gotd serve`` (env prefix ``GOTD_``)."""

    model_config = SettingsConfigDict(env_prefix="GOTD_", frozen=True, extra="forbid")

    listen: str = Field("127.0.0.1:50051", description="gRPC address host:port (port 0 picks one)")
    data_dir: Path = Field(Path("data"), description="directory of the LMDB store and FAISS indexes")
    redis_url: str | None = Field(None, description="Redis URL of the dual cache; absent: in-process")
    redis_prefix: str = "gotd:"
    redis_timeout_seconds: float = Field(0.25, gt=0)
    cache_check_seconds: float = Field(5.0, gt=0, description="Redis health probe interval")
    cache_ttl_seconds: int = Field(7 * 24 * 3600, gt=0)
    cache_lru_entries: int = Field(256, ge=1)
    auth_token: SecretStr | None = Field(None, description="bearer token required on every RPC")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(None, description="CA bundle: require client certs (mTLS)")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus port (absent: off)")
    metrics_host: str = Field("127.0.0.1", description="address the Prometheus exporter binds")
    metrics_max_pools: int = Field(
        100, ge=1, description="pools with their own metric label; the rest are summed under _other"
    )
    trusted_proxy: bool = Field(
        False,
        description="allow a non-loopback listen without token or TLS: a proxy in front authenticates",
    )
    model_path: str | None = Field(None, description="local sentence-transformers model directory")
    device: str | None = None
    embed_batch_size: int = Field(64, ge=1)
    model_preload: bool = Field(
        True,
        description="load the encoder at start; false: at the first text to embed (a server sent only "
        "precomputed embeddings never loads it, about 0.26 GiB less resident memory)",
    )
    max_concurrent_rpcs: int = Field(32, ge=1)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_inline_targets: int = Field(20_000, ge=1)
    max_text_bytes: int = Field(64 * 1024, ge=16)
    max_k: int = Field(10_000_000, ge=1)
    max_id_set_ids: int = Field(1_000_000, ge=1, description="most ids one named id set may hold")
    workers: int = Field(4, ge=1, description="threads for embedding, solving and storage")
    grace_seconds: float = Field(10.0, ge=0)
    embedding_cache_entries: int = Field(
        DEFAULT_MAX_ENTRIES, ge=2, description="bound of the text-to-embedding cache (entries)"
    )
    pool_cache_bytes: int = Field(
        8 << 30, ge=0, description="bytes of pool snapshots kept in memory between requests (0: none)"
    )
    score_cache_bytes: int = Field(
        512 << 20, ge=0, description="bytes of per-potential score vectors kept between requests"
    )
    memory_limit_bytes: int | None = Field(
        None, ge=1, description="memory a Select may use (absent: the machine's available memory)"
    )
    vector_dtype: Literal["float32", "float16"] = Field(
        "float32", description="storage and in-memory dtype of new pools' embeddings"
    )
    default_mode: ModeName = "auto"
    eps: float = Field(0.1, gt=0)
    tol: float = Field(1e-4, gt=0)
    max_iter: int = Field(1000, ge=1)
    exact_max_pool: int = Field(20_000, ge=1)
    summary_size: int = Field(DEFAULT_SUMMARY_SIZE, ge=2, description="global mode: summary rows")
    paper_domains: int = Field(2, ge=1)
    max_staleness: float = Field(
        0.2,  # top-5% overlap with a fresh solve >= 0.99 up to here (docs/benchmarks/incremental.md)
        ge=0,
        le=1,
        description="a potential epoch serves later pool versions while at most this share of the "
        "pool's rows was written since it (0: solve every new version)",
    )
    max_staleness_fused: float = Field(
        0.05,  # top-5% overlap >= 0.98 up to +5% growth, 0.948 at +10% (docs/benchmarks/incremental.md)
        ge=0,
        le=1,
        description="max_staleness for the fused cost (its epoch also freezes the pool's IDF, so it "
        "drifts faster when the growth shifts the pool's vocabulary); also the bound under which cost "
        "auto reuses the validation of an earlier pool version",
    )
    epoch_values_redis_bytes: int = Field(
        64 * 2**20, ge=0, description="row values of an epoch larger than this stay out of Redis"
    )
    cost: Literal["auto", "embedding", "fused"] = Field(
        "auto", description="ground cost; auto: fused when the pool and the target have n-gram sketches"
    )
    embedding_weight: float = Field(DEFAULT_EMBEDDING_WEIGHT, ge=0, le=1, description="fused cost: w")
    relative_eps: float | None = Field(
        None, gt=0, description="epsilon as a multiple of the median pool-target cost (absent: eps)"
    )
    validation_min_targets: int = Field(
        100,
        ge=3,
        description="cost auto: fewer targets than this use the fixed default setting without validating",
    )
    validation_learned_metric: bool = Field(
        True,
        description="cost auto: the validation also tries the fused cost stretched along a target-vs-pool "
        "discriminant direction learned from the target set",
    )
    near_copy_cosine: float = Field(
        DEFAULT_NEAR_COPY_COSINE,
        ge=0,
        le=1,
        description="skip candidates within this cosine of one already returned (0: off)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    ray_address: str | None = Field(None, description="Ray cluster that scores pools; absent: in-process")

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        match = _LISTEN.match(value)
        if match is None or int(match.group(2)) > 65535:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected redis://host:port/db, got {redact_url(value)!r}")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if path is not None and not path.is_file():
                raise ValueError(f"file not found: {path}")
        return self

    @model_validator(mode="after")
    def _check_exposure(self) -> Settings:
        host = self.host_port[0].strip("[]").lower()
        loopback = host in {"localhost", "::1"} or host.startswith("127.")
        if not loopback and self.auth_token is None and self.tls_cert is None and not self.trusted_proxy:
            raise ValueError(
                f"listen {self.listen!r} is reachable from other hosts but neither auth_token nor TLS is "
                "set: set GOTD_AUTH_TOKEN or GOTD_TLS_CERT and GOTD_TLS_KEY, or GOTD_TRUSTED_PROXY=true "
                "when a proxy in front of gotd authenticates every call"
            )
        return self

    @property
    def plaintext_token(self) -> bool:
        """A bearer token is accepted over plaintext gRPC (no TLS): it can be read on the wire."""
        return self.auth_token is not None and self.tls_cert is None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host, int(port)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate :class:`Settings`; ``overrides`` (flags) win over env and file.

    Raises
    ------
    ConfigError
        Naming every invalid setting.
    """
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file not found: {config_file}")
    given = {key: value for key, value in overrides.items() if value is not None}
    cls = Settings
    if config_file is not None:

        class _FromFile(Settings):
            model_config = SettingsConfigDict(toml_file=config_file)

        cls = _FromFile
    try:
        return cls(**given)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
