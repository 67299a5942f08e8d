"""Process settings: environment variables `TOLLHOUSE_*` and the config file's `gateway:` section.

Only `serve.py` builds Settings from the environment; library code receives them.
"""

from __future__ import annotations

import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tollhouse.auth.settings import AuthSettings

__all__ = [
    "AuditSettings",
    "AuthSettings",
    "ClusterSettings",
    "ConsoleSettings",
    "LimitsSettings",
    "QuotaSettings",
    "Settings",
    "TelemetrySettings",
    "UpstreamDefaults",
    "UsageSettings",
    "UsageSinkSettings",
]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


class LimitsSettings(BaseModel):
    """Bounds on what one downstream request may cost the gateway."""

    model_config = {"frozen": True}

    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Also the longest gap between two reads of a body at the connection (receive_deadline.py).
    receive_timeout_seconds: float = Field(default=30.0, gt=0)
    # Connection-level receive deadline (receive_deadline.py): the request line and headers must
    # arrive within header_timeout_seconds of the request's first byte, the whole body within
    # body_timeout_seconds of the headers' end, so a client trickling bytes cannot hold a connection.
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=60.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, gt=0)
    # One page holds a typical federation's whole catalog: fewer round trips, and clients that
    # ignore nextCursor still see every tool (bench/fanout.py: 1000 tools in one 2.4 ms request).
    page_size: int = Field(default=1000, gt=0, le=10_000)
    session_idle_seconds: float = Field(default=1800.0, gt=0)
    # A session id is refused everywhere this long after its `initialize` (the client starts a
    # new session, as MCP clients do on 404): it bounds what a leaked id is worth.
    # At most a day: ended sessions are remembered through change notices kept for a day.
    session_max_age_seconds: float = Field(default=86_400.0, gt=0, le=86_400)
    max_sessions: int = Field(default=10_000, gt=0)
    # Calls one principal may have in flight on this replica; more fail at once (principal_busy,
    # inflight.py). 0 turns the cap off. The admin's concurrency rules are the cross-replica ones.
    max_in_flight_per_principal: int = Field(default=20, ge=0)


class QuotaSettings(BaseModel):
    """Rate/concurrency limits, the loop breaker and kill switches (docs/limits.md).

    The rules themselves are configuration (`limits:`), stored in the database; these are the
    process's knobs. Counters live in Redis when `TOLLHOUSE_REDIS_URL` is set, else in memory.
    """

    model_config = {"frozen": True}

    # Every Redis key tollhouse writes starts with this (several gateways may share one Redis).
    redis_prefix: str = Field(default="tollhouse", min_length=1, max_length=64)
    # A Redis command that takes longer counts as "unreachable" (the limit's failure_mode applies).
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    # After a Redis failure, calls skip Redis for this long before trying it again.
    redis_retry_seconds: float = Field(default=1.0, gt=0)
    # Loop breaker: more than `loop_threshold` identical calls (principal, tool, arguments) within
    # `loop_window_seconds` are refused; 0 turns it off.
    loop_threshold: int = Field(default=20, ge=0)
    loop_window_seconds: int = Field(default=10, gt=0)
    # How often a replica re-reads limits and kill switches changed elsewhere (one row when unchanged).
    poll_seconds: float = Field(default=2.0, gt=0)
    # A concurrency slot held in Redis expires after this long even if its replica died holding it.
    concurrency_lease_seconds: float = Field(default=600.0, gt=0)


class UsageSinkSettings(BaseModel):
    """One place usage events are shipped to (docs/metering.md)."""

    model_config = {"frozen": True}

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    type: Literal["jsonl", "webhook", "openmeter"]
    path: str | None = None  # jsonl: the file events are appended to
    url: str | None = None  # webhook / openmeter: where batches are POSTed
    token: SecretStr | None = None  # sent as `Authorization: Bearer …` when set
    timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _target(self) -> UsageSinkSettings:
        if self.type == "jsonl" and not self.path:
            raise ValueError(f"usage sink {self.name}: a jsonl sink needs 'path'")
        if self.type != "jsonl" and not self.url:
            raise ValueError(f"usage sink {self.name}: a {self.type} sink needs 'url'")
        return self


