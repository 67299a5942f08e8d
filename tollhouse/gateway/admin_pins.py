"""Admin API for pins: what awaits approval, a readable old/new diff, and the decision.

Approving or rejecting needs the `approve` role (admin, approver) and records the deciding
subject; the pool rebuilds the snapshot before the answer, so an approved tool is callable
(and a rejected one hidden) by the time the caller hears back. Other replicas pick the
decision up at their next catalog sync.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.admin_http import Problem as _Problem
from tollhouse.gateway.admin_http import iso as _iso
from tollhouse.gateway.admin_http import json_response as _json
from tollhouse.gateway.admin_http import read_body as _body
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.gateway.snapshot import split_exposed_name
from tollhouse.policies.scanner import visible
from tollhouse.registry.models import SEPARATOR, JSONObject
from tollhouse.registry.pin_store import Decision, PinConflictError
from tollhouse.registry.pins import Pin

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["pin_decision", "pin_items", "pin_out", "pin_routes", "readable_diff"]

logger = logging.getLogger("tollhouse.pins")

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]
STATES = ("pending", "changed", "rejected", "approved")
AWAITING = ("pending", "changed")  # what a person has to look at


def pin_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /approvals, /tools/{name}/diff|approve|reject and /servers/{name}/instructions/* routes."""

    async def approvals(request: Request) -> Response:
        wanted = _states(request.query_params.get("state"))
        return _json({"items": pin_items(state.pool, wanted, request.query_params.get("server"))})

    async def tool_diff(request: Request) -> Response:
        return _json(_diff_out(state.pool, _tool_pin(state.pool, request.path_params["name"])))

    async def instructions_diff(request: Request) -> Response:
        return _json(_diff_out(state.pool, _instructions_pin(state.pool, request.path_params["name"])))

    def deciding(decision: Decision, find: Callable[[UpstreamPool, str], Pin]) -> Endpoint:
        return pin_decision(state, decision, find)

    return [
        Route("/approvals", guarded(approvals), methods=["GET"]),
        Route("/tools/{name}/diff", guarded(tool_diff), methods=["GET"]),
        Route("/tools/{name}/approve", guarded(deciding("approve", _tool_pin), "approve"), methods=["POST"]),
        Route("/tools/{name}/reject", guarded(deciding("reject", _tool_pin), "approve"), methods=["POST"]),
        Route("/servers/{name}/instructions/diff", guarded(instructions_diff), methods=["GET"]),
        Route(
            "/servers/{name}/instructions/approve",
            guarded(deciding("approve", _instructions_pin), "approve"),
            methods=["POST"],
        ),
        Route(
            "/servers/{name}/instructions/reject",
            guarded(deciding("reject", _instructions_pin), "approve"),
            methods=["POST"],
        ),
    ]


def pin_decision(
    state: AdminState,
    decision: Decision,
    find: Callable[[UpstreamPool, str], Pin],
    render: Callable[[UpstreamPool, Pin], dict[str, Any]] | None = None,
) -> Endpoint:
    """POST …/approve|reject for the pin `find` names: optional `sha256` guard, 409 when it moved."""
    show = render or pin_out

    async def endpoint(request: Request) -> Response:
        pin = find(state.pool, request.path_params["name"])
        body = await _body(request)
        sha = body.get("sha256")
        if sha is not None and not isinstance(sha, str):
            raise _Problem(400, "Bad Request", "'sha256' must be the hash shown by the diff")
        if decision == "approve" and pin.status == "approved" and sha in (None, pin.sha256):
            return _json(show(state.pool, pin))  # nothing to decide: keep who decided
        by = str(getattr(request.state, "subject", "") or "admin-token")
        try:
            decided = await state.pool.decide(pin.server, pin.kind, pin.name, decision, by, sha)
        except PinConflictError as exc:
            raise _Problem(
                409,
                "Conflict",
                f"the definition changed since {sha}: it is now {exc.current.sha256}; see the diff again",
            ) from None
        if decided is None:
            raise _Problem(404, "Not Found", f"no pin for '{_shown_name(pin)}'")
        logger.info("%s %s %s (sha256 %s) by %s", decision, pin.kind, _shown_name(pin), decided.sha256, by)
        return _json(show(state.pool, decided))

    return endpoint


