"""The console's overview: upstream health, traffic, rates, top tools, pending approvals — from real calls."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.console import add_person, signed_in
from tests.e2e.test_usage import FORBID_BLOCK, call
from tests.gateway.test_admin_agents import add_agent, echo_agent
from tests.harness import Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream

pytestmark = pytest.mark.anyio

HOSTILE_TOOL = "<script>alert(1)</script>"


def stat(html: str, testid: str) -> str:
    """The big figure of a stat card."""
    found = re.search(rf'data-testid="{testid}">\s*<div class="value">([^<]*)<', html)
    assert found, testid
    return found[1].strip()


@asynccontextmanager
async def busy(tmp_path: Path) -> AsyncIterator[Gateway]:
    """calc (block forbidden) after 4 ok calls, 1 tool error, 1 denial and a call of a hostile name."""
    calc, _ = echo_upstream("calc")
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("calc", calc_url)
        assert (await gw.admin.put("/policies/forbid-block", json={"cedar": FORBID_BLOCK})).status_code == 201
        key = await gw.create_client("bot", team="platform")
        assert await call(gw, key, "calc__echo", {"text": "hi"}, 4, vary=True) == ["ok"] * 4
        assert await call(gw, key, "calc__fail", {"message": "no"}) == ["tool_error"]
        await call(gw, key, "calc__block", {})
        await call(gw, key, HOSTILE_TOOL, {})
        for name, role in (("vera", "viewer"), ("appr", "approver"), ("aud", "auditor"), ("ada", "admin")):
            await add_person(gw, name, role)
        yield gw


async def test_every_role_sees_the_figures_of_real_calls(tmp_path: Path) -> None:
    async with busy(tmp_path) as gw:
        stats = (await gw.admin.get("/stats")).json()
        calls, errors, denials = stats["calls"], stats["errors"], stats["denials"]
        assert (calls, errors) == (7, 1) and denials >= 1  # the unknown tool is refused too
        for person in ("vera", "appr", "aud", "ada"):
            async with signed_in(gw, person) as browser:
                page = await browser.get("/ui/")
                assert page.status_code == 200, person
                html = page.text
                assert stat(html, "calls-total") == str(calls)
                assert stat(html, "error-rate") == f"{errors / calls * 100:.1f}%"
                assert stat(html, "denial-rate") == f"{denials / calls * 100:.1f}%"
                assert f"{errors} of {calls} calls failed" in html
                assert f"{denials} of {calls} calls denied" in html


async def test_charts_tables_health_and_escaping(tmp_path: Path) -> None:
    async with busy(tmp_path) as gw, signed_in(gw, "vera") as browser:
        html = (await browser.get("/ui/")).text
        # Calls per minute: a column chart and the same numbers as a table (60 minutes).
        section = html.split('data-testid="calls-per-minute"', 1)[1].split("</section>", 1)[0]
        assert '<svg class="chart" role="img"' in section and "Calls per minute" in section
        assert section.count("<tr><td>") == 60
        # Top tools: a bar chart and a table, busiest first.
        top = html.split('data-testid="top-tools"', 1)[1].split("</section>", 1)[0]
        assert "<svg" in top and "calc__echo: 4 calls" in top
        tools = re.findall(r'data-testid="top-tool"><td><code>([^<]*)</code>', top)
        assert tools[0] == "calc__echo" and {"calc__fail", "calc__block"} <= set(tools)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in top
        assert HOSTILE_TOOL not in html
        # Outcomes, by count.
        assert re.search(r"<td>ok</td><td class=\"num\">4</td>", html)
        # Upstream health links to the server's page.
        health = html.split('data-testid="upstream-health"', 1)[1].split("</section>", 1)[0]
        assert '<a href="/ui/servers/calc">calc</a>' in health
        assert ">healthy<" in health and ">breaker closed<" in health


async def test_pending_approvals_agents_and_a_down_server(tmp_path: Path) -> None:
    manual, _ = echo_upstream("manual")
    async with busy(tmp_path) as gw, echo_agent() as card_url, signed_in(gw, "vera") as browser:
        link = re.search(
            r'<a href="([^"]*)" data-testid="pending-approvals">(\d+)</a>', (await browser.get("/ui/")).text
        )
        assert link and link[1] == "/ui/tools?state=pending" and link[2] == "0"
        await add_agent(gw, "helper", card_url=card_url)
        async with serve(manual.streamable_http_app(), path="/mcp") as url:
            await gw.add_server("manual", url, approval="manual")
            waiting = len((await gw.admin.get("/approvals")).json()["items"])
            html = (await browser.get("/ui/")).text
            link = re.search(r'data-testid="pending-approvals">(\d+)</a>', html)
            assert waiting > 0 and link and int(link[1]) == waiting
            assert '<a href="/ui/agents/helper">helper</a>' in html
        assert (await gw.admin.post("/servers/manual/refresh")).status_code == 502
        html = (await browser.get("/ui/")).text
        row = html.split('<a href="/ui/servers/manual">manual</a>', 1)[1].split("</tr>", 1)[0]
        assert ">down<" in row and ">breaker open<" in row


async def test_an_idle_gateway_has_an_empty_overview(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "vera", "viewer")
        async with signed_in(gw, "vera") as browser:
            html = (await browser.get("/ui/")).text
            assert stat(html, "calls-total") == "0" and stat(html, "error-rate") == "—"
            assert "No servers or agents are registered yet." in html
            assert "No calls in this period." in html