class UsageSettings(BaseModel):
    """Usage events: the writer, the outbox and its sinks, budget reservations (docs/metering.md)."""

    model_config = {"frozen": True}

    # `TOLLHOUSE_USAGE__SINKS='[{"name": "file", "type": "jsonl", "path": "usage.jsonl"}]'`
    sinks: tuple[UsageSinkSettings, ...] = ()
    # Events waiting in memory for their group commit; beyond this the oldest are dropped (counted).
    queue_limit: int = Field(default=100_000, gt=0)
    write_batch: int = Field(default=500, gt=0)
    ship_batch: int = Field(default=200, gt=0)
    # Undelivered events kept per sink; beyond this the oldest are given up on for that sink (counted).
    max_backlog: int = Field(default=1_000_000, gt=0)
    retry_min_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=60.0, gt=0)
    # A claimed batch not acknowledged within this long is delivered again (by any replica).
    lease_seconds: float = Field(default=60.0, gt=0)
    # How often an idle shipper looks for rows other replicas wrote.
    poll_seconds: float = Field(default=1.0, gt=0)
    # A budget reservation whose call never settled (a crashed replica) stops counting after this.
    reservation_ttl_seconds: float = Field(default=300.0, gt=0)


class UpstreamDefaults(BaseModel):
    """How the gateway treats upstreams in general."""

    model_config = {"frozen": True}

    sync_interval_seconds: float = Field(default=300.0, gt=0)
    retry_min_seconds: float = Field(default=0.5, gt=0)
    retry_max_seconds: float = Field(default=30.0, gt=0)
    max_response_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    breaker_threshold: int = Field(default=3, gt=0)
    # Calls in flight to one upstream on this replica (a server's `max_in_flight` overrides it);
    # more fail at once (upstream_busy, inflight.py). 0 turns the cap off.
    max_in_flight: int = Field(default=100, ge=0)
    # Safe retries (retries.py): how many more attempts a call may get, after a jittered pause
    # of up to `retry_backoff_seconds` (doubling per attempt).
    max_retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_seconds: float = Field(default=0.05, ge=0, le=10)
    # URLs learned from an upstream's OAuth metadata pass the SSRF guard (auth/ssrf.py). Dev
    # mode lets them be plain-http loopback (a test authorization server); `private` opens
    # RFC 1918 ranges for an internal authorization server.
    oauth_allow_loopback_http: bool = False
    oauth_allow_private: bool = False


class A2ASettings(BaseModel):
    """A2A agents: card fetching, and the URLs a peer may make tollhouse (or an agent) reach."""

    model_config = {"frozen": True}

    card_max_bytes: int = Field(default=256 * 1024, gt=0)
    # Push-notification URLs come from callers and are validated like any peer URL (SSRF);
    # these open loopback (http too) or private ranges deliberately (tests, internal receivers).
    push_allow_loopback_http: bool = False
    push_allow_private: bool = False
    # An interface URL on another origin than the registered card URL is checked the same way.
    interface_allow_loopback_http: bool = False
    interface_allow_private: bool = False


class ConsoleSettings(BaseModel):
    """The web console at `/ui/` (docs/console.md)."""

    model_config = {"frozen": True}

    enabled: bool = True
    # A console sign-in lasts this long at most; its access token is refreshed as it goes.
    session_ttl_seconds: int = Field(default=8 * 3600, ge=300, le=7 * 86_400)
    # Sign in through an external identity provider (one of auth.external_issuers) with the
    # client it registered for the console; unset: the built-in authorization server.
    issuer: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scopes: str = Field(default="openid", min_length=1, max_length=500)
    # The `resource` the console asks the provider for (default: public_url, tollhouse's audience).
    resource: str | None = None


