"""SQLModel tables of the registry and their mapping to and from the frozen records.

The only module that imports sqlmodel. Rows never leave the store: it converts them to
`models` records inside the session. No secret is stored in plaintext: an upstream's `auth`
holds the *names* of environment variables, a client holds only its key's hash, and
`upstream_secrets` / `user_upstream_tokens` hold AES-GCM ciphertexts (auth/vault.py).
Keep `migrations/versions/` in step with these classes (a test compares them).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

from tollhouse.registry.models import (
    AccessRequest,
    AgentOptions,
    CatalogEntry,
    ClientRecord,
    Health,
    JSONObject,
    Toolset,
    Upstream,
    UpstreamAuth,
    UpstreamCatalog,
)
from tollhouse.registry.pins import Pin

__all__ = [
    "A2A_TASKS",
    "CATALOG_ENTRIES",
    "CHANGE_NOTICES",
    "CLIENTS",
    "KILL_SWITCHES",
    "LIMITS",
    "TOOLSETS",
    "TOOL_PINS",
    "UPSTREAMS",
    "UPSTREAM_META",
    "UPSTREAM_SECRETS",
    "USAGE_EVENTS",
    "USAGE_OUTBOX",
    "USER_UPSTREAM_TOKENS",
    "A2ATaskRow",
    "CatalogEntryRow",
    "ChangeNoticeRow",
    "ClientRow",
    "KillSwitchRow",
    "LimitRow",
    "SettingRow",
    "ToolPinRow",
    "ToolsetRow",
    "UTCDateTime",
    "UpstreamMetaRow",
    "UpstreamRow",
    "UpstreamSecretRow",
    "UsageEventRow",
    "UsageOutboxRow",
    "UserUpstreamTokenRow",
    "catalog_of",
    "metadata",
    "utc",
]

metadata = SQLModel.metadata


def utc(value: datetime) -> datetime:
    """`value` in UTC.

    Raises:
        ValueError: `value` is naive, so its zone is unknown.
    """
    if value.tzinfo is None:
        raise ValueError("naive datetime: pass a timezone-aware one")
    return value.astimezone(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC; SQLite keeps no zone, so it gets the naive UTC time."""
        if value is None:
            return None
        value = utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to what SQLite returns; convert what PostgreSQL returns."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UpstreamRow(SQLModel, table=True):
    """A registered upstream MCP server, with its last observed health."""

    __tablename__ = "upstreams"

    name: str = Field(primary_key=True)
    transport: str
    url: str | None = Field(default=None, sa_type=sa.Text)
    command: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    env: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON)
    cwd: str | None = Field(default=None, sa_type=sa.Text)
    auth: dict[str, str | None] = Field(default_factory=dict, sa_type=sa.JSON)
    enabled: bool
    approval: str
    failure_mode: str = Field(default="open", sa_column_kwargs={"server_default": "open"})
    trusted: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    connect_timeout_seconds: float
    call_timeout_seconds: float
    scopes: dict[str, list[str]] = Field(default_factory=dict, sa_type=sa.JSON)
    max_in_flight: int | None = None
    idempotent: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    a2a: JSONObject | None = Field(default=None, sa_type=sa.JSON)
    description: str | None = Field(default=None, sa_type=sa.Text)
    tags: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    # Upstream.registry (the attribute name `registry` is SQLAlchemy's own).
    server_json: JSONObject | None = Field(default=None, sa_type=sa.JSON)
    cache_ttl_seconds: float | None = None
    cache_scope: str | None = None
    health_status: str = Field(default="unknown")
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    checked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)

    @classmethod
    def of(cls, upstream: Upstream, created_at: datetime, updated_at: datetime) -> UpstreamRow:
        """A new row for `upstream`, its health unknown."""
        return cls(
            name=upstream.name, created_at=utc(created_at), updated_at=utc(updated_at), **_config(upstream)
        )

    def assign(self, upstream: Upstream, updated_at: datetime) -> None:
        """Copy the configuration of `upstream` onto this row, keeping created_at and health."""
        for column, value in _config(upstream).items():
            setattr(self, column, value)
        self.updated_at = utc(updated_at)

    def to_upstream(self) -> Upstream:
        """The frozen record."""
        return Upstream(
            name=self.name,
            transport=self.transport,  # type: ignore[arg-type]  # written from a Transport
            url=self.url,
            command=tuple(self.command),
            env=dict(self.env),
            cwd=self.cwd,
            auth=UpstreamAuth(**self.auth),  # type: ignore[arg-type]
            enabled=self.enabled,
            approval=self.approval,  # type: ignore[arg-type]
            failure_mode=self.failure_mode,  # type: ignore[arg-type]  # written from a FailureMode
            trusted=self.trusted,
            connect_timeout_seconds=self.connect_timeout_seconds,
            call_timeout_seconds=self.call_timeout_seconds,
            scopes={pattern: tuple(scopes) for pattern, scopes in (self.scopes or {}).items()},
            max_in_flight=self.max_in_flight,
            idempotent=tuple(self.idempotent or ()),
            a2a=AgentOptions(**self.a2a) if self.a2a is not None else None,
            description=self.description,
            tags=tuple(self.tags or ()),
            registry=self.server_json,
            cache_ttl_seconds=self.cache_ttl_seconds,
            cache_scope=self.cache_scope,  # type: ignore[arg-type]  # written from a CacheScope
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def to_health(self) -> Health:
        """The last observed health."""
        return Health(
            status=self.health_status,  # type: ignore[arg-type]
            last_error=self.last_error,
            checked_at=self.checked_at,
        )


def _config(upstream: Upstream) -> dict[str, Any]:
    return {
        "transport": upstream.transport,
        "url": upstream.url,
        "command": list(upstream.command),
        "env": dict(upstream.env),
        "cwd": upstream.cwd,
        "auth": asdict(upstream.auth),
        "enabled": upstream.enabled,
        "approval": upstream.approval,
        "failure_mode": upstream.failure_mode,
        "trusted": upstream.trusted,
        "connect_timeout_seconds": upstream.connect_timeout_seconds,
        "call_timeout_seconds": upstream.call_timeout_seconds,
        "scopes": {pattern: list(scopes) for pattern, scopes in upstream.scopes.items()},
        "max_in_flight": upstream.max_in_flight,
        "idempotent": list(upstream.idempotent),
        "a2a": asdict(upstream.a2a) if upstream.a2a is not None else None,
        "description": upstream.description,
        "tags": list(upstream.tags),
        "server_json": upstream.registry,
        "cache_ttl_seconds": upstream.cache_ttl_seconds,
        "cache_scope": upstream.cache_scope,
    }


class UpstreamMetaRow(SQLModel, table=True):
    """What an upstream said about itself at its last catalog sync; present once synced."""

    __tablename__ = "upstream_meta"

    server: str = Field(primary_key=True, foreign_key="upstreams.name", ondelete="CASCADE")
    capabilities: JSONObject = Field(default_factory=dict, sa_type=sa.JSON)
    server_info: JSONObject = Field(default_factory=dict, sa_type=sa.JSON)
    instructions: str | None = Field(default=None, sa_type=sa.Text)
    protocol_version: str | None = None
    synced_at: datetime = Field(sa_type=UTCDateTime)
    card: JSONObject | None = Field(default=None, sa_type=sa.JSON)

    @classmethod
    def of(cls, catalog: UpstreamCatalog, synced_at: datetime) -> UpstreamMetaRow:
        """The meta row of `catalog`."""
        return cls(
            server=catalog.server,
            capabilities=catalog.capabilities,
            server_info=catalog.server_info,
            instructions=catalog.instructions,
            protocol_version=catalog.protocol_version,
            synced_at=utc(synced_at),
            card=catalog.card,
        )


class CatalogEntryRow(SQLModel, table=True):
    """One tool, resource, resource template or prompt of an upstream's last synced catalog."""

    __tablename__ = "catalog_entries"

    # The composite primary key is the unique (server, kind, key) constraint.
    server: str = Field(primary_key=True, foreign_key="upstreams.name", ondelete="CASCADE")
    kind: str = Field(primary_key=True)
    key: str = Field(primary_key=True, sa_type=sa.Text)
    position: int
    definition: JSONObject = Field(sa_type=sa.JSON)
    sha256: str
    seen_at: datetime = Field(sa_type=UTCDateTime)

    @classmethod
    def of(cls, entry: CatalogEntry, position: int, seen_at: datetime) -> CatalogEntryRow:
        """The row of `entry`, `position` being its place in the upstream's listing."""
        return cls(
            server=entry.server,
            kind=entry.kind,
            key=entry.key,
            position=position,
            definition=entry.definition,
            sha256=entry.sha256,
            seen_at=utc(seen_at),
        )

    def to_entry(self) -> CatalogEntry:
        """The frozen entry, with the hash as stored."""
        return CatalogEntry(self.server, self.kind, self.key, self.definition, self.sha256)  # type: ignore[arg-type]


class ClientRow(SQLModel, table=True):
    """An API client; `key_hash` is the hash of its API key, never the key."""

    __tablename__ = "clients"
    __table_args__ = (sa.UniqueConstraint("name", name="uq_clients_name"),)

    client_id: str = Field(primary_key=True)
    name: str
    team: str | None = None
    key_hash: str | None = Field(default=None, unique=True, index=True)
    key_prefix: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    secret_hash: str | None = None
    kind: str = Field(default="confidential", sa_column_kwargs={"server_default": "confidential"})
    registration: str = Field(default="admin", sa_column_kwargs={"server_default": "admin"})
    redirect_uris: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    grant_types: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    scopes: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    client_name: str | None = Field(default=None, sa_type=sa.Text)

    @classmethod
    def of(cls, client: ClientRecord, created_at: datetime) -> ClientRow:
        """The row of `client`."""
        return cls(
            client_id=client.client_id,
            name=client.name,
            team=client.team,
            key_hash=client.key_hash,
            key_prefix=client.key_prefix,
            created_at=utc(created_at),
            revoked_at=None if client.revoked_at is None else utc(client.revoked_at),
            secret_hash=client.secret_hash,
            kind=client.kind,
            registration=client.registration,
            redirect_uris=list(client.redirect_uris),
            grant_types=list(client.grant_types),
            scopes=list(client.scopes),
            client_name=client.client_name,
        )

    def to_client(self) -> ClientRecord:
        """The frozen record."""
        return ClientRecord(
            client_id=self.client_id,
            name=self.name,
            team=self.team,
            key_hash=self.key_hash,
            key_prefix=self.key_prefix,
            created_at=self.created_at,
            revoked_at=self.revoked_at,
            secret_hash=self.secret_hash,
            kind=self.kind,  # type: ignore[arg-type]  # written from a ClientKind
            registration=self.registration,  # type: ignore[arg-type]
            redirect_uris=tuple(self.redirect_uris or ()),
            grant_types=tuple(self.grant_types or ()),
            scopes=tuple(self.scopes or ()),
            client_name=self.client_name,
        )


class TeamRow(SQLModel, table=True):
    """A team."""

    __tablename__ = "teams"

    name: str = Field(primary_key=True)
    description: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(sa_type=UTCDateTime)


class UserRow(SQLModel, table=True):
    """A person; `password_hash` is argon2id, never the password."""

    __tablename__ = "users"

    subject: str = Field(primary_key=True)
    password_hash: str | None = Field(default=None, sa_type=sa.Text)
    display_name: str | None = Field(default=None, sa_type=sa.Text)
    roles: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    teams: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    disabled: bool = False
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AuthCodeRow(SQLModel, table=True):
    """An authorization code awaiting its token request; the code itself is stored as a hash."""

    __tablename__ = "oauth_codes"

    code_hash: str = Field(primary_key=True)
    client_id: str = Field(sa_type=sa.Text)
    subject: str
    redirect_uri: str = Field(sa_type=sa.Text)
    scope: str = Field(sa_type=sa.Text)
    resource: str = Field(sa_type=sa.Text)
    code_challenge: str
    expires_at: datetime = Field(sa_type=UTCDateTime)


class RefreshTokenRow(SQLModel, table=True):
    """A refresh token (by hash) in its rotation family; a reused one revokes the family."""

    __tablename__ = "refresh_tokens"

    token_hash: str = Field(primary_key=True)
    family_id: str = Field(index=True)
    client_id: str = Field(sa_type=sa.Text)
    subject: str
    scope: str = Field(sa_type=sa.Text)
    resource: str = Field(sa_type=sa.Text)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RevokedTokenRow(SQLModel, table=True):
    """An access token revoked before its expiry (by `jti`), kept until it would have expired."""

    __tablename__ = "revoked_tokens"

    jti: str = Field(primary_key=True)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime = Field(sa_type=UTCDateTime, index=True)


class ConsentRow(SQLModel, table=True):
    """A user's consent to a client for some scopes (the per-user registry of approved clients)."""

    __tablename__ = "consents"

    subject: str = Field(primary_key=True)
    client_id: str = Field(primary_key=True, sa_type=sa.Text)
    scopes: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    created_at: datetime = Field(sa_type=UTCDateTime)


class SettingRow(SQLModel, table=True):
    """A small persisted gateway setting (e.g. the admin token hash)."""

    __tablename__ = "settings_kv"

    key: str = Field(primary_key=True)
    value: str = Field(sa_type=sa.Text)


class ToolsetRow(SQLModel, table=True):
    """A toolset: exposed names and glob patterns, and aliases (shown name -> exposed name)."""

    __tablename__ = "toolsets"

    name: str = Field(primary_key=True)
    tools: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    aliases: dict[str, str] = Field(default_factory=dict, sa_type=sa.JSON)
    description: str | None = Field(default=None, sa_type=sa.Text)
    disclosure: str = Field(default="full", sa_column_kwargs={"server_default": "full"})
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)

    @classmethod
    def of(cls, toolset: Toolset, created_at: datetime, updated_at: datetime) -> ToolsetRow:
        """A new row for `toolset`."""
        return cls(
            name=toolset.name,
            tools=list(toolset.tools),
            aliases=dict(toolset.aliases),
            description=toolset.description,
            disclosure=toolset.disclosure,
            created_at=utc(created_at),
            updated_at=utc(updated_at),
        )

    def assign(self, toolset: Toolset, updated_at: datetime) -> None:
        """Copy the definition of `toolset` onto this row, keeping created_at."""
        self.tools = list(toolset.tools)
        self.aliases = dict(toolset.aliases)
        self.description = toolset.description
        self.disclosure = toolset.disclosure
        self.updated_at = utc(updated_at)

    def to_toolset(self) -> Toolset:
        """The frozen record."""
        return Toolset(
            name=self.name,
            tools=tuple(self.tools),
            aliases=dict(self.aliases),
            description=self.description,
            disclosure="search" if self.disclosure == "search" else "full",
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


def catalog_of(meta: UpstreamMetaRow, rows: list[CatalogEntryRow]) -> UpstreamCatalog:
    """The frozen catalog of one upstream from its meta row and its entry rows in position order."""
    by_kind: dict[str, list[JSONObject]] = {"tool": [], "resource": [], "resource_template": [], "prompt": []}
    for row in rows:
        by_kind[row.kind].append(row.definition)
    return UpstreamCatalog(
        server=meta.server,
        tools=tuple(by_kind["tool"]),
        resources=tuple(by_kind["resource"]),
        resource_templates=tuple(by_kind["resource_template"]),
        prompts=tuple(by_kind["prompt"]),
        capabilities=meta.capabilities,
        server_info=meta.server_info,
        instructions=meta.instructions,
        protocol_version=meta.protocol_version,
        synced_at=meta.synced_at,
        card=meta.card,
    )


class A2ATaskRow(SQLModel, table=True):
    """Who owns an A2A task (and its context) created through the gateway: only they may use it."""

    __tablename__ = "a2a_tasks"

    agent: str = Field(primary_key=True, foreign_key="upstreams.name", ondelete="CASCADE")
    task_id: str = Field(primary_key=True)
    context_id: str | None = Field(default=None, index=True)
    owner: str
    created_at: datetime = Field(sa_type=UTCDateTime)


class UpstreamSecretRow(SQLModel, table=True):
    """One stored secret of an upstream (`token`, `value`, `client_secret`), sealed by auth/vault.py."""

    __tablename__ = "upstream_secrets"

    upstream: str = Field(primary_key=True, foreign_key="upstreams.name", ondelete="CASCADE")
    field: str = Field(primary_key=True)
    kid: str
    ciphertext: str = Field(sa_type=sa.Text)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class UserUpstreamTokenRow(SQLModel, table=True):
    """One user's OAuth tokens for one upstream (JSON, sealed by auth/vault.py)."""

    __tablename__ = "user_upstream_tokens"

    subject: str = Field(primary_key=True)
    upstream: str = Field(primary_key=True, foreign_key="upstreams.name", ondelete="CASCADE")
    kid: str
    ciphertext: str = Field(sa_type=sa.Text)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class PolicyRow(SQLModel, table=True):
    """An authorization policy (Cedar text, and the sugar it was written in, if any)."""

    __tablename__ = "policies"

    id: str = Field(primary_key=True)
    cedar: str = Field(sa_type=sa.Text)
    sugar: dict[str, Any] | None = Field(default=None, sa_type=sa.JSON)
    description: str | None = Field(default=None, sa_type=sa.Text)
    updated_by: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AccessRequestRow(SQLModel, table=True):
    """An access request (gateway/access_requests.py): who asked for what, why, and what was decided."""

    __tablename__ = "access_requests"
    __table_args__ = (sa.Index("ix_access_requests_status_created", "status", "created_at"),)

    id: str = Field(primary_key=True)
    created_at: datetime = Field(sa_type=UTCDateTime)
    principal_key: str = Field(index=True)
    subject: str
    client_id: str | None = None
    team: str | None = None
    user: str | None = None
    target: str = Field(sa_type=sa.Text)
    kind: str
    reason: str | None = Field(default=None, sa_type=sa.Text)
    duration_seconds: int | None = None
    status: str
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decided_by: str | None = None
    note: str | None = Field(default=None, sa_type=sa.Text)
    policy_id: str | None = None
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @classmethod
    def of(cls, request: AccessRequest) -> AccessRequestRow:
        """A row holding `request`."""
        return cls(
            **{f.name: getattr(request, f.name) for f in fields(AccessRequest)},
        )

    def to_request(self) -> AccessRequest:
        """The frozen record."""
        return AccessRequest(**{f.name: getattr(self, f.name) for f in fields(AccessRequest)})


class ToolPinRow(SQLModel, table=True):
    """One pin (registry/pins.py): a tool's or a server's instructions' definition and its approval."""

    __tablename__ = "tool_pins"

    server: str = Field(primary_key=True, foreign_key="upstreams.name", ondelete="CASCADE")
    kind: str = Field(primary_key=True)
    name: str = Field(primary_key=True, sa_type=sa.Text)
    sha256: str
    definition: JSONObject = Field(sa_type=sa.JSON)
    state: str
    reason: str
    approved_sha256: str | None = None
    approved_definition: JSONObject | None = Field(default=None, sa_type=sa.JSON)
    findings: list[JSONObject] = Field(default_factory=list, sa_type=sa.JSON)
    first_seen_at: datetime = Field(sa_type=UTCDateTime)
    decided_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    decided_by: str | None = None

    @classmethod
    def of(cls, pin: Pin) -> ToolPinRow:
        """The row of `pin`."""
        return cls(
            server=pin.server,
            kind=pin.kind,
            name=pin.name,
            sha256=pin.sha256,
            definition=pin.definition,
            state=pin.state,
            reason=pin.reason,
            approved_sha256=pin.approved_sha256,
            approved_definition=pin.approved_definition,
            findings=list(pin.findings),
            first_seen_at=utc(pin.first_seen_at) if pin.first_seen_at else datetime.now(UTC),
            decided_at=utc(pin.decided_at) if pin.decided_at else None,
            decided_by=pin.decided_by,
        )

    def to_pin(self) -> Pin:
        """The frozen pin."""
        return Pin(
            server=self.server,
            kind=self.kind,  # type: ignore[arg-type]  # written from a PinKind
            name=self.name,
            sha256=self.sha256,
            definition=self.definition,
            state=self.state,  # type: ignore[arg-type]  # written from a PinState
            reason=self.reason,
            approved_sha256=self.approved_sha256,
            approved_definition=self.approved_definition,
            findings=tuple(self.findings or ()),
            first_seen_at=self.first_seen_at,
            decided_at=self.decided_at,
            decided_by=self.decided_by,
        )


class LimitRow(SQLModel, table=True):
    """A rate or concurrency limit (registry/limits.py): its definition as JSON, in apply order."""

    __tablename__ = "limits"

    id: str = Field(primary_key=True)
    position: int = 0
    spec: dict[str, Any] = Field(sa_type=sa.JSON)
    updated_by: str | None = None
    updated_at: datetime = Field(sa_type=UTCDateTime)


class KillSwitchRow(SQLModel, table=True):
    """An engaged kill switch: a subject, client or server every replica refuses."""

    __tablename__ = "kill_switches"

    kind: str = Field(primary_key=True)
    value: str = Field(primary_key=True)
    reason: str | None = Field(default=None, sa_type=sa.Text)
    created_by: str | None = None
    created_at: datetime = Field(sa_type=UTCDateTime)


class UsageEventRow(SQLModel, table=True):
    """One usage event (gateway/metering.py): its columns for reports, and the CloudEvent as shipped."""

    __tablename__ = "usage_events"

    id: str = Field(primary_key=True)
    time: datetime = Field(sa_type=UTCDateTime, index=True)
    subject: str
    team: str | None = None
    client_id: str | None = None
    server: str
    tool: str = Field(sa_type=sa.Text)
    method: str
    outcome: str
    duration_ms: int = Field(sa_type=sa.BigInteger)
    upstream_ms: int | None = Field(default=None, sa_type=sa.BigInteger)
    request_bytes: int = Field(sa_type=sa.BigInteger)
    response_bytes: int = Field(sa_type=sa.BigInteger)
    tokens_in: int | None = Field(default=None, sa_type=sa.BigInteger)
    tokens_out: int | None = Field(default=None, sa_type=sa.BigInteger)
    cost_micro: int = Field(sa_type=sa.BigInteger)
    currency: str | None = None
    snapshot_version: int = Field(sa_type=sa.BigInteger)
    event: str = Field(sa_type=sa.Text)
    # Answered from the result cache (gateway/result_cache.py): the upstream did no work.
    cached: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


class UsageOutboxRow(SQLModel, table=True):
    """An event not yet delivered to one sink; deleted once the sink acknowledged it."""

    __tablename__ = "usage_outbox"
    __table_args__ = (sa.Index("ix_usage_outbox_sink_due", "sink", "next_attempt_at"),)

    seq: int | None = Field(default=None, primary_key=True)
    sink: str
    event_id: str = Field(foreign_key="usage_events.id", ondelete="CASCADE")
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)


