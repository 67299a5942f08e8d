"""Overview: upstream health, traffic, error and denial rates, top tools, pending approvals."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.core import Console, View

__all__ = ["routes"]


async def overview(view: View) -> Response:
    servers = (await view.api.get("/servers"))["items"]
    approvals = (await view.api.get("/approvals"))["items"]
    return view.render(
        "overview/index.html", {"title": "Overview", "servers": servers, "approvals": approvals}
    )


def routes(console: Console) -> list[BaseRoute]:
    return [Route("/", console.page(overview), methods=["GET"])]
