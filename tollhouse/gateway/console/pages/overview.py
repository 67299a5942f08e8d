"""Overview: upstream health, calls per minute, error and denial rates, top tools, pending approvals.

One admin call (`GET /stats`) brings every figure; the charts repeat the tables' numbers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.charts import bar_chart, column_chart
from tollhouse.gateway.console.core import Console, View

__all__ = ["routes"]

WINDOW_MINUTES = 60
HEALTH_BADGES = {"healthy": "good", "degraded": "warn", "down": "bad", "disabled": "", "unknown": ""}
BREAKER_BADGES = {"closed": "good", "open": "bad"}


def _clock(iso: str) -> str:
    """`2026-11-23T10:04:00+00:00` as `10:04` (the chart's axis is UTC)."""
    return datetime.fromisoformat(iso).strftime("%H:%M")


def _upstream_row(view: View, item: dict[str, Any]) -> dict[str, Any]:
    area = "/agents/" if item["kind"] == "agent" else "/servers/"
    return {
        **item,
        "href": view.url(area + quote(item["name"], safe="")),
        "status_badge": HEALTH_BADGES.get(item["status"], ""),
        "breaker_badge": BREAKER_BADGES.get(item["breaker"] or "", ""),
    }


async def overview(view: View) -> Response:
    stats = await view.api.get("/stats", minutes=WINDOW_MINUTES)
    series = [(_clock(p["minute"]), p["calls"]) for p in stats["per_minute"]]
    top = [(t["name"] or "(unnamed)", t["calls"]) for t in stats["top_tools"]]
    context = {
        "title": "Overview",
        "stats": stats,
        "per_minute": [{**p, "label": _clock(p["minute"])} for p in stats["per_minute"]],
        "calls_chart": column_chart(series, title=f"Calls per minute, last {stats['minutes']} minutes (UTC)"),
        "tools_chart": bar_chart(top, title="Top tools by calls", unit="calls"),
        "upstreams": [_upstream_row(view, u) for u in stats["upstreams"]],
        "approvals_href": view.url("/tools") + "?state=pending",
    }
    return view.render("overview/index.html", context)


def routes(console: Console) -> list[BaseRoute]:
    return [Route("/", console.page(overview), methods=["GET"])]
