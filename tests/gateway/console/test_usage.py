"""The Usage page: real calls through a real gateway, priced; the page's numbers are the report's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.console import add_person, signed_in
from tests.harness import Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream

pytestmark = pytest.mark.anyio

PRICES = [
    {"match": {"server": "calc"}, "per_call_micro": 2000, "currency": "USD"},
    {"match": {"server": "calc", "tool": "add"}, "per_call_micro": 500, "currency": "USD"},
    {"match": {"server": "calc", "tool": "fail"}, "per_call_micro": 7, "currency": "EUR"},
]
# team -> [(tool, arguments)]; every call differs, so the loop breaker stays out of it.
PLAN: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "platform": [("calc__echo", {"text": f"p{i}"}) for i in range(3)] + [("calc__add", {"a": 1, "b": 2})],
    "finance": [("calc__echo", {"text": "f"}), ("calc__fail", {"message": "no"}), ("calc__add", {"a": "x"})],
}


@asynccontextmanager
async def metered(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with calc priced, and the PLAN's calls made by a client of each team."""
    calc, _ = echo_upstream("calc")
    async with serve(calc.streamable_http_app(), path="/mcp") as calc_url, running_gateway(tmp_path) as gw:
        await gw.add_server("calc", calc_url)
        assert (await gw.admin.put("/prices", json={"items": PRICES})).status_code == 200
        await add_person(gw, "vic", "viewer")
        for team, calls in PLAN.items():
            key = await gw.create_client(f"bot-{team}", team=team)
            async with gw.client(key, "2026-07-28") as client:
                for tool, arguments in calls:
                    with suppress(MCPError):  # refused calls are metered too (at no cost)
                        await client.call_tool(tool, arguments)
        yield gw


def table(html: str, testid: str) -> list[dict[str, Any]]:
    """The rows of one usage table as the report's fields: label, currency, calls, ok, cost_micro."""
    match = re.search(rf'<table data-testid="{testid}">(.*?)</table>', html, re.S)
    assert match, f"no {testid} table"
    out = []
    for attrs, body in re.findall(r"<tr ([^>]*data-label[^>]*)>(.*?)</tr>", match.group(1), re.S):
        row: dict[str, Any] = {k: unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', attrs)}
        row["currency"] = row["currency"] or None
        for field, value in re.findall(r'data-field="(\w+)" data-value="(-?\d+)"', body):
            row[field] = int(value)
        out.append(row)
    return out


def report_rows(report: dict[str, Any], label: Any) -> list[dict[str, Any]]:
    return sorted(
        (
            {
                "label": label(r),
                "currency": r["currency"],
                "calls": r["calls"],
                "ok": r["ok"],
                "cost_micro": r["cost_micro"],
            }
            for r in report["items"]
        ),
        key=lambda r: (r["label"], r["currency"] or ""),
    )


def by_label(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["label"], r["currency"] or ""))


async def test_the_page_shows_the_reports_numbers_by_team_tool_and_day(tmp_path: Path) -> None:
    month = datetime.now(UTC).strftime("%Y-%m")
    async with metered(tmp_path) as gw, signed_in(gw, "vic") as browser:
        response = await browser.get("/ui/usage")
        assert response.status_code == 200, response.text
        html = response.text
        api = {
            "team": (await gw.admin.get("/usage/report", params={"by": "team", "period": month})).json(),
            "tool": (
                await gw.admin.get("/usage/report", params={"by": "server,tool", "period": month})
            ).json(),
            "day": (
                await gw.admin.get(
                    "/usage/report", params={"by": "currency", "bucket": "day", "period": month}
                )
            ).json(),
            "outcome": (
                await gw.admin.get("/usage/report", params={"by": "outcome", "period": month})
            ).json(),
        }

    teams = by_label(table(html, "usage-by-team"))
    assert teams == report_rows(api["team"], lambda r: r["team"])
    # The numbers are real: 4 platform calls (3 * 0.002 + 0.0005 USD), 3 finance calls.
    platform = [r for r in teams if r["label"] == "platform"]
    assert platform == [{"label": "platform", "currency": "USD", "calls": 4, "ok": 4, "cost_micro": 6500}]
    finance = {r["currency"]: r for r in teams if r["label"] == "finance"}
    assert finance["USD"]["calls"] == 1 and finance["USD"]["cost_micro"] == 2000
    assert finance[None]["calls"] == 1 and finance[None]["cost_micro"] == 0  # the refused add was not priced
    assert finance["EUR"]["calls"] == 1 and finance["EUR"]["cost_micro"] == 7  # a tool error is billable

    tools = by_label(table(html, "usage-by-tool"))
    assert tools == report_rows(api["tool"], lambda r: f"{r['server']}/{r['tool']}")
    assert {r["label"] for r in tools} == {"calc/echo", "calc/add", "calc/fail"}

    days = by_label(table(html, "usage-by-day"))
    assert days == report_rows(api["day"], lambda r: r["bucket"][:10])
    assert sum(r["calls"] for r in days) == 7

    outcomes = by_label(table(html, "usage-breakdown"))
    assert outcomes == report_rows(api["outcome"], lambda r: r["outcome"])

    # Totals, and a chart above each table whose text carries the same numbers.
    assert re.search(r'data-currency="USD" data-value="8500">0.0085 USD<', html)
    assert re.search(r'data-currency="EUR" data-value="7">0.000007 EUR<', html)
    for title in (
        "Calls by team",
        "Cost by team (USD)",
        "Calls by tool",
        "Cost by tool (EUR)",
        "Calls per day",
    ):
        assert f"<title>{title}</title>" in html, title
    assert re.search(r"<desc>[^<]*platform: 4 calls", html)
    today = datetime.now(UTC).strftime("%m-%d")
    assert re.search(rf"<desc>[^<]*{today}: 7[,<]", html)
    assert '<svg class="chart" role="img"' in html


