"""Declarative configuration: parse, validate and render the YAML of `apply`, `serve --config`, `export`.

Pure module: no I/O except `load_config_file` reading the one file it is given. The admin API
receives the same shape as JSON (`config_from_dict`). The sections this version implements
(`gateway`, `servers`, `agents`, `toolsets`, `clients`, …) are validated strictly: an unknown key or a
wrong type is a `ConfigError` naming its path, with list indexes counted from 0
(`servers[1].urll: unknown key`).
Sections of the contract that later versions implement, and sections this version has never heard
of, are ignored with a warning, so a file written for a newer version still loads (DESIGN.md,
"Declarative configuration").

Secrets never appear in a file: upstream credentials name environment variables
(`token_env`, `value_env`, `client_secret_env`), or a file writes `token: ${VAR}` (also `value`,
`client_secret`), which `load_config`/`expand_secret_refs` replace with the variable's value so the
gateway stores it encrypted; a literal value in a file is refused. The admin API's JSON takes
the value itself (it is how a secret is given once); parsed values travel in
`LoadedConfig.secrets`, never in the `Upstream` record, and exports write markers only.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml
from pydantic import ValidationError

from tollhouse.auth.settings import AuthSettings
from tollhouse.registry.limits import MATCH_KEYS, RATE_RE, LimitSpec
from tollhouse.registry.models import (
    MAX_EXPOSED_NAME,
    OAUTH_AUTH_TYPES,
    POLICY_ID_RE,
    RESERVED_NAMES,
    SEPARATOR,
    TEAM_NAME_RE,
    UPSTREAM_NAME_RE,
    AgentOptions,
    AuthType,
    CacheScope,
    ClientRecord,
    PolicyEntry,
    Team,
    Toolset,
    Transport,
    Upstream,
    UpstreamAuth,
    valid_upstream_name,
)

__all__ = [
    "AGENT_KEYS",
    "CLIENT_NAME_RE",
    "IMPLEMENTED_SECTIONS",
    "PLANNED_SECTIONS",
    "ClientSpec",
    "ConfigError",
    "GatewayConfig",
    "LoadedConfig",
    "agent_from_dict",
    "agent_secrets_from_dict",
    "agent_to_dict",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "expand_secret_refs",
    "limit_from_dict",
    "limit_to_dict",
    "load_config",
    "load_config_file",
    "parse_yaml",
    "policy_from_dict",
    "policy_to_dict",
    "render_yaml",
    "server_from_dict",
    "server_secrets_from_dict",
    "server_to_dict",
    "toolset_from_dict",
    "toolset_to_dict",
    "valid_exposed_name",
    "valid_tool_name",
    "valid_tool_pattern",
]

IMPLEMENTED_SECTIONS = (
    "gateway",
    "servers",
    "agents",
    "toolsets",
    "teams",
    "clients",
    "policies",
    "limits",
    "prices",
    "budgets",
)
PLANNED_SECTIONS: tuple[str, ...] = ()

_GATEWAY_KEYS = ("public_url", "auth")
_SERVER_KEYS = (
    "name",
    "url",
    "transport",
    "command",
    "args",
    "env",
    "cwd",
    "approval",
    "failure_mode",
    "trusted",
    "enabled",
    "auth",
    "timeouts",
    "connect_timeout_seconds",
    "call_timeout_seconds",
    "scopes",
    "max_in_flight",
    "idempotent",
    "description",
    "tags",
    "registry",
    "cache_ttl_seconds",
    "cache_scope",
)
AGENT_KEYS = (
    "name",
    "card_url",
    "card",
    "approval",
    "enabled",
    "auth",
    "require_signature",
    "jwks",
    "tools",
    "connect_timeout_seconds",
    "call_timeout_seconds",
    "description",
    "tags",
)
# JWK members that only a private or symmetric key has: a card-verification JWKS holds public keys.
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_AUTH_KEYS = (
    "type",
    "token_env",
    "token",
    "header",
    "value_env",
    "value",
    "client_id",
    "client_secret_env",
    "client_secret",
    "token_url",
    "authorization_url",
    "scope",
    "audience",
    "resource",
)
# Secret-valued auth keys (stored encrypted) and the environment reference each may be given as instead.
SECRET_AUTH_KEYS = {"token": "token_env", "value": "value_env", "client_secret": "client_secret_env"}
_OAUTH_KEYS = (
    "client_id",
    "client_secret_env",
    "client_secret",
    "token_url",
    "scope",
    "audience",
    "resource",
)
# Per type: the keys that apply, and those required (a secret is satisfied by its value or its reference).
_AUTH_FORMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "none": ((), ()),
    "bearer": (("token_env", "token"), ("token",)),
    "header": (("header", "value_env", "value"), ("header", "value")),
    "oauth_client_credentials": (_OAUTH_KEYS, ("client_id",)),
    "token_exchange": (_OAUTH_KEYS, ("client_id",)),
    "oauth_authorization_code": ((*_OAUTH_KEYS, "authorization_url"), ("client_id",)),
}
# Types whose stored secret must exist (the authorization-code client may be a public one).
_SECRET_REQUIRED = frozenset({"bearer", "header", "oauth_client_credentials", "token_exchange"})
_SECRET_REF_RE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_TIMEOUT_KEYS = {"connect_seconds": "connect_timeout_seconds", "call_seconds": "call_timeout_seconds"}
_CLIENT_KEYS = ("name", "team", "scopes")
_TEAM_KEYS = ("name", "description")
_POLICY_KEYS = ("id", "description", "cedar", "allow", "deny", "guardrails")
_TOOLSET_KEYS = ("name", "description", "tools", "aliases", "disclosure")
# prices/budgets: only their keys are checked here; tollhouse.policies (pricing, budgets) validates them.
_PRICE_KEYS = (
    "match",
    "currency",
    "per_call_micro",
    "per_second_micro",
    "per_kib_micro",
    "per_token_micro",
    "estimate_micro",
)
_BUDGET_KEYS = (
    "id",
    "scope",
    "name",
    "period",
    "amount_micro",
    "currency",
    "mode",
    "failure_mode",
    "credits",
)
_LIMIT_KEYS = ("id", "description", "match", "rate", "window", "concurrency", "failure_mode", "per")

_ALL_SECTIONS = IMPLEMENTED_SECTIONS + PLANNED_SECTIONS

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token
CLIENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# MCP tool names (2025-11-25 "Tool names"): 1-128 of A-Z, a-z, 0-9, '_', '-', '.'.
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TOOL_PART_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# fnmatch syntax restricted to '*', '?' and closed bracket sets ('[abc]', '[a-z]', '[!x]') over
# the characters of tool names; no other character is special, so nothing else is accepted.
_GLOB_RE = re.compile(r"^(?:[A-Za-z0-9_.*?-]|\[!?[A-Za-z0-9_.-]+\])+$")
_GLOB_CHARS = frozenset("*?[")
MAX_PATTERN_LENGTH = 256
_DEFAULTS = Upstream(name="defaults")


class ConfigError(Exception):
    """A configuration that cannot be used.

    `path` locates the offending key (`servers[1].url`, empty for the whole document), `message`
    says what is wrong and `source` names the file or request, when known.
    """

    def __init__(self, path: str, message: str, *, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        super().__init__(": ".join(part for part in (source, path, message) if part))


@dataclass(frozen=True)
class GatewayConfig:
    """The `gateway:` section: process-wide settings that a configuration file may set."""

    public_url: str | None = None
    # `gateway.auth` as written (validated against `AuthSettings`); merged over the environment's.
    auth: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ClientSpec:
    """An API client a configuration declares; its credentials are minted when it is created."""

    name: str
    team: str | None = None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration, plus warnings about what was ignored."""

    gateway: GatewayConfig = GatewayConfig()
    servers: tuple[Upstream, ...] = ()
    clients: tuple[ClientSpec, ...] = ()
    warnings: tuple[str, ...] = ()
    toolsets: tuple[Toolset, ...] = ()
    teams: tuple[Team, ...] = ()
    # Policies as written: Cedar text, or sugar that tollhouse.policies compiles at apply.
    policies: tuple[PolicyEntry, ...] = ()
    # The sections the file has: `--prune` prunes policies only when the file speaks of them,
    # so a file about servers cannot delete every policy (and lock everyone out) by omission.
    sections: frozenset[str] = field(default=frozenset(), compare=False)
    # Rate and concurrency limits (tollhouse.policies.quotas enforces them).
    limits: tuple[LimitSpec, ...] = ()
    # Price rules and budgets (with their credit grants) as written; validated where they are applied.
    prices: tuple[Mapping[str, Any], ...] = ()
    budgets: tuple[Mapping[str, Any], ...] = ()
    # server or agent name -> secret field -> value, to be stored encrypted; kept out of repr and logs.
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False)
    # A2A agents (`agents:`): upstreams with transport "a2a"; they share the servers' name space.
    agents: tuple[Upstream, ...] = ()


