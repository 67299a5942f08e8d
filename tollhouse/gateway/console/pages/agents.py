"""Console pages: registered A2A agents, one agent's card and skills, and the review of a changed card.

A card is what a remote agent says about itself: every field of it is shown as text, and the
card is pinned like a tool, so a changed card waits (the agent held) until someone approves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, View
from tollhouse.gateway.console.pages.tools import deciding, review, shown
from tollhouse.policies.scanner import visible

__all__ = ["routes"]


def _path(name: str) -> str:
    return quote(name, safe="")


def provider(document: Mapping[str, Any] | None) -> str:
    """The card's provider as one line (organization and URL), or empty."""
    found = (document or {}).get("provider")
    if not isinstance(found, Mapping):
        return ""
    return " ".join(str(found[k]) for k in ("organization", "url") if found.get(k))


async def list_agents(view: View) -> Response:
    agents = (await view.api.get("/agents"))["items"]
    return view.render("agents/list.html", {"title": "Agents", "agents": agents})


async def show_agent(view: View) -> Response:
    name = view.request.path_params["name"]
    agent = await view.api.get(f"/agents/{name}")
    pin = agent.get("card_pin")
    changes = None
    if pin is not None and pin.get("status") != "approved":
        changes = review(await view.api.get(f"/agents/{name}/card/diff"))
    document = agent.get("card_document")
    card = agent.get("card") or {}
    return view.render(
        "agents/detail.html",
        {
            "title": f"Agent {name}",
            "agent": agent,
            "card": card,
            "card_description": visible(str(card.get("description") or "")),
            "provider": provider(document),
            "card_text": shown(document) if document is not None else None,
            "pin": pin,
            "changes": changes,
            "findings": (changes or pin or {}).get("findings", []),
            "awaiting": pin is not None and pin.get("status") in ("pending", "changed"),
            "path": _path(agent["name"]),
        },
    )


async def refresh_agent(view: View) -> Response:
    name = view.request.path_params["name"]
    try:
        agent = await view.api.post(f"/agents/{name}/refresh")
    except ApiError as error:
        if error.status != 502:
            raise
        return view.redirect(f"/agents/{_path(name)}", error=error.detail or "The agent cannot be reached.")
    notice = f"Agent {name} is refreshed."
    if agent.get("held"):
        notice += " Its card waits for approval."
    return view.redirect(f"/agents/{_path(name)}", notice=notice)


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/agents", console.page(list_agents), methods=["GET"]),
        Route("/agents/{name}", console.page(show_agent), methods=["GET"]),
        Route("/agents/{name}/refresh", console.page(refresh_agent, "admin"), methods=["POST"]),
        *(
            Route(
                f"/agents/{{name}}/card/{decision}",
                console.page(deciding(decision, "agents", "/card", "The card of agent {name} is"), "approve"),
                methods=["POST"],
            )
            for decision in ("approve", "reject")
        ),
    ]