def _states(raw: str | None) -> tuple[str, ...]:
    if raw is None or raw == "":
        return AWAITING
    if raw == "all":
        return STATES
    wanted = tuple(s.strip() for s in raw.split(","))
    unknown = [s for s in wanted if s not in STATES]
    if unknown:
        raise _Problem(400, "Bad Request", f"'state' takes {', '.join(STATES)} or all (comma-separated)")
    return wanted


def _tool_pin(pool: UpstreamPool, exposed: str) -> Pin:
    parts = split_exposed_name(exposed)
    pin = pool.pinning.pin(parts[0], "tool", parts[1]) if parts else None
    if pin is None:
        raise _Problem(404, "Not Found", f"no tool named '{exposed}'")
    return pin


def _instructions_pin(pool: UpstreamPool, server: str) -> Pin:
    pin = pool.pinning.pin(server, "instructions", "")
    if pin is None:
        raise _Problem(404, "Not Found", f"no instructions seen for server '{server}'")
    return pin


def _shown_name(pin: Pin) -> str:
    return f"{pin.server}{SEPARATOR}{pin.name}" if pin.kind == "tool" else pin.server


def _present(pool: UpstreamPool, pin: Pin) -> bool:
    """Whether the server's last catalog still has the pinned item (instructions, an agent's card: always)."""
    if pin.kind in ("instructions", "card"):
        return pool.upstream(pin.server) is not None
    catalog = pool.catalog(pin.server)
    return catalog is not None and any(t.get("name") == pin.name for t in catalog.tools)


def _held(pool: UpstreamPool, server: str) -> bool:
    return server in pool.pinning.view().held


def pin_out(pool: UpstreamPool, pin: Pin) -> dict[str, Any]:
    """A pin as the admin API shows it (without the definitions; the diff has them)."""
    served = pin.status == "approved" and (pin.kind != "tool" or not _held(pool, pin.server))
    return {
        "kind": pin.kind,
        "name": _shown_name(pin),
        "server": pin.server,
        "tool": pin.name if pin.kind == "tool" else None,
        "status": pin.status,
        "reason": pin.reason,
        "held": pin.kind == "tool" and _held(pool, pin.server),
        "served": served and _present(pool, pin),
        "present": _present(pool, pin),
        "sha256": pin.sha256,
        "approved_sha256": pin.approved_sha256,
        "findings": list(pin.findings),
        "first_seen_at": _iso(pin.first_seen_at),
        "decided_at": _iso(pin.decided_at),
        "decided_by": pin.decided_by,
    }


def pin_items(pool: UpstreamPool, states: tuple[str, ...], server: str | None = None) -> list[dict[str, Any]]:
    """Pins in one of `states` of items the servers list now, instructions (and cards) first, then by name."""
    items: list[dict[str, Any]] = []
    for name in pool.pinning.servers():
        if server is not None and name != server:
            continue
        pins = sorted(pool.pinning.pins(name).values(), key=lambda p: (p.kind == "tool", p.kind, p.name))
        items.extend(pin_out(pool, p) for p in pins if p.status in states and _present(pool, p))
    return items


def _pretty(definition: JSONObject | None) -> list[str]:
    if definition is None:
        return []
    text = json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False)
    # Invisible characters are the point of some attacks: the diff shows them as <U+XXXX>.
    return [visible(line) + "\n" for line in text.splitlines()]


def readable_diff(old: JSONObject | None, new: JSONObject) -> str:
    """A unified diff of the approved and the current definition (sorted keys, two-space indent)."""
    return "".join(
        difflib.unified_diff(
            _pretty(old),
            _pretty(new),
            fromfile="approved" if old is not None else "(none approved)",
            tofile="current",
        )
    )


def _diff_out(pool: UpstreamPool, pin: Pin) -> dict[str, Any]:
    return {
        **pin_out(pool, pin),
        "old": pin.approved_definition,
        "new": pin.definition,
        "diff": readable_diff(pin.approved_definition, pin.definition),
    }
