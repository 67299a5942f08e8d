"""Admin API v1 (`/admin/api/v1`): servers, agents, tools, toolsets, clients, config. JSON in and out.

Only the admin credential reaches it (a client API key gets 403, anything else 401).
Errors are `application/problem+json` (RFC 9457); MCP endpoints never use that type.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.auth.keyring import KeyRing
from tollhouse.auth.passwords import Passwords
from tollhouse.auth.vault import VaultError
from tollhouse.auth.verifiers import (
    API_KEY_PREFIX,
    ApiKeyVerifier,
    InvalidTokenError,
    hash_secret,
    new_api_key,
)
from tollhouse.gateway.access_requests import AccessRequests
from tollhouse.gateway.admin_access import access_routes
from tollhouse.gateway.admin_agents import agent_routes, check_agent
from tollhouse.gateway.admin_audit import audit_routes
from tollhouse.gateway.admin_catalog import CallerSearch, catalog_routes
from tollhouse.gateway.admin_http import Problem as _Problem
from tollhouse.gateway.admin_http import iso as _iso
from tollhouse.gateway.admin_http import json_response as _json
from tollhouse.gateway.admin_http import problem_response as _problem
from tollhouse.gateway.admin_http import read_body as _body
from tollhouse.gateway.admin_identity import identity_routes
from tollhouse.gateway.admin_keys import key_routes
from tollhouse.gateway.admin_limits import apply_limits, limit_routes
from tollhouse.gateway.admin_openapi import openapi_document
from tollhouse.gateway.admin_pins import pin_items, pin_out, pin_routes
from tollhouse.gateway.admin_policies import policy_routes
from tollhouse.gateway.admin_sessions import session_routes
from tollhouse.gateway.admin_stats import stats_routes
from tollhouse.gateway.admin_usage import usage_routes
from tollhouse.gateway.authorization import PolicyProblem, PolicyService
from tollhouse.gateway.errors import GatewayError
from tollhouse.gateway.front_door import FrontDoor, revoke_principal
from tollhouse.gateway.pool import SyncResult, UpstreamPool
from tollhouse.gateway.sessions import SessionManager
from tollhouse.gateway.snapshot import Snapshot, split_exposed_name
from tollhouse.gateway.usage_service import UsageConfigError, UsageService
from tollhouse.gateway.views import toolset_members
from tollhouse.registry.config import (
    CLIENT_NAME_RE,
    SECRET_AUTH_KEYS,
    ConfigError,
    config_from_dict,
    config_to_dict,
    server_secrets_from_dict,
    server_to_dict,
    toolset_from_dict,
)
from tollhouse.registry.identity_store import SqlIdentityStore
from tollhouse.registry.models import ClientRecord, PolicyEntry, Team, Toolset, Upstream, UpstreamAuth
from tollhouse.registry.secrets_store import SqlSecretStore
from tollhouse.registry.store import RegistryStore, StoreConflictError

__all__ = ["SUPPORTED_TRANSPORTS", "AdminState", "admin_app", "apply_loaded", "publish_toolsets"]

SUPPORTED_TRANSPORTS = ("http", "sse", "stdio", "a2a")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]{1,64}$")  # RFC 6749 §3.3 scope-token


@dataclass
class AdminState:
    """What the admin API works on; filled in by the app's lifespan."""

    store: RegistryStore
    pool: UpstreamPool
    keys: ApiKeyVerifier
    admin_token_hash: str | None = None
    public_url: str = ""
    identity: SqlIdentityStore | None = None
    policies: PolicyService | None = None
    door: FrontDoor | None = None
    # Serialises "read the toolsets, swap them into the pool" so the last swap saw every write.
    toolsets_lock: anyio.Lock = field(default_factory=anyio.Lock)
    # Sealed upstream credentials (None: no key ring, so only env references work).
    secrets: SqlSecretStore | None = None
    keyring: KeyRing | None = None
    # Told about the new ring after a rotation or a key removal (token signing, audit keys).
    keyring_listeners: list[Callable[[KeyRing], None]] = field(default_factory=list)
    keys_lock: anyio.Lock = field(default_factory=anyio.Lock)
    # Prices, budgets, reports and the usage outbox (None: metering is off).
    usage: UsageService | None = None
    # Limits and kill switches (gateway/admission.py AdmissionService); None: not wired.
    admission: Any = None
    # The audit trail's recorder (gateway/auditing.py Auditor); None: admin actions go unrecorded.
    auditor: Any = None
    # This replica's live session-era MCP sessions (None: not wired, the /sessions routes answer 503).
    sessions: SessionManager | None = None
    # Access requests (gateway/access_requests.py); None: not wired, the routes answer 503.
    access: AccessRequests | None = None
    # Catalog search (gateway/admin_catalog.py); None: not wired, /catalog/search answers 503.
    catalog: CallerSearch | None = None


