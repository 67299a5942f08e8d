"""The console's audit trail: filtered search, pages, one record, verification, export of a filter."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.console import add_person, signed_in
from tests.databases import scratch_postgres
from tests.e2e.test_usage import FORBID_BLOCK, call, subject_of
from tests.harness import Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.audit.records import new_record
from tollhouse.registry.audit_store import AuditKey, SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade

pytestmark = pytest.mark.anyio

NODE = "gw-console"
HOSTILE_TOOL = "<script>alert(1)</script>"
HOSTILE_ARG = "<img src=x onerror=alert(1)>"
HX = {"HX-Request": "true", "HX-Target": "audit-results"}
_HREF = re.compile(
    r'<a href="([^"]*)"[^>]*data-testid="(next-page|record-link|export|trace-link|first-page)"'
)


def links(html: str, testid: str) -> list[str]:
    """The hrefs of the links with this data-testid, unescaped."""
    return [unescape(href) for href, kind in _HREF.findall(html) if kind == testid]


def rows(html: str) -> int:
    return html.count('data-testid="audit-row"')


@dataclass
class Trail:
    gw: Gateway
    keys: dict[str, str]

    async def records(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.gw.admin.get("/audit/records", params={"limit": 500, **params})
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def flush(self) -> None:
        """Commit every record submitted so far (and sign the head)."""
        assert (await self.gw.admin.post("/audit/checkpoint")).status_code == 200


@asynccontextmanager
async def trail(tmp_path: Path, *, echoes: int = 3) -> AsyncIterator[Trail]:
    """calc behind a gateway that records arguments: echo calls, a tool error, a denial, a hostile name."""
    calc, _ = echo_upstream("calc")
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path, node_name=NODE, audit={"record_arguments": True}) as gw,
    ):
        await gw.add_server("calc", calc_url)
        assert (await gw.admin.put("/policies/forbid-block", json={"cedar": FORBID_BLOCK})).status_code == 201
        keys = {
            "platform": await gw.create_client("bot-platform", team="platform"),
            "finance": await gw.create_client("bot-finance", team="finance"),
        }
        await call(gw, keys["platform"], "calc__echo", {"text": HOSTILE_ARG}, echoes, vary=True)
        await call(gw, keys["finance"], "calc__echo", {"text": "f"}, 2, vary=True)
        await call(gw, keys["finance"], "calc__fail", {"message": "no"})
        await call(gw, keys["platform"], "calc__block", {})
        await call(gw, keys["platform"], HOSTILE_TOOL, {})
        await add_person(gw, "aud", "auditor")
        await add_person(gw, "vera", "viewer")
        await add_person(gw, "ada", "admin")
        found = Trail(gw, keys)
        await found.flush()
        yield found


async def test_auditors_search_with_every_filter_and_viewers_cannot(tmp_path: Path) -> None:
    async with trail(tmp_path) as t, signed_in(t.gw, "aud") as browser:
        page = await browser.get("/ui/audit")
        assert page.status_code == 200, page.text
        html = page.text
        assert '<form class="filters" method="get"' in html and 'data-testid="apply-filters"' in html
        for name in (
            "since",
            "until",
            "subject",
            "team",
            "client_id",
            "server",
            "tool",
            "outcome",
            "trace_id",
            "kind",
        ):
            assert f'name="{name}"' in html, name
        for outcome in (
            "ok",
            "tool_error",
            "denied",
            "rate_limited",
            "invalid",
            "upstream_error",
            "cancelled",
        ):
            assert f'<option value="{outcome}"' in html, outcome
        assert 'hx-get="/ui/audit"' in html and 'hx-push-url="true"' in html
        assert rows(html) == len(await t.records()) > 10  # fewer than a page: no "Older" link
        assert not links(html, "next-page")

        finance = await subject_of(t.gw, "finance")
        cases: list[dict[str, str]] = [
            {"tool": "echo", "outcome": "ok"},
            {"team": "finance", "kind": "mcp"},
            {"subject": finance, "tool": "fail"},
            {"client_id": finance, "outcome": "tool_error"},
            {"server": "calc", "outcome": "denied"},
            {"tool": "nothing-like-this"},
        ]
        for filters in cases:
            expected = await t.records(**filters)
            shown = await browser.get("/ui/audit", params=filters)
            assert shown.status_code == 200, filters
            assert rows(shown.text) == len(expected), filters
            places = [href.rsplit("/", 2)[1:] for href in links(shown.text, "record-link")]
            assert places == [[NODE, str(r["seq"])] for r in expected], filters
            for value in filters.values():  # the form shows the filter it applied
                assert f'value="{value}"' in shown.text
        assert rows((await browser.get("/ui/audit", params={"tool": "echo", "outcome": "ok"})).text) == 5
        # The name clients call works too, and is the name rows show.
        exposed = await browser.get("/ui/audit", params={"tool": "calc__echo", "outcome": "ok"})
        assert rows(exposed.text) == 5 and exposed.text.count("<code>calc__echo</code>") == 5
        assert 'value="calc__echo"' in exposed.text
        export = await browser.get("/ui/audit/export", params={"tool": "calc__echo", "outcome": "ok"})
        assert [json.loads(x) for x in export.text.splitlines()] == await t.records(tool="echo", outcome="ok")
        assert rows((await browser.get("/ui/audit", params={"tool": "nope__echo"})).text) == 0

        async with signed_in(t.gw, "vera") as viewer:
            overview = await viewer.get("/ui/")
            assert overview.status_code == 200 and 'href="/ui/audit"' not in overview.text
            for path in ("/ui/audit", "/ui/audit/verify", "/ui/audit/export", f"/ui/audit/{NODE}/1"):
                refused = await viewer.get(path)
                assert refused.status_code == 403, path
                assert 'data-testid="audit-row"' not in refused.text
        async with signed_in(t.gw, "ada") as admin:
            assert (await admin.get("/ui/audit")).status_code == 200


async def test_pages_keep_the_filter_and_htmx_gets_only_the_results(tmp_path: Path) -> None:
    async with trail(tmp_path, echoes=55) as t, signed_in(t.gw, "aud") as browser:
        expected = await t.records(tool="echo", team="platform")
        assert len(expected) == 55
        first = await browser.get("/ui/audit", params={"tool": "echo", "team": "platform"})
        assert rows(first.text) == 50
        [older] = links(first.text, "next-page")
        assert older.startswith("/ui/audit?") and "tool=echo" in older and "team=platform" in older
        assert "cursor=" in older and "since=" not in older  # empty fields stay out of the URL
        second = await browser.get(older)
        assert rows(second.text) == 5 and not links(second.text, "next-page")
        assert links(second.text, "first-page") == ["/ui/audit?team=platform&tool=echo"]
        shown = links(first.text, "record-link") + links(second.text, "record-link")
        assert shown == [f"/ui/audit/{NODE}/{r['seq']}" for r in expected]

        fragment = await browser.get(older, headers=HX)
        assert fragment.status_code == 200
        assert rows(fragment.text) == 5
        assert "<html" not in fragment.text and 'data-testid="chain-status"' not in fragment.text
        assert links(fragment.text, "export") == ["/ui/audit/export?team=platform&tool=echo"]

        assert fragment.headers["hx-push-url"] == older
        # The form's empty fields stay out of the address, with htmx and without.
        everything = {"since": "", "until": "", "subject": "", "tool": "echo", "team": "platform", "kind": ""}
        pushed = await browser.get("/ui/audit", params=everything, headers=HX)
        assert pushed.headers["hx-push-url"] == "/ui/audit?team=platform&tool=echo"
        plain = await browser.get("/ui/audit", params=everything)
        assert plain.status_code == 303 and plain.headers["location"] == "/ui/audit?team=platform&tool=echo"
        # A POST to a read-only page is not a route.
        assert (await browser.post("/ui/audit", data={})).status_code in (403, 405)


async def test_time_window_from_datetime_local_inputs(tmp_path: Path) -> None:
    async with trail(tmp_path) as t, signed_in(t.gw, "aud") as browser:
        calls = await t.records(action="tools/call")
        oldest = datetime.fromisoformat(calls[-1]["time"].replace("Z", "+00:00"))
        since = (oldest + timedelta(seconds=1)).replace(microsecond=0)
        local = since.strftime("%Y-%m-%dT%H:%M:%S")
        expected = await t.records(action="tools/call", since=since.isoformat())
        shown = await browser.get("/ui/audit", params={"since": local, "kind": "mcp"})
        assert shown.status_code == 200
        mcp_expected = [r for r in await t.records(kind="mcp", since=since.isoformat())]
        assert rows(shown.text) == min(50, len(mcp_expected)) and len(expected) <= len(mcp_expected)
        assert f'value="{local}"' in shown.text

        minute = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=2)
        future = await browser.get("/ui/audit", params={"since": minute.strftime("%Y-%m-%dT%H:%M")})
        assert future.status_code == 200 and rows(future.text) == 0
        assert "No records match" in future.text

        for bad in ({"since": "yesterday"}, {"since": "2026-05-01T10:00", "until": "2026-05-01T09:00"}):
            refused = await browser.get("/ui/audit", params=bad)
            assert refused.status_code == 400, bad
            assert 'data-testid="filter-error"' in refused.text and rows(refused.text) == 0
        assert (await browser.get("/ui/audit/export", params={"since": "yesterday"})).status_code == 400


async def test_one_record_with_its_place_in_the_chain(tmp_path: Path) -> None:
    async with trail(tmp_path) as t, signed_in(t.gw, "aud") as browser:
        [echo, *_] = await t.records(tool="echo", team="platform")
        page = await browser.get(f"/ui/audit/{NODE}/{echo['seq']}")
        assert page.status_code == 200, page.text
        html = page.text
        assert 'data-testid="record"' in html and '<dd data-testid="tool"><code>calc__echo</code>' in html
        assert echo["what"]["pin"] in html and echo["hash"] in html and echo["prev"] in html
        assert echo["correlation"]["usage_event"] in html
        assert str(echo["where"]["snapshot"]) in html
        assert "tests-allow-all" in html  # the policy that permitted it
        trace = echo["correlation"]["trace_id"]
        assert links(html, "trace-link") == [f"/ui/audit?trace_id={trace}"]
        checkpoint = (await t.gw.admin.get(f"/audit/records/{NODE}/{echo['seq']}")).json()["checkpoint"]
        assert checkpoint["key_id"] in html and checkpoint["signature"] in html
        # Arguments as pretty JSON, escaped.
        assert HOSTILE_ARG not in html and "&lt;img src=x onerror=alert(1)&gt;" in html

        traced = await browser.get(f"/ui/audit?trace_id={trace}")
        assert rows(traced.text) == len(await t.records(trace_id=trace)) >= 1

        head = (await t.gw.admin.get("/audit/status")).json()["heads"][0]["seq"]
        newest = await browser.get(f"/ui/audit/{NODE}/{head}")
        assert 'data-testid="no-checkpoint"' in newest.text
        assert (await browser.get(f"/ui/audit/{NODE}/999999")).status_code == 404
        assert (await browser.get("/ui/audit/other-node/1")).status_code == 404


async def test_hostile_names_are_shown_as_text(tmp_path: Path) -> None:
    async with trail(tmp_path) as t, signed_in(t.gw, "aud") as browser:
        [hostile] = await t.records(tool=HOSTILE_TOOL)
        page = await browser.get("/ui/audit", params={"tool": HOSTILE_TOOL})
        assert rows(page.text) == 1
        assert HOSTILE_TOOL not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        detail = await browser.get(f"/ui/audit/{NODE}/{hostile['seq']}")
        assert HOSTILE_TOOL not in detail.text and "&lt;script&gt;" in detail.text
        listing = await browser.get("/ui/audit", params={"kind": "mcp"})
        assert "<script>alert" not in listing.text and "<img src=x" not in listing.text


async def test_verify_now_shows_the_admin_apis_verdict(tmp_path: Path) -> None:
    async with trail(tmp_path) as t, signed_in(t.gw, "aud") as browser:
        page = await browser.get("/ui/audit")
        assert 'data-testid="chain-status"' in page.text and 'data-testid="verify"' in page.text
        status = (await t.gw.admin.get("/audit/status")).json()
        assert status["last_checkpoints"][0]["key_id"] in page.text
        assert 'hx-get="/ui/audit/verify"' in page.text

        fragment = await browser.get(
            "/ui/audit/verify", headers={"HX-Request": "true", "HX-Target": "verify-result"}
        )
        assert fragment.status_code == 200 and "<html" not in fragment.text
        verdict = (await t.gw.admin.get("/audit/verify")).json()
        assert verdict["intact"] is True
        assert re.search(r'data-testid="verify-intact">yes<', fragment.text)
        records = int(re.search(r'data-testid="verify-records">([\d,]+)<', fragment.text)[1].replace(",", ""))  # type: ignore[index]
        assert records >= verdict["records"] - 5  # later admin reads add records meanwhile
        whole = await browser.get("/ui/audit/verify")  # without JavaScript: a page of its own
        assert (
            whole.status_code == 200 and "<html" in whole.text and 'data-testid="verify-intact"' in whole.text
        )


async def test_export_streams_exactly_the_filtered_records_and_is_recorded(tmp_path: Path) -> None:
    async with trail(tmp_path) as t, signed_in(t.gw, "aud") as browser:
        filters = {"tool": "echo", "outcome": "ok"}
        page = await browser.get("/ui/audit", params=filters)
        [href] = links(page.text, "export")
        assert href == "/ui/audit/export?tool=echo&outcome=ok"
        export = await browser.get(href)
        assert export.status_code == 200, export.text
        assert export.headers["content-type"].startswith("application/x-ndjson")
        assert "attachment" in export.headers["content-disposition"]
        lines = export.text.splitlines()
        assert [json.loads(line) for line in lines] == await t.records(**filters)
        assert len(lines) == 5
        # Exactly as stored: the canonical text the chain hashes.
        stored = (await t.gw.admin.get("/audit/records.jsonl", params=filters)).text.splitlines()
        assert stored == lines

        await t.flush()
        exports = await t.records(action="GET /admin/api/v1/audit/records.jsonl")
        [recorded] = [r for r in exports if r["who"].get("subject") == "aud"]
        assert recorded["what"]["filters"] == filters and recorded["outcome"]["result"] == "ok"


async def test_records_jsonl_takes_the_search_filters_and_roles(tmp_path: Path) -> None:
    async with trail(tmp_path) as t:
        calls = await t.records(action="tools/call")
        since, until = calls[-2]["time"], calls[1]["time"]
        params = {"action": "tools/call", "since": since, "until": until}
        answer = await t.gw.admin.get("/audit/records.jsonl", params=params)
        assert [json.loads(line) for line in answer.text.splitlines()] == await t.records(**params)
        assert 0 < len(answer.text.splitlines()) < len(calls)
        empty = await t.gw.admin.get("/audit/records.jsonl", params={"tool": "nothing"})
        assert empty.status_code == 200 and empty.text == ""
        for bad in ({"limit": "5"}, {"since": "yesterday"}, {"subjet": "x"}):
            refused = await t.gw.admin.get("/audit/records.jsonl", params=bad)
            assert refused.status_code == 400, bad
        assert (await t.gw.admin.get("/openapi.json")).json()["paths"]["/audit/records.jsonl"]
        async with httpx2.AsyncClient(base_url=t.gw.base_url, trust_env=False) as http:
            client = await http.get(
                "/admin/api/v1/audit/records.jsonl", headers={"Authorization": f"Bearer {t.keys['platform']}"}
            )
            assert client.status_code == 403


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield database_url_for(None, str(tmp_path / "data"))
        return
    with scratch_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


async def test_matching_pages_newest_first_as_stored(store_url: str) -> None:
    upgrade(store_url)
    engine = create_engine_for(store_url)
    try:
        store = SqlAuditStore(engine)
        start = datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
        bodies = [
            new_record(
                "mcp",
                "tools/call",
                who={"subject": "alice" if i % 3 else "bob"},
                what={"tool": "echo"},
                outcome={"result": "ok"},
                when=start + timedelta(seconds=i // 2),  # pairs share a time: node and seq break the tie
            )
            for i in range(11)
        ]
        await store.append("n1", bodies[:6])
        await store.append("n2", bodies[6:])
        pages = [page async for page in store.matching({"subject": "alice"}, page=2)]
        assert [len(p) for p in pages] == [2, 2, 2, 1]
        keys = [key for page in pages for key, _ in page]
        assert keys == sorted(keys, reverse=True) and len(set(keys)) == 7
        texts = [text for page in pages for _, text in page]
        expected, _ = await store.search({"subject": "alice"}, limit=100)
        assert [json.loads(text) for text in texts] == expected
        assert keys[0] == AuditKey.of(expected[0])
        assert [p async for p in store.matching({"subject": "nobody"})] == []
        with pytest.raises(ValueError, match="unknown audit filters"):
            [p async for p in store.matching({"limit": 5})]
    finally:
        engine.dispose()