# Audit columns that `GET /audit/records` filters on, each with an index that ends in the page
# order (time, node, seq), so a filtered newest-first page is an index range scan.
_AUDIT_FILTERED = ("kind", "action", "subject", "client_id", "team", "server", "tool", "outcome")
# The overview counts calls per minute, outcome and tool from the action index alone (0013).
_AUDIT_COVERED = {"action": ("outcome", "server", "tool")}


class AuditRecordRow(SQLModel, table=True):
    """One sealed audit record (tollhouse/audit/chain.py): its place in its chain, its canonical JSON.

    The columns after `record` copy fields of it for the console's and the API's filters (the
    first team only); the record text stays the one source of truth that the chain covers.
    """

    __tablename__ = "audit_records"
    __table_args__ = (
        *(
            sa.Index(f"ix_audit_records_{c}_time", c, "time", "node", "seq", *_AUDIT_COVERED.get(c, ()))
            for c in _AUDIT_FILTERED
        ),
        sa.Index("ix_audit_records_trace_id", "trace_id"),
    )

    node: str = Field(primary_key=True)
    seq: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    time: datetime = Field(sa_type=UTCDateTime, index=True)
    hash: str
    record: str = Field(sa_type=sa.Text)
    kind: str | None = None
    action: str | None = None
    subject: str | None = None
    client_id: str | None = None
    team: str | None = None
    server: str | None = None
    tool: str | None = None
    outcome: str | None = None
    trace_id: str | None = None


