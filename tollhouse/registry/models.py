"""Frozen runtime records of the registry: what the gateway decides with.

These are plain values. `tables.py` maps them to rows; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal

import orjson

JSONValue = Any
JSONObject = dict[str, Any]

UPSTREAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
RESERVED_NAMES = frozenset({"tollhouse"})
SEPARATOR = "__"
MAX_EXPOSED_NAME = 128

Transport = Literal["http", "sse", "stdio", "a2a"]
AgentTools = Literal["skills", "none"]
Approval = Literal["first-use", "manual"]
FailureMode = Literal["open", "closed"]
CacheScope = Literal["private", "public"]
Disclosure = Literal["full", "search"]
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


AuthType = Literal[
    "none", "bearer", "header", "oauth_client_credentials", "token_exchange", "oauth_authorization_code"
]
OAUTH_AUTH_TYPES: frozenset[str] = frozenset(
    {"oauth_client_credentials", "token_exchange", "oauth_authorization_code"}
)


@dataclass(frozen=True)
class UpstreamAuth:
    """The gateway's own credential for one upstream: references and settings, never a secret value.

    `bearer` sends `Authorization: Bearer <token>`; `header` sends `<header>: <value>`. The
    token or value comes from the environment variable `token_env`/`value_env` or, when that
    is unset, from the encrypted secret store (field `token`/`value`). The OAuth types get
    a token from an authorization server: the gateway's own (`oauth_client_credentials`),
    one per user by RFC 8693 exchange (`token_exchange`) or by the user's consent
    (`oauth_authorization_code`); their client secret is `client_secret_env` or the stored
    field `client_secret`. The agent's token is never one of these.
    """

    type: AuthType = "none"
    token_env: str | None = None
    header: str | None = None
    value_env: str | None = None
    client_id: str | None = None
    client_secret_env: str | None = None
    token_url: str | None = None
    authorization_url: str | None = None
    scope: str | None = None
    audience: str | None = None
    resource: str | None = None

    @property
    def stored_secret_field(self) -> str | None:
        """The secret-store field this credential reads (None when it names a variable or has none)."""
        if self.type == "bearer":
            return None if self.token_env else "token"
        if self.type == "header":
            return None if self.value_env else "value"
        if self.type in OAUTH_AUTH_TYPES:
            return None if self.client_secret_env else "client_secret"
        return None


@dataclass(frozen=True)
class AgentOptions:
    """How an A2A agent (an upstream with transport `a2a`) is registered.

    Its card comes from `Upstream.url` (the card URL) or, when that is None, from `card`
    (an inline card). With `require_signature`, a card is accepted only when one of its JWS
    signatures verifies with a key of `jwks`. `tools` says whether its skills are also
    exposed as MCP tools `{agent}__{skill}`.
    """

    card: JSONObject | None = None
    require_signature: bool = False
    jwks: JSONObject | None = None
    tools: AgentTools = "skills"


@dataclass(frozen=True)
class Upstream:
    """A registered upstream: an MCP server, or an A2A agent (transport `a2a`, options in `a2a`)."""

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
    # An admin vouches for this server: its tool annotations (readOnlyHint, destructiveHint)
    # may then inform policy. Untrusted annotations are never believed.
    trusted: bool = False
    connect_timeout_seconds: float = 5.0
    call_timeout_seconds: float = 60.0
    # Step-up: original tool name (or glob) -> the OAuth scopes a token needs to call it.
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Calls in flight to it on one replica; None: the gateway's `upstreams.max_in_flight`.
    max_in_flight: int | None = None
    # Original tool names (or globs) an admin marked idempotent: retried after any transport failure.
    idempotent: tuple[str, ...] = ()
    a2a: AgentOptions | None = None
    # Catalog: what search and the registry listing show of it.
    description: str | None = None
    tags: tuple[str, ...] = ()
    # The official MCP Registry `server.json` it was imported from (registry/server_json.py).
    registry: JSONObject | None = None
    # Result cache for its read-only tools (trusted servers only); None: what the upstream advertises,
    # else the gateway default (gateway/result_cache.py).
    cache_ttl_seconds: float | None = None
    cache_scope: CacheScope | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def is_agent(self) -> bool:
        """True for an A2A agent."""
        return self.transport == "a2a"

    def scopes_for(self, tool: str) -> tuple[str, ...]:
        """Every scope a call of `tool` needs (the union of all matching patterns), sorted."""
        if not self.scopes:
            return ()
        needed = {s for pattern, scopes in self.scopes.items() if fnmatchcase(tool, pattern) for s in scopes}
        return tuple(sorted(needed))

    def marked_idempotent(self, tool: str) -> bool:
        """True when an admin marked the original tool name `tool` idempotent (a glob matches it)."""
        return any(fnmatchcase(tool, pattern) for pattern in self.idempotent)


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
    card: JSONObject | None = None  # an A2A agent's card as fetched (pinned like instructions)

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
    # "search": its endpoint lists the catalog meta-tools instead of every member (gateway/disclosure.py).
    disclosure: Disclosure = "full"
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
    # OAuth: a confidential client holds a secret's hash; public clients (DCR, CIMD) hold none.
    secret_hash: str | None = None
    kind: ClientKind = "confidential"
    registration: Registration = "admin"
    redirect_uris: tuple[str, ...] = ()
    grant_types: tuple[str, ...] = ("client_credentials",)
    scopes: tuple[str, ...] = ()  # the scopes it may be granted; empty means the default set
    client_name: str | None = None

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


ClientKind = Literal["confidential", "public"]
Registration = Literal["admin", "dcr", "cimd"]
ROLES: tuple[str, ...] = ("admin", "approver", "auditor", "viewer")
TEAM_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$")


@dataclass(frozen=True)
class Team:
    """A team: what clients bill to and users belong to."""

    name: str
    description: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class User:
    """A person who signs in to the built-in authorization server (or the console)."""

    subject: str
    password_hash: str | None = None  # argon2id; None: cannot sign in with a password
    display_name: str | None = None
    roles: tuple[str, ...] = ()
    teams: tuple[str, ...] = ()
    disabled: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class AuthCode:
    """A pending authorization code (stored by hash, used at most once)."""

    code_hash: str
    client_id: str
    subject: str
    redirect_uri: str
    scope: str
    resource: str
    code_challenge: str
    expires_at: datetime


@dataclass(frozen=True)
class RefreshGrant:
    """A refresh token (stored by hash) in its rotation family."""

    token_hash: str
    family_id: str
    client_id: str
    subject: str
    scope: str
    resource: str
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


POLICY_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class PolicyEntry:
    """A stored authorization policy: its Cedar text, and the YAML sugar it came from (if any).

    The registry keeps policies; it does not judge them (tollhouse.policies compiles and
    validates them). `sugar` is kept so an export writes back what the admin wrote.
    """

    id: str
    cedar: str
    sugar: JSONObject | None = None
    description: str | None = None
    updated_by: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


AccessKind = Literal["tool", "agent"]
AccessStatus = Literal["pending", "granted", "declined", "withdrawn"]


@dataclass(frozen=True)
class AccessRequest:
    """A principal's request for a tool (`server__tool`) or an A2A agent it may not use, and its decision.

    A grant is a policy (`policy_id`), scoped to the requester or its team and valid until
    `expires_at` (None: until removed).
    """

    id: str
    created_at: datetime
    principal_key: str
    subject: str
    target: str
    kind: AccessKind
    status: AccessStatus = "pending"
    client_id: str | None = None
    team: str | None = None
    user: str | None = None
    reason: str | None = None
    duration_seconds: int | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    note: str | None = None
    policy_id: str | None = None
    expires_at: datetime | None = None
