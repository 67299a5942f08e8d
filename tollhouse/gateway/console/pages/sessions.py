"""Live sessions: this replica's session-era MCP sessions, and (admins) ending one."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View

__all__ = ["routes"]

SHORT_ID = 10


async def list_sessions(view: View) -> Response:
    items = (await view.api.get("/sessions"))["items"]
    # A session knows its client by id; people recognise clients by name.
    names = {c["client_id"]: c["name"] for c in (await view.api.get("/clients"))["items"]}
    for item in items:
        item["short_id"] = item["id"][:SHORT_ID] + "…"
        item["client_name"] = names.get(item["principal"]["client_id"])
    return view.render(
        "sessions/index.html",
        {"title": "Sessions", "sessions": items, "can_end": view.viewer.can("admin")},
    )


async def end_session(view: View) -> Response:
    session_id = view.request.path_params["id"]
    short = session_id[:SHORT_ID] + "…"
    try:
        await view.api.delete(f"/sessions/{session_id}")
    except ApiError as error:
        if error.status != 404:
            raise
        return view.redirect("/sessions", error=f"Session {short} had already ended.")
    return view.redirect("/sessions", notice=f"Session {short} ended; its client must start a new one.")


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/sessions", console.page(list_sessions), methods=["GET"]),
        Route("/sessions/{id}/end", console.page(end_session, need="admin"), methods=["POST"]),
    ]