class ChangeNoticeRow(SQLModel, table=True):
    """One change a replica made that the others must pick up (gateway/changes.py).

    The log is the source of truth; a Redis or PostgreSQL doorbell only makes replicas read it
    at once instead of at their next poll. Rows older than a day are pruned.
    """

    __tablename__ = "change_notices"

    seq: int | None = Field(default=None, primary_key=True)
    node: str
    topic: str
    subject: str = Field(default="", sa_type=sa.Text)
    at: datetime = Field(sa_type=UTCDateTime, index=True)


class AuditCheckpointRow(SQLModel, table=True):
    """A signed checkpoint of one node's chain (its JSON, as `audit export` writes it)."""

    __tablename__ = "audit_checkpoints"

    node: str = Field(primary_key=True)
    seq: int = Field(primary_key=True, sa_type=sa.BigInteger, sa_column_kwargs={"autoincrement": False})
    created_at: datetime = Field(sa_type=UTCDateTime)
    checkpoint: str = Field(sa_type=sa.Text)


# Typed handles for building WHERE/ORDER BY clauses: mypy sees model attributes as plain values.
UPSTREAM_SECRETS = metadata.tables["upstream_secrets"]
USER_UPSTREAM_TOKENS = metadata.tables["user_upstream_tokens"]
UPSTREAMS = metadata.tables["upstreams"]
UPSTREAM_META = metadata.tables["upstream_meta"]
CATALOG_ENTRIES = metadata.tables["catalog_entries"]
CLIENTS = metadata.tables["clients"]
TOOLSETS = metadata.tables["toolsets"]
USERS = metadata.tables["users"]
REFRESH_TOKENS = metadata.tables["refresh_tokens"]
REVOKED_TOKENS = metadata.tables["revoked_tokens"]
OAUTH_CODES = metadata.tables["oauth_codes"]
CONSENTS = metadata.tables["consents"]
TOOL_PINS = metadata.tables["tool_pins"]
POLICIES = metadata.tables["policies"]
LIMITS = metadata.tables["limits"]
KILL_SWITCHES = metadata.tables["kill_switches"]
USAGE_EVENTS = metadata.tables["usage_events"]
USAGE_OUTBOX = metadata.tables["usage_outbox"]
AUDIT_RECORDS = metadata.tables["audit_records"]
A2A_TASKS = metadata.tables["a2a_tasks"]
CHANGE_NOTICES = metadata.tables["change_notices"]
AUDIT_CHECKPOINTS = metadata.tables["audit_checkpoints"]