# --- loading ---------------------------------------------------------------------------------


def parse_yaml(text: str, *, source: str = "<config>") -> dict[str, Any]:
    """Parse YAML text into the top-level mapping (empty for an empty document).

    Raises:
        ConfigError: the text is not YAML, or its top level is not a mapping.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            "", f"not valid YAML{where}: {_one_line(exc.problem or str(exc))}", source=source
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"not valid YAML: {_one_line(str(exc))}", source=source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"the top level must be a mapping, got {_kind(data)}", source=source)
    return data


def load_config(text: str, *, source: str = "<config>") -> LoadedConfig:
    """Parse and validate a YAML configuration.

    Raises:
        ConfigError: the text is not valid YAML or not a valid configuration.
    """
    raw = parse_yaml(text, source=source)
    try:
        raw = expand_secret_refs(raw, os.environ)
    except ConfigError as exc:
        raise ConfigError(exc.path, exc.message, source=source) from None
    return config_from_dict(raw, source=source)


def expand_secret_refs(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A copy of a file's configuration with each `servers[].auth` and `agents[].auth` secret `${VAR}`
    replaced by its value.

    A file never holds a secret: anything else than `${VAR}` there is refused, and so is a
    variable that is unset or empty. Errors name the key and the variable, never a value.

    Raises:
        ConfigError: a literal secret, or a reference to an unset variable.
    """
    out = data
    for section in ("servers", "agents"):
        entries = data.get(section)
        if isinstance(entries, list):
            out = {**out, section: _expand_section(section, entries, environ)}
    return out


def _expand_section(section: str, entries: list[Any], environ: Mapping[str, str]) -> list[Any]:
    expanded: list[Any] = []
    for i, entry in enumerate(entries):
        auth = entry.get("auth") if isinstance(entry, Mapping) else None
        if not isinstance(auth, Mapping) or not any(key in auth for key in SECRET_AUTH_KEYS):
            expanded.append(entry)
            continue
        auth = dict(auth)
        for key, reference in SECRET_AUTH_KEYS.items():
            if key not in auth:
                continue
            where = f"{section}[{i}].auth.{key}"
            match = _SECRET_REF_RE.match(auth[key]) if isinstance(auth[key], str) else None
            if match is None:
                raise ConfigError(
                    where,
                    f"a literal secret is not accepted in a file; use {reference} to name an environment "
                    "variable, or write ${VARIABLE} to store its value encrypted",
                )
            value = environ.get(match.group(1))
            if not value:
                raise ConfigError(where, f"environment variable {match.group(1)} is not set")
            auth[key] = value
        expanded.append({**entry, "auth": auth})
    return expanded


