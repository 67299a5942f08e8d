"""Issue 10 acceptance: three replicas as subprocesses on one PostgreSQL and one Redis.

- a server registered through replica A is callable through B and C within 1 s;
- a session-era session created on A goes on through B after A is killed with SIGKILL;
- a rate limit holds across the three (one shared counter in Redis);
- drain: 500 concurrent calls of 2 s each, SIGTERM to their replica mid-way: none fails, and
  every audit record and usage event of them is in the database afterwards.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.server.mcpserver import MCPServer

from tests.cluster import Cluster, ClusterReplica, cluster
from tests.harness import initialize_request, modern_tool_call
from tests.servers import serve
from tests.upstreams import echo_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def rpc(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a POST, whether sent as JSON or as SSE."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return next(m for m in (json.loads(d) for d in data if d) if "id" in m)
    answer: dict[str, Any] = response.json()
    return answer


async def call_ok(
    http: httpx2.AsyncClient, replica: ClusterReplica, key: str, tool: str, args: dict[str, Any]
) -> bool:
    response = await modern_tool_call(http, replica.mcp_url, key, tool, args)
    return response.status_code == 200 and "result" in rpc(response)


@asynccontextmanager
async def three(tmp_path: Path, postgres_url: str, redis_url: str, **env: str) -> AsyncIterator[Cluster]:
    async with cluster(tmp_path, postgres_url, redis_url, n=3, **env) as c:
        await c.policy_allow_all()
        yield c


async def test_registration_sessions_and_quotas_span_three_replicas(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    server, _ = echo_upstream()
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        three(tmp_path, postgres_url, redis_url) as c,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        a, b, cc = c.replicas
        key = await c.create_client("bot")
        # Every replica knows the client before the timed part starts.
        with anyio.fail_after(10):
            for replica in (b, cc):
                while (
                    await http.post(
                        replica.mcp_url,
                        json=initialize_request(),
                        headers={**HEADERS, "Authorization": f"Bearer {key}"},
                    )
                ).status_code != 200:
                    pass

        # 1. Registered through A, callable through B and C within 1 s.
        response = await a.admin.post("/servers", json={"name": "up", "url": upstream})
        assert response.status_code == 201, response.text
        registered = time.monotonic()
        reached: dict[str, float] = {}
        with anyio.fail_after(10, shield=False):
            for replica in (b, cc):
                while not await call_ok(http, replica, key, "up__echo", {"text": "hi"}):
                    pass
                reached[replica.name] = time.monotonic() - registered
        assert max(reached.values()) <= 1.0, (reached, c.logs())

        # 2. A session created on A goes on through B after A dies with SIGKILL.
        auth = {**HEADERS, "Authorization": f"Bearer {key}"}
        opened = await http.post(a.mcp_url, json=initialize_request(), headers=auth)
        session = {
            **auth,
            "Mcp-Session-Id": opened.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await http.post(a.mcp_url, json=initialized, headers=session)).status_code == 202
        body = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "up__echo", "arguments": {"text": "on a"}},
        }
        assert (
            rpc(await http.post(a.mcp_url, json=body, headers=session))["result"]["content"][0]["text"]
            == "on a"
        )
        c.kill(0, signal.SIGKILL)
        assert await c.wait_exit(0) == -signal.SIGKILL
        body["params"]["arguments"] = {"text": "on b"}  # type: ignore[index]
        moved = await http.post(b.mcp_url, json=body, headers=session)
        assert moved.status_code == 200, moved.text
        assert rpc(moved)["result"]["content"][0]["text"] == "on b"
        listed = await http.post(
            cc.mcp_url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=session
        )
        assert "up__echo" in {t["name"] for t in rpc(listed)["result"]["tools"]}

        # 3. One quota across the replicas still running: 12 calls a day, offered 3 times over.
        limit = {"match": {"client": "bot", "server": "up"}, "rate": "12/day"}
        assert (await b.admin.put("/limits/bot-up", json=limit)).status_code in (200, 201)
        caller = {"client": "bot", "tool": "up__echo"}
        with anyio.fail_after(10):  # C has loaded the rule B stored (it reports the rule's counter)
            while not any(
                i["id"] == "bot-up"
                for i in (await cc.admin.get("/limits/status", params=caller)).json()["items"]
            ):
                pass
        results = []
        for i in range(36):
            replica = (b, cc)[i % 2]
            results.append(await call_ok(http, replica, key, "up__echo", {"text": str(i)}))
        assert sum(results) == 12, (sum(results), c.logs())


class Started:
    """Counts calls the upstream began; `all_in` is set when `expected` of them are running."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all_in = anyio.Event()

    def one(self) -> None:
        self.count += 1
        if self.count >= self.expected:
            self.all_in.set()


