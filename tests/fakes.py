"""Fakes that implement tollhouse's own interfaces, for tests that need the other side of a seam.

`FakeAdminApi` is an in-memory admin API (`/admin/api/v1`) that mirrors the contract the CLI
relies on: the same routes, JSON documents, status codes and `application/problem+json` errors
as `tollhouse.gateway.admin`. It lets the CLI's tests run against a real HTTP server without
upstreams; the CLI tests against the real gateway live in tests/e2e.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tollhouse.gateway.snapshot import build_snapshot
from tollhouse.gateway.views import toolset_members
from tollhouse.registry.config import (
    ConfigError,
    GatewayConfig,
    config_from_dict,
    config_to_dict,
    server_from_dict,
    toolset_from_dict,
)
from tollhouse.registry.models import ClientRecord, Toolset, Upstream, UpstreamCatalog, definition_sha256

__all__ = ["FakeAdminApi"]

JSONObject = dict[str, Any]
Endpoint = Callable[[Request], Awaitable[Response]]


class _Problem(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _problem(p: _Problem) -> Response:
    body = {"type": "about:blank", "title": p.title, "status": p.status, "detail": p.detail}
    return JSONResponse(body, status_code=p.status, media_type="application/problem+json")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _comparable(upstream: Upstream) -> Upstream:
    return replace(upstream, created_at=None, updated_at=None)


@dataclass
class FakeAdminApi:
    """An in-memory admin API; `app` serves it at /admin/api/v1.

    `upstream_tools` holds the tool definitions each named server "offers": they appear when the
    server is added, applied or refreshed. `requests` records every (method, path) received and
    `bodies` every JSON body, so tests can check what the CLI sent, or that it sent nothing.
    """

    token: str = "admin-token"
    upstream_tools: dict[str, list[JSONObject]] = field(default_factory=dict)
    public_url: str | None = None
    now: Callable[[], datetime] = lambda: datetime(2026, 11, 3, 10, 22, tzinfo=UTC)
    servers: dict[str, Upstream] = field(default_factory=dict)
    tools: dict[str, list[JSONObject]] = field(default_factory=dict)
    clients: list[ClientRecord] = field(default_factory=list)
    toolsets: dict[str, Toolset] = field(default_factory=dict)
    snapshot_version: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)

    @property
    def app(self) -> ASGIApp:
        """The ASGI app: the admin API mounted at /admin/api/v1, recording every request."""
        routes = [
            Route("/servers", self._guard(self._list_servers), methods=["GET"]),
            Route("/servers", self._guard(self._create_server), methods=["POST"]),
            Route("/servers/{name}", self._guard(self._show_server), methods=["GET"]),
            Route("/servers/{name}", self._guard(self._delete_server), methods=["DELETE"]),
            Route("/servers/{name}/refresh", self._guard(self._refresh_server), methods=["POST"]),
            Route("/tools", self._guard(self._list_tools), methods=["GET"]),
            Route("/tools/{name}", self._guard(self._show_tool), methods=["GET"]),
            Route("/toolsets", self._guard(self._list_toolsets), methods=["GET"]),
            Route("/toolsets/{name}", self._guard(self._show_toolset), methods=["GET"]),
            Route("/toolsets/{name}", self._guard(self._put_toolset), methods=["PUT"]),
            Route("/toolsets/{name}", self._guard(self._delete_toolset), methods=["DELETE"]),
            Route("/clients", self._guard(self._list_clients), methods=["GET"]),
            Route("/clients", self._guard(self._create_client), methods=["POST"]),
            Route("/clients/{ref}/revoke", self._guard(self._revoke_client), methods=["POST"]),
            Route("/config/apply", self._guard(self._apply), methods=["POST"]),
            Route("/config/export", self._guard(self._export), methods=["GET"]),
        ]
        inner = Starlette(routes=[Mount("/admin/api/v1", routes=routes)])

        async def recording(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.requests.append((scope["method"], scope["path"]))
            await inner(scope, receive, send)

        return recording

    # --- plumbing ---

    def _guard(self, endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            try:
                scheme, _, token = request.headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    raise _Problem(401, "Unauthorized", "the admin API needs the admin token")
                if not hmac.compare_digest(token.encode(), self.token.encode()):
                    raise _Problem(401, "Unauthorized", "invalid admin token")
                return await endpoint(request)
            except _Problem as p:
                return _problem(p)

        return guarded

    async def _body(self, request: Request) -> JSONObject:
        try:
            data = await request.json()
        except ValueError:
            raise _Problem(400, "Bad Request", "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _Problem(400, "Bad Request", "body must be a JSON object")
        self.bodies.append(data)
        return data

    def _known(self, name: str) -> Upstream:
        if name not in self.servers:
            raise _Problem(404, "Not Found", f"no server named '{name}'")
        return self.servers[name]

    def _store(self, upstream: Upstream) -> Upstream:
        previous = self.servers.get(upstream.name)
        created = previous.created_at if previous is not None else self.now()
        stored = replace(upstream, created_at=created, updated_at=self.now())
        self.servers[upstream.name] = stored
        self._sync(upstream.name)
        return stored

    def _sync(self, name: str) -> None:
        self.tools[name] = [dict(t) for t in self.upstream_tools.get(name, [])]
        self.snapshot_version += 1

    def _server_out(self, u: Upstream) -> JSONObject:
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
            "health": {"status": "healthy", "last_error": None, "checked_at": _iso(self.now())},
            "era": "2026-07-28",
            "protocol_version": "2026-07-28",
            "tool_count": len(self.tools.get(u.name, [])),
            "created_at": _iso(u.created_at),
            "updated_at": _iso(u.updated_at),
        }

    def _tool_items(self) -> list[JSONObject]:
        return [
            {
                "name": f"{server}__{t['name']}",
                "server": server,
                "tool": t["name"],
                "title": t.get("title"),
                "description": t.get("description"),
                "sha256": definition_sha256(t),
            }
            for server in sorted(self.tools)
            for t in self.tools[server]
        ]

    def _new_client(self, name: str, team: str | None) -> tuple[ClientRecord, str]:
        if any(c.name == name for c in self.clients):
            raise _Problem(409, "Conflict", f"a client named '{name}' already exists")
        key = "thk_" + secrets.token_urlsafe(24)
        record = ClientRecord(
            client_id=f"c_{len(self.clients) + 1:04d}",
            name=name,
            team=team,
            key_hash=hashlib.sha256(key.encode()).hexdigest(),
            key_prefix=key[:8],
            created_at=self.now(),
        )
        self.clients.append(record)
        return record, key

    @staticmethod
    def _client_out(c: ClientRecord) -> JSONObject:
        return {
            "client_id": c.client_id,
            "name": c.name,
            "team": c.team,
            "key_prefix": c.key_prefix,
            "created_at": _iso(c.created_at),
            "revoked_at": _iso(c.revoked_at),
        }

    # --- servers and tools ---

    async def _list_servers(self, request: Request) -> Response:
        return JSONResponse({"items": [self._server_out(self.servers[n]) for n in sorted(self.servers)]})

    async def _create_server(self, request: Request) -> Response:
        try:
            upstream = server_from_dict(await self._body(request))
        except ConfigError as exc:
            raise _Problem(400, "Invalid server", str(exc)) from None
        if upstream.name in self.servers:
            raise _Problem(409, "Conflict", f"a server or agent named '{upstream.name}' already exists")
        return JSONResponse(self._server_out(self._store(upstream)), status_code=201)

    async def _show_server(self, request: Request) -> Response:
        upstream = self._known(request.path_params["name"])
        out = self._server_out(upstream)
        out["tools"] = [f"{upstream.name}__{t['name']}" for t in self.tools.get(upstream.name, [])]
        return JSONResponse(out)

    async def _delete_server(self, request: Request) -> Response:
        name = self._known(request.path_params["name"]).name
        del self.servers[name]
        self.tools.pop(name, None)
        return Response(status_code=204)

    async def _refresh_server(self, request: Request) -> Response:
        name = self._known(request.path_params["name"]).name
        self._sync(name)
        counts = {"tools": len(self.tools[name]), "resources": 0, "resource_templates": 0, "prompts": 0}
        return JSONResponse({"server": name, "snapshot_version": self.snapshot_version, **counts})

    async def _list_tools(self, request: Request) -> Response:
        server = request.query_params.get("server")
        items = [t for t in self._tool_items() if server is None or t["server"] == server]
        return JSONResponse({"items": items})

    async def _show_tool(self, request: Request) -> Response:
        name = request.path_params["name"]
        server, _, tool = name.partition("__")
        definition = next((t for t in self.tools.get(server, []) if t["name"] == tool), None)
        if definition is None:
            raise _Problem(404, "Not Found", f"no tool named '{name}'")
        item = next(t for t in self._tool_items() if t["name"] == name)
        return JSONResponse(
            {
                **item,
                "live": True,
                "definition": {**definition, "name": name},
                "upstream_definition": definition,
            }
        )

    # --- toolsets ---

    def _save_toolset(self, toolset: Toolset) -> Toolset:
        previous = self.toolsets.get(toolset.name)
        created = previous.created_at if previous is not None else self.now()
        stored = replace(toolset, created_at=created, updated_at=self.now())
        self.toolsets[toolset.name] = stored
        return stored

    def _toolset_out(self, t: Toolset) -> JSONObject:
        catalogs = {
            name: UpstreamCatalog(server=name, tools=tuple(tools)) for name, tools in self.tools.items()
        }
        snapshot = build_snapshot(self.snapshot_version, catalogs, self.servers, self.toolsets.values())
        return {
            "name": t.name,
            "description": t.description,
            "tools": list(t.tools),
            "aliases": dict(t.aliases),
            "members": [shown for shown, _ in toolset_members(t, snapshot)],
            "created_at": _iso(t.created_at),
            "updated_at": _iso(t.updated_at),
        }

    def _known_toolset(self, name: str) -> Toolset:
        if name not in self.toolsets:
            raise _Problem(404, "Not Found", f"no toolset named '{name}'")
        return self.toolsets[name]

    async def _list_toolsets(self, request: Request) -> Response:
        return JSONResponse({"items": [self._toolset_out(self.toolsets[n]) for n in sorted(self.toolsets)]})

    async def _show_toolset(self, request: Request) -> Response:
        return JSONResponse(self._toolset_out(self._known_toolset(request.path_params["name"])))

    async def _put_toolset(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await self._body(request)
        if "name" in body and body["name"] != name:
            raise _Problem(400, "Invalid toolset", f"the body names '{body['name']}' but the path '{name}'")
        try:
            toolset = toolset_from_dict({**body, "name": name})
        except ConfigError as exc:
            raise _Problem(400, "Invalid toolset", str(exc)) from None
        existed = name in self.toolsets
        return JSONResponse(
            self._toolset_out(self._save_toolset(toolset)), status_code=200 if existed else 201
        )

    async def _delete_toolset(self, request: Request) -> Response:
        del self.toolsets[self._known_toolset(request.path_params["name"]).name]
        return Response(status_code=204)

    # --- clients ---

    async def _list_clients(self, request: Request) -> Response:
        return JSONResponse({"items": [self._client_out(c) for c in self.clients]})

    async def _create_client(self, request: Request) -> Response:
        body = await self._body(request)
        name, team = body.get("name"), body.get("team")
        if not isinstance(name, str) or not name or (team is not None and not isinstance(team, str)):
            raise _Problem(400, "Bad Request", "'name' (string) is required; 'team' must be a string")
        client, key = self._new_client(name, team)
        return JSONResponse({**self._client_out(client), "api_key": key}, status_code=201)

    async def _revoke_client(self, request: Request) -> Response:
        ref = request.path_params["ref"]
        for i, client in enumerate(self.clients):
            if ref in (client.client_id, client.name):
                if client.revoked_at is None:
                    self.clients[i] = client = replace(client, revoked_at=self.now())
                return JSONResponse(self._client_out(client))
        raise _Problem(404, "Not Found", f"no client '{ref}'")

    # --- declarative configuration ---

    async def _apply(self, request: Request) -> Response:
        body = await self._body(request)
        raw, prune = body.get("config", {}), bool(body.get("prune", False))
        if not isinstance(raw, dict):
            raise _Problem(400, "Bad Request", "'config' must be an object")
        try:
            loaded = config_from_dict(raw)
        except ConfigError as exc:
            raise _Problem(400, "Invalid configuration", str(exc)) from None
        changes: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": [], "deleted": []}
        new_keys: list[JSONObject] = []
        for upstream in loaded.servers:
            existing = self.servers.get(upstream.name)
            if existing is not None and _comparable(existing) == upstream:
                changes["unchanged"].append(f"server/{upstream.name}")
                continue
            self._store(upstream)
            changes["updated" if existing else "created"].append(f"server/{upstream.name}")
        for toolset in loaded.toolsets:
            known = self.toolsets.get(toolset.name)
            if known is not None and replace(known, created_at=None, updated_at=None) == toolset:
                changes["unchanged"].append(f"toolset/{toolset.name}")
                continue
            self._save_toolset(toolset)
            changes["updated" if known else "created"].append(f"toolset/{toolset.name}")
        for spec in loaded.clients:
            if any(c.name == spec.name for c in self.clients):
                changes["unchanged"].append(f"client/{spec.name}")
                continue
            client, key = self._new_client(spec.name, spec.team)
            changes["created"].append(f"client/{spec.name}")
            new_keys.append(
                {"client_id": client.client_id, "name": client.name, "team": client.team, "api_key": key}
            )
        if prune:
            named = {u.name for u in loaded.servers}
            for name in sorted(set(self.servers) - named):
                del self.servers[name]
                self.tools.pop(name, None)
                changes["deleted"].append(f"server/{name}")
            for name in sorted(set(self.toolsets) - {t.name for t in loaded.toolsets}):
                del self.toolsets[name]
                changes["deleted"].append(f"toolset/{name}")
        return JSONResponse({**changes, "warnings": list(loaded.warnings), "clients": new_keys})

    async def _export(self, request: Request) -> Response:
        gateway = GatewayConfig(public_url=self.public_url)
        servers = [self.servers[n] for n in sorted(self.servers)]
        toolsets = [self.toolsets[n] for n in sorted(self.toolsets)]
        return JSONResponse(config_to_dict(gateway, servers, self.clients, toolsets))


class TaskUpstream:
    """A minimal session-era (2025-11-25) MCP server over Streamable HTTP that runs tools as tasks.

    The SDK 2.3.0 has no server side for the experimental tasks, so this speaks the wire
    itself (JSON responses): initialize, tools/list, tools/call (task-augmented when `task` is
    given), tasks/get|result|list|cancel. A task finishes when the test sets `release`.
    """

    def __init__(self, *, modern: bool = False) -> None:
        self.release = anyio.Event()
        self.tasks: dict[str, dict[str, Any]] = {}
        self.sessions: set[str] = set()
        # modern: a 2026-07-28 server with the io.modelcontextprotocol/tasks extension instead
        self.modern = modern

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "DELETE":
            self.sessions.discard(headers.get("mcp-session-id", ""))
            await _send(send, 200, b"")
            return
        if scope["method"] != "POST":
            await _send(send, 405, b"")
            return
        request = orjson.loads(body)
        method, request_id = request.get("method"), request.get("id")
        session = headers.get("mcp-session-id")
        if self.modern:
            await _send(send, 200, await self._modern(method, request.get("params") or {}, request_id))
            return
        if method == "initialize":
            session = secrets.token_hex(8)
            self.sessions.add(session)
            result: Any = {
                "protocolVersion": "2025-11-25",
                "capabilities": {
                    "tools": {},
                    "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}},
                },
                "serverInfo": {"name": "task-upstream", "version": "0"},
            }
            await _send(send, 200, _reply(request_id, result), session)
            return
        if session not in self.sessions:
            error = {"code": -32600, "message": "Bad Request: Missing session ID"}
            await _send(send, 400, orjson.dumps({"jsonrpc": "2.0", "id": None, "error": error}))
            return
        if request_id is None:
            await _send(send, 202, b"", session)
            return
        params = request.get("params") or {}
        await _send(send, 200, await self._answer(method, params, request_id), session)

    async def _modern(self, method: str, params: dict[str, Any], request_id: Any) -> bytes:
        """2026-07-28: stateless, tasks as `resultType: "task"` when the client declares the extension."""
        if method == "server/discover":
            caps: dict[str, Any] = {"tools": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}}
            return _reply(request_id, {"supportedVersions": ["2026-07-28"], "capabilities": caps})
        if method == "tools/list":
            return _reply(request_id, {"tools": [{"name": "slow", "inputSchema": {"type": "object"}}]})
        meta = params.get("_meta") or {}
        declared = (meta.get("io.modelcontextprotocol/clientCapabilities") or {}).get("extensions") or {}
        if method == "tools/call":
            if "io.modelcontextprotocol/tasks" not in declared:
                return _reply(request_id, {"content": [{"type": "text", "text": "done now"}]})
            task_id = f"up-{len(self.tasks) + 1}"
            self.tasks[task_id] = {"taskId": task_id, "status": "working"}
            return _reply(
                request_id, {"resultType": "task", "taskId": task_id, "status": "working", "ttlMs": 60000}
            )
        task = self.tasks.get(params.get("taskId", ""))
        if task is None:
            return orjson.dumps(
                {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": "no task"}}
            )
        if method == "tasks/get":
            if self.release.is_set():
                done = {"content": [{"type": "text", "text": "done later"}]}
                return _reply(request_id, {**task, "status": "completed", "result": done})
            return _reply(request_id, task)
        if method == "tasks/cancel":
            task["status"] = "cancelled"
            return _reply(request_id, task)
        return orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}
        )

    async def _answer(self, method: str, params: dict[str, Any], request_id: Any) -> bytes:
        if method == "tools/list":
            tool = {
                "name": "slow",
                "inputSchema": {"type": "object"},
                "execution": {"taskSupport": "optional"},
            }
            return _reply(request_id, {"tools": [tool]})
        if method == "tools/call":
            if "task" not in params:
                return _reply(request_id, {"content": [{"type": "text", "text": "done now"}]})
            task_id = f"up-{len(self.tasks) + 1}"
            self.tasks[task_id] = {
                "taskId": task_id,
                "status": "working",
                "ttl": 60000,
                "createdAt": "2026-11-23T00:00:00Z",
            }
            return _reply(request_id, {"task": self.tasks[task_id]})
        task = self.tasks.get(params.get("taskId", ""))
        if method == "tasks/list":
            return _reply(request_id, {"tasks": list(self.tasks.values())})
        if task is None:
            return orjson.dumps(
                {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": "no task"}}
            )
        if method == "tasks/get":
            return _reply(request_id, task)
        if method == "tasks/cancel":
            task["status"] = "cancelled"
            return _reply(request_id, task)
        if method == "tasks/result":
            await self.release.wait()
            task["status"] = "completed"
            related = {"io.modelcontextprotocol/related-task": {"taskId": task["taskId"]}}
            return _reply(request_id, {"content": [{"type": "text", "text": "done later"}], "_meta": related})
        return orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}
        )


def _reply(request_id: Any, result: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


async def _send(send: Send, status: int, body: bytes, session: str | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if session is not None:
        headers.append((b"mcp-session-id", session.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
