"""Toolsets: `/mcp/{toolset}` serves a named, curated subset of the tools, managed by API, CLI and file.

Driven by the official `mcp` client in both eras; the admin side through the admin API and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx2
import pytest
from mcp import MCPError
from mcp.types import CallToolResult, TextContent

from examples.servers import notes, studio
from tests.harness import ADMIN_TOKEN, MODES, Gateway, Mode, initialize_request, running_gateway
from tests.servers import serve
from tollhouse.gateway.cli import main
from tollhouse.gateway.errors import INVALID_PARAMS
from tollhouse.registry.config import load_config
from tollhouse.registry.models import Toolset

pytestmark = pytest.mark.anyio

SUPPORT = {
    "tools": ["studio__e*", "notes__list_*"],
    "aliases": {"plus": "studio__add"},
    "description": "What the support agent may use.",
}
LEGACY_INIT = initialize_request()
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def put_toolset(gw: Gateway, name: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    response = await gw.admin.put(f"/toolsets/{name}", json=body)
    assert response.status_code == status, response.text
    document: dict[str, Any] = response.json()
    return document


async def tool_names(gw: Gateway, key: str, mode: Mode, toolset: str) -> list[str]:
    async with gw.client(key, mode, path=f"/mcp/{toolset}") as client:
        return [t.name for t in (await client.list_tools()).tools]


async def assert_unknown(client: Any, name: str, arguments: dict[str, Any] | None = None) -> None:
    with pytest.raises(MCPError) as caught:
        await client.call_tool(name, arguments or {})
    assert caught.value.code == INVALID_PARAMS, name


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI in a worker thread (as a console script would) and capture its output."""
    code = await anyio.to_thread.run_sync(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("mode", MODES)
async def test_a_toolset_shows_exactly_its_tools_under_their_aliases_and_routes_calls(
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
        created = await put_toolset(gw, "support", SUPPORT)
        assert created["members"] == ["notes__list_notes", "plus", "studio__echo"]

        async with gw.client(key, mode, path="/mcp/support") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert list(tools) == ["notes__list_notes", "plus", "studio__echo"]
            assert set(tools["plus"].input_schema["properties"]) == {"a", "b"}

            added = await client.call_tool("plus", {"a": 2, "b": 3})
            assert added.structured_content == {"result": 5}
            assert not added.is_error
            assert _text(await client.call_tool("studio__echo", {"text": "hi"})) == "hi"

            # Aliased away, outside the toolset, or no tool at all: all unknown here.
            await assert_unknown(client, "studio__add", {"a": 1, "b": 1})
            await assert_unknown(client, "studio__fail", {"message": "x"})
            await assert_unknown(client, "notes__add_note", {"text": "x"})
            await assert_unknown(client, "add")
            await assert_unknown(client, "nope")

        # The aggregate endpoint is unaffected by the toolset.
        async with gw.client(key, mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"studio__add", "studio__fail", "notes__add_note"} <= names
            assert "plus" not in names
            assert (await client.call_tool("studio__add", {"a": 1, "b": 2})).structured_content == {
                "result": 3
            }


@pytest.mark.parametrize("mode", MODES)
async def test_changing_a_toolset_through_the_admin_api_changes_what_it_shows(
    tmp_path: Path, mode: Mode
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        await put_toolset(gw, "support", {"tools": ["studio__echo"]})

        async with gw.client(key, mode, path="/mcp/support") as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["studio__echo"]

            replaced = await put_toolset(
                gw, "support", {"tools": ["studio__a*"], "aliases": {"say": "studio__echo"}}, 200
            )
            assert replaced["members"] == ["say", "studio__add"]

            # The same session sees the new definition at once.
            assert [t.name for t in (await client.list_tools()).tools] == ["say", "studio__add"]
            assert _text(await client.call_tool("say", {"text": "renamed"})) == "renamed"
            await assert_unknown(client, "studio__echo", {"text": "x"})

        assert await tool_names(gw, key, mode, "support") == ["say", "studio__add"]


async def test_unknown_and_removed_toolsets_are_404_and_sessions_stay_on_their_endpoint(
    tmp_path: Path,
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        await put_toolset(gw, "support", {"tools": ["studio__*"]})
        await put_toolset(gw, "other", {"tools": ["studio__*"]})
        auth = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            missing = await http.post(f"{gw.base_url}/mcp/unknown", json=LEGACY_INIT, headers=auth)
            assert missing.status_code == 404
            modern = {**auth, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
            meta = {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
            }
            listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}}
            assert (
                await http.post(f"{gw.base_url}/mcp/unknown", json=listing, headers=modern)
            ).status_code == 404
            listed = await http.post(f"{gw.base_url}/mcp/support", json=listing, headers=modern)
            assert listed.status_code == 200
            assert "studio__echo" in {t["name"] for t in listed.json()["result"]["tools"]}

            # A session-era session created on /mcp/support is bound to that endpoint.
            created = await http.post(f"{gw.base_url}/mcp/support", json=LEGACY_INIT, headers=auth)
            assert created.status_code == 200
            session = {**auth, "Mcp-Session-Id": created.headers["mcp-session-id"]}
            assert (
                await http.post(f"{gw.base_url}/mcp/support", json=PING, headers=session)
            ).status_code == 200
            assert (await http.post(gw.mcp_url, json=PING, headers=session)).status_code == 404
            assert (
                await http.post(f"{gw.base_url}/mcp/other", json=PING, headers=session)
            ).status_code == 404

            # Removing the toolset removes its endpoint.
            assert (await gw.admin.delete("/toolsets/support")).status_code == 204
            assert (
                await http.post(f"{gw.base_url}/mcp/support", json=listing, headers=modern)
            ).status_code == 404
            assert (
                await http.post(f"{gw.base_url}/mcp/other", json=listing, headers=modern)
            ).status_code == 200


async def test_the_admin_api_validates_stores_and_lists_toolsets(tmp_path: Path) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        assert (await gw.admin.get("/toolsets")).json() == {"items": []}

        first = await put_toolset(gw, "support", SUPPORT)
        assert first["name"] == "support"
        assert first["tools"] == SUPPORT["tools"]
        assert first["aliases"] == SUPPORT["aliases"]
        assert first["description"] == SUPPORT["description"]
        assert first["members"] == ["plus", "studio__echo"]  # notes is not registered
        assert first["created_at"] == first["updated_at"]

        again = await put_toolset(gw, "support", {**SUPPORT, "name": "support"}, 200)
        assert again["created_at"] == first["created_at"]
        assert again["updated_at"] > first["updated_at"]
        assert (await gw.admin.get("/toolsets/support")).json() == again
        await put_toolset(gw, "aaa", {"aliases": {"hello": "studio__echo"}})
        listed = (await gw.admin.get("/toolsets")).json()["items"]
        assert [(t["name"], t["members"]) for t in listed] == [
            ("aaa", ["hello"]),
            ("support", again["members"]),
        ]

        for name, body, fragment in [
            ("support", {"tools": ["add"]}, "tools[0]: 'add' is not an exposed tool name"),
            ("support", {"tools": ["studio__*"], "toolz": []}, "toolz: unknown key (did you mean 'tools'?)"),
            ("support", {}, "at least one entry in 'tools' or 'aliases'"),
            (
                "support",
                {"tools": ["studio__*"], "name": "other"},
                "the body names 'other' but the path 'support'",
            ),
            ("Support", {"tools": ["studio__*"]}, "name: 'Support' is not a valid name"),
            ("tollhouse", {"tools": ["studio__*"]}, "name: 'tollhouse' is reserved"),
            ("support", {"aliases": {"a": "studio__echo", "b": "studio__echo"}}, "already has the alias 'a'"),
        ]:
            response = await gw.admin.put(f"/toolsets/{name}", json=body)
            assert response.status_code == 400, (name, body)
            assert response.headers["content-type"] == "application/problem+json"
            assert fragment in response.json()["detail"]
        assert (await gw.admin.get("/toolsets/support")).json() == again

        assert (await gw.admin.get("/toolsets/nope")).status_code == 404
        assert (await gw.admin.delete("/toolsets/nope")).status_code == 404
        assert (await gw.admin.delete("/toolsets/aaa")).status_code == 204
        assert [t["name"] for t in (await gw.admin.get("/toolsets")).json()["items"]] == ["support"]


async def test_toolsets_survive_a_restart(tmp_path: Path) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url:
        async with running_gateway(tmp_path) as gw:
            await gw.add_server("studio", studio_url)
            key = await gw.create_client("agent")
            await put_toolset(gw, "support", {"tools": ["studio__echo"], "aliases": {"plus": "studio__add"}})
        async with running_gateway(tmp_path) as gw:
            assert await tool_names(gw, key, "2026-07-28", "support") == ["plus", "studio__echo"]


async def test_toolsets_through_the_cli_against_the_real_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]

        code, out, err = await run_cli(
            capsys, *g, "toolsets", "set", "support", "--tool", "studio__e*", "--alias", "plus=studio__add"
        )
        assert code == 0, err
        assert out == "created toolset support: 2 live tools\n  plus -> studio__add\n  studio__echo\n"
        assert await tool_names(gw, key, "legacy", "support") == ["plus", "studio__echo"]

        code, out, err = await run_cli(
            capsys,
            *g,
            "toolsets",
            "set",
            "support",
            "--tool",
            "studio__*_count",
            "--description",
            "counting",
            "--json",
        )
        assert code == 0, err
        replaced = json.loads(out)
        assert (replaced["members"], replaced["aliases"], replaced["description"]) == (
            ["studio__slow_count"],
            {},
            "counting",
        )
        assert await tool_names(gw, key, "2026-07-28", "support") == ["studio__slow_count"]

        code, out, _ = await run_cli(capsys, *g, "toolsets", "list")
        assert code == 0
        assert out.splitlines()[1].split() == ["support", "1", "studio__*_count", "counting"]
        code, out, _ = await run_cli(capsys, *g, "toolsets", "show", "support", "--json")
        assert json.loads(out) == (await gw.admin.get("/toolsets/support")).json()
        code, out, _ = await run_cli(capsys, *g, "toolsets", "show", "support")
        assert "members:     1\n  studio__slow_count\n" in out

        code, _, err = await run_cli(capsys, *g, "toolsets", "set", "support", "--tool", "studio__{a,b}")
        assert code == 1
        assert err.startswith("tollhouse: error: tools[0]: 'studio__{a,b}' is not an exposed tool name")

        code, out, _ = await run_cli(capsys, *g, "toolsets", "remove", "support")
        assert (code, out) == (0, "removed toolset support\n")
        code, _, err = await run_cli(capsys, *g, "toolsets", "show", "support")
        assert (code, err) == (1, "tollhouse: error: no toolset named 'support'\n")


async def test_apply_with_toolsets_then_export_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        config = tmp_path / "tollhouse.yaml"
        config.write_text(
            f"""\
servers:
  - name: studio
    url: "{studio_url}"
toolsets:
  - name: support
    description: "Support desk"
    tools: ["studio__e*", "studio__[fh]*"]
    aliases: {{plus: studio__add}}
  - name: counting
    tools: ["studio__slow_count"]
clients:
  - name: ci-bot
    team: platform
"""
        )
        code, out, err = await run_cli(capsys, *g, "apply", str(config), "--json")
        assert code == 0, err
        first = json.loads(out)
        assert first["created"] == [
            "server/studio",
            "toolset/support",
            "toolset/counting",
            "client/ci-bot",
        ]
        assert first["warnings"] == []
        key = first["clients"][0]["api_key"]
        assert await tool_names(gw, key, "legacy", "support") == [
            "plus",
            "studio__echo",
            "studio__fail",
            "studio__headers",
        ]

        code, out, err = await run_cli(capsys, *g, "apply", str(config), "--json")
        assert code == 0, err
        second = json.loads(out)
        assert (second["created"], second["updated"]) == ([], [])
        assert {"toolset/support", "toolset/counting"} <= set(second["unchanged"])

        exported = tmp_path / "exported.yaml"
        code, _, err = await run_cli(capsys, *g, "export", "--out", str(exported))
        assert code == 0, err
        text = exported.read_text()
        assert "toolsets:\n  - name: counting\n" in text
        assert load_config(text).toolsets == (
            Toolset(name="counting", tools=("studio__slow_count",)),
            Toolset(
                name="support",
                tools=("studio__e*", "studio__[fh]*"),
                aliases={"plus": "studio__add"},
                description="Support desk",
            ),
        )
        # Applying the export changes nothing.
        code, out, err = await run_cli(capsys, *g, "apply", str(exported), "--json")
        assert code == 0, err
        assert (json.loads(out)["created"], json.loads(out)["updated"]) == ([], [])

        # A changed toolset is updated; --prune deletes the toolset the file omits.
        config.write_text(
            f'servers:\n  - name: studio\n    url: "{studio_url}"\n'
            'toolsets:\n  - name: support\n    tools: ["studio__echo"]\n'
        )
        code, out, err = await run_cli(capsys, *g, "apply", str(config), "--prune", "--json")
        assert code == 0, err
        pruned = json.loads(out)
        assert pruned["updated"] == ["toolset/support"]
        assert pruned["deleted"] == ["toolset/counting"]
        assert await tool_names(gw, key, "2026-07-28", "support") == ["studio__echo"]
        auth = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
        async with httpx2.AsyncClient(trust_env=False) as http:
            gone = await http.post(f"{gw.base_url}/mcp/counting", json=LEGACY_INIT, headers=auth)
            assert gone.status_code == 404
