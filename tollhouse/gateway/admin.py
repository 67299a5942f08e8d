"""Admin API v1 (`/admin/api/v1`): servers, tools, toolsets, clients, declarative config. JSON in and out.

Only the admin credential reaches it (a client API key gets 403, anything else 401).
Errors are `application/problem+json` (RFC 9457); MCP endpoints never use that type.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse import __version__
from tollhouse.auth.verifiers import API_KEY_PREFIX, ApiKeyVerifier, hash_secret, new_api_key
from tollhouse.gateway.errors import GatewayError
from tollhouse.gateway.pool import SyncResult, UpstreamPool
from tollhouse.gateway.snapshot import Snapshot, split_exposed_name
from tollhouse.gateway.views import toolset_members
from tollhouse.registry.config import (
    CLIENT_NAME_RE,
    ConfigError,
    config_from_dict,
    config_to_dict,
    server_from_dict,
    toolset_from_dict,
)
from tollhouse.registry.models import ClientRecord, Toolset, Upstream
from tollhouse.registry.store import RegistryStore, StoreConflictError

__all__ = ["SUPPORTED_TRANSPORTS", "AdminState", "admin_app", "apply_loaded", "publish_toolsets"]

SUPPORTED_TRANSPORTS = ("http", "sse", "stdio")


@dataclass
class AdminState:
    """What the admin API works on; filled in by the app's lifespan."""

    store: RegistryStore
    pool: UpstreamPool
    keys: ApiKeyVerifier
    admin_token_hash: str | None = None
    public_url: str = ""
    # Serialises "read the toolsets, swap them into the pool" so the last swap saw every write.
    toolsets_lock: anyio.Lock = field(default_factory=anyio.Lock)


