"""Process settings: environment variables `TOLLHOUSE_*` and the config file's `gateway:` section.

Only `serve.py` builds Settings from the environment; library code receives them.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollhouse.auth.settings import AuthSettings

__all__ = ["AuthSettings", "LimitsSettings", "Settings", "UpstreamDefaults"]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class LimitsSettings(BaseModel):
    """Bounds on what one downstream request may cost the gateway."""

    model_config = {"frozen": True}

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    receive_timeout_seconds: float = Field(default=30.0, gt=0)
    # One page holds a typical federation's whole catalog: fewer round trips, and clients that
    # ignore nextCursor still see every tool (bench/fanout.py: 1000 tools in one 2.4 ms request).
    page_size: int = Field(default=1000, gt=0, le=10_000)
    session_idle_seconds: float = Field(default=1800.0, gt=0)
    max_sessions: int = Field(default=10_000, gt=0)


class UpstreamDefaults(BaseModel):
    """How the gateway treats upstreams in general."""

    model_config = {"frozen": True}

    sync_interval_seconds: float = Field(default=300.0, gt=0)
    retry_min_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    breaker_threshold: int = Field(default=3, gt=0)
    # URLs learned from an upstream's OAuth metadata pass the SSRF guard (auth/ssrf.py). Dev
    # mode lets them be plain-http loopback (a test authorization server); `private` opens
    # RFC 1918 ranges for an internal authorization server.
    oauth_allow_loopback_http: bool = False
    oauth_allow_private: bool = False


class Settings(BaseSettings):
    """Everything a tollhouse process needs to start; defaults need nothing else running."""

    model_config = SettingsConfigDict(
        env_prefix="TOLLHOUSE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: str = "./.tollhouse"
    database_url: str | None = None
    admin_token: SecretStr | None = None
    # Master keys `kid:base64url,…`, newest first (auth/keyring.py); unset: kept under data_dir.
    secret_keys: SecretStr | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    limits: LimitsSettings = LimitsSettings()
    upstreams: UpstreamDefaults = UpstreamDefaults()
    auth: AuthSettings = AuthSettings()

    @model_validator(mode="after")
    def _issuer_over_tls(self) -> Settings:
        # OAuth 2.1 §1.5: an authorization server's endpoints need TLS; plain http is for loopback.
        parts = urlsplit(self.public_url)
        if self.auth.builtin_server and parts.scheme != "https" and parts.hostname not in _LOOPBACK:
            raise ValueError(
                "public_url must be https:// while the built-in authorization server is on (plain http "
                "only on loopback): set TOLLHOUSE_PUBLIC_URL to the https URL clients use, or "
                "TOLLHOUSE_AUTH__BUILTIN_SERVER=false"
            )
        return self
