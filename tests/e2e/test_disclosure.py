"""Progressive disclosure: `/mcp?disclosure=search` and `disclosure: search` toolsets list the catalog
meta-tools instead of every tool, and the official `mcp` client finds, describes and calls tools
through them, with policy, metering and audit on the inner call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import MCPError
from mcp.types import CallToolResult, TextContent

from examples.servers import notes, studio
from tests.harness import MODES, Gateway, Mode, modern_tool_call, running_gateway
from tests.servers import serve
from tollhouse.audit.records import args_digest
from tollhouse.gateway.disclosure import CALL_TOOL, DESCRIBE_TOOL, FIND_TOOLS, REQUEST_ACCESS
from tollhouse.gateway.errors import INVALID_PARAMS

pytestmark = pytest.mark.anyio

SEARCH = "/mcp?disclosure=search"
META = [FIND_TOOLS, DESCRIBE_TOOL, CALL_TOOL, REQUEST_ACCESS]


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def _found(result: CallToolResult) -> list[str]:
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    assert json.loads(_text(result)) == result.structured_content  # the same, for clients without structure
    return [t["name"] for t in result.structured_content["tools"]]


async def _catalog(gw: Gateway, studio_url: str, notes_url: str) -> None:
    await gw.add_server("studio", studio_url)
    await gw.add_server("notes", notes_url)


@pytest.mark.parametrize("mode", MODES)
async def test_the_mcp_client_finds_describes_and_calls_a_tool_through_the_meta_tools(
    tmp_path: Path, mode: Mode
) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        await _catalog(gw, studio_url, notes_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as full:
            everything = [t.name for t in (await full.list_tools()).tools]
        assert "studio__add" in everything and FIND_TOOLS not in everything

        async with gw.client(key, mode, path=SEARCH) as client:
            listed = (await client.list_tools()).tools
            assert [t.name for t in listed] == META
            found = _found(await client.call_tool(FIND_TOOLS, {"query": "add two integers"}))
            assert found[0] == "studio__add"
            described = await client.call_tool(DESCRIBE_TOOL, {"name": "studio__add"})
            assert described.structured_content is not None
            assert described.structured_content["name"] == "studio__add"
            assert set(described.structured_content["inputSchema"]["properties"]) == {"a", "b"}
            result = await client.call_tool(
                CALL_TOOL, {"name": "studio__add", "arguments": {"a": 2, "b": 40}}
            )
            assert not result.is_error and "42" in _text(result)
            # A tool an agent learned the name of can also be called directly.
            direct = await client.call_tool("studio__echo", {"text": "hi"})
            assert _text(direct) == "hi"

        records = (await gw.admin.get("/audit/records", params={"limit": 500})).json()["items"]
        via = [r for r in records if r["what"].get("via") == CALL_TOOL]
        assert [(r["what"]["server"], r["what"]["tool"]) for r in via] == [("studio", "add")]
        # Metered as the inner tool (its usage event is named in the record), with its own arguments.
        assert via[0]["correlation"]["usage_event"]
        assert via[0]["what"]["args_sha256"] == args_digest({"a": 2, "b": 40})


@pytest.mark.parametrize("mode", MODES)
async def test_meta_tools_show_and_run_only_what_policy_lets_the_caller_see(
    tmp_path: Path, mode: Mode
) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path, allow_all=False) as gw,
    ):
        await _catalog(gw, studio_url, notes_url)
        key = await gw.create_client("notes-only", team="notes-team")
        grant = {"allow": {"team": "notes-team", "tools": ["notes__*"]}}
        assert (await gw.admin.put("/policies/notes-team", json=grant)).status_code == 201
        async with gw.client(key, mode, path=SEARCH) as client:
            for query in ("add two integers", "echo text", "notes"):
                found = _found(await client.call_tool(FIND_TOOLS, {"query": query, "limit": 25}))
                assert all(name.startswith("notes__") for name in found), (query, found)
            assert "notes__add_note" in _found(await client.call_tool(FIND_TOOLS, {"query": "add a note"}))
            for name in ("studio__add", "nothing__here"):
                with pytest.raises(MCPError) as caught:
                    await client.call_tool(DESCRIBE_TOOL, {"name": name})
                assert caught.value.code == INVALID_PARAMS
                assert "Unknown tool" in str(caught.value)
            with pytest.raises(MCPError) as refused:
                await client.call_tool(CALL_TOOL, {"name": "studio__add", "arguments": {"a": 1, "b": 2}})
            assert refused.value.code == INVALID_PARAMS  # as unknown as when called directly
            added = await client.call_tool(CALL_TOOL, {"name": "notes__add_note", "arguments": {"text": "x"}})
            assert not added.is_error


async def test_a_toolset_in_search_mode_searches_its_members_under_their_aliases(tmp_path: Path) -> None:
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        await _catalog(gw, studio_url, notes_url)
        key = await gw.create_client("agent")
        body = {"tools": ["notes__*"], "aliases": {"plus": "studio__add"}, "disclosure": "search"}
        created = await gw.admin.put("/toolsets/support", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["disclosure"] == "search"
        async with gw.client(key, "2026-07-28", path="/mcp/support") as client:
            assert [t.name for t in (await client.list_tools()).tools] == META
            found = _found(await client.call_tool(FIND_TOOLS, {"query": "add two integers", "limit": 25}))
            assert "plus" in found and "studio__add" not in found
            assert not any(name.startswith("studio__") for name in found)
            described = await client.call_tool(DESCRIBE_TOOL, {"name": "plus"})
            assert described.structured_content is not None and described.structured_content["name"] == "plus"
            result = await client.call_tool(CALL_TOOL, {"name": "plus", "arguments": {"a": 1, "b": 2}})
            assert "3" in _text(result)
            with pytest.raises(MCPError):
                await client.call_tool(CALL_TOOL, {"name": "studio__echo", "arguments": {"text": "x"}})
        # ?disclosure=full overrides the toolset's setting for one connection.
        async with gw.client(key, "2026-07-28", path="/mcp/support?disclosure=full") as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert "plus" in names and FIND_TOOLS not in names


async def test_bad_meta_tool_input_gets_a_clear_error_and_a_bad_mode_a_400(tmp_path: Path) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        url = f"{gw.base_url}{SEARCH}"
        async with httpx2.AsyncClient() as http:
            cases: list[tuple[str, dict[str, Any], str]] = [
                (FIND_TOOLS, {}, "non-empty string 'query'"),
                (FIND_TOOLS, {"query": "   "}, "non-empty string 'query'"),
                (FIND_TOOLS, {"query": "x" * 501}, "at most 500"),
                (FIND_TOOLS, {"query": "add", "limit": 0}, "'limit'"),
                (FIND_TOOLS, {"query": "add", "limit": True}, "'limit'"),
                (FIND_TOOLS, {"query": "add", "extra": 1}, "Unknown argument(s): extra"),
                (DESCRIBE_TOOL, {"name": 3}, "string 'name'"),
                (CALL_TOOL, {"name": "studio__add", "arguments": [1]}, "'arguments' must be an object"),
                (REQUEST_ACCESS, {"name": "studio__add"}, "'reason'"),
            ]
            for name, arguments, message in cases:
                response = await modern_tool_call(http, url, key, name, arguments)
                error = response.json()["error"]
                assert error["code"] == INVALID_PARAMS, (name, arguments, error)
                assert message in error["message"], (name, arguments, error)
            for bad in ("bogus", "search&disclosure=full"):
                refused = await http.post(
                    f"{gw.base_url}/mcp?disclosure={bad}",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                )
                assert refused.status_code == 400, refused.text
                assert "'disclosure'" in refused.text
