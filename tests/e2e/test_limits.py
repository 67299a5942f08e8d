"""Rate limits, concurrency limits, the loop breaker and kill switches, through a real gateway.

Calls are raw 2026-07-28 HTTP requests, so the test sees the status and headers a client gets:
a refusal is HTTP 429 with Retry-After and the RateLimit fields and a JSON-RPC error whose
`data` agrees with them; an admitted call carries RateLimit fields whose `r` is the limiter's
remaining count. Replicas share PostgreSQL (limits, kill switches) and Redis (counters); tests
that stop Redis run their own redis-server on an ephemeral port.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest

from tests.databases import scratch_postgres
from tests.harness import Gateway, initialize_request, modern_tool_call, running_gateway
from tests.redis_server import free_port, private_redis
from tests.servers import serve
from tests.upstreams import Probe, echo_upstream
from tollhouse.gateway.errors import (
    CONCURRENCY_LIMITED,
    KILL_SWITCH_ENGAGED,
    LOOP_BLOCKED,
    RATE_LIMITED,
)
from tollhouse.gateway.settings import QuotaSettings

pytestmark = pytest.mark.anyio

RATELIMIT_RE = re.compile(r'^"(?P<id>[^"]+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


async def call(
    http: httpx2.AsyncClient, gw: Gateway, key: str, name: str, arguments: dict[str, Any]
) -> httpx2.Response:
    """One stateless 2026-07-28 tools/call."""
    return await modern_tool_call(http, gw.mcp_url, key, name, arguments)


async def until(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Wait until `check()` (a request to the gateway) holds, for at most `seconds`."""
    with anyio.fail_after(seconds):
        while not await check():
            pass


async def served(http: httpx2.AsyncClient, gw: Gateway, key: str, name: str) -> bool:
    """True when a call is admitted (each probe's arguments differ: the loop breaker stays out of it)."""
    return error_of(await call(http, gw, key, name, {"text": f"probe {secrets.token_hex(6)}"})) is None


async def refused_with(http: httpx2.AsyncClient, gw: Gateway, key: str, name: str, code: int) -> bool:
    """True when a (distinct) call is refused with `code`."""
    error = error_of(await call(http, gw, key, name, {"text": f"probe {secrets.token_hex(6)}"}))
    return error is not None and error["code"] == code


def error_of(response: httpx2.Response) -> dict[str, Any] | None:
    error: dict[str, Any] | None = response.json().get("error")
    return error


async def put_limit(gw: Gateway, limit_id: str, **body: Any) -> None:
    response = await gw.admin.put(f"/limits/{limit_id}", json=body)
    assert response.status_code in (200, 201), response.text


@asynccontextmanager
async def upstreams() -> AsyncIterator[tuple[str, str, Probe]]:
    """Two echo upstreams (to be registered as `up` and `other`); the probe of `up`."""
    up, probe = echo_upstream("up")
    other, _ = echo_upstream("other")
    async with (
        serve(up.streamable_http_app(), path="/mcp") as up_url,
        serve(other.streamable_http_app(), path="/mcp") as other_url,
    ):
        yield up_url, other_url, probe


async def test_a_client_rate_limit_answers_429_with_consistent_headers_and_data(tmp_path: Path) -> None:
    async with upstreams() as (up_url, other_url, _), running_gateway(tmp_path) as gw:
        await gw.add_server("up", up_url)
        await gw.add_server("other", other_url)
        alice = await gw.create_client("alice")
        bob = await gw.create_client("bob")
        await put_limit(gw, "alice-rate", match={"client": "alice"}, rate="3/minute")
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            remaining = []
            for i in range(3):
                response = await call(http, gw, alice, "up__echo", {"text": f"hi {i}"})
                assert response.status_code == 200 and error_of(response) is None, response.text
                assert response.headers["ratelimit-policy"] == '"alice-rate";q=3;w=60'
                parsed = RATELIMIT_RE.match(response.headers["ratelimit"])
                assert parsed is not None and parsed["id"] == "alice-rate"
                assert 0 < int(parsed["t"]) <= 60
                remaining.append(int(parsed["r"]))
            assert remaining == [2, 1, 0]  # r goes down by one per admitted call

            refused = await call(http, gw, alice, "other__echo", {"text": "more"})
            assert refused.status_code == 429
            assert refused.headers["content-type"].startswith("application/json")
            error = error_of(refused)
            assert error is not None and error["code"] == RATE_LIMITED
            data = error["data"]
            assert data["violated_policies"] == ["alice-rate"]
            assert 0 < data["retry_after_seconds"] <= 60
            assert refused.headers["retry-after"] == str(data["retry_after_seconds"])
            assert refused.headers["ratelimit-policy"] == '"alice-rate";q=3;w=60'
            assert refused.headers["ratelimit"] == f'"alice-rate";r=0;t={data["retry_after_seconds"]}'

            # Another client is not counted by alice's limit, and gets no RateLimit fields.
            other = await call(http, gw, bob, "up__echo", {"text": "hi"})
            assert other.status_code == 200 and error_of(other) is None
            assert "ratelimit" not in other.headers

            status = await gw.admin.get("/limits/status", params={"client": "alice", "tool": "up__echo"})
            assert status.status_code == 200
            recent = (await gw.admin.get("/limits/recent")).json()
            assert recent["counts"]["rate_limited"] == 1
            assert recent["items"][0]["violated_policies"] == ["alice-rate"]


