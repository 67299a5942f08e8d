"""Access requests: an agent asks for a tool through `tollhouse__request_access`, an approver grants it
(a scoped, time-limited policy) or declines it, and everything is on record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx2
import pytest
from mcp import MCPError
from mcp.types import CallToolResult, TextContent
from pydantic import SecretStr

from examples.servers import notes, studio
from tests.harness import ADMIN_TOKEN, Gateway, running_gateway
from tests.servers import serve
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import TokenIssuer
from tollhouse.gateway.access_requests import MAX_PENDING
from tollhouse.gateway.app import Deps
from tollhouse.gateway.cli import main
from tollhouse.gateway.disclosure import CALL_TOOL, FIND_TOOLS, REQUEST_ACCESS
from tollhouse.gateway.errors import INVALID_PARAMS

pytestmark = pytest.mark.anyio

SEARCH = "/mcp?disclosure=search"


class Clock:
    """Wall-clock seconds the test moves forward (policy time and grant expiry)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def _setup(gw: Gateway, studio_url: str, notes_url: str) -> tuple[str, str]:
    await gw.add_server("studio", studio_url)
    await gw.add_server("notes", notes_url)
    asker = await gw.create_client("asker", team="research")
    other = await gw.create_client("other", team="research")
    grant = {"allow": {"team": "research", "tools": ["notes__*"]}}
    assert (await gw.admin.put("/policies/research-notes", json=grant)).status_code == 201
    return asker, other


async def _request(gw: Gateway, key: str, name: str, **extra: Any) -> dict[str, Any]:
    async with gw.client(key, "2026-07-28", path=SEARCH) as client:
        result = await client.call_tool(REQUEST_ACCESS, {"name": name, "reason": "to add numbers", **extra})
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    return dict(result.structured_content)


async def _can_add(gw: Gateway, key: str) -> bool:
    async with gw.client(key, "legacy") as client:
        listed = [t.name for t in (await client.list_tools()).tools]
        try:
            result = await client.call_tool("studio__add", {"a": 20, "b": 22})
        except MCPError as exc:
            assert exc.code == INVALID_PARAMS  # a denied tool is as unknown as a missing one
            assert "studio__add" not in listed
            return False
        assert "42" in _text(result) and "studio__add" in listed
        return True


async def test_an_agents_request_becomes_a_working_recorded_expiring_grant(tmp_path: Path) -> None:
    clock = Clock()
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path, Deps(clock=clock), allow_all=False) as gw,
    ):
        asker, other = await _setup(gw, studio_url, notes_url)
        assert not await _can_add(gw, asker)
        async with gw.client(asker, "2026-07-28", path=SEARCH) as client:
            found = await client.call_tool(FIND_TOOLS, {"query": "add two integers", "limit": 25})
            assert "studio__add" not in _text(found)  # search never shows what policy hides

        filed = await _request(gw, asker, "studio__add", duration_seconds=3600)
        assert filed["status"] == "pending" and filed["target"] == "studio__add"
        assert await _request(gw, asker, "studio__add") == filed  # the same request, not a second one

        pending = (await gw.admin.get("/access-requests", params={"status": "pending"})).json()["items"]
        (shown,) = pending
        assert shown["id"] == filed["request"]
        assert (shown["client_id"], shown["team"], shown["reason"]) == (
            shown["client_id"],
            "research",
            "to add numbers",
        )
        assert shown["target_exists"] is True and shown["duration_seconds"] == 3600

        granted = await gw.admin.post(
            f"/access-requests/{filed['request']}/grant", json={"note": "ok for today"}
        )
        assert granted.status_code == 200, granted.text
        decision = granted.json()
        assert decision["status"] == decision["state"] == "granted"
        assert decision["policy_id"] == f"access-{filed['request']}" and decision["decided_by"]
        assert decision["expires_at"] is not None
        policy = (await gw.admin.get(f"/policies/{decision['policy_id']}")).json()
        assert policy["allow"]["tools"] == ["studio__add"]

        assert await _can_add(gw, asker)
        assert not await _can_add(gw, other)  # scoped to the requester, not its team
        again = await gw.admin.post(f"/access-requests/{filed['request']}/decline", json={})
        assert again.status_code == 409

        clock.now += 3601
        assert not await _can_add(gw, asker)
        expired = (await gw.admin.get(f"/access-requests/{filed['request']}")).json()
        assert (expired["status"], expired["state"]) == ("granted", "expired")

        records = (await gw.admin.get("/audit/records", params={"limit": 500})).json()["items"]
        actions = [r["what"].get("path") or r["what"].get("tool") for r in records]
        assert REQUEST_ACCESS in actions
        assert any("access-requests" in str(r["what"]) and "grant" in str(r["what"]) for r in records)


