"""The Limits & budgets page: rules, kill switches, refusals, budgets and credits, prices — by role."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import unescape
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import MCPError

from tests.console import add_person, csrf_of, signed_in
from tests.harness import Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.gateway.errors import BUDGET_EXHAUSTED

pytestmark = pytest.mark.anyio

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
CALC_PRICE = {"match": {"server": "calc"}, "per_call_micro": 2000, "currency": "USD"}


@asynccontextmanager
async def calc_gateway(tmp_path: Path) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway with the calc upstream, people of every role, and a client of team platform."""
    calc, _ = echo_upstream("calc")
    async with serve(calc.streamable_http_app(), path="/mcp") as calc_url, running_gateway(tmp_path) as gw:
        await gw.add_server("calc", calc_url)
        for name, role in (("ada", "admin"), ("vic", "viewer"), ("aud", "auditor"), ("app", "approver")):
            await add_person(gw, name, role)
        yield gw, await gw.create_client("bot-platform", team="platform")


async def echo(gw: Gateway, key: str, times: int = 1) -> list[str]:
    """Call calc__echo `times` times (different arguments); each outcome: ok or the error code."""
    seen: list[str] = []
    async with gw.client(key, "2026-07-28") as client:
        for i in range(times):
            try:
                result = await client.call_tool("calc__echo", {"text": f"hi {i}"})
            except MCPError as exc:
                seen.append(str(exc.code))
                continue
            seen.append("error" if result.is_error else "ok")
    return seen


