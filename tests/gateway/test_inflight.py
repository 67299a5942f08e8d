"""In-flight caps through a real gateway: per upstream and per principal, refused at once, always released.

The upstream's `hold` tool waits on a gate the test opens, so the test decides how many calls
are in flight. Calls are raw 2026-07-28 HTTP requests, so the test sees the status and headers
a client gets. Whether every path gave its slots back is checked from the outside: exactly
`cap` calls fit again (that many reach the upstream and one more is refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest
import sqlalchemy as sa
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

from tests.harness import Changes, Gateway, modern_tool_call, running_gateway
from tests.servers import serve
from tollhouse.gateway.errors import CONCURRENCY_LIMITED
from tollhouse.gateway.settings import LimitsSettings, UpstreamDefaults
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = pytest.mark.anyio


@dataclass
class Held:
    """What the holding upstream sees: calls waiting at the gate, and cancelled ones."""

    gate: anyio.Event = field(default_factory=anyio.Event)
    waiting: int = 0
    cancelled: int = 0
    # Noted whenever a count above changes, so tests wait on it instead of polling.
    changes: Changes = field(default_factory=Changes)

    def release(self) -> None:
        """Let every waiting call finish; later calls wait on a new gate."""
        self.gate.set()
        self.gate = anyio.Event()


def holding_upstream() -> tuple[MCPServer, Held]:
    """Tools: `hold` (waits for the gate, then answers as `outcome` says) and `echo`."""
    held = Held()
    mcp = MCPServer("held")

    @mcp.tool()
    async def hold(outcome: str = "ok", tag: int = 0) -> str:
        """Wait for the gate; then return, fail as a tool, or fail with a JSON-RPC error.

        `tag` only makes calls differ, so the loop breaker leaves the test's many calls alone.
        """
        gate = held.gate
        held.waiting += 1
        held.changes.note()
        try:
            await gate.wait()
        except anyio.get_cancelled_exc_class():
            held.cancelled += 1
            raise
        finally:
            held.waiting -= 1
            held.changes.note()
        if outcome == "tool_error":
            raise ToolError("asked to")
        if outcome == "rpc_error":
            raise MCPError(-32000, "asked to")
        return "released"

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    return mcp, held


async def call(
    http: httpx2.AsyncClient, gw: Gateway, key: str, name: str, **arguments: Any
) -> httpx2.Response:
    """One stateless 2026-07-28 tools/call."""
    return await modern_tool_call(http, gw.mcp_url, key, name, arguments)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    """Ask the gateway `check` until it holds, for at most `seconds` (each ask is a round trip)."""
    with anyio.fail_after(seconds):
        while not await check():
            pass


def error_of(response: httpx2.Response) -> dict[str, Any] | None:
    error: dict[str, Any] | None = response.json().get("error")
    return error


@dataclass
class Rig:
    gw: Gateway
    http: httpx2.AsyncClient
    held: Held
    url: str
    calls: int = 0

    async def hold(
        self, key: str, tg: anyio.abc.TaskGroup, n: int, outcome: str = "ok"
    ) -> list[httpx2.Response]:
        """Start `n` held calls; returns when each is at the gate or answered (refused)."""
        answers: list[httpx2.Response] = []

        async def one() -> None:
            self.calls += 1
            answers.append(await call(self.http, self.gw, key, "up__hold", outcome=outcome, tag=self.calls))
            self.held.changes.note()

        before = self.held.waiting
        for _ in range(n):
            tg.start_soon(one)
        await self.held.changes.until(lambda: self.held.waiting - before + len(answers) >= n)
        return answers

    async def room_is(self, key: str, n: int, reason: str) -> bool:
        """True when exactly `n` more calls fit: `n` held calls reach the upstream, one more is refused.

        Opens the gate at the end, for every held call.
        """
        before = self.held.waiting
        async with anyio.create_task_group() as tg:
            answers = await self.hold(key, tg, n)
            self.calls += 1
            extra = await call(self.http, self.gw, key, "up__echo", text=f"one more {self.calls}")
            fits = self.held.waiting - before == n and not answers
            error = error_of(extra)
            refused = error is not None and error["data"]["reason"] == reason
            self.held.release()
        return fits and refused


@asynccontextmanager
async def rig(tmp_path: Path, **overrides: Any) -> AsyncIterator[Rig]:
    app, held = holding_upstream()
    async with (
        serve(app.streamable_http_app(), path="/mcp") as url,
        running_gateway(tmp_path, **overrides) as gw,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        yield Rig(gw, http, held, url)


async def test_upstream_cap_refuses_the_next_call_at_once_and_every_path_gives_the_slot_back(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        # The server's own cap (2) overrides the gateway default (100).
        shown = await r.gw.add_server("up", r.url, max_in_flight=2)
        assert shown["max_in_flight"] == 2
        key = await r.gw.create_client("alice")

        async with anyio.create_task_group() as tg:
            answers = await r.hold(key, tg, 2)
            third = await call(r.http, r.gw, key, "up__hold", tag=-1)
            # Answered while both others still wait at the gate: refused, not queued.
            assert r.held.waiting == 2 and not answers
            assert third.status_code == 503 and third.headers["retry-after"] == "1"
            assert error_of(third) == {
                "code": CONCURRENCY_LIMITED,
                "message": "Upstream busy: up",
                "data": {
                    "retry_after_seconds": 1,
                    "violated_policies": ["upstreams.max_in_flight"],
                    "reason": "upstream_busy",
                    "server": "up",
                    "limit": 2,
                },
            }
            r.held.release()
        assert [a.json()["result"]["content"][0]["text"] for a in answers] == ["released"] * 2

        for outcome in ("ok", "tool_error", "rpc_error"):
            async with anyio.create_task_group() as tg:
                answers = await r.hold(key, tg, 2, outcome)
                r.held.release()
            assert len(answers) == 2 and all(a.status_code == 200 for a in answers)
            assert await r.room_is(key, 2, "upstream_busy"), outcome

        # The client goes away mid-call: the gateway cancels the upstream call and frees the slot.
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                await r.hold(key, tg, 2)
                scope.cancel()
        await r.held.changes.until(lambda: r.held.cancelled == 2)
        await until(lambda: r.room_is(key, 2, "upstream_busy"))


async def test_principal_cap_refuses_only_that_principal_and_the_refusal_is_metered(tmp_path: Path) -> None:
    async with rig(tmp_path, limits=LimitsSettings(max_in_flight_per_principal=2)) as r:
        await r.gw.add_server("up", r.url)
        alice = await r.gw.create_client("alice")
        bob = await r.gw.create_client("bob")

        async with anyio.create_task_group() as tg:
            await r.hold(alice, tg, 2)
            refused = await call(r.http, r.gw, alice, "up__echo", text="three")
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            error = error_of(refused)
            assert error is not None and error["code"] == CONCURRENCY_LIMITED
            assert error["data"]["reason"] == "principal_busy"
            assert error["data"]["violated_policies"] == ["limits.max_in_flight_per_principal"]
            assert error["data"]["limit"] == 2
            # Bob has his own two slots while alice's are taken (this releases alice's too).
            assert await r.room_is(bob, 2, "principal_busy")
        assert await r.room_is(alice, 2, "principal_busy")

        engine = create_engine_for(database_url_for(None, str(tmp_path / "data")))
        try:

            def refusals() -> list[dict[str, Any]]:
                with engine.connect() as connection:
                    rows = connection.execute(sa.text("select outcome, event from usage_events")).all()
                return [orjson.loads(row.event)["data"] for row in rows if row.outcome == "rate_limited"]

            # The usage report commits every event this replica accepted before it answers.
            assert (await r.gw.admin.get("/usage/report", params={"by": "outcome"})).status_code == 200
            assert len(refusals()) >= 3
            assert {d["error_code"] for d in refusals()} == {CONCURRENCY_LIMITED}
            assert all("attempts" not in d for d in refusals())  # refused before the upstream
        finally:
            engine.dispose()


async def test_a_cap_of_zero_is_off(tmp_path: Path) -> None:
    overrides = {
        "limits": LimitsSettings(max_in_flight_per_principal=0),
        "upstreams": UpstreamDefaults(retry_min_seconds=0.05, retry_max_seconds=0.5, max_in_flight=0),
    }
    async with rig(tmp_path, **overrides) as r:
        await r.gw.add_server("up", r.url)
        key = await r.gw.create_client("alice")
        async with anyio.create_task_group() as tg:
            answers = await r.hold(key, tg, 25)  # over the default 20 per principal
            assert not answers and r.held.waiting == 25
            r.held.release()
        assert len(answers) == 25 and all(error_of(a) is None for a in answers)
