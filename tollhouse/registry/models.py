"""Frozen runtime records of the registry: what the gateway decides with.

These are plain values. `tables.py` maps them to rows; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

JSONValue = Any
JSONObject = dict[str, Any]

UPSTREAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
RESERVED_NAMES = frozenset({"tollhouse"})
SEPARATOR = "__"
MAX_EXPOSED_NAME = 128

Transport = Literal["http", "sse", "stdio"]
Approval = Literal["first-use", "manual"]
FailureMode = Literal["open", "closed"]
HealthState = Literal["unknown", "healthy", "degraded", "down"]
CatalogKind = Literal["tool", "resource", "resource_template", "prompt"]
CATALOG_KINDS: tuple[CatalogKind, ...] = ("tool", "resource", "resource_template", "prompt")


def canonical_json(value: JSONValue) -> bytes:
    """Canonical JSON bytes (sorted keys, no insignificant whitespace) for hashing."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def definition_sha256(definition: JSONObject) -> str:
    """SHA-256 hex digest of a definition's canonical JSON."""
    return hashlib.sha256(canonical_json(definition)).hexdigest()


def valid_upstream_name(name: str) -> bool:
    """True when `name` is a legal, unreserved server or agent name."""
    return bool(UPSTREAM_NAME_RE.match(name)) and name not in RESERVED_NAMES


@dataclass(frozen=True)
class UpstreamAuth:
    """The gateway's own credential for one upstream: a reference, never the agent's token.

    `bearer` sends `Authorization: Bearer <value of env token_env>`; `header` sends
    `<header>: <value of env value_env>`. Values are resolved when the connector starts.
    """

    type: Literal["none", "bearer", "header"] = "none"
    token_env: str | None = None
    header: str | None = None
    value_env: str | None = None


@dataclass(frozen=True)
class Upstream:
    """A registered upstream MCP server."""

    name: str
    transport: Transport = "http"
    url: str | None = None
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    auth: UpstreamAuth = field(default_factory=UpstreamAuth)
    enabled: bool = True
    approval: Approval = "first-use"
    failure_mode: FailureMode = "open"  # closed: while down, the aggregate refuses to list
    connect_timeout_seconds: float = 5.0
    call_timeout_seconds: float = 60.0
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Health:
    """Last observed health of an upstream."""

    status: HealthState = "unknown"
    last_error: str | None = None
    checked_at: datetime | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """One tool, resource, resource template or prompt as last seen upstream."""

    server: str
    kind: CatalogKind
    key: str  # tool/prompt name, resource uri, template uriTemplate
    definition: JSONObject
    sha256: str

    @classmethod
    def of(cls, server: str, kind: CatalogKind, definition: JSONObject) -> CatalogEntry:
        """Build an entry, deriving its key and hash from the definition."""
        key_field = {"tool": "name", "prompt": "name", "resource": "uri", "resource_template": "uriTemplate"}
        return cls(server, kind, str(definition[key_field[kind]]), definition, definition_sha256(definition))


@dataclass(frozen=True)
class UpstreamCatalog:
    """Everything one upstream offered at its last successful sync."""

    server: str
    tools: tuple[JSONObject, ...] = ()
    resources: tuple[JSONObject, ...] = ()
    resource_templates: tuple[JSONObject, ...] = ()
    prompts: tuple[JSONObject, ...] = ()
    capabilities: JSONObject = field(default_factory=dict)
    server_info: JSONObject = field(default_factory=dict)
    instructions: str | None = None
    protocol_version: str | None = None
    synced_at: datetime | None = None

    def entries(self) -> list[CatalogEntry]:
        """All definitions as catalog entries."""
        out: list[CatalogEntry] = []
        for kind, items in (
            ("tool", self.tools),
            ("resource", self.resources),
            ("resource_template", self.resource_templates),
            ("prompt", self.prompts),
        ):
            out.extend(CatalogEntry.of(self.server, kind, d) for d in items)  # type: ignore[arg-type]
        return out


@dataclass(frozen=True)
class Toolset:
    """A named, curated subset of the exposed tools, served at `/mcp/{name}` (a "virtual server").

    `tools` are exposed names or glob patterns over them (`files__read_*`); `aliases` maps a
    name shown in the toolset to the exposed name it stands for.
    """

    name: str
    tools: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ClientRecord:
    """An API client (agent, script) and the team it bills to. The key itself is never stored."""

    client_id: str
    name: str
    team: str | None
    key_hash: str | None
    key_prefix: str | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None