def slow_upstream(started: Started) -> MCPServer:
    mcp = MCPServer("slow", version="1.0.0")

    @mcp.tool()
    async def wait(seconds: float, tag: int = 0) -> str:
        """Answer after `seconds` (the call's own duration, not a wait for something)."""
        started.one()
        await anyio.sleep(seconds)
        return "done"

    return mcp


async def test_sigterm_drains_500_calls_in_flight_without_losing_one_or_its_records(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    calls = 500
    started = Started(calls // 2)  # SIGTERM once half of them are running upstream
    async with (
        serve(slow_upstream(started).streamable_http_app(), path="/mcp") as upstream,
        cluster(
            tmp_path,
            postgres_url,
            redis_url,
            n=2,
            TOLLHOUSE_UPSTREAMS__MAX_IN_FLIGHT="1000",
            TOLLHOUSE_LIMITS__MAX_IN_FLIGHT_PER_PRINCIPAL="0",
        ) as c,
        httpx2.AsyncClient(
            trust_env=False, timeout=60, limits=httpx2.Limits(max_connections=calls + 10)
        ) as http,
    ):
        await c.policy_allow_all()
        draining, other = c.replicas
        key = await c.create_client("bot")
        assert (
            await draining.admin.post("/servers", json={"name": "slow", "url": upstream})
        ).status_code == 201
        outcomes: list[str] = []

        async def one(i: int) -> None:
            try:
                arguments = {"seconds": 2, "tag": i}  # distinct: the loop breaker stays out of it
                response = await modern_tool_call(
                    http, draining.mcp_url, key, "slow__wait", arguments, request_id=i
                )
                answer = rpc(response) if response.status_code == 200 else {}
                outcomes.append(
                    "ok" if answer.get("result", {}).get("content") else f"{response.status_code}:{answer}"
                )
            except httpx2.HTTPError as exc:
                outcomes.append(type(exc).__name__)

        async with anyio.create_task_group() as tg:
            for i in range(calls):
                tg.start_soon(one, i)
            with anyio.move_on_after(60):
                await started.all_in.wait()
            assert started.all_in.is_set(), (started.count, outcomes[:3], len(outcomes), c.logs())
            c.kill(0, signal.SIGTERM)
            with contextlib.suppress(httpx2.TransportError):  # not ready from the signal on, or not listening
                assert (await http.get(f"{draining.base_url}/readyz")).status_code == 503
        assert await c.wait_exit(0, 60) == 0, c.logs()
        failed = [o for o in outcomes if o != "ok"]
        assert not failed and len(outcomes) == calls, (failed[:5], len(failed), c.logs())

        # Every call left its audit record and its usage event, readable through the other replica.
        exported = await other.admin.get("/audit/records.jsonl", params={"server": "slow"})
        assert exported.status_code == 200, exported.text
        records = [json.loads(line) for line in exported.text.splitlines() if line.strip()]
        calls_recorded = [r for r in records if r.get("action") == "tools/call"]
        assert len(calls_recorded) == calls
        assert all(r["outcome"]["result"] == "ok" and r["what"]["server"] == "slow" for r in calls_recorded)
        report = (await other.admin.get("/usage/report", params={"by": "server"})).json()
        counted = sum(int(row["calls"]) for row in report["items"] if row.get("server") == "slow")
        assert counted == calls, report
