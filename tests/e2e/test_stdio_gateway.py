"""A stdio upstream behind the gateway: its own environment only, restarted after a crash."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp.types import TextContent

from tests.harness import MODES, Mode, running_gateway

pytestmark = pytest.mark.anyio

SERVER = str(Path(__file__).resolve().parents[1] / "stdio_server.py")


def _text(result: Any) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.mark.parametrize("mode", MODES)
async def test_a_stdio_child_sees_only_its_own_env_and_is_restarted_after_a_crash(
    tmp_path: Path, mode: Mode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLHOUSE_CANARY_SECRET", "must-not-leak")  # in the gateway's own environment
    async with running_gateway(tmp_path) as gw:
        server = await gw.add_server("kid", command=[sys.executable, SERVER], env={"KID_SETTING": "visible"})
        assert server["transport"] == "stdio"
        assert server["health"]["status"] == "healthy"
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            assert _text(await client.call_tool("kid__env_probe", {"name": "KID_SETTING"})) == "visible"
            leaked = await client.call_tool("kid__env_probe", {"name": "TOLLHOUSE_CANARY_SECRET"})
            assert "must-not-leak" not in repr(leaked)
            first_pid = _text(await client.call_tool("kid__pid", {}))

            with pytest.raises(MCPError):
                await client.call_tool("kid__crash", {})  # the child exits mid-call
            with anyio.fail_after(20):
                await _until_live(gw, "kid")
            assert _text(await client.call_tool("kid__echo", {"text": "again"})) == "again"
            assert _text(await client.call_tool("kid__pid", {})) != first_pid


async def _until_live(gw: Any, server: str) -> None:
    async with httpx2.AsyncClient(trust_env=False) as http:
        while True:
            ready = (await http.get(f"{gw.base_url}/readyz")).json()
            status = (await gw.admin.get(f"/servers/{server}")).json()["health"]["status"]
            if server in ready["live"] and status == "healthy":
                return


@pytest.mark.parametrize("mode", MODES)
async def test_a_modern_stdio_upstreams_input_requests_reach_the_downstream(
    tmp_path: Path, mode: Mode
) -> None:
    from mcp.client.context import ClientRequestContext
    from mcp.types import ElicitRequestParams, ElicitResult

    asked: list[str] = []

    async def elicit(ctx: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"ok": True})

    async with running_gateway(tmp_path) as gw:
        await gw.add_server("kid", command=[sys.executable, SERVER])
        key = await gw.create_client("agent")
        async with gw.client(key, mode, elicitation_callback=elicit) as client:
            result = await client.call_tool("kid__confirm_delete", {"path": "/tmp/x"})
            assert _text(result) == "deleted /tmp/x"
        assert asked == ["Really delete /tmp/x?"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["stdio", "sse"])
async def test_a_session_era_stdio_or_sse_upstreams_request_reaches_the_one_calling_client(
    tmp_path: Path, mode: Mode, transport: str
) -> None:
    from mcp.client.context import ClientRequestContext
    from mcp.types import ElicitRequestParams, ElicitResult

    from tests.gateway.test_sse_upstream import sse_process

    asked: list[str] = []

    async def elicit(ctx: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"ok": True})

    async with running_gateway(tmp_path) as gw:
        if transport == "stdio":
            await gw.add_server("kid", command=[sys.executable, SERVER, "--legacy-only"])
            await _relay_once(gw, mode, elicit)
        else:
            async with sse_process() as (url, _process):
                await gw.add_server("kid", url, transport="sse")
                await _relay_once(gw, mode, elicit)
    assert asked == ["Really delete /tmp/y?"]


async def _relay_once(gw: Any, mode: Mode, elicit: Any) -> None:
    assert (await gw.admin.get("/servers/kid")).json()["era"] == "legacy"
    key = await gw.create_client("agent")
    async with gw.client(key, mode, elicitation_callback=elicit) as client:
        result = await client.call_tool("kid__confirm_delete", {"path": "/tmp/y"})
        assert _text(result) == "deleted /tmp/y"