class _Problem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _problem(p: _Problem) -> Response:
    body = {"type": "about:blank", "title": p.title, "status": p.status, "detail": p.detail}
    headers = {"WWW-Authenticate": 'Bearer realm="tollhouse-admin"'} if p.status == 401 else None
    return Response(
        orjson.dumps(body), status_code=p.status, media_type="application/problem+json", headers=headers
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def admin_app(state: AdminState) -> Starlette:
    """The admin API as a Starlette app, to mount at /admin/api/v1."""

    def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                _authorize(state, request)
                return await fn(request)
            except _Problem as p:
                return _problem(p)

        return endpoint

    async def list_servers(request: Request) -> Response:
        return _json({"items": [_server_out(state.pool, u) for u in state.pool.upstreams()]})

    async def create_server(request: Request) -> Response:
        upstream = _parse_server(await _body(request))
        try:
            upstream = await state.store.create_upstream(upstream)
        except StoreConflictError:
            raise _Problem(
                409, "Conflict", f"a server or agent named '{upstream.name}' already exists"
            ) from None
        await state.pool.add(upstream)
        return _json(_server_out(state.pool, upstream), 201)

    async def show_server(request: Request) -> Response:
        upstream = _known(state, request.path_params["name"])
        out = _server_out(state.pool, upstream)
        out["tools"] = [t.exposed for t in state.pool.snapshot.tools if t.server == upstream.name]
        return _json(out)

    async def delete_server(request: Request) -> Response:
        name = request.path_params["name"]
        _known(state, name)
        await state.pool.remove(name)
        await state.store.delete_upstream(name)
        return Response(status_code=204)

    async def refresh_server(request: Request) -> Response:
        name = request.path_params["name"]
        _known(state, name)
        try:
            result = await state.pool.refresh(name)
        except GatewayError as exc:
            raise _Problem(502, "Upstream unavailable", exc.message) from None
        return _json(_sync_out(result))

    async def list_tools(request: Request) -> Response:
        server = request.query_params.get("server")
        items = [
            {
                "name": t.exposed,
                "server": t.server,
                "tool": t.name,
                "title": t.definition.get("title"),
                "description": t.definition.get("description"),
                "sha256": _sha(state, t.server, t.name),
            }
            for t in state.pool.snapshot.tools
            if server is None or t.server == server
        ]
        return _json({"items": items})

    async def show_tool(request: Request) -> Response:
        name = request.path_params["name"]
        tool = state.pool.snapshot.tool(name)
        if tool is None:
            parts = split_exposed_name(name)
            catalog = state.pool.catalog(parts[0]) if parts else None
            upstream_def = (
                next((t for t in catalog.tools if t["name"] == parts[1]), None) if catalog and parts else None
            )
            if upstream_def is None or parts is None:
                raise _Problem(404, "Not Found", f"no tool named '{name}'")
            return _json(
                {
                    "name": name,
                    "server": parts[0],
                    "tool": parts[1],
                    "live": False,
                    "definition": {**upstream_def, "name": name},
                    "upstream_definition": upstream_def,
                    "sha256": _sha(state, parts[0], parts[1]),
                }
            )
        return _json(
            {
                "name": tool.exposed,
                "server": tool.server,
                "tool": tool.name,
                "live": True,
                "definition": tool.definition,
                "upstream_definition": tool.upstream_definition,
                "sha256": _sha(state, tool.server, tool.name),
            }
        )

    async def list_clients(request: Request) -> Response:
        return _json({"items": [_client_out(c) for c in await state.store.list_clients()]})

    async def create_client(request: Request) -> Response:
        body = await _body(request)
        name, team = body.get("name"), body.get("team")
        if not isinstance(name, str) or not CLIENT_NAME_RE.match(name):
            raise _Problem(400, "Bad Request", "'name' must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        if team is not None and (not isinstance(team, str) or not CLIENT_NAME_RE.match(team)):
            raise _Problem(400, "Bad Request", "'team' must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        client, key = await _new_client(state, name, team)
        return _json({**_client_out(client), "api_key": key}, 201)

    async def revoke_client(request: Request) -> Response:
        ref = request.path_params["ref"]
        client = await state.store.get_client(ref) or await state.store.get_client_by_name(ref)
        if client is None:
            raise _Problem(404, "Not Found", f"no client '{ref}'")
        revoked = await state.store.revoke_client(client.client_id)
        assert revoked is not None
        state.keys.upsert(revoked)
        return _json(_client_out(revoked))

    async def list_toolsets(request: Request) -> Response:
        snapshot = state.pool.snapshot
        return _json({"items": [_toolset_out(t, snapshot) for t in await state.store.list_toolsets()]})

    async def show_toolset(request: Request) -> Response:
        return _json(
            _toolset_out(await _known_toolset(state, request.path_params["name"]), state.pool.snapshot)
        )

    async def put_toolset(request: Request) -> Response:
        name = request.path_params["name"]
        body = await _body(request)
        if "name" in body and body["name"] != name:
            raise _Problem(400, "Invalid toolset", f"the body names '{body['name']}' but the path '{name}'")
        try:
            toolset = toolset_from_dict({**body, "name": name})
        except ConfigError as exc:
            raise _Problem(400, "Invalid toolset", str(exc)) from None
        existing = await state.store.get_toolset(name)
        stored = await state.store.upsert_toolset(toolset)
        await publish_toolsets(state)
        return _json(_toolset_out(stored, state.pool.snapshot), 200 if existing else 201)

    async def delete_toolset(request: Request) -> Response:
        name = request.path_params["name"]
        if not await state.store.delete_toolset(name):
            raise _Problem(404, "Not Found", f"no toolset named '{name}'")
        await publish_toolsets(state)
        return Response(status_code=204)

    async def apply_config(request: Request) -> Response:
        body = await _body(request)
        raw = body.get("config", {})
        prune = bool(body.get("prune", False))
        if not isinstance(raw, dict):
            raise _Problem(400, "Bad Request", "'config' must be an object")
        try:
            loaded = config_from_dict(raw)
        except ConfigError as exc:
            raise _Problem(400, "Invalid configuration", str(exc)) from None
        return _json(
            await apply_loaded(
                state, loaded.servers, loaded.clients, list(loaded.warnings), prune, toolsets=loaded.toolsets
            )
        )

    async def export_config(request: Request) -> Response:
        clients = [c for c in await state.store.list_clients() if c.active]
        toolsets = await state.store.list_toolsets()
        return _json(config_to_dict(None, state.pool.upstreams(), clients, toolsets))

    async def openapi(request: Request) -> Response:
        return _json(_openapi())

    routes = [
        Route("/servers", guarded(list_servers), methods=["GET"]),
        Route("/servers", guarded(create_server), methods=["POST"]),
        Route("/servers/{name}", guarded(show_server), methods=["GET"]),
        Route("/servers/{name}", guarded(delete_server), methods=["DELETE"]),
        Route("/servers/{name}/refresh", guarded(refresh_server), methods=["POST"]),
        Route("/tools", guarded(list_tools), methods=["GET"]),
        Route("/tools/{name}", guarded(show_tool), methods=["GET"]),
        Route("/toolsets", guarded(list_toolsets), methods=["GET"]),
        Route("/toolsets/{name}", guarded(show_toolset), methods=["GET"]),
        Route("/toolsets/{name}", guarded(put_toolset), methods=["PUT"]),
        Route("/toolsets/{name}", guarded(delete_toolset), methods=["DELETE"]),
        Route("/clients", guarded(list_clients), methods=["GET"]),
        Route("/clients", guarded(create_client), methods=["POST"]),
        Route("/clients/{ref}/revoke", guarded(revoke_client), methods=["POST"]),
        Route("/config/apply", guarded(apply_config), methods=["POST"]),
        Route("/config/export", guarded(export_config), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(routes=routes)


async def publish_toolsets(state: AdminState) -> None:
    """Swap the stored toolsets into the pool's snapshot (after any toolset change)."""
    async with state.toolsets_lock:
        await state.pool.set_toolsets(await state.store.list_toolsets())


async def apply_loaded(
    state: AdminState,
    servers: Any,
    clients: Any,
    warnings: list[str],
    prune: bool,
    *,
    toolsets: Sequence[Toolset] = (),
) -> dict[str, Any]:
    """Upsert what a config names (servers, toolsets, clients).

    With `prune`, also delete the servers and toolsets it omits; clients are never deleted (revoke them).
    """
    for upstream in servers:
        _check_transport(upstream)
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    deleted: list[str] = []
    new_keys: list[dict[str, Any]] = []
    for upstream in servers:
        existing = await state.store.get_upstream(upstream.name)
        if existing is not None and _same(existing, upstream):
            unchanged.append(f"server/{upstream.name}")
            continue
        stored = await state.store.upsert_upstream(upstream)
        (updated if existing else created).append(f"server/{upstream.name}")
        await state.pool.add(stored)
    toolsets_changed = False
    for toolset in toolsets:
        known = await state.store.get_toolset(toolset.name)
        if known is not None and _same_toolset(known, toolset):
            unchanged.append(f"toolset/{toolset.name}")
            continue
        await state.store.upsert_toolset(toolset)
        (updated if known else created).append(f"toolset/{toolset.name}")
        toolsets_changed = True
    for spec in clients:
        existing_client = await state.store.get_client_by_name(spec.name)
        if existing_client is not None:
            unchanged.append(f"client/{spec.name}")
            continue
        client, key = await _new_client(state, spec.name, spec.team)
        created.append(f"client/{spec.name}")
        new_keys.append(
            {"client_id": client.client_id, "name": client.name, "team": client.team, "api_key": key}
        )
    if prune:
        named = {u.name for u in servers}
        for upstream in await state.store.list_upstreams():
            if upstream.name not in named:
                await state.pool.remove(upstream.name)
                await state.store.delete_upstream(upstream.name)
                deleted.append(f"server/{upstream.name}")
        kept = {t.name for t in toolsets}
        for toolset in await state.store.list_toolsets():
            if toolset.name not in kept:
                await state.store.delete_toolset(toolset.name)
                deleted.append(f"toolset/{toolset.name}")
                toolsets_changed = True
    if toolsets_changed:
        await publish_toolsets(state)
    return {
        "created": created,
        "updated": updated,
        "unchanged": unchanged,
        "deleted": deleted,
        "warnings": warnings,
        "clients": new_keys,
    }


def _same(a: Upstream, b: Upstream) -> bool:
    keep = ("created_at", "updated_at")
    return {k: v for k, v in vars(a).items() if k not in keep} == {
        k: v for k, v in vars(b).items() if k not in keep
    }


def _same_toolset(a: Toolset, b: Toolset) -> bool:
    return (a.tools, dict(a.aliases), a.description) == (b.tools, dict(b.aliases), b.description)


async def _known_toolset(state: AdminState, name: str) -> Toolset:
    toolset = await state.store.get_toolset(name)
    if toolset is None:
        raise _Problem(404, "Not Found", f"no toolset named '{name}'")
    return toolset


def _toolset_out(t: Toolset, snapshot: Snapshot) -> dict[str, Any]:
    return {
        "name": t.name,
        "description": t.description,
        "tools": list(t.tools),
        "aliases": dict(t.aliases),
        "members": [shown for shown, _ in toolset_members(t, snapshot)],
        "created_at": _iso(t.created_at),
        "updated_at": _iso(t.updated_at),
    }


async def _new_client(state: AdminState, name: str, team: str | None) -> tuple[ClientRecord, str]:
    key = new_api_key()
    record = ClientRecord(
        client_id="c_" + secrets.token_hex(8),
        name=name,
        team=team,
        key_hash=hash_secret(key),
        key_prefix=key[: len(API_KEY_PREFIX) + 4],
        created_at=datetime.now(UTC),
    )
    try:
        record = await state.store.create_client(record)
    except StoreConflictError:
        raise _Problem(409, "Conflict", f"a client named '{name}' already exists") from None
    state.keys.upsert(record)
    return record, key


def _authorize(state: AdminState, request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Problem(401, "Unauthorized", "the admin API needs the admin token")
    expected = state.admin_token_hash
    if expected is not None and hmac.compare_digest(hash_secret(token), expected):
        return
    if token.startswith(API_KEY_PREFIX):
        raise _Problem(403, "Forbidden", "client credentials cannot use the admin API")
    raise _Problem(401, "Unauthorized", "invalid admin token")


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 4 * 1024 * 1024:
        raise _Problem(413, "Payload Too Large", "request body over 4 MiB")
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        raise _Problem(400, "Bad Request", "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _Problem(400, "Bad Request", "body must be a JSON object")
    return data


def _parse_server(body: dict[str, Any]) -> Upstream:
    try:
        upstream = server_from_dict(body)
    except ConfigError as exc:
        raise _Problem(400, "Invalid server", str(exc)) from None
    _check_transport(upstream)
    return upstream


def _check_transport(upstream: Upstream) -> None:
    if upstream.transport not in SUPPORTED_TRANSPORTS:
        raise _Problem(
            400,
            "Unsupported transport",
            f"server '{upstream.name}': transport '{upstream.transport}' is not supported by this version "
            f"(supported: {', '.join(SUPPORTED_TRANSPORTS)})",
        )


def _known(state: AdminState, name: str) -> Upstream:
    upstream = state.pool.upstream(name)
    if upstream is None:
        raise _Problem(404, "Not Found", f"no server named '{name}'")
    return upstream


def _sha(state: AdminState, server: str, tool: str) -> str | None:
    from tollhouse.registry.models import definition_sha256

    catalog = state.pool.catalog(server)
    if catalog is None:
        return None
    for t in catalog.tools:
        if t["name"] == tool:
            return definition_sha256(t)
    return None


def _server_out(pool: UpstreamPool, u: Upstream) -> dict[str, Any]:
    health = pool.health(u.name)
    desc = pool.description(u.name)
    catalog = pool.catalog(u.name)
    return {
        "name": u.name,
        "transport": u.transport,
        "url": u.url,
        "command": list(u.command),
        "env": dict(u.env),
        "cwd": u.cwd,
        "auth": {k: v for k, v in vars(u.auth).items() if v is not None},
        "enabled": u.enabled,
        "approval": u.approval,
        "failure_mode": u.failure_mode,
        "connect_timeout_seconds": u.connect_timeout_seconds,
        "call_timeout_seconds": u.call_timeout_seconds,
        "health": {
            "status": health.status,
            "last_error": health.last_error,
            "checked_at": _iso(health.checked_at),
        },
        "era": desc.era if desc else None,
        "protocol_version": desc.protocol_version if desc else None,
        "tool_count": len(catalog.tools) if catalog else 0,
        "created_at": _iso(u.created_at),
        "updated_at": _iso(u.updated_at),
    }


def _sync_out(r: SyncResult) -> dict[str, Any]:
    return {
        "server": r.server,
        "snapshot_version": r.snapshot_version,
        "tools": r.tools,
        "resources": r.resources,
        "resource_templates": r.resource_templates,
        "prompts": r.prompts,
    }


def _client_out(c: ClientRecord) -> dict[str, Any]:
    return {
        "client_id": c.client_id,
        "name": c.name,
        "team": c.team,
        "key_prefix": c.key_prefix,
        "created_at": _iso(c.created_at),
        "revoked_at": _iso(c.revoked_at),
    }


def _openapi() -> dict[str, Any]:
    def op(summary: str, status: str = "200") -> dict[str, Any]:
        return {"summary": summary, "security": [{"admin": []}], "responses": {status: {"description": "OK"}}}

    name = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "tollhouse admin API", "version": __version__},
        "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/servers": {"get": op("List upstream MCP servers"), "post": op("Register a server", "201")},
            "/servers/{name}": {
                "parameters": name,
                "get": op("Show a server"),
                "delete": op("Remove a server", "204"),
            },
            "/servers/{name}/refresh": {"parameters": name, "post": op("Sync a server's catalog now")},
            "/tools": {"get": op("List exposed tools")},
            "/tools/{name}": {"parameters": name, "get": op("Show a tool")},
            "/toolsets": {"get": op("List toolsets with their live members")},
            "/toolsets/{name}": {
                "parameters": name,
                "get": op("Show a toolset"),
                "put": op("Create or replace a toolset (201 when created)"),
                "delete": op("Remove a toolset", "204"),
            },
            "/clients": {"get": op("List clients"), "post": op("Create a client and its API key", "201")},
            "/clients/{ref}/revoke": {
                "parameters": [{"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}],
                "post": op("Revoke a client"),
            },
            "/config/apply": {"post": op("Apply a declarative configuration")},
            "/config/export": {"get": op("Export the configuration")},
        },
    }
