"""Upstream health: one broken exchange degrades, the breaker opens after repeated failures;
a fail-closed upstream that is down makes the aggregate refuse to list."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from mcp import MCPError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples.servers import notes, studio
from tests.harness import running_gateway, spawn_example
from tests.servers import serve
from tollhouse.gateway.errors import UPSTREAM_UNAVAILABLE
from tollhouse.gateway.settings import UpstreamDefaults

pytestmark = pytest.mark.anyio


class BreakCalls:
    """ASGI wrapper that answers 502 to every `tools/call` of `echo`, and passes everything else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        parsed = orjson.loads(body)
        if parsed.get("method") == "tools/call" and parsed.get("params", {}).get("name") == "echo":
            await send({"type": "http.response.start", "status": 502, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def test_a_failing_exchange_degrades_and_repeated_failures_open_the_breaker(tmp_path: Path) -> None:
    # A long retry delay keeps the opened breaker observable (its half-open probe is the reconnect).
    slow_retry = UpstreamDefaults(retry_min_seconds=60, retry_max_seconds=60)
    async with (
        serve(BreakCalls(studio.build_app()), path="/mcp") as url,
        running_gateway(tmp_path, upstreams=slow_retry) as gw,
    ):
        await gw.add_server("studio", url)
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool("studio__echo", {"text": "x"})
            assert caught.value.code == UPSTREAM_UNAVAILABLE
            # The probe (a list call) answered: still live, shown as degraded.
            assert (await gw.admin.get("/servers/studio")).json()["health"]["status"] == "degraded"
            assert "studio__add" in {t.name for t in (await client.list_tools()).tools}
            # A good call clears it.
            assert (await client.call_tool("studio__add", {"a": 1, "b": 2})).structured_content == {
                "result": 3
            }
            assert (await gw.admin.get("/servers/studio")).json()["health"]["status"] == "healthy"
            # Three failures in a row open the breaker: the upstream leaves the catalog.
            for attempt in range(3):
                with pytest.raises(MCPError):
                    await client.call_tool("studio__echo", {"text": "x"})
                status = (await gw.admin.get("/servers/studio")).json()["health"]["status"]
                assert status == ("down" if attempt == 2 else "degraded")
            assert not any(t.name.startswith("studio__") for t in (await client.list_tools()).tools)
            with pytest.raises(MCPError) as caught:
                await client.call_tool("studio__add", {"a": 1, "b": 2})
            assert caught.value.code == UPSTREAM_UNAVAILABLE


async def test_a_down_fail_closed_upstream_makes_the_aggregate_refuse_lists_but_not_calls(
    tmp_path: Path,
) -> None:
    async with serve(notes.build_app(), path="/mcp") as notes_url, running_gateway(tmp_path) as gw:
        assert (await gw.add_server("notes", notes_url))["failure_mode"] == "open"
        key = await gw.create_client("agent")
        async with spawn_example("studio") as child, gw.client(key, "2026-07-28") as client:
            added = await gw.add_server("studio", child.url, failure_mode="closed")
            assert added["failure_mode"] == "closed"
            # Listed while whole (the client caches the tools' output schemas to validate results).
            assert "studio__echo" in {t.name for t in (await client.list_tools()).tools}
            await child.kill()
            with pytest.raises(MCPError) as caught:
                await client.call_tool("studio__echo", {"text": "x"})
            assert caught.value.code == UPSTREAM_UNAVAILABLE
            assert (await gw.admin.get("/servers/studio")).json()["health"]["status"] == "down"
            # A partial catalog is worse than none: every aggregate list is refused, naming the server.
            for list_method in (
                client.list_tools,
                client.list_prompts,
                client.list_resources,
                client.list_resource_templates,
            ):
                with pytest.raises(MCPError) as caught:
                    await list_method()
                assert caught.value.code == UPSTREAM_UNAVAILABLE
                assert caught.value.message == "Upstream unavailable: studio"
            # The other upstream's tools still answer.
            added_note = await client.call_tool("notes__add_note", {"text": "still here"})
            assert not added_note.is_error
        # Its own endpoint is not the aggregate: it lists as usual.
        async with gw.client(key, "2026-07-28", path="/servers/notes/mcp") as client:
            assert "add_note" in {t.name for t in (await client.list_tools()).tools}
        servers = {s["name"]: s for s in (await gw.admin.get("/servers")).json()["items"]}
        assert (servers["studio"]["failure_mode"], servers["notes"]["failure_mode"]) == ("closed", "open")
