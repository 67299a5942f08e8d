"""Console pages: exposed tools, what waits for approval, one tool's definition and its review.

Tool definitions come from upstreams and are hostile by assumption: they are shown as text
(autoescaped), with invisible characters spelled out as `<U+XXXX>`, and an approval names the
hash of the definition the approver saw, so a definition that changed meanwhile is not approved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.core import Console, Handler, View
from tollhouse.gateway.console.format import pretty_json
from tollhouse.policies.scanner import visible

__all__ = ["review", "routes", "shown"]

AWAITING = frozenset({"pending", "changed"})
SHORT = 160  # characters of a description in a list
UNSERVED_DESCRIBED = 50  # tools not served whose descriptions the list looks up one by one


def shown(value: Any) -> str:
    """A definition as pretty JSON text with invisible and control characters spelled out."""
    return visible(pretty_json(value))


def short(text: Any) -> str:
    if not isinstance(text, str):
        return ""
    flat = " ".join(visible(text).split())
    return flat if len(flat) <= SHORT else flat[: SHORT - 1] + "…"


def review(found: Mapping[str, Any]) -> dict[str, Any]:
    """A diff document (`…/diff` of the admin API) with both definitions as readable text."""
    old = found.get("old")
    return {**found, "old_text": shown(old) if old is not None else "", "new_text": shown(found.get("new"))}


def approval_link(view: View, item: Mapping[str, Any]) -> str:
    """Where a pending item is reviewed: its tool page, its server's page, or its agent's page."""
    if item.get("kind") == "tool":
        return view.url(f"/tools/{quote(str(item['name']), safe='')}")
    area = "/agents/" if item.get("kind") == "card" else "/servers/"
    return view.url(area + quote(str(item["server"]), safe=""))


async def list_tools(view: View) -> Response:
    pending_only = view.request.query_params.get("state") == "pending"
    approvals = [
        {**item, "href": approval_link(view, item)} for item in (await view.api.get("/approvals"))["items"]
    ]
    served = {t["name"]: t for t in (await view.api.get("/tools"))["items"]}
    pins = (await view.api.get("/tools", state="all"))["items"]
    rows = [
        {**pin, "description": short(served.get(pin["name"], {}).get("description"))}
        for pin in pins
        if not pending_only or pin["status"] in AWAITING
    ]
    if not pending_only:
        pinned = {p["name"] for p in pins}
        rows += [
            {
                **t,
                "status": t.get("status", "approved"),
                "served": True,
                "description": short(t["description"]),
            }
            for t in served.values()
            if t["name"] not in pinned
        ]
    rows.sort(key=lambda r: str(r["name"]))
    await _describe_unserved(view, rows)
    return view.render(
        "tools/list.html",
        {"title": "Tools", "approvals": approvals, "tools": rows, "pending_only": pending_only},
    )


async def _describe_unserved(view: View, rows: list[dict[str, Any]]) -> None:
    """Fill in the descriptions of tools not served now (those that wait), from their last catalog."""
    for row in [r for r in rows if not r["description"] and not r.get("served")][:UNSERVED_DESCRIBED]:
        try:
            tool = await view.api.get(f"/tools/{row['name']}")
        except ApiError as error:
            if error.status != 404:
                raise
            continue
        definition = tool.get("upstream_definition") or tool.get("definition") or {}
        row["description"] = short(definition.get("description"))


async def show_tool(view: View) -> Response:
    name = view.request.path_params["name"]
    tool = await view.api.get(f"/tools/{name}")
    definition = tool.get("upstream_definition") or tool.get("definition") or {}
    pin = tool.get("pin")
    changes = None
    if pin is not None and pin.get("status") != "approved":
        changes = review(await view.api.get(f"/tools/{name}/diff"))
    return view.render(
        "tools/detail.html",
        {
            "title": f"Tool {tool['name']}",
            "tool": tool,
            "pin": pin,
            "description": visible(str(definition.get("description") or "")),
            "tool_title": visible(str(definition.get("title") or "")),
            "input_schema": shown(definition.get("inputSchema", {})),
            "output_schema": shown(definition["outputSchema"]) if "outputSchema" in definition else None,
            "annotations": shown(definition["annotations"]) if definition.get("annotations") else None,
            "changes": changes,
            "findings": (changes or pin or {}).get("findings", []),
            "awaiting": pin is not None and pin.get("status") in AWAITING,
            "path": quote(str(tool["name"]), safe=""),
            "server_path": quote(str(tool["server"]), safe=""),
        },
    )


def deciding(decision: str, area: str, api_suffix: str, what: str) -> Handler:
    """A handler that approves or rejects what waits at `/{area}/{name}{api_suffix}` in the admin API.

    The decision carries the hash the approver was shown: if the definition changed since, the
    admin API answers 409 and the page says so instead of deciding something unseen.
    """

    async def decide(view: View) -> Response:
        name = view.request.path_params["name"]
        back = f"/{area}/{quote(name, safe='')}"
        sha = view.field("sha256")
        try:
            await view.api.post(f"/{area}/{name}{api_suffix}/{decision}", json={"sha256": sha} if sha else {})
        except ApiError as error:
            if error.status != 409:
                raise
            return view.redirect(back, error=error.detail)
        done = "approved" if decision == "approve" else "rejected"
        return view.redirect(back, notice=f"{what.format(name=name)} {done}.")

    return decide


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/tools", console.page(list_tools), methods=["GET"]),
        Route("/tools/{name}", console.page(show_tool), methods=["GET"]),
        *(
            Route(
                f"/tools/{{name}}/{decision}",
                console.page(deciding(decision, "tools", "", "Tool {name} is"), "approve"),
                methods=["POST"],
            )
            for decision in ("approve", "reject")
        ),
    ]