async def test_a_day_is_shown_by_hour_and_other_groupings_work(tmp_path: Path) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    async with metered(tmp_path) as gw, signed_in(gw, "vic") as browser:
        response = await browser.get("/ui/usage", params={"period": today, "group": "client"})
        assert response.status_code == 200, response.text
        hours = (
            await gw.admin.get("/usage/report", params={"by": "currency", "bucket": "hour", "period": today})
        ).json()
        clients = (await gw.admin.get("/usage/report", params={"by": "client", "period": today})).json()
    assert "<h2>By hour</h2>" in response.text and "Calls per hour" in response.text
    rows = by_label(table(response.text, "usage-by-day"))
    assert rows == report_rows(hours, lambda r: f"{r['bucket'][:10]} {r['bucket'][11:16]}")
    assert by_label(table(response.text, "usage-breakdown")) == report_rows(clients, lambda r: r["client"])
    assert f'href="/ui/usage/chargeback.csv?period={today}"' in response.text


async def test_bad_filters_are_shown_back_as_text(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "vic", "viewer")
        async with signed_in(gw, "vic") as browser:
            hostile = "<script>alert(1)</script>"
            response = await browser.get("/ui/usage", params={"period": hostile})
            assert response.status_code == 400
            assert "must be a month (YYYY-MM)" in response.text
            assert hostile not in response.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text
            response = await browser.get("/ui/usage", params={"group": "<img src=x onerror=alert(1)>"})
            assert response.status_code == 400 and "<img" not in response.text
            assert (await browser.get("/ui/usage", params={"period": "2026-13"})).status_code == 400
            empty = await browser.get("/ui/usage", params={"period": "1999-01"})
            assert empty.status_code == 200 and "No calls in this period." in empty.text
            assert (await browser.get("/ui/usage/chargeback.csv", params={"period": "x"})).status_code == 400


async def test_the_chargeback_csv_through_the_console_is_the_admin_apis(tmp_path: Path) -> None:
    month = datetime.now(UTC).strftime("%Y-%m")
    async with metered(tmp_path) as gw, signed_in(gw, "vic") as browser:
        page = (await browser.get("/ui/usage")).text
        link = re.search(r'href="([^"]+)" data-testid="export-csv"', page)
        assert link and unescape(link.group(1)) == f"/ui/usage/chargeback.csv?period={month}"
        download = await browser.get(unescape(link.group(1)))
        direct = await gw.admin.get("/usage/chargeback.csv", params={"period": month})
    assert download.status_code == direct.status_code == 200
    assert download.content == direct.content
    assert download.headers["content-type"].startswith("text/csv")
    assert download.headers["content-disposition"] == f'attachment; filename="chargeback-{month}.csv"'
    lines = download.text.splitlines()
    assert lines[0] == "period,team,currency,calls,billable_calls,cost_micro,cost"
    assert f"{month},platform,USD,4,4,6500,0.006500" in lines
    assert f"{month},finance,EUR,1,1,7,0.000007" in lines