def load_config_file(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, parse and validate a YAML configuration file.

    Raises:
        ConfigError: the file cannot be read, or its content is not a valid configuration.
    """
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("", "the file is not UTF-8 text", source=source) from None
    return load_config(text, source=source)


def config_from_dict(data: Any, *, source: str | None = None) -> LoadedConfig:
    """Validate an already-parsed configuration mapping (YAML or the admin API's JSON).

    Raises:
        ConfigError: the mapping is not a valid configuration.
    """
    try:
        return _config(data)
    except ConfigError as exc:
        if exc.source is None and source is not None:
            raise ConfigError(exc.path, exc.message, source=source) from None
        raise


def _config(data: Any) -> LoadedConfig:
    if data is None:
        return LoadedConfig()
    if not isinstance(data, Mapping):
        raise ConfigError("", f"the top level must be a mapping, got {_kind(data)}")
    warnings: list[str] = []
    for key in data:
        if not isinstance(key, str):
            raise ConfigError("", f"section name {key!r} is not a string")
        if key in PLANNED_SECTIONS:
            warnings.append(f"section '{key}' is not supported by this version yet and was ignored")
        elif key not in IMPLEMENTED_SECTIONS:
            warnings.append(f"unknown section '{key}' was ignored{_suggest(key, _ALL_SECTIONS)}")
    gateway = _gateway(data.get("gateway"))
    parsed = [
        server_secrets_from_dict(item, path=f"servers[{i}]")
        for i, item in enumerate(_list(data, "servers", ""))
    ]
    servers = tuple(upstream for upstream, _ in parsed)
    _no_duplicates([s.name for s in servers], "servers")
    parsed_agents = [
        agent_secrets_from_dict(item, path=f"agents[{i}]") for i, item in enumerate(_list(data, "agents", ""))
    ]
    agents = tuple(upstream for upstream, _ in parsed_agents)
    _no_duplicates([a.name for a in agents], "agents")
    server_at = {s.name: i for i, s in enumerate(servers)}
    for i, agent in enumerate(agents):
        if agent.name in server_at:
            raise ConfigError(
                f"agents[{i}].name",
                f"'{agent.name}' is also servers[{server_at[agent.name]}]: servers and agents share one "
                "name space",
            )
    secrets = {upstream.name: values for upstream, values in [*parsed, *parsed_agents] if values}
    toolsets = tuple(
        toolset_from_dict(item, path=f"toolsets[{i}]") for i, item in enumerate(_list(data, "toolsets", ""))
    )
    _no_duplicates([t.name for t in toolsets], "toolsets")
    clients = tuple(_client(item, f"clients[{i}]") for i, item in enumerate(_list(data, "clients", "")))
    _no_duplicates([c.name for c in clients], "clients")
    teams = tuple(_team(item, f"teams[{i}]") for i, item in enumerate(_list(data, "teams", "")))
    _no_duplicates([t.name for t in teams], "teams")
    policies = tuple(
        policy_from_dict(item, path=f"policies[{i}]") for i, item in enumerate(_list(data, "policies", ""))
    )
    _no_duplicates([p.id for p in policies], "policies", key="id")
    limits = tuple(
        limit_from_dict(item, path=f"limits[{i}]") for i, item in enumerate(_list(data, "limits", ""))
    )
    _no_duplicates([spec.id for spec in limits], "limits", key="id")
    return LoadedConfig(
        gateway=gateway,
        servers=servers,
        clients=clients,
        warnings=tuple(warnings),
        toolsets=toolsets,
        teams=teams,
        policies=policies,
        limits=limits,
        prices=tuple(
            _mapping(item, f"prices[{i}]", _PRICE_KEYS) for i, item in enumerate(_list(data, "prices", ""))
        ),
        budgets=tuple(
            _mapping(item, f"budgets[{i}]", _BUDGET_KEYS) for i, item in enumerate(_list(data, "budgets", ""))
        ),
        sections=frozenset(k for k in data if k in IMPLEMENTED_SECTIONS),
        secrets=secrets,
        agents=agents,
    )


def _gateway(value: Any) -> GatewayConfig:
    if value is None:
        return GatewayConfig()
    data = _mapping(value, "gateway", _GATEWAY_KEYS)
    public_url = _str(data, "public_url", "gateway")
    if public_url is not None:
        _http_url(public_url, "gateway.public_url", base_only=True)
    auth = data.get("auth")
    if auth is not None:
        _auth_settings(auth)
    return GatewayConfig(public_url=public_url, auth=auth)


def _auth_settings(value: Any) -> None:
    """Validate `gateway.auth` like the setting it becomes, so a mistake names its path."""
    if not isinstance(value, Mapping):
        raise ConfigError("gateway.auth", f"expected a mapping, got {_kind(value)}")
    try:
        AuthSettings.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = "gateway.auth"
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        raise ConfigError(path, error["msg"]) from None


def server_from_dict(data: Any, *, path: str = "") -> Upstream:
    """Validate one server entry (a `servers:` item, or the body of `POST /servers`).

    Secret values in its `auth` are validated and dropped: use `server_secrets_from_dict`
    where they are to be stored.

    Raises:
        ConfigError: the entry is invalid; its path is prefixed with `path`.
    """
    return server_secrets_from_dict(data, path=path)[0]


def server_secrets_from_dict(data: Any, *, path: str = "") -> tuple[Upstream, dict[str, str]]:
    """Validate one server entry; returns it and the secret values its `auth` gave (field -> value).

    Raises:
        ConfigError: the entry is invalid; its path is prefixed with `path`.
    """
    entry = _mapping(data, path, _SERVER_KEYS)
    name = _name(entry, path)
    url = _str(entry, "url", path)
    command = _str_list(entry, "command", path)
    if url is not None and command is not None:
        raise ConfigError(path, "give either 'url' or 'command', not both")
    transport = _str(entry, "transport", path)
    if transport == "a2a":
        raise ConfigError(
            _join(path, "transport"),
            "A2A agents are not servers: declare them under 'agents' (admin API: /agents)",
        )
    env: dict[str, str] = {}
    cwd: str | None = None
    kind: Transport
    if url is not None:
        _http_url(url, _join(path, "url"), base_only=False)
        if transport == "sse":
            kind = "sse"
        elif transport in (None, "http"):
            kind = "http"
        else:
            raise ConfigError(_join(path, "transport"), "must be 'http' or 'sse' for a 'url' server")
        for key in ("args", "env", "cwd"):
            if entry.get(key):
                raise ConfigError(_join(path, key), "applies to 'command' (stdio) servers only")
    elif command is not None:
        if transport not in (None, "stdio"):
            raise ConfigError(_join(path, "transport"), "must be 'stdio' for a 'command' server")
        if not command or not command[0]:
            raise ConfigError(_join(path, "command"), "must start with a program name")
        kind = "stdio"
        command += _str_list(entry, "args", path) or []
        env = _env(entry, path)
        cwd = _str(entry, "cwd", path)
        if cwd == "":
            raise ConfigError(_join(path, "cwd"), "must not be empty")
    else:
        raise ConfigError(path, "needs 'url' (an HTTP server) or 'command' (a stdio server)")
    approval = _str(entry, "approval", path)
    if approval not in (None, "first-use", "manual"):
        raise ConfigError(_join(path, "approval"), "must be 'first-use' or 'manual'")
    failure_mode = _str(entry, "failure_mode", path)
    if failure_mode not in (None, "open", "closed"):
        raise ConfigError(_join(path, "failure_mode"), "must be 'open' or 'closed'")
    enabled = entry.get("enabled", True)
    if enabled is None:
        enabled = True
    if not isinstance(enabled, bool):
        raise ConfigError(_join(path, "enabled"), f"expected true or false, got {_kind(enabled)}")
    connect, call = _timeouts(entry, path)
    auth, secrets = _auth(entry.get("auth"), _join(path, "auth"))
    if auth.type in OAUTH_AUTH_TYPES and kind == "stdio":
        raise ConfigError(_join(path, "auth.type"), "applies to 'url' servers only")
    if auth.type in ("token_exchange", "oauth_authorization_code") and kind == "sse":
        # One SSE session serves every caller, so it cannot carry each user's own token.
        raise ConfigError(_join(path, "auth.type"), "per-user credentials need a Streamable HTTP server")
    upstream = Upstream(
        name=name,
        transport=kind,
        url=url,
        command=tuple(command or ()),
        env=env,
        cwd=cwd,
        auth=auth,
        enabled=enabled,
        approval="manual" if approval == "manual" else "first-use",
        failure_mode="closed" if failure_mode == "closed" else "open",
        trusted=_bool(entry, "trusted", path),
        connect_timeout_seconds=connect,
        call_timeout_seconds=call,
        scopes=_scopes(entry.get("scopes"), _join(path, "scopes")),
        max_in_flight=_max_in_flight(entry.get("max_in_flight"), _join(path, "max_in_flight")),
        idempotent=_idempotent(entry, path),
        description=_description(entry, path),
        tags=_tags(entry, path),
        registry=_registry(entry.get("registry"), _join(path, "registry")),
        cache_ttl_seconds=_cache_ttl(entry.get("cache_ttl_seconds"), _join(path, "cache_ttl_seconds")),
        cache_scope=_cache_scope(entry.get("cache_scope"), _join(path, "cache_scope")),
    )
    return upstream, secrets


def agent_from_dict(data: Any, *, path: str = "") -> Upstream:
    """Validate one agent entry (an `agents:` item, or the body of `POST /agents`); secrets dropped.

    Raises:
        ConfigError: the entry is invalid; its path is prefixed with `path`.
    """
    return agent_secrets_from_dict(data, path=path)[0]


def agent_secrets_from_dict(data: Any, *, path: str = "") -> tuple[Upstream, dict[str, str]]:
    """Validate one A2A agent entry; returns it (transport `a2a`) and the secret values its `auth` gave.

    The card comes from `card_url` or, inline, from `card` (exactly one). Only the shape is
    checked here: whether an inline card is a usable A2A card is for tollhouse.a2a.cards, where
    it is registered. `require_signature` needs `jwks`, a JWKS of public keys.

    Raises:
        ConfigError: the entry is invalid; its path is prefixed with `path`.
    """
    if isinstance(data, Mapping) and "url" in data:
        raise ConfigError(_join(path, "url"), "unknown key (did you mean 'card_url'?)")
    entry = _mapping(data, path, AGENT_KEYS)
    name = _name(entry, path)
    card_url = _str(entry, "card_url", path)
    card = entry.get("card")
    if (card_url is None) == (card is None):
        raise ConfigError(
            path, "give exactly one of 'card_url' (where the card is served) or 'card' (inline)"
        )
    if card_url is not None:
        _http_url(card_url, _join(path, "card_url"), base_only=False)
    if card is not None:
        card = dict(_mapping(card, _join(path, "card"), None))
        if not card:
            raise ConfigError(_join(path, "card"), "must not be empty")
    approval = _str(entry, "approval", path)
    if approval not in (None, "first-use", "manual"):
        raise ConfigError(_join(path, "approval"), "must be 'first-use' or 'manual'")
    tools = _str(entry, "tools", path)
    if tools not in (None, "skills", "none"):
        raise ConfigError(
            _join(path, "tools"), "must be 'skills' (each skill is an MCP tool {agent}__{skill}) or 'none'"
        )
    require_signature = _bool(entry, "require_signature", path)
    jwks = _jwks(entry.get("jwks"), _join(path, "jwks"))
    if require_signature and jwks is None:
        raise ConfigError(
            _join(path, "jwks"), "required with require_signature: the public keys that may sign the card"
        )
    connect, call = _timeouts(entry, path)
    auth, secrets = _auth(entry.get("auth"), _join(path, "auth"))
    upstream = Upstream(
        name=name,
        transport="a2a",
        url=card_url,
        auth=auth,
        enabled=_bool(entry, "enabled", path, default=True),
        approval="manual" if approval == "manual" else "first-use",
        connect_timeout_seconds=connect,
        call_timeout_seconds=call,
        a2a=AgentOptions(
            card=card,
            require_signature=require_signature,
            jwks=jwks,
            tools="none" if tools == "none" else "skills",
        ),
        description=_description(entry, path),
        tags=_tags(entry, path),
    )
    return upstream, secrets


def _jwks(value: Any, path: str) -> dict[str, Any] | None:
    """A JWKS (`{"keys": [...]}`) of public keys, or None."""
    if value is None:
        return None
    data = _mapping(value, path, None)
    keys = data.get("keys")
    if not isinstance(keys, list | tuple) or not keys:
        raise ConfigError(_join(path, "keys"), "a JWKS needs a non-empty list 'keys'")
    for i, key in enumerate(keys):
        where = f"{_join(path, 'keys')}[{i}]"
        jwk = _mapping(key, where, None)
        if not isinstance(jwk.get("kty"), str):
            raise ConfigError(_join(where, "kty"), "required: a JWK names its key type")
        private = [member for member in _PRIVATE_JWK_MEMBERS if member in jwk]
        if private:
            raise ConfigError(
                where, "holds private or symmetric key material; give the public keys only (no key is echoed)"
            )
    return {**data, "keys": [dict(k) for k in keys]}


_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 §3.3


def _scopes(value: Any, path: str) -> dict[str, tuple[str, ...]]:
    """Step-up scopes: `{tool name or glob: [scope, …]}`, or a list meaning every tool (`*`)."""
    if value is None:
        return {}
    if isinstance(value, list | tuple):
        value = {"*": value}
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping of tool pattern to scopes, got {_kind(value)}")
    out: dict[str, tuple[str, ...]] = {}
    for pattern, scopes in value.items():
        where = _join(path, str(pattern))
        if not isinstance(pattern, str) or not pattern or len(pattern) > 128:
            raise ConfigError(where, "a tool name or glob of 1-128 characters")
        if isinstance(scopes, str):
            scopes = [scopes]
        if not isinstance(scopes, list | tuple) or not scopes:
            raise ConfigError(where, f"expected a non-empty list of scopes, got {_kind(scopes)}")
        for scope in scopes:
            if not isinstance(scope, str) or not _SCOPE_TOKEN.match(scope):
                raise ConfigError(where, f"{scope!r} is not a valid OAuth scope")
        out[pattern] = tuple(sorted(set(scopes)))
    return out


def _max_in_flight(value: Any, path: str) -> int | None:
    """A server's own in-flight cap: a whole number, 0 for none; absent: the gateway's default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected a whole number, got {_kind(value)}")
    if not 0 <= value <= 1_000_000:
        raise ConfigError(path, f"must be from 0 to 1000000, got {value}")
    return value


def _idempotent(entry: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """Original tool names or globs an admin marked idempotent (safe to retry after any failure)."""
    patterns = _str_list(entry, "idempotent", path) or []
    for i, pattern in enumerate(patterns):
        if not pattern or len(pattern) > 128:
            raise ConfigError(f"{_join(path, 'idempotent')}[{i}]", "a tool name or glob of 1-128 characters")
    return tuple(dict.fromkeys(patterns))


_MAX_DESCRIPTION = 2000
_MAX_TAGS = 32
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/+-]{0,63}$")


def _description(entry: Mapping[str, Any], path: str) -> str | None:
    """A human description for the catalog (search and the registry listing)."""
    value = _str(entry, "description", path)
    if value is not None and len(value) > _MAX_DESCRIPTION:
        raise ConfigError(_join(path, "description"), f"at most {_MAX_DESCRIPTION} characters")
    return value or None


def _tags(entry: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """Free-form catalog tags: short words, no duplicates, order kept."""
    tags = _str_list(entry, "tags", path) or []
    if len(tags) > _MAX_TAGS:
        raise ConfigError(_join(path, "tags"), f"at most {_MAX_TAGS} tags")
    for i, tag in enumerate(tags):
        if not _TAG_RE.match(tag):
            raise ConfigError(f"{_join(path, 'tags')}[{i}]", "1-64 letters, digits, spaces or ._:/+-")
    return tuple(dict.fromkeys(tags))


def _registry(value: Any, path: str) -> dict[str, Any] | None:
    """The official MCP Registry `server.json` a server was imported from: kept as given, bounded."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
    if len(orjson.dumps(dict(value))) > 64 * 1024:
        raise ConfigError(path, "at most 64 KiB")
    return dict(value)


def _cache_ttl(value: Any, path: str) -> float | None:
    """The result-cache TTL in seconds: 0 turns caching off for the server, absent: advertised or default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected a number of seconds, got {_kind(value)}")
    if not 0 <= value <= 86400:
        raise ConfigError(path, f"must be from 0 to 86400, got {value}")
    return float(value)


def _cache_scope(value: Any, path: str) -> CacheScope | None:
    if value is None:
        return None
    if value not in ("private", "public"):
        raise ConfigError(path, "must be 'private' (per caller) or 'public' (shared within a team)")
    return "public" if value == "public" else "private"


def _bool(entry: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
    value = entry.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(_join(path, key), f"expected true or false, got {_kind(value)}")
    return value


def _name(entry: Mapping[str, Any], path: str) -> str:
    name = _str(entry, "name", path)
    where = _join(path, "name")
    if name is None:
        raise ConfigError(where, "required")
    if name in RESERVED_NAMES:
        raise ConfigError(where, f"'{name}' is reserved")
    if not valid_upstream_name(name):
        raise ConfigError(
            where,
            f"{name!r} is not a valid name: use 1-32 lowercase letters, digits and '-', "
            "starting with a letter or digit",
        )
    return name


def _env(entry: Mapping[str, Any], path: str) -> dict[str, str]:
    value = entry.get("env")
    if value is None:
        return {}
    where = _join(path, "env")
    env = _mapping(value, where, None)
    for key, item in env.items():
        if not _ENV_NAME_RE.match(key):
            raise ConfigError(_join(where, key), "not a valid environment variable name")
        if not isinstance(item, str):
            raise ConfigError(_join(where, key), f"expected a string, got {_kind(item)} (quote it in YAML)")
    return dict(env)


def _auth(value: Any, path: str) -> tuple[UpstreamAuth, dict[str, str]]:
    """The credential settings, and the secret values given inline (field -> value)."""
    if value is None:
        return UpstreamAuth(), {}
    data = _mapping(value, path, _AUTH_KEYS)
    kind = _str(data, "type", path)
    if kind is None:
        raise ConfigError(_join(path, "type"), "required: " + ", ".join(f"'{k}'" for k in _AUTH_FORMS))
    form = _AUTH_FORMS.get(kind)
    if form is None:
        raise ConfigError(_join(path, "type"), "must be one of " + ", ".join(f"'{k}'" for k in _AUTH_FORMS))
    applies, required = form
    values: dict[str, str] = {}
    for key in _AUTH_KEYS[1:]:
        if key in SECRET_AUTH_KEYS:
            item = data.get(key)
            if item is not None and (not isinstance(item, str) or not item):
                # The value is never echoed, whatever it is.
                raise ConfigError(_join(path, key), "expected a non-empty string")
        else:
            item = _str(data, key, path)
        if item is None:
            continue
        if key not in applies:
            raise ConfigError(_join(path, key), f"does not apply to type '{kind}'")
        values[key] = item
    for key in required:
        reference = SECRET_AUTH_KEYS.get(key)
        if key not in values and (reference is None or reference not in values):
            if reference is None:
                raise ConfigError(_join(path, key), f"required for type '{kind}'")
            raise ConfigError(_join(path, reference), f"required for type '{kind}' (or {key})")
    for key, reference in SECRET_AUTH_KEYS.items():
        if key in values and reference in values:
            raise ConfigError(_join(path, key), f"give either {key} or {reference}, not both")
    for key, item in values.items():
        if key.endswith("_env") and not _ENV_NAME_RE.match(item):
            raise ConfigError(_join(path, key), f"{item!r} is not an environment variable name")
        if key == "header" and not _HEADER_NAME_RE.match(item):
            raise ConfigError(_join(path, key), f"{item!r} is not an HTTP header name")
        if key.endswith("_url") or key == "resource":
            _http_url(item, _join(path, key), base_only=False)
    secrets = {key: values.pop(key) for key in SECRET_AUTH_KEYS if key in values}
    auth_type: AuthType = kind  # type: ignore[assignment]  # checked against _AUTH_FORMS above
    return UpstreamAuth(type=auth_type, **values), secrets


def _timeouts(entry: Mapping[str, Any], path: str) -> tuple[float, float]:
    """(connect, call) from the nested `timeouts:` form or the flat `*_timeout_seconds` keys."""
    out = {
        "connect_timeout_seconds": _DEFAULTS.connect_timeout_seconds,
        "call_timeout_seconds": _DEFAULTS.call_timeout_seconds,
    }
    nested = entry.get("timeouts")
    if nested is not None:
        where = _join(path, "timeouts")
        for key, value in _mapping(nested, where, tuple(_TIMEOUT_KEYS)).items():
            flat = _TIMEOUT_KEYS[key]
            if value is None:
                continue
            if entry.get(flat) is not None:
                raise ConfigError(_join(where, key), f"also given as '{flat}'; keep one")
            out[flat] = _seconds(value, _join(where, key))
    for flat in _TIMEOUT_KEYS.values():
        if entry.get(flat) is not None:
            out[flat] = _seconds(entry[flat], _join(path, flat))
    return out["connect_timeout_seconds"], out["call_timeout_seconds"]


def _client(value: Any, path: str) -> ClientSpec:
    data = _mapping(value, path, _CLIENT_KEYS)
    name = _str(data, "name", path)
    if name is None:
        raise ConfigError(_join(path, "name"), "required")
    team = _str(data, "team", path)
    for key, item in (("name", name), ("team", team)):
        if item is not None and not CLIENT_NAME_RE.match(item):
            raise ConfigError(
                _join(path, key),
                f"{item!r} is not a valid {key}: use 1-64 letters, digits, '.', '_' and '-', "
                "starting with a letter or digit",
            )
    scopes = data.get("scopes")
    if scopes is None:
        scopes = []
    if not isinstance(scopes, list) or not all(isinstance(x, str) and _SCOPE_TOKEN.match(x) for x in scopes):
        raise ConfigError(_join(path, "scopes"), "expected a list of OAuth scopes")
    return ClientSpec(name=name, team=team, scopes=tuple(sorted(set(scopes))))


def policy_from_dict(value: Any, *, path: str = "") -> PolicyEntry:
    """A policy entry: `id`, an optional `description`, and either `cedar` text or `allow`/`deny` sugar.

    Only the shape is checked here; tollhouse.policies compiles and validates the content.

    Raises:
        ConfigError: a missing or bad id, an unknown key, or not exactly one of cedar/allow/deny.
    """
    data = _mapping(value, path, _POLICY_KEYS)
    policy_id = _str(data, "id", path)
    if policy_id is None:
        raise ConfigError(_join(path, "id"), "required")
    if not POLICY_ID_RE.match(policy_id):
        raise ConfigError(
            _join(path, "id"), f"{policy_id!r} is not a valid id: use [A-Za-z0-9][A-Za-z0-9_.:-]{{0,127}}"
        )
    given = [key for key in ("cedar", "allow", "deny") if data.get(key) is not None]
    if len(given) != 1:
        raise ConfigError(path, "give exactly one of 'cedar', 'allow' or 'deny'")
    description = _str(data, "description", path)
    if given == ["cedar"]:
        cedar = _str(data, "cedar", path)
        if "guardrails" in data:
            raise ConfigError(_join(path, "guardrails"), "write guardrails as annotations in the Cedar text")
        return PolicyEntry(id=policy_id, cedar=cedar or "", description=description)
    sugar = {key: data[key] for key in ("allow", "deny", "guardrails") if key in data}
    return PolicyEntry(id=policy_id, cedar="", sugar=sugar, description=description)


def policy_to_dict(entry: PolicyEntry) -> dict[str, Any]:
    """A policy in the file's shape: its sugar if it was written so, else its Cedar text."""
    out: dict[str, Any] = {"id": entry.id}
    if entry.description:
        out["description"] = entry.description
    if entry.sugar:
        out.update(entry.sugar)
    else:
        out["cedar"] = entry.cedar
    return out


def limit_from_dict(value: Any, *, path: str = "") -> LimitSpec:
    """A rate and/or concurrency limit: `match` (all keys must match), `rate` ("N/minute"), `window`,
    `concurrency`, `failure_mode` (what to do when Redis is unreachable), `per` (split the bucket).

    Without `id`, one is derived from the definition, so the same entry keeps the same id.

    Raises:
        ConfigError: an unknown key, a bad value, or neither `rate` nor `concurrency`.
    """
    data = _mapping(value, path, _LIMIT_KEYS)
    match_data = _mapping(data.get("match") or {}, _join(path, "match"), MATCH_KEYS)
    match: dict[str, str] = {}
    for key, item in match_data.items():
        if not isinstance(item, str) or not item or len(item) > MAX_PATTERN_LENGTH:
            raise ConfigError(_join(_join(path, "match"), key), "must be a non-empty string")
        match[key] = item
    rate = _str(data, "rate", path)
    if rate is not None and not RATE_RE.match(rate):
        raise ConfigError(
            _join(path, "rate"), f"{rate!r} is not a rate: write N/second, N/minute, N/hour or N/day"
        )
    window = data.get("window", "fixed")
    if window not in ("fixed", "sliding"):
        raise ConfigError(_join(path, "window"), "must be 'fixed' or 'sliding'")
    concurrency = data.get("concurrency")
    if concurrency is not None and (
        isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
    ):
        raise ConfigError(_join(path, "concurrency"), "must be a positive integer")
    if rate is None and concurrency is None:
        raise ConfigError(path, "give 'rate', 'concurrency' or both")
    failure_mode = data.get("failure_mode", "open")
    if failure_mode not in ("open", "closed"):
        raise ConfigError(_join(path, "failure_mode"), "must be 'open' or 'closed'")
    per = _str_list(data, "per", path) or []
    for name in per:
        if name not in MATCH_KEYS:
            raise ConfigError(_join(path, "per"), f"unknown dimension {name!r}{_suggest(name, MATCH_KEYS)}")
    spec = LimitSpec(
        id="",
        match=match,
        rate=rate.strip() if rate else None,
        window=window,
        concurrency=concurrency,
        failure_mode=failure_mode,
        per=tuple(dict.fromkeys(per)),
        description=_str(data, "description", path),
    )
    limit_id = _str(data, "id", path)
    if limit_id is None:
        digest = hashlib.sha256(json.dumps(spec.body(), sort_keys=True).encode()).hexdigest()
        limit_id = f"limit-{digest[:10]}"
    if not POLICY_ID_RE.match(limit_id):
        raise ConfigError(
            _join(path, "id"), f"{limit_id!r} is not a valid id: use [A-Za-z0-9][A-Za-z0-9_.:-]{{0,127}}"
        )
    return dataclasses.replace(spec, id=limit_id)


def limit_to_dict(spec: LimitSpec) -> dict[str, Any]:
    """A limit in the file's shape (defaults left out)."""
    out: dict[str, Any] = {"id": spec.id, **spec.body()}
    if out.get("window") == "fixed":
        del out["window"]
    if out.get("failure_mode") == "open":
        del out["failure_mode"]
    return out


def _team(value: Any, path: str) -> Team:
    if isinstance(value, str):
        value = {"name": value}
    data = _mapping(value, path, _TEAM_KEYS)
    name = _str(data, "name", path)
    if name is None:
        raise ConfigError(_join(path, "name"), "required")
    if not TEAM_NAME_RE.match(name):
        raise ConfigError(
            _join(path, "name"), f"{name!r} is not a valid team name: use [a-z0-9][a-z0-9_.-]{{0,63}}"
        )
    return Team(name=name, description=_str(data, "description", path))


def valid_tool_name(name: str) -> bool:
    """True when `name` is a valid MCP tool name: 1-128 of A-Z, a-z, 0-9, '_', '-' and '.'."""
    return bool(_TOOL_NAME_RE.match(name))


def valid_exposed_name(name: str) -> bool:
    """True when `name` has the shape of an exposed tool name, `{server}__{tool}`, within 128 characters."""
    server, sep, tool = name.partition(SEPARATOR)
    return (
        bool(sep)
        and len(name) <= MAX_EXPOSED_NAME
        and bool(UPSTREAM_NAME_RE.match(server))
        and bool(_TOOL_PART_RE.match(tool))
    )


def valid_tool_pattern(pattern: str) -> bool:
    """True for an exposed name, or a glob over exposed names using only `*`, `?` and `[...]`."""
    if not any(c in _GLOB_CHARS for c in pattern):
        return valid_exposed_name(pattern)
    return len(pattern) <= MAX_PATTERN_LENGTH and bool(_GLOB_RE.match(pattern))


def toolset_from_dict(data: Any, *, path: str = "") -> Toolset:
    """Validate one toolset entry (a `toolsets:` item, or the body of `PUT /toolsets/{name}` plus its name).

    `tools` lists exposed names (`calc__add`) and globs over them (`files__read_*`; only `*`, `?`
    and `[...]`). `aliases` maps a name to show (a valid MCP tool name that is not itself shaped
    like an exposed name, so it can never hide one) to the one exposed name it stands for; a tool
    has at most one alias. A toolset names at least one tool, in `tools` or `aliases`.

    Raises:
        ConfigError: the entry is invalid; its path is prefixed with `path`.
    """
    entry = _mapping(data, path, _TOOLSET_KEYS)
    name = _name(entry, path)
    description = _str(entry, "description", path)
    tools = _str_list(entry, "tools", path) or []
    where = _join(path, "tools")
    first_at: dict[str, int] = {}
    for i, pattern in enumerate(tools):
        item = f"{where}[{i}]"
        if not pattern:
            raise ConfigError(item, "must not be empty")
        if not valid_tool_pattern(pattern):
            raise ConfigError(
                item,
                f"{pattern!r} is not an exposed tool name (server__tool) or a glob over them "
                "(use only letters, digits, '_', '-', '.', and the wildcards '*', '?' and '[...]')",
            )
        if pattern in first_at:
            raise ConfigError(item, f"duplicate '{pattern}' (also {where}[{first_at[pattern]}])")
        first_at[pattern] = i
    aliases = _aliases(entry.get("aliases"), _join(path, "aliases"))
    if not tools and not aliases:
        raise ConfigError(path, "a toolset needs at least one entry in 'tools' or 'aliases'")
    disclosure = _str(entry, "disclosure", path)
    if disclosure not in (None, "full", "search"):
        raise ConfigError(
            _join(path, "disclosure"), "must be 'full' (every tool) or 'search' (the meta-tools)"
        )
    return Toolset(
        name=name,
        tools=tuple(tools),
        aliases=aliases,
        description=description,
        disclosure="search" if disclosure == "search" else "full",
    )


def _aliases(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    data = _mapping(value, path, None)
    alias_of: dict[str, str] = {}
    out: dict[str, str] = {}
    for alias, target in data.items():
        where = _join(path, alias)
        if not valid_tool_name(alias):
            raise ConfigError(
                where, f"{alias!r} is not a valid tool name: use 1-128 letters, digits, '_', '-' and '.'"
            )
        if valid_exposed_name(alias):
            raise ConfigError(
                where,
                f"'{alias}' has the shape of an exposed name (server__tool) and could hide one; "
                "choose another alias",
            )
        if not isinstance(target, str):
            raise ConfigError(where, f"expected a string, got {_kind(target)}")
        if not valid_exposed_name(target):
            raise ConfigError(
                where,
                f"{target!r} is not an exposed tool name (server__tool); an alias names exactly one tool",
            )
        if target in alias_of:
            raise ConfigError(where, f"'{target}' already has the alias '{alias_of[target]}'")
        alias_of[target] = alias
        out[alias] = target
    return out


# --- typed access with paths -----------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _mapping(value: Any, path: str, allowed: Sequence[str] | None) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path, f"key {key!r} is not a string")
        if allowed is not None and key not in allowed:
            raise ConfigError(_join(path, key), f"unknown key{_suggest(key, allowed)}")
    return value


def _list(data: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ConfigError(_join(path, key), f"expected a list, got {_kind(value)}")
    return list(value)


def _str(data: Mapping[str, Any], key: str, path: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(_join(path, key), f"expected a string, got {_kind(value)}")
    return value


def _str_list(data: Mapping[str, Any], key: str, path: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    where = _join(path, key)
    if not isinstance(value, list | tuple):
        raise ConfigError(where, f"expected a list of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{where}[{i}]", f"expected a string, got {_kind(item)}")
    return list(value)


def _seconds(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected a number of seconds, got {_kind(value)}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(path, "must be a positive number of seconds")
    return float(value)


def _http_url(url: str, path: str, *, base_only: bool) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(path, f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ConfigError(path, f"{url!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            path, "credentials in the URL are not accepted; use 'auth' with an environment variable"
        )
    if base_only and (parts.query or parts.fragment):
        raise ConfigError(path, "must not have a query or fragment")


def _no_duplicates(names: Sequence[str], section: str, *, key: str = "name") -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(
                f"{section}[{i}].{key}", f"duplicate {key} '{name}' (also {section}[{seen[name]}])"
            )
        seen[name] = i


# --- rendering -------------------------------------------------------------------------------


def server_to_dict(upstream: Upstream, secret_fields: Collection[str] = ()) -> dict[str, Any]:
    """One server as a configuration entry, defaults omitted and credentials as references only.

    A stored secret (`secret_fields`, or the one its auth type requires) is written as a
    `${SERVER_FIELD}` reference: applying the file gives the value again from that variable.
    The value itself is never read for an export.
    """
    out: dict[str, Any] = {"name": upstream.name}
    if upstream.transport == "stdio":
        out["command"] = list(upstream.command)
        if upstream.env:
            out["env"] = dict(upstream.env)
        if upstream.cwd:
            out["cwd"] = upstream.cwd
    else:
        out["url"] = upstream.url
        if upstream.transport != "http":
            out["transport"] = upstream.transport
    if upstream.approval != _DEFAULTS.approval:
        out["approval"] = upstream.approval
    if upstream.failure_mode != _DEFAULTS.failure_mode:
        out["failure_mode"] = upstream.failure_mode
    if upstream.trusted:
        out["trusted"] = True
    if upstream.scopes:
        out["scopes"] = {pattern: list(scopes) for pattern, scopes in upstream.scopes.items()}
    if upstream.max_in_flight is not None:
        out["max_in_flight"] = upstream.max_in_flight
    if upstream.idempotent:
        out["idempotent"] = list(upstream.idempotent)
    if upstream.cache_ttl_seconds is not None:
        out["cache_ttl_seconds"] = upstream.cache_ttl_seconds
    if upstream.cache_scope is not None:
        out["cache_scope"] = upstream.cache_scope
    _catalog_to_dict(upstream, out)
    if upstream.registry is not None:
        out["registry"] = upstream.registry
    if not upstream.enabled:
        out["enabled"] = False
    _auth_and_timeouts_to_dict(upstream, secret_fields, out)
    return out


def _auth_and_timeouts_to_dict(
    upstream: Upstream, secret_fields: Collection[str], out: dict[str, Any]
) -> None:
    auth = upstream.auth
    if auth.type != "none":
        # Settings and references only: a stored secret is exported as the `${VAR}` form that
        # gives it again on apply (the value itself is never read for an export).
        settings = {k: v for k, v in vars(auth).items() if k != "type" and v is not None}
        out["auth"] = {"type": auth.type, **settings}
        field_name = auth.stored_secret_field
        if field_name is not None and (field_name in secret_fields or auth.type in _SECRET_REQUIRED):
            variable = f"{upstream.name.upper().replace('-', '_')}_{field_name.upper()}"
            out["auth"][field_name] = "${" + variable + "}"
    for key in ("connect_timeout_seconds", "call_timeout_seconds"):
        value = getattr(upstream, key)
        if value != getattr(_DEFAULTS, key):
            out[key] = int(value) if float(value).is_integer() else value


def agent_to_dict(upstream: Upstream, secret_fields: Collection[str] = ()) -> dict[str, Any]:
    """One A2A agent as an `agents:` entry: defaults omitted, credentials as references only."""
    options = upstream.a2a or AgentOptions()
    out: dict[str, Any] = {"name": upstream.name}
    if upstream.url is not None:
        out["card_url"] = upstream.url
    else:
        out["card"] = options.card
    if upstream.approval != _DEFAULTS.approval:
        out["approval"] = upstream.approval
    if not upstream.enabled:
        out["enabled"] = False
    if options.require_signature:
        out["require_signature"] = True
    if options.jwks is not None:
        out["jwks"] = options.jwks
    if options.tools != "skills":
        out["tools"] = options.tools
    _catalog_to_dict(upstream, out)
    _auth_and_timeouts_to_dict(upstream, secret_fields, out)
    return out


def _catalog_to_dict(upstream: Upstream, out: dict[str, Any]) -> None:
    if upstream.description is not None:
        out["description"] = upstream.description
    if upstream.tags:
        out["tags"] = list(upstream.tags)


def toolset_to_dict(toolset: Toolset) -> dict[str, Any]:
    """One toolset as a configuration entry; empty keys omitted."""
    out: dict[str, Any] = {"name": toolset.name}
    if toolset.description is not None:
        out["description"] = toolset.description
    if toolset.tools:
        out["tools"] = list(toolset.tools)
    if toolset.aliases:
        out["aliases"] = dict(toolset.aliases)
    if toolset.disclosure != "full":
        out["disclosure"] = toolset.disclosure
    return out


def config_to_dict(
    gateway: GatewayConfig | None,
    servers: Sequence[Upstream],
    clients: Sequence[ClientRecord | ClientSpec],
    toolsets: Sequence[Toolset] = (),
    secret_fields: Mapping[str, Collection[str]] | None = None,
    teams: Sequence[Team] = (),
    policies: Sequence[PolicyEntry] = (),
    prices: Sequence[Mapping[str, Any]] = (),
    budgets: Sequence[Mapping[str, Any]] = (),
    limits: Sequence[Mapping[str, Any]] = (),
    agents: Sequence[Upstream] = (),
) -> dict[str, Any]:
    """The configuration as a plain mapping in the file's shape; empty sections are omitted.

    `secret_fields` names the stored secrets by server or agent (never their values), see
    `server_to_dict`. A2A agents (transport `a2a`) go to the `agents` section, whether they are
    given in `agents` or among `servers`.

    Revoked clients are left out: applying the result must not bring them back.
    """
    out: dict[str, Any] = {}
    if gateway is not None and (gateway.public_url is not None or gateway.auth is not None):
        out["gateway"] = {
            **({"public_url": gateway.public_url} if gateway.public_url is not None else {}),
            # Secrets are only ever named here (`client_secret_env`), so the section is safe to write.
            **({"auth": dict(gateway.auth)} if gateway.auth is not None else {}),
        }
    stored = secret_fields or {}
    plain = [s for s in servers if not s.is_agent]
    agent_list = [*(s for s in servers if s.is_agent), *agents]
    if plain:
        out["servers"] = [server_to_dict(s, stored.get(s.name, ())) for s in plain]
    if agent_list:
        out["agents"] = [agent_to_dict(a, stored.get(a.name, ())) for a in agent_list]
    if toolsets:
        out["toolsets"] = [toolset_to_dict(t) for t in toolsets]
    if teams:
        out["teams"] = [
            {"name": t.name} | ({"description": t.description} if t.description else {}) for t in teams
        ]
    entries: list[dict[str, Any]] = []
    for client in clients:
        if isinstance(client, ClientRecord) and (not client.active or client.registration != "admin"):
            continue  # revoked clients, and those that registered themselves (DCR), are not config
        entry: dict[str, Any] = {"name": client.name}
        if client.team is not None:
            entry["team"] = client.team
        if client.scopes:
            entry["scopes"] = list(client.scopes)
        entries.append(entry)
    if entries:
        out["clients"] = entries
    if policies:
        out["policies"] = [policy_to_dict(p) for p in policies]
    if prices:
        out["prices"] = [dict(p) for p in prices]
    if limits:
        out["limits"] = [dict(limit) for limit in limits]
    if budgets:
        out["budgets"] = [dict(b) for b in budgets]
    return out


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents list items under their key, as the documentation's examples do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


class _FlowList(list[Any]):
    pass


class _FlowDict(dict[str, Any]):
    pass


_Dumper.add_representer(
    _FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)
_Dumper.add_representer(
    _FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True)
)


def _styled(value: Any, *, list_item: bool = False) -> Any:
    """Mark small leaf collections (`command`, `env`, `auth`) inline; keep section entries as blocks."""
    if isinstance(value, Mapping):
        items = {str(k): _styled(v) for k, v in value.items()}
        leaf = not list_item and all(not isinstance(v, Mapping | list) for v in items.values())
        return _FlowDict(items) if leaf and items else items
    if isinstance(value, list | tuple):
        elements = [_styled(v, list_item=True) for v in value]
        leaf = all(not isinstance(v, Mapping | list) for v in elements)
        return _FlowList(elements) if leaf and elements else elements
    return value


def render_yaml(data: Mapping[str, Any]) -> str:
    """Render a configuration mapping as YAML in the documentation's layout, keeping key order."""
    return yaml.dump(
        {str(k): _styled(v) for k, v in data.items()},
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )


def dump_config(
    gateway: GatewayConfig | None,
    servers: Sequence[Upstream],
    clients: Sequence[ClientRecord | ClientSpec],
    toolsets: Sequence[Toolset] = (),
    agents: Sequence[Upstream] = (),
) -> str:
    """Render the configuration as YAML that `load_config` reads back to equal values."""
    return render_yaml(config_to_dict(gateway, servers, clients, toolsets, agents=agents))
