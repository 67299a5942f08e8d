"""One MCP endpoint over many upstreams, driven by the official `mcp` client in both eras."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    PromptReference,
    TextContent,
    TextResourceContents,
)

from examples.servers import notes, studio
from tests.harness import MODES, Gateway, Mode, running_gateway, spawn_example
from tests.servers import serve
from tollhouse.gateway.errors import INVALID_PARAMS, UPSTREAM_UNAVAILABLE
from tollhouse.gateway.settings import LimitsSettings

pytestmark = pytest.mark.anyio


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


@pytest.mark.parametrize("mode", MODES)
async def test_union_of_upstreams_routes_calls_and_passes_results_through(tmp_path: Path, mode: Mode) -> None:
    state = studio.StudioState()
    async with (
        serve(studio.build_app(state), path="/mcp") as studio_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("studio", studio_url)
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == sorted(names)
            assert {"studio__echo", "studio__add", "notes__add_note", "notes__list_notes"} <= set(names)
            assert all(n.startswith(("studio__", "notes__")) for n in names)

            assert _text(await client.call_tool("studio__echo", {"text": "hi"})) == "hi"
            added = await client.call_tool("studio__add", {"a": 2, "b": 3})
            assert added.structured_content == {"result": 5}
            assert not added.is_error

            failed = await client.call_tool("studio__fail", {"message": "boom"})
            assert failed.is_error
            assert "boom" in _text(failed)

            seen: list[float] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append(progress)

            counted = await client.call_tool("studio__slow_count", {"n": 3}, progress_callback=on_progress)
            assert _text(counted) == "counted to 3"
            assert seen == [1.0, 2.0, 3.0]

            if mode == "legacy":
                await client.call_tool("notes__add_note", {"text": "one"})
                await client.call_tool("notes__add_note", {"text": "two"})
                listed = await client.call_tool("notes__list_notes", {})
                assert listed.structured_content == {"result": ["one", "two"]}


@pytest.mark.parametrize("mode", MODES)
async def test_resources_prompts_and_completions_are_namespaced_and_routed(
    tmp_path: Path, mode: Mode
) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert {"tollhouse://studio/studio://readme", "tollhouse://studio/studio://logo.png"} <= uris
            templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
            assert templates == ["tollhouse://studio/studio://items/{item_id}"]

            readme = (await client.read_resource("tollhouse://studio/studio://readme")).contents[0]
            assert isinstance(readme, TextResourceContents)
            assert readme.text == studio.README
            assert str(readme.uri) == "tollhouse://studio/studio://readme"
            logo = (await client.read_resource("tollhouse://studio/studio://logo.png")).contents[0]
            assert isinstance(logo, BlobResourceContents)
            assert base64.b64decode(logo.blob) == studio.LOGO_PNG
            item = (await client.read_resource("tollhouse://studio/studio://items/beta")).contents[0]
            assert isinstance(item, TextResourceContents)
            assert '"Beta"' in item.text

            prompts = [p.name for p in (await client.list_prompts()).prompts]
            assert "studio__review" in prompts
            prompt = await client.get_prompt("studio__review", {"code": "x = 1", "language": "python"})
            first = prompt.messages[0].content
            assert isinstance(first, TextContent)
            assert "x = 1" in first.text

            completion = await client.complete(
                PromptReference(type="ref/prompt", name="studio__review"), {"name": "language", "value": "ja"}
            )
            assert completion.completion.values == ["java", "javascript"]


@pytest.mark.parametrize("mode", MODES)
async def test_unknown_tool_is_a_jsonrpc_invalid_params_error(tmp_path: Path, mode: Mode) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            for name in ("studio__nope", "nope", "ghost__echo"):
                with pytest.raises(MCPError) as caught:
                    await client.call_tool(name, {})
                assert caught.value.code == INVALID_PARAMS


@pytest.mark.parametrize("mode", MODES)
async def test_downstream_cancellation_reaches_the_upstream(tmp_path: Path, mode: Mode) -> None:
    state = studio.StudioState()
    async with serve(studio.build_app(state), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:

                    async def call() -> None:
                        await client.call_tool("studio__wait_for_cancel", {"seconds": 60})

                    tg.start_soon(call)
                    await state.waiting.wait()
                    tg.cancel_scope.cancel()
                await state.cancelled.wait()
            assert state.cancel_count == 1
            # The session keeps working after a cancelled call.
            assert _text(await client.call_tool("studio__echo", {"text": "still here"})) == "still here"


@pytest.mark.parametrize("mode", MODES)
async def test_two_upstreams_with_the_same_tool_name_stay_distinct(tmp_path: Path, mode: Mode) -> None:
    async with (
        serve(studio.build_app(name="first"), path="/mcp") as first_url,
        serve(notes.build_app(), path="/mcp") as notes_url,
        serve(studio.build_app(name="second"), path="/mcp") as second_url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("first", first_url)
        await gw.add_server("second", second_url)
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"first__echo", "second__echo"} <= names
            for server, url in (("first", first_url), ("second", second_url)):
                seen = await client.call_tool(f"{server}__headers", {})
                headers: dict[str, Any] = seen.structured_content or {}
                # Each call reached its own upstream: the Host header names that upstream's port.
                assert headers["host"] == url.removeprefix("http://").removesuffix("/mcp")


async def test_the_agents_authorization_header_never_reaches_an_upstream(tmp_path: Path) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        for mode in MODES:
            async with gw.client(key, mode) as client:
                seen = await client.call_tool("studio__headers", {})
                headers: dict[str, Any] = seen.structured_content or {}
                assert "authorization" not in headers
                assert key not in repr(headers)


async def test_an_upstream_with_its_own_credential_gets_only_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDIO_UPSTREAM_TOKEN", "upstream-secret")
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server(
            "studio", studio_url, auth={"type": "bearer", "token_env": "STUDIO_UPSTREAM_TOKEN"}
        )
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            seen = await client.call_tool("studio__headers", {})
            headers: dict[str, Any] = seen.structured_content or {}
            assert headers["authorization"] == "Bearer upstream-secret"
            assert key not in repr(headers)


@pytest.mark.parametrize("mode", MODES)
async def test_a_dead_upstream_does_not_break_the_endpoint_and_comes_back(tmp_path: Path, mode: Mode) -> None:
    async with serve(notes.build_app(), path="/mcp") as notes_url, running_gateway(tmp_path) as gw:
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        async with spawn_example("studio") as child:
            await gw.add_server("studio", child.url)
            await child.kill()  # killed mid-run
        changed = anyio.Event()

        async def on_message(message: Any) -> None:
            if (
                getattr(getattr(message, "root", message), "method", None)
                == "notifications/tools/list_changed"
            ):
                changed.set()

        async with gw.client(key, mode, message_handler=on_message) as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("studio__echo", {"text": "x"})
            assert caught.value.code == UPSTREAM_UNAVAILABLE
            names = {t.name for t in (await client.list_tools()).tools}
            assert "notes__add_note" in names
            assert not any(n.startswith("studio__") for n in names)
            assert (
                _text(await client.call_tool("notes__clear_notes", {})).startswith("cleared")
                or mode != "legacy"
            )
            server = (await gw.admin.get("/servers/studio")).json()
            assert server["health"]["status"] == "down"

            # It returns on the same address: its tools come back.
            async with spawn_example("studio", port=child.port):
                with anyio.fail_after(20):
                    await _until_live(gw, "studio")
                    if mode == "legacy":
                        await changed.wait()
                assert "studio__echo" in {t.name for t in (await client.list_tools()).tools}
                assert _text(await client.call_tool("studio__echo", {"text": "back"})) == "back"


async def _until_live(gw: Gateway, server: str) -> None:
    """Poll the readiness endpoint (each poll is a real request) until `server` is live."""
    async with httpx2.AsyncClient(trust_env=False) as http:
        while server not in (await http.get(f"{gw.base_url}/readyz")).json()["live"]:
            pass


async def test_an_upstream_down_at_registration_is_registered_and_reported(tmp_path: Path) -> None:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        async with serve(studio.build_app(), path="/mcp") as dead_url:
            pass
        server = await gw.add_server("ghost", dead_url)
        assert server["health"]["status"] == "down"
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "studio__echo" in names
            assert not any(n.startswith("ghost__") for n in names)


@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_with_250_tools_in_pages_of_100_appears_whole_and_in_order(
    tmp_path: Path, mode: Mode
) -> None:
    from tests.upstreams import paged_upstream

    app = paged_upstream(total=250, page_size=100).streamable_http_app()
    pages_of_100 = LimitsSettings(page_size=100)  # the gateway pages too, by its own cursors
    async with serve(app, path="/mcp") as url, running_gateway(tmp_path, limits=pages_of_100) as gw:
        server = await gw.add_server("big", url)
        assert server["tool_count"] == 250
        key = await gw.create_client("agent")
        async with gw.client(key, mode) as client:
            names: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                page = await client.list_tools(cursor=cursor)
                names.extend(t.name for t in page.tools)
                pages += 1
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert pages == 3  # tollhouse pages the merged list itself (page size 100)
            assert names == [f"big__tool-{i:03d}" for i in range(250)]


@pytest.mark.parametrize("upstream_era", ["modern", "legacy"])
async def test_an_upstreams_list_changed_updates_the_catalog_and_reaches_legacy_sessions(
    tmp_path: Path, upstream_era: str
) -> None:
    from tests.upstreams import echo_upstream, legacy_only

    server, _ = echo_upstream()
    app = server.streamable_http_app()
    async with (
        serve(legacy_only(app) if upstream_era == "legacy" else app, path="/mcp") as url,
        running_gateway(tmp_path) as gw,
    ):
        described = await gw.add_server("up", url)
        assert described["era"] == upstream_era
        key = await gw.create_client("agent")
        changed = anyio.Event()

        async def on_message(message: Any) -> None:
            if (
                getattr(getattr(message, "root", message), "method", None)
                == "notifications/tools/list_changed"
            ):
                changed.set()

        async with gw.client(key, "legacy", message_handler=on_message) as client:
            assert "up__added_1" not in {t.name for t in (await client.list_tools()).tools}
            assert _text(await client.call_tool("up__add_tool", {})) == "added_1"
            with anyio.fail_after(10):
                await changed.wait()
            assert "up__added_1" in {t.name for t in (await client.list_tools()).tools}
            assert _text(await client.call_tool("up__added_1", {})) == "added_1"


async def test_one_downstream_session_uses_one_upstream_session_and_ending_it_ends_that(
    tmp_path: Path,
) -> None:
    from tests.upstreams import HeaderRecorder, legacy_only

    recorder = HeaderRecorder(legacy_only(notes.build_app()))
    async with serve(recorder, path="/mcp") as url, running_gateway(tmp_path) as gw:
        await gw.add_server("notes", url)
        key = await gw.create_client("agent")
        before = recorder.rpc_methods().count("initialize")  # the gateway's own sync and watch sessions
        async with gw.client(key, "legacy") as client:
            for i in range(100):
                await client.call_tool("notes__add_note", {"text": f"note {i}"})
            listed = await client.call_tool("notes__list_notes", {})
            assert listed.structured_content == {"result": [f"note {i}" for i in range(100)]}
        assert recorder.rpc_methods().count("initialize") - before == 1
        # Closing the downstream session closed its upstream session before the DELETE returned.
        assert recorder.requests[-1].method == "DELETE"
        # A second downstream session gets its own, empty, upstream session.
        async with gw.client(key, "legacy") as client:
            listed = await client.call_tool("notes__list_notes", {})
            assert listed.structured_content == {"result": []}


async def test_a_2026_client_listening_for_tool_changes_hears_an_upstreams_list_changed(
    tmp_path: Path,
) -> None:
    from mcp.shared.subscriptions import ToolsListChanged

    from tests.upstreams import echo_upstream

    server, _ = echo_upstream()
    async with serve(server.streamable_http_app(), path="/mcp") as url, running_gateway(tmp_path) as gw:
        await gw.add_server("up", url)
        key = await gw.create_client("agent")
        async with (
            gw.client(key, "2026-07-28") as client,
            client.listen(tools_list_changed=True, resource_subscriptions=["x://y"]) as subscription,
        ):
            assert subscription.honored.tools_list_changed is True
            assert not subscription.honored.resource_subscriptions  # not honoured: omitted from the ack
            assert _text(await client.call_tool("up__add_tool", {})) == "added_1"
            with anyio.fail_after(10):
                event = await anext(aiter(subscription))
            assert isinstance(event, ToolsListChanged)
            assert "up__added_1" in {t.name for t in (await client.list_tools()).tools}


async def test_a_gateway_started_while_an_upstream_is_down_serves_the_rest_and_picks_it_up_later(
    tmp_path: Path,
) -> None:
    async with serve(notes.build_app(), path="/mcp") as notes_url:
        async with spawn_example("studio") as child:
            async with running_gateway(tmp_path) as gw:
                await gw.add_server("studio", child.url)
                await gw.add_server("notes", notes_url)
                key = await gw.create_client("agent")
            await child.kill()
        # A new gateway on the same registry starts with studio down.
        async with running_gateway(tmp_path) as gw:
            assert (await gw.admin.get("/servers/studio")).json()["health"]["status"] == "down"
            async with gw.client(key, "2026-07-28") as client:
                names = {t.name for t in (await client.list_tools()).tools}
                assert "notes__add_note" in names
                assert not any(n.startswith("studio__") for n in names)
                async with spawn_example("studio", port=child.port):
                    with anyio.fail_after(20):
                        await _until_live(gw, "studio")
                    assert _text(await client.call_tool("studio__echo", {"text": "late"})) == "late"


async def test_an_expired_upstream_session_is_reopened_without_an_error_downstream(tmp_path: Path) -> None:
    from tests.upstreams import HeaderRecorder, legacy_only

    recorder = HeaderRecorder(legacy_only(notes.build_app()))
    async with serve(recorder, path="/mcp") as url, running_gateway(tmp_path) as gw:
        await gw.add_server("notes", url)
        key = await gw.create_client("agent")
        async with gw.client(key, "legacy") as client:
            await client.call_tool("notes__add_note", {"text": "before"})
            session_id = recorder.requests[-1].headers["mcp-session-id"]
            # The upstream forgets the session (as on expiry or restart).
            async with httpx2.AsyncClient(trust_env=False) as http:
                gone = await http.delete(url, headers={"mcp-session-id": session_id})
                assert gone.status_code == 200
            result = await client.call_tool("notes__add_note", {"text": "after"})
            assert not result.is_error
            listed = await client.call_tool("notes__list_notes", {})
            assert listed.structured_content == {"result": ["after"]}  # a fresh upstream session
            assert recorder.requests[-1].headers["mcp-session-id"] != session_id