def admin_app(state: AdminState) -> Starlette:
    """The admin API as a Starlette app, to mount at /admin/api/v1."""

    def guarded(
        fn: Callable[[Request], Awaitable[Response]], need: str | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                try:
                    # Who decided, for the records a change leaves (pins, policies, audit).
                    request.state.subject = await _authorize(
                        state, request, need or ("read" if request.method == "GET" else "admin")
                    )
                    response = await fn(request)
                except _Problem as p:
                    response = _problem(p)
            except Exception:
                _record_admin(state, request, 500)
                raise
            _record_admin(state, request, response.status_code)
            return response

        return endpoint

    async def list_servers(request: Request) -> Response:
        stored = await _stored_fields(state)
        servers = [u for u in state.pool.upstreams() if not u.is_agent]  # agents: GET /agents
        return _json({"items": [_server_out(state.pool, u, stored.get(u.name, ())) for u in servers]})

    async def create_server(request: Request) -> Response:
        body = await _body(request)
        if body.get("transport") == "a2a":
            raise _Problem(
                400,
                "Invalid server",
                "A2A agents are registered with POST /agents (tollhouse agents add), not as servers",
            )
        upstream, values = _parse_server(body)
        _check_secrets(state, upstream, values, stored=())
        try:
            upstream = await state.store.create_upstream(upstream)
        except StoreConflictError:
            raise _Problem(
                409, "Conflict", f"a server or agent named '{upstream.name}' already exists"
            ) from None
        await _store_secrets(state, upstream.name, values)
        await state.pool.add(upstream)
        return _json(_server_out(state.pool, upstream, sorted(values)), 201)

    async def show_server(request: Request) -> Response:
        upstream = _known(state, request.path_params["name"])
        stored = await _stored_fields(state, upstream.name)
        out = _server_out(state.pool, upstream, stored.get(upstream.name, ()))
        out["tools"] = [t.exposed for t in state.pool.snapshot.tools if t.server == upstream.name]
        return _json(out)

    async def update_server(request: Request) -> Response:
        existing = _known(state, request.path_params["name"])
        name = existing.name
        stored = (await _stored_fields(state, name)).get(name, [])
        upstream, values = _parse_update(existing, await _body(request), stored)
        _check_secrets(state, upstream, values, stored)
        changed = await _changed_secrets(state, name, values)
        # A stored secret the new credential no longer reads would linger unseen: drop it.
        stale = [f for f in stored if f != upstream.auth.stored_secret_field]
        if _same(existing, upstream) and not changed and not stale:
            return _json(_server_out(state.pool, existing, stored))
        saved = await state.store.upsert_upstream(upstream)
        await _store_secrets(state, name, changed)
        if state.secrets is not None:
            for field_name in stale:
                await state.secrets.delete_secret(name, field_name)
        await state.pool.add(saved)
        kept = sorted((set(stored) - set(stale)) | set(changed))
        return _json(_server_out(state.pool, saved, kept))

    async def delete_server(request: Request) -> Response:
        name = request.path_params["name"]
        _known(state, name)
        await state.pool.remove(name)
        await state.store.delete_upstream(name)
        if state.secrets is not None:
            await state.secrets.delete_upstream(name)
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
        if "state" in request.query_params:  # pins: ?state=pending|changed|rejected|approved|all
            return _json({"items": _pin_list(state, request.query_params["state"], server)})
        items = [
            {
                "name": t.exposed,
                "server": t.server,
                "tool": t.name,
                "title": t.definition.get("title"),
                "description": t.definition.get("description"),
                "sha256": _sha(state, t.server, t.name),
                "status": "approved",
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
                    "pin": _pin(state, parts[0], parts[1]),
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
                "pin": _pin(state, tool.server, tool.name),
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
        scopes = body.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(x, str) and _SCOPE.match(x) for x in scopes):
            raise _Problem(400, "Bad Request", "'scopes' must be a list of scope names")
        client, credentials = await _new_client(state, name, team, tuple(sorted(set(scopes))))
        return _json({**_client_out(client), **credentials}, 201)

    async def revoke_client(request: Request) -> Response:
        ref = request.path_params["ref"]
        client = await state.store.get_client(ref) or await state.store.get_client_by_name(ref)
        if client is None:
            raise _Problem(404, "Not Found", f"no client '{ref}'")
        revoked = await state.store.revoke_client(client.client_id)
        assert revoked is not None
        state.keys.upsert(revoked)
        if state.door is not None and state.identity is not None:
            # Its tokens (client credentials, and users' tokens obtained through it) stop too.
            await revoke_principal(state.door, state.identity, f"client:{client.client_id}")
            await state.identity.revoke_refresh_for(client_id=client.client_id)
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
                state,
                loaded.servers,
                loaded.clients,
                list(loaded.warnings),
                prune,
                agents=loaded.agents,
                prune_agents=prune and "agents" in loaded.sections,
                toolsets=loaded.toolsets,
                secrets=loaded.secrets,
                teams=loaded.teams,
                policies=loaded.policies,
                prune_policies=prune and "policies" in loaded.sections,
                by=request.state.subject,
                prices=loaded.prices if "prices" in loaded.sections else None,
                budgets=loaded.budgets if "budgets" in loaded.sections else None,
                limits=loaded.limits,
                prune_limits=prune and "limits" in loaded.sections,
            )
        )

    async def export_config(request: Request) -> Response:
        clients = [c for c in await state.store.list_clients() if c.active]
        toolsets = await state.store.list_toolsets()
        # Names of stored secrets only: the export writes `${VAR}` references, never a value.
        stored = await _stored_fields(state)
        teams = await state.identity.list_teams() if state.identity is not None else []
        policies = state.policies.entries() if state.policies is not None else []
        prices, budgets = state.usage.export() if state.usage is not None else ([], [])
        return _json(
            config_to_dict(
                None,
                [u for u in state.pool.upstreams() if not u.is_agent],
                clients,
                toolsets,
                secret_fields=stored,
                teams=teams,
                policies=policies,
                prices=prices,
                budgets=budgets,
                limits=[{"id": spec.id, **spec.body()} for spec in state.admission.specs]
                if state.admission is not None
                else [],
                agents=[u for u in state.pool.upstreams() if u.is_agent],
            )
        )

    async def openapi(request: Request) -> Response:
        return _json(openapi_document())

    routes = [
        Route("/servers", guarded(list_servers), methods=["GET"]),
        Route("/servers", guarded(create_server), methods=["POST"]),
        Route("/servers/{name}", guarded(show_server), methods=["GET"]),
        Route("/servers/{name}", guarded(update_server), methods=["PUT"]),
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
        *key_routes(state, guarded),
        *pin_routes(state, guarded),
        *agent_routes(state, guarded),
        *identity_routes(state, guarded, Passwords()),
        *policy_routes(state, guarded),
        *access_routes(state, guarded),
        *catalog_routes(state, guarded),
        *usage_routes(state, guarded),
        *audit_routes(state, guarded),
        *stats_routes(state, guarded),
        *limit_routes(state, guarded),
        *session_routes(state, guarded),
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
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    teams: Sequence[Team] = (),
    policies: Sequence[PolicyEntry] = (),
    prune_policies: bool = False,
    by: str | None = None,
    prices: Sequence[Mapping[str, Any]] | None = None,
    budgets: Sequence[Mapping[str, Any]] | None = None,
    limits: Sequence[Any] = (),
    prune_limits: bool = False,
    agents: Sequence[Upstream] = (),
    prune_agents: bool = False,
) -> dict[str, Any]:
    """Upsert what a config names (servers, agents and their secrets, toolsets, teams, clients, policies).

    With `prune`, also delete the servers and toolsets it omits; clients are never deleted (revoke them);
    policies are pruned only with `prune_policies` (the file has a `policies` section), agents only
    with `prune_agents` (the file has an `agents` section). Servers and agents share one name
    space: a server may not take an agent's name, nor the other way round (409).
    A secret given again with the same value changes nothing.
    """
    secrets = secrets or {}
    if state.policies is not None and (policies or prune_policies):
        # Policies are checked before anything is applied: a bad policy changes nothing.
        others = (
            []
            if prune_policies
            else [e for e in state.policies.entries() if e.id not in {p.id for p in policies}]
        )
        problems = state.policies.validate([*others, *policies])
        if problems:
            raise _Problem(400, "Invalid policy", "; ".join(problems))
    usage_changes = await _apply_usage(state, prices, budgets)
    previous_policies = {e.id for e in state.policies.entries()} if state.policies is not None else set()
    stored_fields = await _stored_fields(state)
    registered = {u.name: u for u in await state.store.list_upstreams()}
    for upstream in servers:
        _check_transport(upstream)
        if upstream.is_agent or (upstream.name in registered and registered[upstream.name].is_agent):
            raise _Problem(
                409, "Conflict", f"'{upstream.name}' is an agent: servers and agents share one name space"
            )
        _check_secrets(state, upstream, secrets.get(upstream.name, {}), stored_fields.get(upstream.name, ()))
    for agent in agents:
        if not agent.is_agent:
            raise _Problem(400, "Invalid agent", f"'{agent.name}' is not an A2A agent")
        if agent.name in registered and not registered[agent.name].is_agent:
            raise _Problem(
                409, "Conflict", f"'{agent.name}' is a server: servers and agents share one name space"
            )
        check_agent(agent)
        _check_secrets(
            state, agent, secrets.get(agent.name, {}), stored_fields.get(agent.name, ()), what="agent"
        )
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    deleted: list[str] = []
    new_keys: list[dict[str, Any]] = []
    for upstream in servers:
        existing = await state.store.get_upstream(upstream.name)
        changed_secrets = await _changed_secrets(state, upstream.name, secrets.get(upstream.name, {}))
        if existing is not None and _same(existing, upstream) and not changed_secrets:
            unchanged.append(f"server/{upstream.name}")
            continue
        stored = await state.store.upsert_upstream(upstream)
        await _store_secrets(state, upstream.name, changed_secrets)
        (updated if existing else created).append(f"server/{upstream.name}")
        await state.pool.add(stored)
    for agent in agents:
        existing = await state.store.get_upstream(agent.name)
        changed_secrets = await _changed_secrets(state, agent.name, secrets.get(agent.name, {}))
        if existing is not None and _same(existing, agent) and not changed_secrets:
            unchanged.append(f"agent/{agent.name}")
            continue
        stored = await state.store.upsert_upstream(agent)
        await _store_secrets(state, agent.name, changed_secrets)
        (updated if existing else created).append(f"agent/{agent.name}")
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
    if teams and state.identity is not None:
        known_teams = {t.name: t for t in await state.identity.list_teams()}
        for team in teams:
            if team.name in known_teams and known_teams[team.name].description == team.description:
                unchanged.append(f"team/{team.name}")
                continue
            await state.identity.upsert_team(team)
            (updated if team.name in known_teams else created).append(f"team/{team.name}")
    for spec in clients:
        existing_client = await state.store.get_client_by_name(spec.name)
        if existing_client is not None:
            unchanged.append(f"client/{spec.name}")
            continue
        client, credentials = await _new_client(state, spec.name, spec.team, spec.scopes)
        created.append(f"client/{spec.name}")
        new_keys.append(
            {"client_id": client.client_id, "name": client.name, "team": client.team, **credentials}
        )
    if prune:
        named = {u.name for u in servers}
        for upstream in await state.store.list_upstreams():
            if upstream.name not in named and not upstream.is_agent:
                await state.pool.remove(upstream.name)
                await state.store.delete_upstream(upstream.name)
                deleted.append(f"server/{upstream.name}")
        kept = {t.name for t in toolsets}
        for toolset in await state.store.list_toolsets():
            if toolset.name not in kept:
                await state.store.delete_toolset(toolset.name)
                deleted.append(f"toolset/{toolset.name}")
                toolsets_changed = True
    if prune_agents:
        named_agents = {a.name for a in agents}
        for upstream in await state.store.list_upstreams():
            if upstream.is_agent and upstream.name not in named_agents:
                await state.pool.remove(upstream.name)
                await state.store.delete_upstream(upstream.name)
                if state.secrets is not None:
                    await state.secrets.delete_upstream(upstream.name)
                deleted.append(f"agent/{upstream.name}")
    if toolsets_changed:
        await publish_toolsets(state)
    if state.policies is not None and (policies or prune_policies):
        try:
            changed = await state.policies.replace_all(policies, by=by, prune=prune_policies)
        except PolicyProblem as exc:
            raise _Problem(400, "Invalid policy", "; ".join(exc.errors)) from None
        known_ids = {p.id for p in policies}
        for item in changed:
            if item.startswith("-"):
                deleted.append(f"policy/{item[1:]}")
            else:
                (created if item in known_ids and item not in previous_policies else updated).append(
                    f"policy/{item}"
                )
        unchanged.extend(f"policy/{p.id}" for p in policies if p.id not in changed)
    limit_changes = await apply_limits(state, limits, prune=prune_limits, by=by)
    created, updated = created + limit_changes["created"], updated + limit_changes["updated"]
    unchanged, deleted = unchanged + limit_changes["unchanged"], deleted + limit_changes["deleted"]
    updated = updated + usage_changes
    return {
        "created": created,
        "updated": updated,
        "unchanged": unchanged,
        "deleted": deleted,
        "warnings": warnings,
        "clients": new_keys,
    }


