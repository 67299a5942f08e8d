"""The example servers, driven directly (no gateway) with the real `mcp` client over HTTP."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import Process
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    BlobResourceContents,
    PromptReference,
    ResourceTemplateReference,
    TextContent,
    TextResourceContents,
)

from examples.servers import notes, studio
from tests.servers import serve

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
ERAS = ["legacy", "2026-07-28"]
ACCEPT = "application/json, text/event-stream"


@asynccontextmanager
async def connect(url: str, mode: str, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """A real MCP client on `url`, negotiating the given era."""
    async with (
        httpx2.AsyncClient(headers=headers, trust_env=False) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


def text_of(blocks: object) -> str:
    assert isinstance(blocks, list)
    return "".join(block.text for block in blocks if isinstance(block, TextContent))


# --- studio -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_studio_lists_its_tools_with_output_schemas(mode: str) -> None:
    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}

    assert set(tools) == {"echo", "add", "slow_count", "wait_for_cancel", "fail", "headers"}
    assert tools["add"].output_schema is not None
    assert tools["add"].output_schema["properties"]["result"]["type"] == "integer"
    assert tools["add"].annotations is not None and tools["add"].annotations.read_only_hint


@pytest.mark.parametrize("mode", ERAS)
async def test_studio_echoes_text_and_adds_with_structured_content(mode: str) -> None:
    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else mode)
        echoed = await client.call_tool("echo", {"text": "hello"})
        added = await client.call_tool("add", {"a": 2, "b": 3})

    assert text_of(echoed.content) == "hello"
    assert not added.is_error
    assert added.structured_content == {"result": 5}
    assert text_of(added.content) == "5"


@pytest.mark.parametrize("mode", ERAS)
async def test_slow_count_reports_progress_at_every_step(mode: str) -> None:
    updates: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode) as client:
        result = await client.call_tool("slow_count", {"n": 3}, progress_callback=on_progress)

    assert text_of(result.content) == "counted to 3"
    assert updates == [(1, 3, "step 1/3"), (2, 3, "step 2/3"), (3, 3, "step 3/3")]


@pytest.mark.parametrize("mode", ERAS)
async def test_fail_returns_a_tool_error_result(mode: str) -> None:
    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode) as client:
        result = await client.call_tool("fail", {"message": "the disk is full"})

    assert result.is_error
    assert "the disk is full" in text_of(result.content)


@pytest.mark.parametrize("mode", ERAS)
async def test_headers_tool_reports_the_headers_the_server_received(mode: str) -> None:
    sent = {"Authorization": "Bearer upstream-credential", "X-Probe": "Yes"}
    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode, headers=sent) as client:
        result = await client.call_tool("headers", {})

    received = result.structured_content
    assert isinstance(received, dict)
    assert received["authorization"] == "Bearer upstream-credential"
    assert received["x-probe"] == "Yes"
    assert all(name == name.lower() for name in received)


@pytest.mark.parametrize("mode", ERAS)
async def test_cancelling_a_call_reaches_the_server(mode: str) -> None:
    state = studio.StudioState()
    async with serve(studio.build_app(state), path="/mcp") as url, connect(url, mode) as client:
        async with anyio.create_task_group() as tg:
            # Legacy: the client sends notifications/cancelled; 2026-07-28: it closes the POST.
            tg.start_soon(client.call_tool, "wait_for_cancel", {"seconds": 60})
            with anyio.fail_after(5):
                await state.waiting.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await state.cancelled.wait()
        still_working = await client.call_tool("echo", {"text": "after"})

    assert state.wait_count == 1
    assert state.cancel_count == 1
    assert text_of(still_working.content) == "after"


async def test_wait_for_cancel_returns_when_not_cancelled() -> None:
    state = studio.StudioState()
    async with serve(studio.build_app(state), path="/mcp") as url, connect(url, "2026-07-28") as client:
        result = await client.call_tool("wait_for_cancel", {"seconds": 0})

    assert text_of(result.content) == "waited 0.0 seconds"
    assert state.cancel_count == 0


@pytest.mark.parametrize("mode", ERAS)
async def test_studio_serves_text_binary_and_templated_resources(mode: str) -> None:
    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode) as client:
        listed = {str(resource.uri): resource for resource in (await client.list_resources()).resources}
        templates = (await client.list_resource_templates()).resource_templates
        readme = (await client.read_resource("studio://readme")).contents
        logo = (await client.read_resource("studio://logo.png")).contents
        item = (await client.read_resource("studio://items/beta")).contents
        with pytest.raises(MCPError) as missing:
            await client.read_resource("studio://items/omega")

    assert set(listed) == {"studio://readme", "studio://logo.png"}
    assert listed["studio://logo.png"].mime_type == "image/png"
    assert [template.uri_template for template in templates] == ["studio://items/{item_id}"]
    assert isinstance(readme[0], TextResourceContents) and readme[0].text == studio.README
    assert isinstance(logo[0], BlobResourceContents) and logo[0].mime_type == "image/png"
    assert base64.b64decode(logo[0].blob) == studio.LOGO_PNG
    assert studio.LOGO_PNG.startswith(b"\x89PNG\r\n\x1a\n")
    assert isinstance(item[0], TextResourceContents)
    assert item[0].text == '{"id": "beta", "name": "Beta", "price": 5}'
    assert missing.value.code == INVALID_PARAMS


@pytest.mark.parametrize("mode", ERAS)
async def test_review_prompt_renders_and_completes_its_language(mode: str) -> None:
    review = PromptReference(type="ref/prompt", name="review")
    items = ResourceTemplateReference(type="ref/resource", uri="studio://items/{item_id}")
    async with serve(studio.build_app(), path="/mcp") as url, connect(url, mode) as client:
        prompts = (await client.list_prompts()).prompts
        rendered = await client.get_prompt("review", {"code": "x = 1"})
        in_rust = await client.get_prompt("review", {"code": "let x = 1;", "language": "rust"})
        ru = await client.complete(review, {"name": "language", "value": "ru"})
        every = await client.complete(review, {"name": "language", "value": ""})
        item_ids = await client.complete(items, {"name": "item_id", "value": "g"})
        unknown = await client.complete(review, {"name": "code", "value": "x"})

    assert [prompt.name for prompt in prompts] == ["review"]
    arguments = {argument.name: argument.required for argument in prompts[0].arguments or []}
    assert arguments == {"code": True, "language": False}
    first = rendered.messages[0].content
    assert isinstance(first, TextContent) and "python" in first.text and "x = 1" in first.text
    rust = in_rust.messages[0].content
    assert isinstance(rust, TextContent) and "```rust" in rust.text
    assert ru.completion.values == ["ruby", "rust"]
    assert every.completion.values == list(studio.LANGUAGES)
    assert item_ids.completion.values == ["gamma"]
    assert unknown.completion.values == []


async def test_build_app_names_the_server() -> None:
    async with serve(studio.build_app(name="studio-b"), path="/mcp") as url, connect(url, "legacy") as client:
        assert client.server_info is not None
        assert client.server_info.name == "studio-b"


# --- notes ------------------------------------------------------------------------------


async def test_notes_are_kept_per_session() -> None:
    async with (
        serve(notes.build_app(), path="/mcp") as url,
        connect(url, "legacy") as first,
        connect(url, "legacy") as second,
    ):
        added = await first.call_tool("add_note", {"text": "buy milk"})
        await first.call_tool("add_note", {"text": "call Ada"})
        await second.call_tool("add_note", {"text": "water plants"})
        first_notes = await first.call_tool("list_notes", {})
        second_notes = await second.call_tool("list_notes", {})
        count = (await first.read_resource("notes://count")).contents
        summary = await first.get_prompt("summarize_notes")
        cleared = await first.call_tool("clear_notes", {})
        after_clear = await first.call_tool("list_notes", {})
        second_after = await second.call_tool("list_notes", {})

    assert text_of(added.content) == "added note 1"
    assert first_notes.structured_content == {"result": ["buy milk", "call Ada"]}
    assert second_notes.structured_content == {"result": ["water plants"]}
    assert isinstance(count[0], TextResourceContents) and count[0].text == "2"
    message = summary.messages[0].content
    assert isinstance(message, TextContent) and message.text.endswith("- buy milk\n- call Ada")
    assert text_of(cleared.content) == "cleared 2 notes"
    assert after_clear.structured_content == {"result": []}
    assert second_after.structured_content == {"result": ["water plants"]}


async def test_notes_state_is_shared_only_through_the_given_state() -> None:
    state = notes.NotesState()
    async with serve(notes.build_app(state), path="/mcp") as url, connect(url, "legacy") as client:
        await client.call_tool("add_note", {"text": "kept"})

    assert list(state.notes.values()) == [["kept"]]


async def test_notes_refuses_2026_requests_like_a_session_era_server() -> None:
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}
    initialize = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    async with (
        serve(notes.build_app(), path="/mcp") as url,
        httpx2.AsyncClient(trust_env=False, headers={"Accept": ACCEPT}) as http,
    ):
        by_header = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}},
            headers={"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"},
        )
        by_discover = await http.post(url, json=discover)
        handshake = await http.post(url, json=initialize)
        async with connect(url, "auto") as probing:
            negotiated = probing.protocol_version

    for refused in (by_header, by_discover):
        assert refused.status_code == 400
        assert refused.content == notes.MISSING_SESSION_BODY
        assert refused.json()["error"]["code"] == INVALID_REQUEST
    assert handshake.status_code == 200
    assert handshake.headers["mcp-session-id"]
    assert negotiated == "2025-11-25"


async def test_notes_refuses_a_client_pinned_to_2026() -> None:
    async with serve(notes.build_app(), path="/mcp") as url:
        refused = pytest.RaisesExc(MCPError, check=lambda exc: exc.code == INVALID_REQUEST)
        with pytest.RaisesGroup(refused, flatten_subgroups=True):
            async with connect(url, "2026-07-28") as client:
                await client.list_tools()


# --- the command line -------------------------------------------------------------------


async def _read_line(process: Process) -> str:
    assert process.stdout is not None
    buffered = b""
    while b"\n" not in buffered:
        buffered += await process.stdout.receive()
    return buffered.split(b"\n", 1)[0].decode()


@pytest.mark.parametrize(
    ("script", "stop"),
    [
        pytest.param(script, stop, id=f"{script.removesuffix('.py')}-{stop.name}")
        for script in ("studio.py", "notes.py")
        for stop in (signal.SIGTERM, signal.SIGINT)
    ],
)
async def test_server_cli_prints_ready_serves_and_exits_cleanly_on_a_signal(
    script: str, stop: signal.Signals, tmp_path: Path
) -> None:
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process(
            [sys.executable, str(REPO / "examples" / "servers" / script), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=REPO,
        )
    try:
        with anyio.fail_after(30):
            line = await _read_line(process)
        ready = re.fullmatch(r"READY (http://127\.0\.0\.1:(\d+)/mcp)", line)
        assert ready, f"{line!r}; stderr: {stderr_path.read_text()}"
        assert int(ready.group(2)) > 0
        async with connect(ready.group(1), "legacy") as client:
            if script == "studio.py":
                result = await client.call_tool("echo", {"text": "over the CLI"})
                assert text_of(result.content) == "over the CLI"
            else:
                result = await client.call_tool("add_note", {"text": "over the CLI"})
                assert text_of(result.content) == "added note 1"
        process.send_signal(stop)
        with anyio.fail_after(15):
            returncode = await process.wait()
        assert returncode == 0, stderr_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.move_on_after(5, shield=True):
                await process.wait()
        await process.aclose()
