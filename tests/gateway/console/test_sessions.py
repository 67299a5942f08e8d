"""The live sessions page: a real session-era client shows up; an admin ends its session, others may not."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import MCPError
from pydantic import SecretStr

from tests.console import add_person, csrf_of, signed_in
from tests.harness import running_gateway
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import TokenIssuer

pytestmark = pytest.mark.anyio

HOSTILE = "<script>alert(1)</script>"


async def test_a_live_session_is_listed_and_an_admin_ends_it(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "ada", "admin")
        key = await gw.create_client("ci-bot", team="platform")
        async with gw.client(key, "legacy") as client, signed_in(gw, "ada") as browser:
            await client.list_tools()
            (session,) = (await gw.admin.get("/sessions")).json()["items"]
            page = await browser.get("/ui/sessions")
            assert page.status_code == 200, page.text
            assert session["id"][:10] in page.text and session["principal"]["client_id"] in page.text
            assert session["protocol_version"] in page.text and "/mcp" in page.text
            assert "client ci-bot" in page.text  # the client's name, not only its id
            assert 'data-testid="end-session"' in page.text and "data-confirm=" in page.text
            action = f"/ui/sessions/{session['id']}/end"
            assert f'action="{action}"' in page.text

            assert (await browser.post(action, data={})).status_code == 403  # no CSRF token
            assert len((await gw.admin.get("/sessions")).json()["items"]) == 1
            ended = await browser.post(action, data={"csrf": csrf_of(page.text)})
            assert ended.status_code == 303 and ended.headers["location"] == "/ui/sessions"
            assert (await gw.admin.get("/sessions")).json()["items"] == []
            with pytest.raises(MCPError):
                await client.list_tools()
            after = await browser.get("/ui/sessions")
            assert "ended" in after.text and "No live sessions" in after.text
            again = await browser.post(action, data={"csrf": csrf_of(page.text)})
            assert again.status_code == 303
            assert "already ended" in (await browser.get("/ui/sessions")).text


async def test_other_roles_see_sessions_but_cannot_end_them(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        await add_person(gw, "vic", "viewer", "auditor", "approver")
        key = await gw.create_client("ci-bot")
        async with gw.client(key, "legacy") as client, signed_in(gw, "vic") as browser:
            await client.list_tools()
            (session,) = (await gw.admin.get("/sessions")).json()["items"]
            page = await browser.get("/ui/sessions")
            assert page.status_code == 200 and session["id"][:10] in page.text
            assert "end-session" not in page.text and "/end" not in page.text
            refused = await browser.post(
                f"/ui/sessions/{session['id']}/end", data={"csrf": csrf_of(page.text)}
            )
            assert refused.status_code == 403
            await client.list_tools()  # still alive
            assert len((await gw.admin.get("/sessions")).json()["items"]) == 1


async def test_hostile_principal_names_are_shown_as_text(tmp_path: Path) -> None:
    # A token from the gateway's own issuer with a subject and team no admin would choose.
    ring = KeyRing.generate()
    kid, secret = ring.masters[0]
    async with running_gateway(tmp_path, secret_keys=SecretStr(format_secret_key(kid, secret))) as gw:
        await add_person(gw, "ada", "admin")
        token = (
            TokenIssuer(gw.base_url, ring)
            .mint(
                subject=HOSTILE,
                client_id="<img src=x onerror=alert(1)>",
                audience=gw.base_url,
                scope="mcp",
                kind="user",
                teams=["<b>team</b>"],
            )
            .token
        )
        async with gw.client(token, "legacy") as client, signed_in(gw, "ada") as browser:
            await client.list_tools()
            page = await browser.get("/ui/sessions")
            assert page.status_code == 200
            assert HOSTILE not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert "<img src=x" not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
            assert "<b>team</b>" not in page.text