async def _apply_usage(
    state: AdminState, prices: Sequence[Mapping[str, Any]] | None, budgets: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    """Replace prices and budgets a config names (a section present replaces that whole list)."""
    if state.usage is None or (prices is None and budgets is None):
        return []
    changed: list[str] = []
    try:
        if prices is not None:
            await state.usage.set_prices(prices)
            changed.append("prices")
        if budgets is not None:
            await state.usage.set_budgets(budgets)
            changed.append("budgets")
    except UsageConfigError as exc:
        raise _Problem(400, "Invalid configuration", str(exc)) from None
    return changed


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
        "disclosure": t.disclosure,
        "members": [shown for shown, _ in toolset_members(t, snapshot)],
        "created_at": _iso(t.created_at),
        "updated_at": _iso(t.updated_at),
    }


async def _new_client(
    state: AdminState, name: str, team: str | None, scopes: tuple[str, ...] = ()
) -> tuple[ClientRecord, dict[str, str]]:
    """A confidential client: a secret for client credentials, and an API key while keys are on.

    Returns the record and its credentials (shown once: only their hashes are stored).
    """
    secret = "ths_" + secrets.token_urlsafe(32)
    key = new_api_key() if state.keys.enabled else None
    record = ClientRecord(
        client_id="c_" + secrets.token_hex(8),
        name=name,
        team=team,
        key_hash=hash_secret(key) if key else None,
        key_prefix=key[: len(API_KEY_PREFIX) + 4] if key else None,
        created_at=datetime.now(UTC),
        secret_hash=hash_secret(secret),
        kind="confidential",
        registration="admin",
        grant_types=("client_credentials",),
        scopes=scopes,
    )
    try:
        record = await state.store.create_client(record)
    except StoreConflictError:
        raise _Problem(409, "Conflict", f"a client named '{name}' already exists") from None
    state.keys.upsert(record)
    credentials = {"client_secret": secret}
    if key:
        credentials["api_key"] = key
    return record, credentials