async def test_a_per_client_server_limit_never_counts_another_server_or_client(tmp_path: Path) -> None:
    async with upstreams() as (up_url, other_url, _), running_gateway(tmp_path) as gw:
        await gw.add_server("up", up_url)
        await gw.add_server("other", other_url)
        alice = await gw.create_client("alice")
        bob = await gw.create_client("bob")
        await put_limit(gw, "up-each", match={"server": "up"}, rate="2/hour", per=["client"])
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            for i in range(2):
                assert error_of(await call(http, gw, alice, "up__echo", {"text": str(i)})) is None
            error = error_of(await call(http, gw, alice, "up__echo", {"text": "x"}))
            assert error is not None and error["code"] == RATE_LIMITED
            # The same client on another server, and another client on this one, are unaffected.
            assert error_of(await call(http, gw, alice, "other__echo", {"text": "x"})) is None
            response = await call(http, gw, bob, "up__echo", {"text": "x"})
            assert error_of(response) is None
            assert (
                response.headers["ratelimit"].endswith(";r=1;t=3600")
                or ";r=1;" in response.headers["ratelimit"]
            )


async def test_limits_in_a_config_file_apply_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        body = {
            "limits": [{"id": "calc", "match": {"team": "platform", "server": "calc"}, "rate": "100/minute"}]
        }
        applied = await gw.admin.post("/config/apply", json={"config": body})
        assert applied.status_code == 200, applied.text
        assert "limit/calc" in applied.json()["created"]
        listed = (await gw.admin.get("/limits")).json()
        assert [i["id"] for i in listed["items"]] == ["calc"]
        assert listed["storage"]["backend"] == "memory"
        # Export writes the limit back in the file's shape; applying the export changes nothing.
        exported = (await gw.admin.get("/config/export")).json()
        assert [(limit["id"], limit["rate"]) for limit in exported["limits"]] == [("calc", "100/minute")]
        again = await gw.admin.post("/config/apply", json={"config": {"limits": exported["limits"]}})
        assert again.json()["unchanged"] == ["limit/calc"]
        bad = await gw.admin.put("/limits/x", json={"match": {"colour": "red"}, "rate": "1/minute"})
        assert bad.status_code == 400
        assert (await gw.admin.delete("/limits/calc")).status_code == 204
        assert (await gw.admin.delete("/limits/calc")).status_code == 404


async def test_three_replicas_sharing_redis_admit_exactly_the_quota(
    tmp_path: Path, postgres_url: str, redis_url: str, redis_prefix: str
) -> None:
    quota = 30
    # Exactness is the point, not Redis latency: on a loaded CI box a command may take longer than
    # the default 0.5 s, and the rule's fail-open fallback would then admit locally.
    quotas = QuotaSettings(redis_prefix=redis_prefix, redis_timeout_seconds=5)
    shared: dict[str, Any] = {"redis_url": redis_url, "quotas": quotas}
    with scratch_postgres(postgres_url) as database:
        shared["database_url"] = database
        async with (
            upstreams() as (up_url, _, _),
            running_gateway(tmp_path / "a", **shared) as a,
            httpx2.AsyncClient(trust_env=False, timeout=60) as http,
        ):
            await a.add_server("up", up_url)
            key = await a.create_client("bot")
            # An hour-long window: the run cannot straddle a window boundary.
            await put_limit(a, "bot-hourly", match={"client": "bot"}, rate=f"{quota}/hour")
            # b and c start from the shared database: the server, the client and the limit.
            async with (
                running_gateway(tmp_path / "b", **shared) as b,
                running_gateway(tmp_path / "c", **shared) as c,
            ):
                await offer(http, [a, b, c], key, quota)