async def test_decline_team_grants_bad_input_and_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path, allow_all=False) as gw,
    ):
        asker, other = await _setup(gw, studio_url, notes_url)
        declined = await _request(gw, asker, "studio__echo")
        response = await gw.admin.post(f"/access-requests/{declined['request']}/decline", json={"note": "no"})
        assert response.status_code == 200 and response.json()["status"] == "declined"
        assert response.json()["note"] == "no"

        team = await _request(gw, asker, "studio__add")
        response = await gw.admin.post(f"/access-requests/{team['request']}/grant", json={"scope": "team"})
        assert response.status_code == 200, response.text
        assert response.json()["expires_at"] is None
        assert await _can_add(gw, other)  # the whole team

        # Whether a hidden tool exists is not revealed: a request for a missing one is recorded too,
        # and the approver sees that it does not exist (and cannot grant it).
        ghost = await _request(gw, asker, "studio__nothing")
        shown = (await gw.admin.get(f"/access-requests/{ghost['request']}")).json()
        assert shown["target_exists"] is False
        refused = await gw.admin.post(f"/access-requests/{ghost['request']}/grant", json={})
        assert refused.status_code == 400 and "not a registered tool" in refused.text

        for body, message in (
            ({"scope": "everyone"}, "'principal' or 'team'"),
            ({"duration_seconds": 5}, "from 60 seconds"),
            ({"for": 1}, "unknown field(s): for"),
        ):
            bad = await gw.admin.post(f"/access-requests/{ghost['request']}/grant", json=body)
            assert bad.status_code == 400 and message in bad.text, (body, bad.text)
        assert (await gw.admin.post("/access-requests/ar_missing/grant", json={})).status_code == 404
        assert (await gw.admin.get("/access-requests/ar_missing")).status_code == 404
        assert (await gw.admin.get("/access-requests", params={"status": "maybe"})).status_code == 400

        # The CLI, as an approver would use it.
        cli = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        code = await anyio.to_thread.run_sync(main, ["access", "list", "--status", "pending", *cli])
        listed = capsys.readouterr().out
        assert code == 0 and ghost["request"] in listed and "studio__nothing" in listed
        code = await anyio.to_thread.run_sync(
            main, ["access", "decline", ghost["request"], "--note", "no", *cli]
        )
        assert code == 0 and "declined access request" in capsys.readouterr().out
        code = await anyio.to_thread.run_sync(main, ["access", "show", ghost["request"], *cli])
        assert code == 0 and "declined" in capsys.readouterr().out
        code = await anyio.to_thread.run_sync(main, ["access", "grant", ghost["request"], *cli])
        assert code != 0 and "already declined" in capsys.readouterr().err

        async with gw.client(asker, "2026-07-28", path=SEARCH) as client:
            for arguments, message in (
                ({"name": "not a tool", "reason": "x"}, "is not a tool"),
                ({"name": "studio__add", "reason": "x", "duration_seconds": 10}, "from 60 seconds"),
                ({"name": "studio__add", "reason": "x" * 2001}, "at most 2000"),
            ):
                with pytest.raises(MCPError) as caught:
                    await client.call_tool(REQUEST_ACCESS, arguments)
                assert caught.value.code == INVALID_PARAMS and message in str(caught.value), arguments
            # The call meta-tool applies policy exactly as a direct call: still unknown before a grant.
            with pytest.raises(MCPError):
                await client.call_tool(CALL_TOOL, {"name": "studio__echo", "arguments": {"text": "x"}})


async def test_only_approvers_decide_and_a_requester_is_capped(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    kid, key = ring.masters[0]
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path, allow_all=False, secret_keys=SecretStr(format_secret_key(kid, key))) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        asker, _ = await _setup(gw, studio_url, notes_url)
        filed = await _request(gw, asker, "studio__add")
        issuer = TokenIssuer(gw.base_url, ring)

        def token(subject: str, *roles: str) -> str:
            minted = issuer.mint(
                subject=subject,
                client_id="console",
                audience=gw.base_url,
                scope="mcp",
                kind="user",
                roles=roles,
            )
            return minted.token

        url = f"{gw.base_url}/admin/api/v1/access-requests/{filed['request']}/grant"
        refused = await http.post(url, json={}, headers={"Authorization": f"Bearer {token('vic', 'viewer')}"})
        assert refused.status_code == 403
        listed = await http.get(
            f"{gw.base_url}/admin/api/v1/access-requests",
            headers={"Authorization": f"Bearer {token('vic', 'viewer')}"},
        )
        assert listed.status_code == 200 and listed.json()["items"][0]["id"] == filed["request"]
        allowed = await http.post(
            url, json={}, headers={"Authorization": f"Bearer {token('ann', 'approver')}"}
        )
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["decided_by"] == "ann"

        # A person asks too: the request names the user, and a grant is for that user.
        async with gw.client(token("uma"), "2026-07-28", path=SEARCH) as client:
            result = await client.call_tool(REQUEST_ACCESS, {"name": "studio__echo", "reason": "demo"})
        assert result.structured_content is not None
        mine = (await gw.admin.get(f"/access-requests/{result.structured_content['request']}")).json()
        assert (mine["user"], mine["subject"]) == ("uma", "uma")
        granted = await gw.admin.post(f"/access-requests/{mine['id']}/grant", json={})
        policy = (await gw.admin.get(f"/policies/{granted.json()['policy_id']}")).json()
        assert policy["allow"]["user"] == "uma"

        async with gw.client(asker, "2026-07-28", path=SEARCH) as client:
            for i in range(MAX_PENDING):
                await client.call_tool(REQUEST_ACCESS, {"name": f"studio__t{i}", "reason": "x"})
            with pytest.raises(MCPError) as caught:
                await client.call_tool(REQUEST_ACCESS, {"name": "studio__more", "reason": "x"})
            assert f"at most {MAX_PENDING} pending" in str(caught.value)
        page = (await gw.admin.get("/access-requests", params={"limit": 5})).json()["items"]
        assert len(page) == 5
