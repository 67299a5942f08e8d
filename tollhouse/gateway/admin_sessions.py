"""Admin API for live session-era MCP sessions: list them, end one.

Sessions are held in the memory of the replica serving them, so the list is that replica's (the
one answering the request): behind a load balancer, ask each replica. Ending a listed session is
announced to every replica (gateway/changes.py), which refuse its id from then on: its requests are
cancelled, its GET stream closes, its upstream sessions end, and the client's next request gets
404, which MCP clients take as "start a new session".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tollhouse.gateway.admin_http import Problem, json_response
from tollhouse.gateway.sessions import DownstreamSession, SessionManager

if TYPE_CHECKING:
    from tollhouse.gateway.admin import AdminState

__all__ = ["endpoint_of", "session_out", "session_routes"]

Endpoint = Callable[[Request], Awaitable[Response]]
Guard = Callable[..., Endpoint]


def session_routes(state: AdminState, guarded: Guard) -> list[Route]:
    """The /sessions routes."""

    def manager() -> SessionManager:
        if state.sessions is None:
            raise Problem(503, "Unavailable", "sessions are not available on this replica")
        return state.sessions

    async def list_sessions(request: Request) -> Response:
        now_wall, now_mono = time.time(), time.monotonic()
        return json_response({"items": [session_out(s, now_wall, now_mono) for s in manager().sessions()]})

    async def end_session(request: Request) -> Response:
        session_id = request.path_params["id"]
        sessions = manager()
        if not any(s.id == session_id for s in sessions.sessions()):
            raise Problem(404, "Not Found", "no such session on this replica")
        await sessions.close(session_id)
        return Response(status_code=204)

    return [
        Route("/sessions", guarded(list_sessions, "read"), methods=["GET"]),
        Route("/sessions/{id}", guarded(end_session, "admin"), methods=["DELETE"]),
    ]


def endpoint_of(view_key: str) -> str:
    """The MCP path a session was opened on (its view: the aggregate, a server, a toolset)."""
    kind, _, name = view_key.partition(":")
    if kind == "server":
        return f"/servers/{name}/mcp"
    if kind == "toolset":
        return f"/mcp/{name}"
    return "/mcp"


def session_out(session: DownstreamSession, now_wall: float, now_mono: float) -> dict[str, Any]:
    """A session as the admin API shows it; `last_seen` is monotonic, so it is placed on the wall clock."""
    principal = session.principal
    idle = max(0.0, now_mono - session.last_seen)
    return {
        "id": session.id,
        "principal": {
            "subject": principal.subject if principal else None,
            "client_id": principal.client_id if principal else None,
            "kind": principal.kind if principal else None,
            "teams": list(principal.teams) if principal else [],
        },
        "protocol_version": session.protocol_version,
        "view": session.view_key,
        "endpoint": endpoint_of(session.view_key),
        "created_at": _iso(session.created_at),
        "last_active_at": _iso(now_wall - idle),
        "idle_seconds": round(idle, 3),
        "open_streams": 1 if session.stream_attached else 0,
        "inflight_requests": len(session.inflight),
        "subscriptions": len(session.subscriptions),
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat()
