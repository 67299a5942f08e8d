"""Live sessions in the admin API: a real session-era client is listed, and ending its session ends it."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from mcp import MCPError
from mcp.shared.exceptions import MCPDeprecationWarning
from pydantic import SecretStr

from tests.harness import running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.auth.tokens import TokenIssuer

pytestmark = pytest.mark.anyio


async def test_a_session_era_client_is_listed_and_ending_its_session_ends_it(tmp_path: Path) -> None:
    upstream, _ = echo_upstream("calc")
    async with (
        serve(upstream.streamable_http_app(), path="/mcp") as calc_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("calc", calc_url)
        key = await gw.create_client("ci-bot", team="platform")
        client_id = next(c["client_id"] for c in (await gw.admin.get("/clients")).json()["items"])
        assert (await gw.admin.get("/sessions")).json() == {"items": []}
        async with gw.client(key, "legacy", path="/servers/calc/mcp") as client:
            with pytest.warns(MCPDeprecationWarning):  # session-era method, still served
                await client.subscribe_resource("note://café/menu")
            items = (await gw.admin.get("/sessions")).json()["items"]
            assert len(items) == 1
            (session,) = items
            assert session["principal"] == {
                "subject": client_id,
                "client_id": client_id,
                "kind": "client",
                "teams": ["platform"],
            }
            assert session["protocol_version"] == client.protocol_version
            assert session["view"] == "server:calc" and session["endpoint"] == "/servers/calc/mcp"
            assert session["subscriptions"] == 1
            assert session["created_at"] <= session["last_active_at"]
            assert session["inflight_requests"] == 0 and session["open_streams"] in (0, 1)

            ended = await gw.admin.delete(f"/sessions/{session['id']}")
            assert ended.status_code == 204, ended.text
            with pytest.raises(MCPError) as caught:
                await client.list_tools()
            assert "Session not found" in str(caught.value)
            raw = await gw.admin.post(
                f"{gw.base_url}/servers/calc/mcp",
                json={"jsonrpc": "2.0", "id": 9, "method": "ping"},
                headers={
                    "Authorization": f"Bearer {key}",
                    "Mcp-Session-Id": session["id"],
                    "Mcp-Protocol-Version": session["protocol_version"],
                    "Accept": "application/json, text/event-stream",
                },
            )
            assert raw.status_code == 404  # what MCP prescribes for an ended session
            assert (await gw.admin.get("/sessions")).json() == {"items": []}
            again = await gw.admin.delete(f"/sessions/{session['id']}")
            assert again.status_code == 404
            assert again.headers["content-type"] == "application/problem+json"


async def test_reading_sessions_needs_a_role_and_ending_one_needs_admin(tmp_path: Path) -> None:
    ring = KeyRing.generate()
    kid, secret = ring.masters[0]
    async with (
        running_gateway(tmp_path, secret_keys=SecretStr(format_secret_key(kid, secret))) as gw,
        httpx2.AsyncClient(base_url=f"{gw.base_url}/admin/api/v1", trust_env=False, timeout=30) as http,
    ):
        issuer = TokenIssuer(gw.base_url, ring)

        def token(subject: str, *roles: str) -> str:
            return issuer.mint(
                subject=subject,
                client_id="console",
                audience=gw.base_url,
                scope="mcp",
                kind="user",
                roles=roles,
            ).token

        def bearer(subject: str, *roles: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token(subject, *roles)}"}

        async with gw.client(token("ada", "viewer"), "legacy") as client:
            await client.list_tools()
            (session,) = (await http.get("/sessions", headers=bearer("vic", "viewer"))).json()["items"]
            assert session["principal"]["subject"] == "ada" and session["principal"]["kind"] == "user"
            assert session["principal"]["client_id"] == "console" and session["endpoint"] == "/mcp"
            assert (await http.get("/sessions", headers=bearer("nobody"))).status_code == 403
            refused = await http.delete(
                f"/sessions/{session['id']}", headers=bearer("vic", "viewer", "auditor")
            )
            assert refused.status_code == 403
            await client.list_tools()  # still alive
            ended = await http.delete(f"/sessions/{session['id']}", headers=bearer("root", "admin"))
            assert ended.status_code == 204
            with pytest.raises(MCPError):
                await client.list_tools()


async def test_the_openapi_document_lists_the_session_routes(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        paths = (await gw.admin.get("/openapi.json")).json()["paths"]
        assert "get" in paths["/sessions"] and "delete" in paths["/sessions/{id}"]