async def offer(http: httpx2.AsyncClient, replicas: list[Gateway], key: str, quota: int) -> None:
    """Three times the quota at once, spread over the replicas: exactly the quota is admitted."""
    outcomes: list[int | None] = []

    async def one(i: int) -> None:
        response = await call(http, replicas[i % len(replicas)], key, "up__echo", {"text": str(i)})
        error = error_of(response)
        outcomes.append(None if error is None else error["code"])

    async with anyio.create_task_group() as tg:
        for i in range(3 * quota):
            tg.start_soon(one, i)
    assert outcomes.count(None) == quota
    assert outcomes.count(RATE_LIMITED) == 2 * quota


async def test_a_concurrency_limit_fails_fast_and_frees_its_slots(tmp_path: Path) -> None:
    async with upstreams() as (up_url, _, probe), running_gateway(tmp_path) as gw:
        await gw.add_server("up", up_url)
        key = await gw.create_client("bot")
        await put_limit(gw, "up-conc", match={"server": "up"}, concurrency=2)
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http, anyio.create_task_group() as tg:
            held: list[httpx2.Response] = []

            async def blocked() -> None:
                held.append(await call(http, gw, key, "up__block", {}))

            for _ in range(2):
                probe.started = anyio.Event()
                tg.start_soon(blocked)
                with anyio.fail_after(10):
                    await probe.started.wait()
            started = time.monotonic()
            refused = await call(http, gw, key, "up__echo", {"text": "third"})
            assert time.monotonic() - started < 2  # refused at once, not queued
            assert refused.status_code == 429
            error = error_of(refused)
            assert error is not None and error["code"] == CONCURRENCY_LIMITED
            assert error["data"]["violated_policies"] == ["up-conc"]
            probe.release.set()
        assert [error_of(r) for r in held] == [None, None]
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            assert error_of(await call(http, gw, key, "up__echo", {"text": "after"})) is None


async def test_the_loop_breaker_blocks_repeated_identical_calls(tmp_path: Path) -> None:
    quotas = QuotaSettings(loop_threshold=3, loop_window_seconds=60)
    async with upstreams() as (up_url, _, _), running_gateway(tmp_path, quotas=quotas) as gw:
        await gw.add_server("up", up_url)
        key = await gw.create_client("bot")
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            for _ in range(3):
                assert error_of(await call(http, gw, key, "up__echo", {"text": "same"})) is None
            blocked = await call(http, gw, key, "up__echo", {"text": "same"})
            assert blocked.status_code == 429
            error = error_of(blocked)
            assert error is not None and error["code"] == LOOP_BLOCKED
            assert error["data"]["violated_policies"] == ["loop-breaker"]
            assert 0 < error["data"]["retry_after_seconds"] <= 60
            # Other arguments are another call.
            assert error_of(await call(http, gw, key, "up__echo", {"text": "different"})) is None
        assert (await gw.admin.get("/limits/recent")).json()["counts"]["loop_blocked"] == 1


async def test_a_kill_switch_engaged_on_one_replica_stops_the_client_on_another_within_seconds(
    tmp_path: Path, postgres_url: str
) -> None:
    quotas = QuotaSettings(poll_seconds=0.5)
    with scratch_postgres(postgres_url) as database:
        shared: dict[str, Any] = {"database_url": database, "quotas": quotas}
        async with (
            upstreams() as (up_url, _, _),
            running_gateway(tmp_path / "a", **shared) as a,
            httpx2.AsyncClient(trust_env=False, timeout=30) as http,
        ):
            await a.add_server("up", up_url)
            key = await a.create_client("bot")
            async with running_gateway(tmp_path / "b", **shared) as b:
                await kill_and_release(http, a, b, key)