# What each role may do in the admin API (DESIGN.md: roles decide before any policy).
READ_ROLES = frozenset({"admin", "approver", "auditor", "viewer"})
NEEDS: dict[str, frozenset[str]] = {
    "read": READ_ROLES,
    "approve": frozenset({"admin", "approver"}),
    "audit": frozenset({"admin", "auditor"}),
    "admin": frozenset({"admin"}),
}


async def _authorize(state: AdminState, request: Request, need: str) -> str:
    """Who is calling (a subject) if they may do `need`; the admin token counts as role admin.

    A client credential (API key or client-credentials token) never reaches the admin API,
    whatever its scopes: only people, by role, and the bootstrap admin token.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _Problem(401, "Unauthorized", "the admin API needs the admin token or a user's access token")
    expected = state.admin_token_hash
    if expected is not None and hmac.compare_digest(hash_secret(token), expected):
        return "admin-token"
    if token.startswith(API_KEY_PREFIX):
        raise _Problem(403, "Forbidden", "client credentials cannot use the admin API")
    if state.door is None:
        raise _Problem(401, "Unauthorized", "invalid admin token")
    try:
        principal = await state.door.verifier.verify(token, state.door.resources.base)
    except InvalidTokenError:
        state.door.failures.record(
            reason="admin_token", path=request.url.path, source=_source(request), token=token, status=401
        )
        raise _Problem(401, "Unauthorized", "invalid admin token") from None
    request.state.subject = principal.subject  # named in the record of a refusal, too
    if principal.kind != "user":
        raise _Problem(403, "Forbidden", "client credentials cannot use the admin API")
    if not NEEDS[need].intersection(principal.roles):
        raise _Problem(403, "Forbidden", f"this needs one of the roles: {', '.join(sorted(NEEDS[need]))}")
    return principal.subject


def _record_admin(state: AdminState, request: Request, status: int) -> None:
    """Audit a change, a refusal, or a read that asked to be recorded (`request.state.audit`)."""
    details = getattr(request.state, "audit", None)
    if state.auditor is None or (request.method == "GET" and status not in (401, 403) and details is None):
        return
    state.auditor.admin_action(
        request.method,
        request.url.path,
        status,
        principal=None,
        subject=getattr(request.state, "subject", None),
        source_ip=_source(request),
        details=details,
    )


def _source(request: Request) -> str | None:
    return request.client.host if request.client else None


def _parse_server(body: dict[str, Any]) -> tuple[Upstream, dict[str, str]]:
    try:
        upstream, values = server_secrets_from_dict(body)
    except ConfigError as exc:
        raise _Problem(400, "Invalid server", str(exc)) from None
    _check_transport(upstream)
    return upstream, values


def _parse_update(
    existing: Upstream, body: dict[str, Any], stored: Sequence[str]
) -> tuple[Upstream, dict[str, str]]:
    """The server a `PUT /servers/{name}` body makes of `existing`, and the secrets the body gives.

    Keys the body leaves out keep their current values; a `url` replaces the stdio keys
    (`command`, `env`, `cwd`), a `command` the URL ones (`url`, `transport`). A stored secret
    the body does not send again is kept: it stands in for the value while the entry is
    validated, and is not among the values returned.
    """
    name = existing.name
    if body.get("name", name) != name:
        raise _Problem(400, "Invalid server", f"the body names '{body['name']}' but the path '{name}'")
    current = server_to_dict(existing)
    if isinstance(current.get("auth"), dict) and existing.auth.stored_secret_field is not None:
        current["auth"].pop(existing.auth.stored_secret_field, None)  # a `${VAR}` placeholder
    replaced = {"url": ("command", "env", "cwd"), "command": ("url", "transport")}
    for given, keys in replaced.items():
        if given in body:
            for key in keys:
                current.pop(key, None)
    if "timeouts" in body:
        current.pop("connect_timeout_seconds", None)
        current.pop("call_timeout_seconds", None)
    entry = {**current, **body, "name": name}
    auth = entry.get("auth")
    kept: tuple[str, str] | None = None
    if isinstance(auth, dict):
        wanted = UpstreamAuth(type=auth.get("type", "none")).stored_secret_field
        if wanted is not None and wanted in stored and not {wanted, SECRET_AUTH_KEYS[wanted]} & set(auth):
            kept = (wanted, "kept-" + secrets.token_urlsafe(16))
            entry["auth"] = {**auth, kept[0]: kept[1]}
    upstream, values = _parse_server(entry)
    if kept is not None and values.get(kept[0]) == kept[1]:
        del values[kept[0]]
    return upstream, values


# Auth types that cannot work without their secret (the authorization-code client may be public).
_SECRET_REQUIRED = frozenset({"bearer", "header", "oauth_client_credentials", "token_exchange"})


def _check_secrets(
    state: AdminState,
    upstream: Upstream,
    values: Mapping[str, str],
    stored: Sequence[str],
    *,
    what: str = "server",
) -> None:
    """Refuse a secret that cannot be stored, or a credential whose secret is neither given nor stored."""
    title = f"Invalid {what}"
    if values and state.secrets is None:
        raise _Problem(400, title, f"{what} '{upstream.name}': stored secrets need the key ring; use *_env")
    wanted = upstream.auth.stored_secret_field
    for field_name in values:
        if field_name != wanted:
            raise _Problem(400, title, f"{what} '{upstream.name}': '{field_name}' does not apply")
    required = wanted is not None and upstream.auth.type in _SECRET_REQUIRED
    if required and wanted not in values and wanted not in stored:
        reference = "token_env" if wanted == "token" else f"{wanted}_env"
        raise _Problem(
            400,
            title,
            f"{what} '{upstream.name}': auth needs '{wanted}' (stored encrypted) or '{reference}'",
        )


async def _stored_fields(state: AdminState, name: str | None = None) -> dict[str, list[str]]:
    if state.secrets is None:
        return {}
    return await state.secrets.secret_fields(name)


async def _changed_secrets(state: AdminState, name: str, values: Mapping[str, str]) -> dict[str, str]:
    """The given secrets that differ from what is stored (compared in memory, never logged)."""
    if state.secrets is None or not values:
        return dict(values)
    changed: dict[str, str] = {}
    for field_name, value in values.items():
        try:
            current = await state.secrets.get_secret(name, field_name)
        except VaultError:
            current = None
        if current is None or not hmac.compare_digest(current.encode(), value.encode()):
            changed[field_name] = value
    return changed


async def _store_secrets(state: AdminState, name: str, values: Mapping[str, str]) -> None:
    if not values:
        return
    assert state.secrets is not None, "_check_secrets refuses secrets without a store"
    for field_name, value in values.items():
        await state.secrets.put_secret(name, field_name, value)


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
    if upstream is None or upstream.is_agent:  # agents: /agents/{name}
        raise _Problem(404, "Not Found", f"no server named '{name}'")
    return upstream


def _sha(state: AdminState, server: str, tool: str) -> str | None:
    """The pin hash (RFC 8785) of the tool's current definition."""
    pin = state.pool.pinning.pin(server, "tool", tool)
    return pin.sha256 if pin is not None else None


