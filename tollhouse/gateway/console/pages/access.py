"""Access requests: what agents and people asked for, and (approvers) granting or declining it."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View

__all__ = ["routes"]

# Durations an approver picks from (seconds); "" keeps what was asked for.
DURATIONS = (
    ("", "as asked"),
    ("3600", "1 hour"),
    ("28800", "8 hours"),
    ("86400", "1 day"),
    ("604800", "7 days"),
)


async def list_requests(view: View) -> Response:
    pending = (await view.api.get("/access-requests", status="pending"))["items"]
    decided = (await view.api.get("/access-requests", status="granted,declined,withdrawn", limit="50"))[
        "items"
    ]
    return view.render(
        "access/index.html",
        {
            "title": "Access requests",
            "pending": pending,
            "decided": decided,
            "durations": DURATIONS,
            "can_decide": view.viewer.can("approve"),
        },
    )


async def grant(view: View) -> Response:
    request_id = view.request.path_params["id"]
    body: dict[str, object] = {"scope": "team" if view.field("scope") == "team" else "principal"}
    if view.field("duration").isdigit():
        body["duration_seconds"] = int(view.field("duration"))
    if view.field("note").strip():
        body["note"] = view.field("note").strip()
    try:
        granted = await view.api.post(f"/access-requests/{request_id}/grant", body)
    except ApiError as error:
        if not error.about_the_form and error.status != 404:
            raise
        return view.redirect("/access", error=error.detail)
    until = f" until {granted['expires_at']}" if granted.get("expires_at") else ", with no end"
    return view.redirect(
        "/access", notice=f"Granted {granted['target']} (policy {granted['policy_id']}){until}."
    )


async def decline(view: View) -> Response:
    request_id = view.request.path_params["id"]
    note = view.field("note").strip()
    try:
        declined = await view.api.post(
            f"/access-requests/{request_id}/decline", {"note": note} if note else {}
        )
    except ApiError as error:
        if not error.about_the_form and error.status != 404:
            raise
        return view.redirect("/access", error=error.detail)
    return view.redirect("/access", notice=f"Declined the request for {declined['target']}.")


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/access", console.page(list_requests), methods=["GET"]),
        Route("/access/{id}/grant", console.page(grant, need="approve"), methods=["POST"]),
        Route("/access/{id}/decline", console.page(decline, need="approve"), methods=["POST"]),
    ]