class ClusterSettings(BaseModel):
    """Several replicas: change notices between them, and how a replica stops (docs/operations.md)."""

    model_config = {"frozen": True}

    # How often a replica reads the change log when no doorbell (Redis, PostgreSQL) woke it.
    change_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    # SIGTERM: readiness fails at once, new connections are refused, and calls in flight get
    # this long to finish before they are cancelled.
    drain_seconds: float = Field(default=30.0, ge=1)


class AuditSettings(BaseModel):
    """The audit trail: durability, checkpoints, retention (docs/audit.md)."""

    model_config = {"frozen": True}

    # A tools/call answer waits until its record is committed (durable before response).
    # False: records are queued and group-committed after the answer (a crash can lose the last
    # batch); only for deployments that accept that, and for measuring what durability costs.
    durable: bool = True
    # When the audit store cannot commit, tools/call is refused (fail closed). False: answer
    # anyway and keep retrying the records.
    fail_closed: bool = True
    # Signed checkpoints: at least every `checkpoint_seconds`, or every `checkpoint_records` records.
    checkpoint_seconds: float = Field(default=60.0, gt=0)
    checkpoint_records: int = Field(default=10_000, gt=0)
    # Each checkpoint is also appended (one JSON line) to this file: an external copy to publish.
    checkpoint_file: str | None = None
    retention_days: int = Field(default=400, gt=0)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    write_batch: int = Field(default=500, gt=0)
    # Group commit: the writer waits this long for more records before a commit (a commit costs
    # ~0.7 ms of CPU, a record ~0.1 ms), so busy gateways commit many records at once.
    commit_linger_ms: float = Field(default=1.0, ge=0, le=100)
    queue_limit: int = Field(default=100_000, gt=0)
    # Keep the (guardrail-redacted) arguments in each record, besides their SHA-256.
    record_arguments: bool = False
    # Refused authentications: at most one record per (reason, source address) per this interval;
    # the next record counts the ones left out.
    auth_failure_interval_seconds: float = Field(default=1.0, ge=0)


class TelemetrySettings(BaseModel):
    """Traces, metrics and logs (docs/operations.md, Telemetry)."""

    model_config = {"frozen": True}

    # OTLP/HTTP collector base URL (`http://collector:4318`); unset: nothing is exported.
    otlp_endpoint: str | None = None
    # Extra headers for the collector, `key=value,key=value` (may hold an API key: kept secret).
    otlp_headers: SecretStr | None = None
    service_name: str = Field(default="tollhouse", min_length=1)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    metrics_export_seconds: float = Field(default=60.0, gt=0)
    # "json": one JSON object per log line, with trace_id/span_id when a span is current.
    log_format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """Everything a tollhouse process needs to start; defaults need nothing else running."""

    model_config = SettingsConfigDict(
        env_prefix="TOLLHOUSE_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: str = "./.tollhouse"
    # This replica's name in metrics (service.instance.id) and records; the host name by default.
    node_name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    database_url: str | None = None
    admin_token: SecretStr | None = None
    # Master keys `kid:base64url,…`, newest first (auth/keyring.py); unset: kept under data_dir.
    secret_keys: SecretStr | None = None
    # Shared counters for limits across replicas (`redis://…`); unset: in-process counters.
    redis_url: SecretStr | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    limits: LimitsSettings = LimitsSettings()
    upstreams: UpstreamDefaults = UpstreamDefaults()
    auth: AuthSettings = AuthSettings()
    quotas: QuotaSettings = QuotaSettings()
    usage: UsageSettings = UsageSettings()
    audit: AuditSettings = AuditSettings()
    a2a: A2ASettings = A2ASettings()
    console: ConsoleSettings = ConsoleSettings()
    cluster: ClusterSettings = ClusterSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

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
