"""Admin API for A2A agents: register, inspect, refresh and remove them, and decide on their cards.

An agent is an upstream with transport `a2a` in the servers' name space; these routes are the
only ones that show or change agents (the /servers routes leave them out). Its card is pinned
like a server's instructions (pin kind "card"): under `approval: manual`, or after the card
changed, the agent is held until an approver approves the card. Every change goes through the
admin API's `guarded` wrapper, so it is authorized by role and audited like any admin action.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.a2a.cards import CardError, ParsedCard, parse_card
from tollhouse.gateway.a2a_connector import A2AConnector
from tollhouse.gateway.admin_http import Problem as _Problem
from tollhouse.gateway.admin_http import iso as _iso
from tollhouse.gateway.admin_http import json_response as _json
from tollhouse.gateway.admin_http import read_body as _body
from tollhouse.gateway.admin_pins import pin_decision, pin_out, readable_diff
from tollhouse.gateway.errors import GatewayError
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.registry.config import ConfigError, agent_secrets_from_dict
from tollhouse.registry.models import SEPARATOR, AgentOptions, Upstream
from tollhouse.registry.pin_store import Decision
from tollhouse.registry.pins import CARD, Pin
from tollhouse.registry.store import StoreConflictError

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["agent_out", "agent_routes", "check_agent", "parse_agent"]

logger = logging.getLogger("tollhouse.pins")

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def agent_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /agents routes: list, register, show, remove, refresh, and the card's diff and decision."""
    # Imported here: admin.py imports this module, and these helpers live there.
    from tollhouse.gateway.admin import _check_secrets, _store_secrets, _stored_fields

    async def list_agents(request: Request) -> Response:
        stored = await _stored_fields(state)
        items = [agent_out(state, u, stored.get(u.name, ())) for u in state.pool.upstreams() if u.is_agent]
        return _json({"items": items})

    async def create_agent(request: Request) -> Response:
        upstream, values = parse_agent(await _body(request))
        _check_secrets(state, upstream, values, stored=(), what="agent")
        try:
            upstream = await state.store.create_upstream(upstream)
        except StoreConflictError:
            raise _Problem(
                409, "Conflict", f"a server or agent named '{upstream.name}' already exists"
            ) from None
        await _store_secrets(state, upstream.name, values)
        # Registration stands even when the card cannot be fetched or is refused: the answer
        # says so (status "down" and the error), and the pool keeps trying.
        await state.pool.add(upstream)
        return _json(agent_out(state, upstream, sorted(values)), 201)

    async def show_agent(request: Request) -> Response:
        upstream = known_agent(state.pool, request.path_params["name"])
        stored = await _stored_fields(state, upstream.name)
        out = agent_out(state, upstream, stored.get(upstream.name, ()))
        parsed = _parsed_card(state.pool, upstream.name)
        out["card_document"] = parsed.document if parsed is not None else None
        return _json(out)

    async def delete_agent(request: Request) -> Response:
        name = known_agent(state.pool, request.path_params["name"]).name
        await state.pool.remove(name)
        await state.store.delete_upstream(name)
        if state.secrets is not None:
            await state.secrets.delete_upstream(name)
        return Response(status_code=204)

    async def refresh_agent(request: Request) -> Response:
        upstream = known_agent(state.pool, request.path_params["name"])
        try:
            result = await state.pool.refresh(upstream.name)
        except GatewayError as exc:
            why = state.pool.health(upstream.name).last_error or exc.message
            raise _Problem(502, "Agent unavailable", f"agent '{upstream.name}': {why}") from None
        stored = await _stored_fields(state, upstream.name)
        out = agent_out(state, upstream, stored.get(upstream.name, ()))
        return _json({**out, "snapshot_version": result.snapshot_version})

    async def card_diff(request: Request) -> Response:
        pin = card_pin(state.pool, request.path_params["name"])
        return _json(
            {
                **card_pin_out(state.pool, pin),
                "old": pin.approved_definition,
                "new": pin.definition,
                "diff": readable_diff(pin.approved_definition, pin.definition),
            }
        )

    def deciding(decision: Decision) -> Endpoint:
        return pin_decision(state, decision, card_pin, card_pin_out)

    return [
        Route("/agents", guarded(list_agents), methods=["GET"]),
        Route("/agents", guarded(create_agent), methods=["POST"]),
        Route("/agents/{name}", guarded(show_agent), methods=["GET"]),
        Route("/agents/{name}", guarded(delete_agent), methods=["DELETE"]),
        Route("/agents/{name}/refresh", guarded(refresh_agent), methods=["POST"]),
        Route("/agents/{name}/card/diff", guarded(card_diff), methods=["GET"]),
        Route("/agents/{name}/card/approve", guarded(deciding("approve"), "approve"), methods=["POST"]),
        Route("/agents/{name}/card/reject", guarded(deciding("reject"), "approve"), methods=["POST"]),
    ]


def parse_agent(body: dict[str, Any]) -> tuple[Upstream, dict[str, str]]:
    """The agent a `POST /agents` body registers, and the secrets its `auth` gives.

    Raises:
        Problem: 400 when the body, or an inline card, is not valid.
    """
    try:
        upstream, values = agent_secrets_from_dict(body)
    except ConfigError as exc:
        raise _Problem(400, "Invalid agent", str(exc)) from None
    check_agent(upstream)
    return upstream, values


