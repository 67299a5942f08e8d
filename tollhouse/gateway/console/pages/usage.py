"""Usage & chargeback: calls and cost by team, by tool and over time, and the chargeback CSV.

Every number comes from the admin API's usage report (`GET /usage/report`, SQL totals over the
usage events) for one period, a month `YYYY-MM` or a day `YYYY-MM-DD`; the CSV is the admin
API's own chargeback export, streamed through. Each chart sits above a table of the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tollhouse.gateway.console.api import ApiError
from tollhouse.gateway.console.charts import bar_chart, column_chart
from tollhouse.gateway.console.core import Console, View

__all__ = ["routes"]

# The extra breakdown's choices (report dimensions), first is the default.
GROUPS = ("outcome", "team", "subject", "client", "server", "tool", "method")
TOP_BARS = 25
MICRO = 1_000_000


async def usage_page(view: View) -> Response:
    query = view.request.query_params
    period = query.get("period", "").strip() or datetime.now(UTC).strftime("%Y-%m")
    group = query.get("group") or GROUPS[0]
    context: dict[str, Any] = {
        "title": "Usage",
        "period": period,
        "group": group,
        "groups": GROUPS,
        "error": None,
    }
    if not _valid_period(period):
        return _empty(view, context, "The period must be a month (YYYY-MM) or a day (YYYY-MM-DD).")
    if group not in GROUPS:
        return _empty(view, context, f"Group by one of: {', '.join(GROUPS)}.")
    try:
        context.update(await _report(view, period, group))
    except ApiError as error:
        if error.status != 400:
            raise
        return _empty(view, context, error.detail)
    return view.render("usage/index.html", context)


async def chargeback_csv(view: View) -> Response:
    period = view.request.query_params.get("period", "").strip() or datetime.now(UTC).strftime("%Y-%m")
    if not _valid_period(period):
        return view.error_page(
            400, "Bad period", "The period must be a month (YYYY-MM) or a day (YYYY-MM-DD)."
        )
    return view.api.download("/usage/chargeback.csv", {"period": period})


async def _report(view: View, period: str, group: str) -> dict[str, Any]:
    daily = len(period) == len("2026-11")
    bucket = "day" if daily else "hour"
    by_team = await view.api.get("/usage/report", by="team", period=period)
    by_tool = await view.api.get("/usage/report", by="server,tool", period=period)
    by_time = await view.api.get("/usage/report", by="currency", bucket=bucket, period=period)
    breakdown = await view.api.get("/usage/report", by=group, period=period)
    return {
        "start": by_team["start"],
        "end": by_team["end"],
        "totals": by_team["totals"],
        "sections": [
            _ranked("team", "By team", "Team", by_team["items"], _team_label),
            _ranked("tool", "By tool", "Tool", by_tool["items"], _tool_label),
            _timeline(by_time, daily),
        ],
        "breakdown": [{**row, "label": _text(row.get(group))} for row in breakdown["items"]],
    }


def _ranked(
    key: str, title: str, header: str, items: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]
) -> dict[str, Any]:
    """Bars of calls and of cost (one chart per currency) by one dimension, biggest first."""
    rows = sorted(
        ({**row, "label": label(row)} for row in items),
        key=lambda row: (-row["cost_micro"], -row["calls"], row["label"]),
    )
    calls = _sum_by_label(rows, lambda row: row["calls"])
    calls_bars = sorted(calls.items(), key=lambda item: (-item[1], item[0]))[:TOP_BARS]
    charts: list[Markup] = [bar_chart(calls_bars, title=f"Calls {title.lower()}", unit="calls")]
    for currency in _currencies(rows):
        cost = _sum_by_label(
            (r for r in rows if r.get("currency") == currency), lambda row: row["cost_micro"] / MICRO
        )
        bars = sorted(cost.items(), key=lambda item: (-item[1], item[0]))[:TOP_BARS]
        charts.append(bar_chart(bars, title=f"Cost {title.lower()} ({currency})", unit=currency))
    return {"key": key, "title": title, "header": header, "charts": charts, "rows": rows}


def _timeline(report: dict[str, Any], daily: bool) -> dict[str, Any]:
    """Columns of calls and of cost per day (a month) or per hour (a day), every bucket shown."""
    buckets = _buckets(_moment(report["start"]), _moment(report["end"]), daily)
    rows = [{**row, "label": _bucket_label(row["bucket"], daily)} for row in report["items"]]
    unit = "day" if daily else "hour"
    calls = _per_bucket(rows, lambda row: row["calls"])
    charts = [column_chart([(b, calls.get(k, 0.0)) for k, b in buckets.items()], title=f"Calls per {unit}")]
    for currency in _currencies(rows):
        cost = _per_bucket(
            (r for r in rows if r.get("currency") == currency), lambda row: row["cost_micro"] / MICRO
        )
        points = [(b, cost.get(k, 0.0)) for k, b in buckets.items()]
        charts.append(column_chart(points, title=f"Cost per {unit} ({currency})", unit=currency))
    return {
        "key": "day",
        "title": f"By {unit}",
        "header": unit.capitalize(),
        "charts": charts,
        "rows": rows,
    }


def _buckets(start: datetime, end: datetime, daily: bool) -> dict[str, str]:
    """Bucket key (as the report writes it) -> its axis label, for every bucket in [start, end)."""
    step = timedelta(days=1) if daily else timedelta(hours=1)
    out: dict[str, str] = {}
    moment = start
    while moment < end:
        key = moment.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
        out[key] = moment.strftime("%m-%d" if daily else "%H:00")
        moment += step
    return out


def _per_bucket(rows: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        out[row["bucket"]] = out.get(row["bucket"], 0.0) + value(row)
    return out


def _sum_by_label(
    rows: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], float]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        out[row["label"]] = out.get(row["label"], 0.0) + value(row)
    return out


def _currencies(rows: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({row["currency"] for row in rows if row.get("currency")})


def _team_label(row: dict[str, Any]) -> str:
    return str(row["team"]) if row.get("team") else "(no team)"


def _tool_label(row: dict[str, Any]) -> str:
    return f"{_text(row.get('server'))}/{_text(row.get('tool'))}"


def _bucket_label(bucket: str, daily: bool) -> str:
    return bucket[:10] if daily else f"{bucket[:10]} {bucket[11:16]}"


def _text(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _valid_period(period: str) -> bool:
    for layout in ("%Y-%m", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(period, layout)
        except ValueError:
            continue
        return parsed.strftime(layout) == period
    return False


def _empty(view: View, context: dict[str, Any], error: str) -> Response:
    shown = {**context, "error": error, "sections": [], "breakdown": [], "totals": None}
    return view.render("usage/index.html", shown, status=400)


def routes(console: Console) -> list[BaseRoute]:
    return [
        Route("/usage", console.page(usage_page), methods=["GET"]),
        Route("/usage/chargeback.csv", console.page(chargeback_csv), methods=["GET"]),
    ]