def _pin(state: AdminState, server: str, tool: str) -> dict[str, Any] | None:
    pin = state.pool.pinning.pin(server, "tool", tool)
    return pin_out(state.pool, pin) if pin is not None else None


def _pin_list(state: AdminState, wanted: str, server: str | None) -> list[dict[str, Any]]:
    states = ("pending", "changed", "rejected", "approved") if wanted == "all" else tuple(wanted.split(","))
    if not set(states) <= {"pending", "changed", "rejected", "approved"}:
        raise _Problem(400, "Bad Request", "'state' takes pending, changed, rejected, approved or all")
    return [i for i in pin_items(state.pool, states, server) if i["kind"] == "tool"]


def _server_out(pool: UpstreamPool, u: Upstream, stored: Sequence[str] = ()) -> dict[str, Any]:
    health = pool.health(u.name)
    breaker, failures = pool.breaker(u.name)
    desc = pool.description(u.name)
    catalog = pool.catalog(u.name)
    return {
        "name": u.name,
        "transport": u.transport,
        "url": u.url,
        "command": list(u.command),
        "env": dict(u.env),
        "cwd": u.cwd,
        # Settings and references; a stored secret shows only as {"set": true}, never its value.
        "auth": {k: v for k, v in vars(u.auth).items() if v is not None} | {f: {"set": True} for f in stored},
        "enabled": u.enabled,
        "approval": u.approval,
        "failure_mode": u.failure_mode,
        "max_in_flight": u.max_in_flight,
        "idempotent": list(u.idempotent),
        "description": u.description,
        "tags": list(u.tags),
        "registry": u.registry,
        "cache_ttl_seconds": u.cache_ttl_seconds,
        "cache_scope": u.cache_scope,
        "connect_timeout_seconds": u.connect_timeout_seconds,
        "call_timeout_seconds": u.call_timeout_seconds,
        "health": {
            "status": health.status,
            "last_error": health.last_error,
            "checked_at": _iso(health.checked_at),
        },
        "breaker": {"state": breaker, "consecutive_failures": failures},
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
        "kind": c.kind,
        "registration": c.registration,
        "client_name": c.client_name,
        "scopes": list(c.scopes),
        "grant_types": list(c.grant_types),
        "redirect_uris": list(c.redirect_uris),
        "key_prefix": c.key_prefix,
        "created_at": _iso(c.created_at),
        "revoked_at": _iso(c.revoked_at),
    }
