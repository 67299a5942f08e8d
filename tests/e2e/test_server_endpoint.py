"""`/servers/{server}/mcp`: one upstream under its original names, through the same gateway."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from mcp import MCPError
from mcp.types import PromptReference, TextContent, TextResourceContents

from examples.servers import notes, studio
from tests.harness import MODES, Mode, initialize_request, running_gateway
from tests.servers import serve
from tollhouse.gateway.errors import INVALID_PARAMS

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", MODES)
async def test_a_server_endpoint_shows_one_upstream_under_its_original_names(
    tmp_path: Path, mode: Mode
) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("studio", studio_url)
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode, path="/servers/studio/mcp") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == sorted(["echo", "add", "slow_count", "wait_for_cancel", "fail", "headers"])
            result = await client.call_tool("echo", {"text": "direct names"})
            assert isinstance(result.content[0], TextContent)
            assert result.content[0].text == "direct names"
            with pytest.raises(MCPError) as caught:
                await client.call_tool("add_note", {"text": "x"})  # notes' tool is not here
            assert caught.value.code == INVALID_PARAMS

            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert "studio://readme" in uris
            readme = (await client.read_resource("studio://readme")).contents[0]
            assert isinstance(readme, TextResourceContents)
            assert str(readme.uri) == "studio://readme"
            assert [p.name for p in (await client.list_prompts()).prompts] == ["review"]
            completion = await client.complete(
                PromptReference(type="ref/prompt", name="review"), {"name": "language", "value": "py"}
            )
            assert completion.completion.values == ["python"]


async def test_unknown_server_endpoints_are_404_and_sessions_stay_on_their_endpoint(tmp_path: Path) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        auth = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
        init = initialize_request()
        async with httpx2.AsyncClient(trust_env=False) as http:
            missing = await http.post(f"{gw.base_url}/servers/nope/mcp", json=init, headers=auth)
            assert missing.status_code == 404
            created = await http.post(f"{gw.base_url}/servers/studio/mcp", json=init, headers=auth)
            session = {**auth, "Mcp-Session-Id": created.headers["mcp-session-id"]}
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
            assert (
                await http.post(f"{gw.base_url}/servers/studio/mcp", json=ping, headers=session)
            ).status_code == 200
            assert (await http.post(gw.mcp_url, json=ping, headers=session)).status_code == 404