def section(html: str, testid: str) -> str:
    """The element carrying data-testid=`testid` up to its closing tag (tables and forms here)."""
    match = re.search(rf'<(\w+)[^>]*data-testid="{testid}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"no {testid} in the page"
    return match.group(0)


def rows(html: str, testid: str) -> list[list[str]]:
    """The text of each body row's cells in the table `testid`."""
    body = section(html, testid).split("<tbody>", 1)[1]
    return [
        [text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def text(markup: str) -> str:
    """What a cell reads as: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", markup)).split())


async def page(browser: httpx2.AsyncClient, path: str = "/ui/limits") -> str:
    response = await browser.get(path)
    assert response.status_code == 200, response.text
    return response.text


async def test_every_role_reads_the_page_only_admins_get_forms(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, _):
        limit = {"match": {"server": "calc"}, "rate": "100/minute", "description": SCRIPT}
        assert (await gw.admin.put("/limits/calc-rate", json=limit)).status_code == 201
        kill = {"kind": "server", "value": "other", "reason": IMG}
        assert (await gw.admin.post("/kill-switches", json=kill)).status_code == 201
        budget = {"scope": "team", "name": SCRIPT, "amount_micro": 5_000_000, "period": "month"}
        assert (await gw.admin.put("/budgets/cap", json=budget)).status_code == 201
        assert (await gw.admin.put("/prices", json={"items": [CALC_PRICE]})).status_code == 200

        for name in ("vic", "aud", "app", "ada"):
            async with signed_in(gw, name) as browser:
                html = await page(browser)
            admin = name == "ada"
            assert rows(html, "limits-table")[0][:3] == [f"calc-rate {SCRIPT}", "server=calc", "100/minute"]
            assert rows(html, "kill-switches")[0][:3] == ["server", "other", IMG]
            assert rows(html, "budgets")[0][:5] == ["cap", "team", SCRIPT, "month", "5.00 USD"]
            assert rows(html, "prices")[0][:3] == ["calc", "*", "0.002"]
            # Hostile text is shown as text.
            assert SCRIPT not in html and IMG not in html
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x" in html
            for testid in ("new-limit", "edit-limit", "delete-limit", "engage-form", "release-kill"):
                assert (f'data-testid="{testid}"' in html) is admin, (name, testid)
            for testid in ("new-budget", "edit-budget", "grant-credit", "delete-budget", "edit-prices"):
                assert (f'data-testid="{testid}"' in html) is admin, (name, testid)
            assert ('id="refusals"' in html) is (name in ("aud", "ada"))


async def test_an_admin_creates_edits_and_deletes_a_limit(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, _), signed_in(gw, "ada") as browser:
        form = await page(browser, "/ui/limits/rules/new")
        csrf = csrf_of(form)
        fields = {
            "csrf": csrf,
            "id": "calc-cap",
            "match_server": "calc",
            "match_team": "platform",
            "rate": "often",
            "window": "sliding",
            "concurrency": "4",
            "per": "client",
            "failure_mode": "closed",
        }
        refused = await browser.post("/ui/limits/rules/new", data=fields)
        assert refused.status_code == 400
        assert "is not a rate" in section(refused.text, "form-error")
        assert 'value="often"' in refused.text and 'value="platform"' in refused.text  # kept as typed
        assert (await gw.admin.get("/limits/calc-cap")).status_code == 404

        created = await browser.post("/ui/limits/rules/new", data={**fields, "rate": "100/minute"})
        assert created.status_code == 303 and created.headers["location"] == "/ui/limits"
        stored = (await gw.admin.get("/limits/calc-cap")).json()
        assert stored["match"] == {"server": "calc", "team": "platform"}
        assert (stored["rate"], stored["window"], stored["concurrency"]) == ("100/minute", "sliding", 4)
        assert (stored["per"], stored["failure_mode"], stored["updated_by"]) == (["client"], "closed", "ada")
        assert "Limit calc-cap created." in await page(browser)

        again = await browser.post("/ui/limits/rules/new", data={**fields, "rate": "5/second"})
        assert again.status_code == 409 and "already exists" in again.text
        assert (await gw.admin.get("/limits/calc-cap")).json()["rate"] == "100/minute"

        edit = await page(browser, "/ui/limits/rules/calc-cap")
        assert 'value="100/minute"' in edit and "readonly" in edit
        changed = {
            "csrf": csrf,
            "match_server": "calc",
            "rate": "7/hour",
            "window": "fixed",
            "concurrency": "",
        }
        saved = await browser.post("/ui/limits/rules/calc-cap", data=changed)
        assert saved.status_code == 303
        stored = (await gw.admin.get("/limits/calc-cap")).json()
        assert (stored["match"], stored["rate"], stored["window"]) == ({"server": "calc"}, "7/hour", "fixed")
        assert "concurrency" not in stored

        bad = await browser.post(
            "/ui/limits/rules/calc-cap", data={**changed, "rate": "", "concurrency": "0"}
        )
        assert bad.status_code == 400 and "positive integer" in bad.text

        deleted = await browser.post("/ui/limits/rules/calc-cap/delete", data={"csrf": csrf})
        assert deleted.status_code == 303
        assert (await gw.admin.get("/limits/calc-cap")).status_code == 404
        assert "No rate or concurrency limits" in await page(browser)


async def test_the_caller_check_shows_what_is_left(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, key), signed_in(gw, "vic") as browser:
        limit = {"match": {"server": "calc"}, "rate": "10/minute"}
        assert (await gw.admin.put("/limits/calc-rate", json=limit)).status_code == 201
        assert await echo(gw, key, 3) == ["ok"] * 3
        html = await page(browser, "/ui/limits?client=bot-platform&tool=calc__echo")
        [row] = rows(html, "limit-status")
        assert row[0] == "calc-rate" and row[2] == "10 / 60 s" and row[3] == "7"
        api = (
            await gw.admin.get("/limits/status", params={"client": "bot-platform", "tool": "calc__echo"})
        ).json()
        assert api["items"][0]["remaining"] == 7
        nothing = await page(browser, "/ui/limits?server=other")
        assert "No limit applies to this caller." in nothing


async def test_kill_switches_engage_refuse_calls_and_release(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, key), signed_in(gw, "ada") as browser:
        csrf = csrf_of(await page(browser))
        engaged = await browser.post(
            "/ui/limits/kill-switches",
            data={"csrf": csrf, "kind": "client", "value": "bot-platform", "reason": "runaway agent"},
        )
        assert engaged.status_code == 303 and engaged.headers["location"] == "/ui/limits#kill-switches"
        [kill] = (await gw.admin.get("/kill-switches")).json()["items"]
        assert (kill["kind"], kill["value"], kill["reason"], kill["created_by"]) == (
            "client",
            "bot-platform",
            "runaway agent",
            "ada",
        )
        assert await echo(gw, key) == ["-31043"]

        html = await page(browser)
        assert rows(html, "kill-switches")[0][:3] == ["client", "bot-platform", "runaway agent"]
        [refusal] = rows(html, "refusals")
        assert refusal[1:3] == ["killed", (await client_id(gw))] and refusal[6] == "client kill switch"

        bad = await browser.post(
            "/ui/limits/kill-switches", data={"csrf": csrf, "kind": "team", "value": "x"}
        )
        assert bad.status_code == 303
        assert "must be one of" in await page(browser)

        released = await browser.post(
            "/ui/limits/kill-switches/release", data={"csrf": csrf, "kind": "client", "value": "bot-platform"}
        )
        assert released.status_code == 303
        assert (await gw.admin.get("/kill-switches")).json()["items"] == []
        assert await echo(gw, key) == ["ok"]


async def client_id(gw: Gateway) -> str:
    clients = (await gw.admin.get("/clients")).json()["items"]
    return str(next(c["client_id"] for c in clients if c["name"] == "bot-platform"))


async def test_budgets_credits_and_their_status(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, key), signed_in(gw, "ada") as browser:
        assert (await gw.admin.put("/prices", json={"items": [CALC_PRICE]})).status_code == 200
        csrf = csrf_of(await page(browser, "/ui/limits/budgets/new"))
        fields = {
            "csrf": csrf,
            "id": "team-cap",
            "scope": "team",
            "name": "*",
            "period": "month",
            "amount": "lots",
            "currency": "usd",
            "mode": "hard",
            "failure_mode": "closed",
        }
        refused = await browser.post("/ui/limits/budgets/new", data=fields)
        assert refused.status_code == 400 and "must be a number" in refused.text
        refused = await browser.post(
            "/ui/limits/budgets/new", data={**fields, "amount": "1", "scope": "galaxy"}
        )
        assert refused.status_code == 400 and "expected one of team, client, user" in refused.text
        created = await browser.post("/ui/limits/budgets/new", data={**fields, "amount": "0.004"})
        assert created.status_code == 303
        [stored] = (await gw.admin.get("/budgets")).json()["items"]
        assert (stored["id"], stored["amount_micro"], stored["currency"], stored["name"]) == (
            "team-cap",
            4000,
            "USD",
            "*",
        )

        # Two calls spend the allowance; the third is refused by the budget.
        assert await echo(gw, key, 3) == ["ok", "ok", str(BUDGET_EXHAUSTED)]
        html = await page(browser)
        [row] = rows(html, "budget-status")
        status = (await gw.admin.get("/budgets/team-cap/status", params={"name": "platform"})).json()
        assert status["used_micro"] == status["spent_micro"] == 4000
        assert row[:6] == ["team-cap", "platform", status["period"], "0.004 USD", "0.004 USD", "0.00 USD"]
        assert row[-1] == "exhausted"

        # A credit lets the team go on; editing the budget keeps the credit.
        grant = {"csrf": csrf, "id": "promo", "name": "platform", "amount": "0.002", "priority": "1"}
        bad = await browser.post("/ui/limits/budgets/team-cap/credits", data={**grant, "expires_at": "soon"})
        assert bad.status_code == 400 and "ISO 8601" in bad.text
        granted = await browser.post("/ui/limits/budgets/team-cap/credits", data=grant)
        assert granted.status_code == 303
        assert rows(await page(browser), "budget-status")[0][-1] == "on credits"
        assert await echo(gw, key) == ["ok"]

        edit = await page(browser, "/ui/limits/budgets/team-cap")
        assert 'value="0.004"' in edit
        saved = await browser.post(
            "/ui/limits/budgets/team-cap", data={**fields, "amount": "10", "mode": "soft"}
        )
        assert saved.status_code == 303
        [stored] = (await gw.admin.get("/budgets")).json()["items"]
        assert (stored["amount_micro"], stored["mode"]) == (10_000_000, "soft")
        assert [c["id"] for c in stored["credits"]] == ["promo"]
        assert rows(await page(browser), "budget-status")[0][-1] == "ok"

        deleted = await browser.post("/ui/limits/budgets/team-cap/delete", data={"csrf": csrf})
        assert deleted.status_code == 303
        assert (await gw.admin.get("/budgets")).json()["items"] == []


async def test_an_admin_replaces_the_prices(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, _), signed_in(gw, "ada") as browser:
        form = await page(browser, "/ui/limits/prices")
        csrf = csrf_of(form)
        broken = await browser.post("/ui/limits/prices", data={"csrf": csrf, "prices": "- match: [unclosed"})
        assert broken.status_code == 400 and "not valid YAML" in broken.text
        assert "- match: [unclosed" in broken.text  # the text is kept
        invalid = "- match: {server: calc}\n  per_call_micro: -5\n"
        refused = await browser.post("/ui/limits/prices", data={"csrf": csrf, "prices": invalid})
        assert refused.status_code == 400 and "per_call_micro" in refused.text
        book = (
            "- match: {server: calc}\n  per_call_micro: 2000\n"
            "- match: {server: calc, tool: big}\n  per_kib_micro: 3\n"
        )
        saved = await browser.post("/ui/limits/prices", data={"csrf": csrf, "prices": book})
        assert saved.status_code == 303
        prices = (await gw.admin.get("/prices")).json()["items"]
        assert prices == [
            {"match": {"server": "calc"}, "per_call_micro": 2000, "currency": "USD"},
            {"match": {"server": "calc", "tool": "big"}, "per_kib_micro": 3, "currency": "USD"},
        ]
        # JSON works too, and the form shows the stored book.
        assert "per_kib_micro: 3" in await page(browser, "/ui/limits/prices")
        as_json = '{"prices": [{"match": {"server": "calc"}, "per_call_micro": 1}]}'
        assert (
            await browser.post("/ui/limits/prices", data={"csrf": csrf, "prices": as_json})
        ).status_code == 303
        assert (await gw.admin.get("/prices")).json()["items"][0]["per_call_micro"] == 1


async def test_only_admins_change_anything_and_every_change_needs_the_csrf_token(tmp_path: Path) -> None:
    async with calc_gateway(tmp_path) as (gw, _):
        assert (await gw.admin.put("/limits/keep", json={"rate": "1/second"})).status_code == 201
        budget = {"scope": "team", "name": "platform", "amount_micro": 1}
        assert (await gw.admin.put("/budgets/keep", json=budget)).status_code == 201
        kill = {"kind": "server", "value": "other"}
        assert (await gw.admin.post("/kill-switches", json=kill)).status_code == 201
        posts: list[tuple[str, dict[str, Any]]] = [
            ("/ui/limits/rules/new", {"id": "new", "rate": "1/second"}),
            ("/ui/limits/rules/keep", {"rate": "9/second"}),
            ("/ui/limits/rules/keep/delete", {}),
            ("/ui/limits/kill-switches", {"kind": "server", "value": "calc"}),
            ("/ui/limits/kill-switches/release", {"kind": "server", "value": "other"}),
            ("/ui/limits/budgets/new", {"id": "new", "scope": "team", "amount": "1"}),
            ("/ui/limits/budgets/keep", {"scope": "team", "name": "platform", "amount": "9"}),
            ("/ui/limits/budgets/keep/delete", {}),
            ("/ui/limits/budgets/keep/credits", {"id": "free", "amount": "9"}),
            ("/ui/limits/prices", {"prices": "[]"}),
        ]
        for name in ("vic", "aud", "app"):
            async with signed_in(gw, name) as browser:
                csrf = csrf_of(await page(browser))
                for path in ("/ui/limits/rules/new", "/ui/limits/budgets/keep", "/ui/limits/prices"):
                    assert (await browser.get(path)).status_code == 403, (name, path)
                for path, data in posts:
                    assert (await browser.post(path, data={"csrf": csrf, **data})).status_code == 403, (
                        name,
                        path,
                    )
        async with signed_in(gw, "ada") as browser:
            for path, data in posts:
                assert (await browser.post(path, data=data)).status_code == 403, path
        assert [i["id"] for i in (await gw.admin.get("/limits")).json()["items"]] == ["keep"]
        assert (await gw.admin.get("/limits/keep")).json()["rate"] == "1/second"
        assert [(k["kind"], k["value"]) for k in (await gw.admin.get("/kill-switches")).json()["items"]] == [
            ("server", "other")
        ]
        [kept] = (await gw.admin.get("/budgets")).json()["items"]
        assert (kept["id"], kept["amount_micro"], kept.get("credits")) == ("keep", 1, None)
        assert (await gw.admin.get("/prices")).json()["items"] == []