def check_agent(upstream: Upstream) -> None:
    """Refuse an inline card that is not a usable A2A card (a fetched one is checked when fetched).

    Raises:
        Problem: 400 naming what is wrong with the card.
    """
    options = upstream.a2a or AgentOptions()
    if upstream.url is None and options.card is not None:
        try:
            parse_card(options.card)
        except CardError as exc:
            raise _Problem(400, "Invalid agent card", f"agent '{upstream.name}': {exc}") from None


def known_agent(pool: UpstreamPool, name: str) -> Upstream:
    """The registered agent `name`.

    Raises:
        Problem: 404 when there is none (a server of that name is not an agent).
    """
    upstream = pool.upstream(name)
    if upstream is None or not upstream.is_agent:
        raise _Problem(404, "Not Found", f"no agent named '{name}'")
    return upstream


def card_pin(pool: UpstreamPool, name: str) -> Pin:
    """The card pin of agent `name`.

    Raises:
        Problem: 404 when there is no such agent, or its card was never fetched.
    """
    known_agent(pool, name)
    pin = pool.pinning.pin(name, *CARD)
    if pin is None:
        raise _Problem(404, "Not Found", f"no card seen yet for agent '{name}'")
    return pin


def card_pin_out(pool: UpstreamPool, pin: Pin) -> dict[str, Any]:
    """A card pin as the admin API shows it, with whether the agent is held."""
    return {**pin_out(pool, pin), "held": _held(pool, pin.server)}


def _held(pool: UpstreamPool, name: str) -> bool:
    return name in pool.pinning.view().held


def _live_connector(pool: UpstreamPool, name: str) -> A2AConnector | None:
    try:
        connector = pool.connector(name)
    except GatewayError:
        return None
    return connector if isinstance(connector, A2AConnector) else None


def _parsed_card(pool: UpstreamPool, name: str) -> ParsedCard | None:
    """The card as last fetched: the live connector's, else the last synced catalog's (no signatures)."""
    connector = _live_connector(pool, name)
    if connector is not None:
        try:
            return connector.card
        except GatewayError:
            pass
    catalog = pool.catalog(name)
    if catalog is None or catalog.card is None:
        return None
    try:
        return parse_card(catalog.card)
    except CardError:
        return None


def _card_summary(parsed: ParsedCard) -> dict[str, Any]:
    versions = sorted({i.protocol_version for i in parsed.interfaces if i.protocol_version})
    return {
        "name": parsed.name,
        "description": parsed.description,
        "version": parsed.document.get("version"),
        "a2a_version": parsed.version,
        "protocol_versions": versions,
        "interfaces": [
            {"binding": i.binding, "url": i.url, "protocol_version": i.protocol_version}
            for i in parsed.interfaces
        ],
        "streaming": parsed.streaming,
        "push_notifications": parsed.push_notifications,
    }


def agent_out(state: AdminState, u: Upstream, stored: Sequence[str] = ()) -> dict[str, Any]:
    """An agent as the admin API shows it: registration, status, card, skills and the card's pin."""
    pool = state.pool
    options = u.a2a or AgentOptions()
    health = pool.health(u.name)
    live = _live_connector(pool, u.name) is not None
    status = "disabled" if not u.enabled else ("live" if live else "down")
    parsed = _parsed_card(pool, u.name)
    snapshot = pool.snapshot
    skills: list[dict[str, Any]] = []
    for skill in parsed.skills if parsed is not None else ():
        exposed = f"{u.name}{SEPARATOR}{skill.id}"
        skills.append(
            {
                "id": skill.id,
                "name": skill.name,
                "description": skill.description,
                "tags": list(skill.tags),
                # The MCP tool it is exposed as, while it is (tools "skills", card and tool approved).
                "tool": exposed if snapshot.tool(exposed) is not None else None,
            }
        )
    pin = pool.pinning.pin(u.name, *CARD)
    return {
        "name": u.name,
        "card_url": u.url,
        "inline_card": u.url is None,
        "endpoint": f"{state.public_url.rstrip('/')}/a2a/{u.name}",
        "enabled": u.enabled,
        "approval": u.approval,
        "tools": options.tools,
        "require_signature": options.require_signature,
        "jwks": options.jwks,
        "description": u.description,
        "tags": list(u.tags),
        # Settings and references; a stored secret shows only as {"set": true}, never its value.
        "auth": {k: v for k, v in vars(u.auth).items() if v is not None} | {f: {"set": True} for f in stored},
        "connect_timeout_seconds": u.connect_timeout_seconds,
        "call_timeout_seconds": u.call_timeout_seconds,
        "status": status,
        "held": _held(pool, u.name),
        "last_error": health.last_error if status == "down" else None,
        "health": {
            "status": health.status,
            "last_error": health.last_error,
            "checked_at": _iso(health.checked_at),
        },
        "card": _card_summary(parsed) if parsed is not None else None,
        "skills": skills,
        "card_pin": card_pin_out(pool, pin) if pin is not None else None,
        "created_at": _iso(u.created_at),
        "updated_at": _iso(u.updated_at),
    }
