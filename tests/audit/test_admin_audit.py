"""The audit trail through the admin API and the CLI: filters, pages, roles, one record, tail, status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import SecretStr

from tests.e2e.test_cli import run_cli
from tests.e2e.test_usage import FORBID_BLOCK, call, subject_of
from tests.harness import ADMIN_TOKEN, Gateway, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import TokenIssuer
from tollhouse.gateway.cli_audit import poll_newer
from tollhouse.gateway.cli_common import AdminClient

pytestmark = pytest.mark.anyio

NODE = "gw-test"


@dataclass
class Setup:
    gw: Gateway
    http: httpx2.AsyncClient
    issuer: TokenIssuer
    keys: dict[str, str]

    def user(self, subject: str, *roles: str) -> str:
        return self.issuer.mint(
            subject=subject,
            client_id="console",
            audience=self.gw.base_url,
            scope="mcp",
            kind="user",
            roles=roles,
        ).token

    async def get(self, path: str, token: str = ADMIN_TOKEN, **params: Any) -> httpx2.Response:
        return await self.http.get(
            f"{self.gw.base_url}/admin/api/v1{path}",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def records(self, **params: Any) -> list[dict[str, Any]]:
        response = await self.get("/audit/records", **params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@asynccontextmanager
async def audited(tmp_path: Path) -> AsyncIterator[Setup]:
    ring = KeyRing.generate()
    kid, key = ring.masters[0]
    calc, _ = echo_upstream("calc")
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path, node_name=NODE, secret_keys=SecretStr(format_secret_key(kid, key))) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        await gw.add_server("calc", calc_url)
        assert (await gw.admin.put("/policies/forbid-block", json={"cedar": FORBID_BLOCK})).status_code == 201
        keys = {
            "platform": await gw.create_client("bot-platform", team="platform"),
            "finance": await gw.create_client("bot-finance", team="finance"),
        }
        await call(gw, keys["platform"], "calc__echo", {"text": "p"}, 3, vary=True)
        await call(gw, keys["finance"], "calc__echo", {"text": "f"}, 2, vary=True)
        await call(gw, keys["platform"], "calc__block", {})
        await call(gw, keys["finance"], "calc__fail", {"message": "no"})
        # Flushes the writer, so every record submitted so far is in the database.
        assert (await gw.admin.post("/audit/checkpoint")).status_code == 200
        yield Setup(gw, http, TokenIssuer(gw.base_url, ring), keys)


async def test_records_filter_exactly_and_page_newest_first(tmp_path: Path) -> None:
    async with audited(tmp_path) as s:
        finance = await subject_of(s.gw, "finance")
        calls = await s.records(action="tools/call")
        assert len(calls) == 7
        assert [(r["time"], r["seq"]) for r in calls] == sorted(
            ((r["time"], r["seq"]) for r in calls), reverse=True
        )

        by_team = await s.records(team="finance", action="tools/call")
        assert [r["what"]["tool"] for r in by_team] == ["fail", "echo", "echo"]
        assert {r["who"]["subject"] for r in by_team} == {finance}
        assert await s.records(subject=finance, tool="fail") == by_team[:1]
        assert await s.records(client_id=finance, outcome="tool_error") == by_team[:1]
        denied = await s.records(outcome="denied")
        assert [(r["what"]["tool"], r["who"]["teams"]) for r in denied] == [("block", ["platform"])]
        assert len(await s.records(server="calc", tool="echo")) == 5
        admin = await s.records(kind="admin")
        assert {r["action"] for r in admin} >= {
            "POST /admin/api/v1/servers",
            "POST /admin/api/v1/audit/checkpoint",
        }
        traced = calls[2]
        assert await s.records(trace_id=traced["correlation"]["trace_id"]) == [traced]
        assert await s.records(trace_id="0" * 32) == []
        window = await s.records(since=calls[-1]["time"], until=calls[0]["time"], action="tools/call")
        assert [r["seq"] for r in window] == [r["seq"] for r in calls[1:]]

        everything = await s.records(limit=500)
        paged: list[dict[str, Any]] = []
        cursor = None
        while True:
            response = await s.get("/audit/records", limit=3, **({"cursor": cursor} if cursor else {}))
            page = response.json()
            paged.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(page["items"]) == 3
        assert paged == everything

        for bad in (
            {"limit": 0},
            {"limit": 501},
            {"cursor": "bm9wZQ"},
            {"since": "yesterday"},
            {"subjet": "x"},
        ):
            response = await s.get("/audit/records", **bad)
            assert response.status_code == 400, bad
            assert response.headers["content-type"] == "application/problem+json"


async def test_one_record_comes_with_the_checkpoint_that_anchors_it(tmp_path: Path) -> None:
    async with audited(tmp_path) as s:
        [echo, *_] = await s.records(tool="echo")
        answer = (await s.get(f"/audit/records/{NODE}/{echo['seq']}")).json()
        assert answer["record"] == echo
        assert answer["checkpoint"]["node"] == NODE and answer["checkpoint"]["seq"] >= echo["seq"]
        head = (await s.get("/audit/status")).json()["heads"][0]["seq"]
        assert (await s.get(f"/audit/records/{NODE}/{head}")).json()["checkpoint"] is None
        assert (await s.get(f"/audit/records/{NODE}/9999")).status_code == 404
        assert (await s.get(f"/audit/records/{NODE}/abc")).status_code == 400
        assert (await s.get("/audit/records/other-node/1")).status_code == 404


async def test_auditors_read_the_trail_and_only_admins_change_it(tmp_path: Path) -> None:
    async with audited(tmp_path) as s:
        auditor, viewer, approver, admin = (
            s.user("aud", "auditor"),
            s.user("vera", "viewer"),
            s.user("appr", "approver"),
            s.user("ada", "admin"),
        )
        for path in ("/audit/records", "/audit/verify", "/audit/export", "/audit/keys", "/audit/status"):
            assert (await s.get(path, auditor)).status_code == 200, path
            assert (await s.get(path, viewer)).status_code == 403, path
            assert (await s.get(path, approver)).status_code == 403, path
            assert (await s.get(path, s.keys["platform"])).status_code == 403, path
        assert (await s.get(f"/audit/records/{NODE}/1", auditor)).status_code == 200

        def post(path: str, token: str) -> Any:
            return s.http.post(
                f"{s.gw.base_url}/admin/api/v1{path}", headers={"Authorization": f"Bearer {token}"}
            )

        assert (await post("/audit/checkpoint", auditor)).status_code == 403
        assert (await post("/audit/retention", auditor)).status_code == 403
        signed = (await post("/audit/checkpoint", admin)).json()["checkpoint"]
        assert (
            signed["node"] == NODE
            and signed["key_id"] == (await s.get("/audit/keys")).json()["items"][0]["key_id"]
        )
        summary = (await post("/audit/retention", admin)).json()
        assert (summary["days"], summary["deleted"]) == (400, {})

        await s.gw.admin.post("/audit/checkpoint")
        refused = await s.records(outcome="denied", kind="admin")
        # Refusals are recorded too (the admin API records them before it knows who asked).
        assert {r["action"] for r in refused} >= {
            "GET /admin/api/v1/audit/records",
            "POST /admin/api/v1/audit/checkpoint",
        }
        [run] = await s.records(action="audit.retention")
        assert run["kind"] == "system" and run["what"] == {
            "cutoff": summary["cutoff"],
            "days": 400,
            "purged": 0,
        }
        assert any(
            r["who"].get("subject") == "ada"
            for r in await s.records(action="POST /admin/api/v1/audit/retention")
        )
        assert (await s.get("/audit/verify", auditor)).json()["intact"]


async def test_tail_status_and_checkpoint_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with audited(tmp_path) as s:
        g = ["--url", s.gw.base_url, "--token", ADMIN_TOKEN]
        code, out, err = await run_cli(capsys, *g, "audit", "tail", "--limit", "3")
        assert code == 0, err
        lines = out.splitlines()
        # Oldest first: time, node#seq, action, subject, server/tool, outcome.
        places = [line.split()[1] for line in lines]
        newest = int(places[-1].partition("#")[2])
        assert places == [f"{NODE}#{seq}" for seq in range(newest - 2, newest + 1)]
        shown = await s.records(until=lines[-1].split()[0], limit=3)
        assert len(shown) == 3  # there were older ones: --limit kept the newest

        code, out, err = await run_cli(capsys, *g, "audit", "tail", "--team", "finance", "--tool", "echo")
        assert code == 0, err
        finance = await subject_of(s.gw, "finance")
        for line in out.splitlines():
            _, _, action, subject, target, outcome = line.split()
            assert (action, subject, target, outcome) == ("tools/call", finance, "calc/echo", "ok")
        assert len(out.splitlines()) == 2
        code, out, _ = await run_cli(capsys, *g, "audit", "tail", "--outcome", "denied", "--json")
        [denied] = [json.loads(line) for line in out.splitlines()]
        assert denied["what"]["tool"] == "block" and "code" in denied["outcome"]

        code, out, err = await run_cli(capsys, *g, "audit", "status")
        assert code == 0, err
        assert "healthy:" in out and NODE in out
        [key] = (await s.get("/audit/keys")).json()["items"]
        assert f"key {key['key_id']}={key['public_key']}" in out
        code, out, _ = await run_cli(capsys, *g, "audit", "status", "--json")
        status = json.loads(out)
        assert status["node"] == NODE and status["heads"][0]["node"] == NODE
        assert status["last_checkpoints"][0]["node"] == NODE

        code, out, err = await run_cli(capsys, *g, "audit", "checkpoint")
        assert code == 0, err
        assert out.startswith(f"checkpoint {NODE}#") and key["key_id"] in out

        # What --follow does each round: only records not shown yet, oldest first.
        with AdminClient(s.gw.base_url, ADMIN_TOKEN) as api:
            seen: dict[tuple[str, int], str] = {}
            shown = await anyio.to_thread.run_sync(poll_newer, api, {"tool": "echo"}, seen)
            assert len(shown) == 5
            assert await anyio.to_thread.run_sync(poll_newer, api, {"tool": "echo"}, seen) == []
            await call(s.gw, s.keys["platform"], "calc__echo", {"text": "new"})
            [fresh] = await anyio.to_thread.run_sync(poll_newer, api, {"tool": "echo"}, seen)
            assert fresh["seq"] > max(r["seq"] for r in shown)