async def kill_and_release(http: httpx2.AsyncClient, a: Gateway, b: Gateway, key: str) -> None:
    """Engage on a; refused on b within 5 s; released on a; served on b again."""
    assert error_of(await call(http, b, key, "up__echo", {"text": "x"})) is None
    engaged = await a.admin.post(
        "/kill-switches", json={"kind": "client", "value": "bot", "reason": "runaway"}
    )
    assert engaged.status_code == 201, engaged.text
    at = time.monotonic()
    error = error_of(await call(http, a, key, "up__echo", {"text": "x"}))
    assert error is not None and error["code"] == KILL_SWITCH_ENGAGED  # at once where engaged
    await until(lambda: refused_with(http, b, key, "up__echo", KILL_SWITCH_ENGAGED), 5)
    assert time.monotonic() - at < 5
    listed = (await b.admin.get("/kill-switches")).json()["items"]
    assert [(k["kind"], k["value"], k["reason"]) for k in listed] == [("client", "bot", "runaway")]
    assert (await a.admin.delete("/kill-switches/client/bot")).status_code == 204
    await until(lambda: served(http, b, key, "up__echo"), 5)


async def test_when_redis_dies_open_limits_serve_closed_limits_refuse_and_both_recover(
    tmp_path: Path,
) -> None:
    port = free_port()
    quotas = QuotaSettings(redis_retry_seconds=0.2, redis_timeout_seconds=0.5)
    settings: dict[str, Any] = {"redis_url": f"redis://127.0.0.1:{port}/0", "quotas": quotas}
    async with upstreams() as (up_url, other_url, _):
        live: list[AbstractAsyncContextManager[Any]] = [private_redis(port)]
        await live[0].__aenter__()
        try:
            async with (
                running_gateway(tmp_path, **settings) as gw,
                httpx2.AsyncClient(trust_env=False) as http,
            ):
                await gw.add_server("up", up_url)
                await gw.add_server("other", other_url)
                key = await gw.create_client("bot")
                await put_limit(gw, "open", match={"server": "up"}, rate="1000/minute", failure_mode="open")
                await put_limit(
                    gw, "closed", match={"server": "other"}, rate="1000/minute", failure_mode="closed"
                )
                assert error_of(await call(http, gw, key, "up__echo", {"text": "a"})) is None
                assert error_of(await call(http, gw, key, "other__echo", {"text": "a"})) is None

                await live.pop().__aexit__(None, None, None)  # Redis dies mid-run
                for i in range(3):
                    answer = await call(http, gw, key, "up__echo", {"text": f"b{i}"})
                    assert error_of(answer) is None, answer.text
                refused = await call(http, gw, key, "other__echo", {"text": "b"})
                error = error_of(refused)
                assert error is not None and error["code"] == RATE_LIMITED, refused.text
                assert error["message"] == "limit closed unavailable: rate-limit storage unreachable"
                assert error["data"]["reason"] == "storage_unavailable"
                assert error["data"]["violated_policies"] == ["closed"]
                stats = (await gw.admin.get("/limits")).json()["storage"]
                assert stats["stats"]["fallback:open"] >= 3 and stats["stats"]["unavailable:closed"] >= 1

                live.append(private_redis(port))  # back on the same port
                await live[-1].__aenter__()
                await until(lambda: served(http, gw, key, "other__echo"), 10)
                before = (await gw.admin.get("/limits")).json()["storage"]["stats"]["fallback:open"]
                assert error_of(await call(http, gw, key, "up__echo", {"text": "c"})) is None
                after = (await gw.admin.get("/limits")).json()["storage"]
                assert after["stats"]["fallback:open"] == before and after["available"]
        finally:
            for server in live:
                await server.__aexit__(None, None, None)


async def test_a_session_era_call_over_its_limit_gets_429_too(tmp_path: Path) -> None:
    async with upstreams() as (up_url, _, _), running_gateway(tmp_path) as gw:
        await gw.add_server("up", up_url)
        key = await gw.create_client("carol")
        await put_limit(gw, "carol-rate", match={"client": "carol"}, rate="1/minute")
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            opened = await http.post(gw.mcp_url, json=initialize_request(), headers=headers)
            assert opened.status_code == 200, opened.text
            headers = {
                **headers,
                "Mcp-Session-Id": opened.headers["mcp-session-id"],
                "MCP-Protocol-Version": "2025-11-25",
            }
            body = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "up__echo", "arguments": {"text": "a"}},
            }
            first = await http.post(gw.mcp_url, json=body, headers=headers)
            assert first.status_code == 200 and first.headers["ratelimit"].startswith('"carol-rate";r=0;')
            second = await http.post(gw.mcp_url, json={**body, "id": 3}, headers=headers)
            assert second.status_code == 429
            error = second.json()["error"]
            assert error["code"] == RATE_LIMITED and error["data"]["violated_policies"] == ["carol-rate"]
            assert second.headers["retry-after"] == str(error["data"]["retry_after_seconds"])
