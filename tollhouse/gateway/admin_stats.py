"""Admin API: the overview's figures (`GET /stats`): traffic, outcomes, top tools, upstream health.

Traffic comes from the audit trail: every tool call (`tools/call`) and A2A message
(`SendMessage`, `SendStreamingMessage`) leaves one record, so counting records of those actions
in a time window counts calls, from every node sharing the database. The window is whole
minutes: it ends with the current (partial) minute and reaches `minutes` minutes back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.admin_http import Problem, iso, json_response
from tollhouse.gateway.admin_pins import AWAITING, pin_items
from tollhouse.registry.models import SEPARATOR

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState
    from tollhouse.gateway.pool import UpstreamPool

__all__ = ["CALL_ACTIONS", "DENIALS", "ERRORS", "stats_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]

# The audit actions of a call: an MCP tool call, and A2A messages (their tool is agent__skill).
CALL_ACTIONS = ("tools/call", "SendMessage", "SendStreamingMessage")
# Calls that ran and failed, or were malformed (metering.OUTCOMES and auditing.outcome_for).
ERRORS = ("tool_error", "upstream_error", "gateway_error", "invalid")
# Calls refused by policy, approval, guardrails or a kill switch (rate limits count apart).
DENIALS = ("denied",)
MAX_MINUTES = 24 * 60
TOP_TOOLS = 10


def stats_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /stats route (any console role)."""

    async def stats(request: Request) -> Response:
        params = request.query_params
        unknown = sorted(set(params) - {"minutes"})
        if unknown:
            raise Problem(400, "Bad Request", f"unknown parameter(s): {', '.join(unknown)}")
        minutes = _minutes(params.get("minutes"))
        until = _next_minute(datetime.now(UTC))
        since = until - timedelta(minutes=minutes)
        traffic = await _traffic(state, since, until, minutes)
        return json_response(
            {
                "minutes": minutes,
                "since": iso(since),
                "until": iso(until),
                **traffic,
                "upstreams": upstream_health(state.pool),
                "pending_approvals": len(pin_items(state.pool, AWAITING)),
            }
        )

    return [Route("/stats", guarded(stats, "read"), methods=["GET"])]


def _minutes(text: str | None) -> int:
    if text is None:
        return 60
    if not text.isdigit() or not 1 <= int(text) <= MAX_MINUTES:
        raise Problem(400, "Bad Request", f"'minutes' must be 1 to {MAX_MINUTES}")
    return int(text)


def _next_minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


async def _traffic(state: AdminState, since: datetime, until: datetime, minutes: int) -> dict[str, Any]:
    """Calls, outcomes, rates, the per-minute series and the top tools (all zero without a trail)."""
    by_minute: list[tuple[datetime, str | None, int]] = []
    top: list[tuple[str | None, str | None, int, int, int]] = []
    if state.auditor is not None:
        counts = await state.auditor.trail.store.call_counts(
            since, until, actions=CALL_ACTIONS, errors=ERRORS, denials=DENIALS, top=TOP_TOOLS
        )
        by_minute, top = counts.by_minute, counts.top_tools
    outcomes: dict[str, int] = {}
    series = {since + timedelta(minutes=i): [0, 0, 0] for i in range(minutes)}
    for minute, outcome, count in by_minute:
        name = outcome or "unknown"
        outcomes[name] = outcomes.get(name, 0) + count
        slot = series.get(minute)
        if slot is not None:
            slot[0] += count
            slot[1] += count if name in ERRORS else 0
            slot[2] += count if name in DENIALS else 0
    calls = sum(outcomes.values())
    errors = sum(outcomes.get(o, 0) for o in ERRORS)
    denials = sum(outcomes.get(o, 0) for o in DENIALS)
    return {
        "calls": calls,
        "errors": errors,
        "denials": denials,
        "error_rate": errors / calls if calls else None,
        "denial_rate": denials / calls if calls else None,
        "outcomes": dict(sorted(outcomes.items(), key=lambda item: (-item[1], item[0]))),
        "per_minute": [
            {"minute": iso(minute), "calls": c, "errors": e, "denials": d}
            for minute, (c, e, d) in sorted(series.items())
        ],
        "top_tools": [
            {"name": _exposed(s, t), "server": s, "tool": t, "calls": n, "errors": e, "denials": d}
            for s, t, n, e, d in top
        ],
    }


def _exposed(server: str | None, tool: str | None) -> str | None:
    """The name clients call: `server__tool` (an A2A record's tool already is `agent__skill`)."""
    if server is None or tool is None or tool.startswith(server + SEPARATOR):
        return tool
    return f"{server}{SEPARATOR}{tool}"


def upstream_health(pool: UpstreamPool) -> list[dict[str, Any]]:
    """Each server and agent: its health and its circuit breaker (open while it is down)."""
    items = []
    for upstream in sorted(pool.upstreams(), key=lambda u: (u.is_agent, u.name)):
        health = pool.health(upstream.name)
        catalog = pool.catalog(upstream.name)
        status = health.status if upstream.enabled else "disabled"
        breaker, failures = pool.breaker(upstream.name)
        items.append(
            {
                "name": upstream.name,
                "kind": "agent" if upstream.is_agent else "server",
                "status": status,
                "breaker": breaker if upstream.enabled else None,
                "consecutive_failures": failures,
                "last_error": health.last_error,
                "checked_at": iso(health.checked_at),
                "tools": len(catalog.tools) if catalog is not None else 0,
            }
        )
    return items
