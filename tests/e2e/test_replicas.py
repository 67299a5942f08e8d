"""Two replicas in one process, sharing a database and a key ring, follow each other's changes.

Registry changes (a server added or removed, a pin decision), policy changes and limit
changes made through one replica reach the other through the change log and its doorbell
(Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or the SQLite poll); a session-era session created
on one replica goes on through the other; ending it on one ends it on both. Waits retry under
a deadline; the three-replica subprocess acceptance run is tests/e2e/test_cluster.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from pydantic import SecretStr

from tests.databases import scratch_postgres
from tests.harness import Gateway, initialize_request, modern_request, modern_tool_call, running_gateway
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.auth.keyring import KeyRing, format_secret_key
from tollhouse.gateway.settings import QuotaSettings

pytestmark = pytest.mark.anyio

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def shared_keys() -> SecretStr:
    return SecretStr(format_secret_key(*KeyRing.generate().masters[0]))


@contextlib.asynccontextmanager
async def two_replicas(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Replicas a and b over one database: PostgreSQL (+ Redis) or one SQLite file."""
    shared: dict[str, Any] = {"secret_keys": shared_keys()}
    if backend == "sqlite":
        # One database file for both, as `serve --workers N` on SQLite has.
        shared["database_url"] = f"sqlite:///{tmp_path / 'shared.db'}"
        async with (
            running_gateway(tmp_path / "a", **shared) as a,
            running_gateway(tmp_path / "b", **shared) as b,
        ):
            yield a, b
        return
    postgres_url = request.getfixturevalue("postgres_url")
    if backend == "postgres+redis":
        shared["redis_url"] = SecretStr(request.getfixturevalue("redis_url"))
        shared["quotas"] = QuotaSettings(redis_prefix=request.getfixturevalue("redis_prefix"))
    with scratch_postgres(postgres_url) as database:
        shared["database_url"] = database
        async with (
            running_gateway(tmp_path / "a", **shared) as a,
            running_gateway(tmp_path / "b", **shared) as b,
        ):
            yield a, b


async def tool_names(http: httpx2.AsyncClient, gw: Gateway, key: str) -> set[str]:
    response = await modern_request(http, gw.mcp_url, key, "tools/list", {})
    if response.status_code == 401:  # the new client's key has not reached this replica yet
        return set()
    assert response.status_code == 200, response.text
    return {tool["name"] for tool in response.json()["result"]["tools"]}


async def until_listed(
    http: httpx2.AsyncClient, gw: Gateway, key: str, tool: str, *, listed: bool = True
) -> None:
    """Wait (at most 10 s) until `gw` lists `tool`, or no longer does."""
    with anyio.fail_after(10):
        while (tool in await tool_names(http, gw, key)) != listed:
            pass


async def up_on_both(http: httpx2.AsyncClient, a: Gateway, b: Gateway, upstream: str) -> str:
    """A client and server `up` created through a, once b serves them; returns the client's key."""
    key = await a.create_client("bot")
    await a.add_server("up", upstream)
    await until_listed(http, b, key, "up__echo")
    return key


async def call(http: httpx2.AsyncClient, gw: Gateway, key: str, tool: str, arguments: dict[str, Any]) -> Any:
    return (await modern_tool_call(http, gw.mcp_url, key, tool, arguments, request_id=2)).json()


@pytest.mark.parametrize("backend", ["postgres+redis", "postgres", "sqlite"])
async def test_a_server_registered_on_one_replica_is_callable_on_the_other(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    server, _ = echo_upstream()
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        two_replicas(tmp_path, backend, request) as (a, b),
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        key = await up_on_both(http, a, b, upstream)
        answer = await call(http, b, key, "up__echo", {"text": "via b"})
        assert answer["result"]["content"][0]["text"] == "via b"

        # Removing it on b takes it away on a.
        assert (await b.admin.delete("/servers/up")).status_code == 204
        await until_listed(http, a, key, "up__echo", listed=False)
        gone = await call(http, a, key, "up__echo", {"text": "x"})
        assert "error" in gone


async def test_policy_and_limit_changes_reach_the_other_replica(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, _ = echo_upstream()
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        two_replicas(tmp_path, "postgres+redis", request) as (a, b),
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        key = await up_on_both(http, a, b, upstream)
        forbid = 'forbid(principal, action == Action::"call_tool", resource == Tool::"up__echo");'
        assert (await a.admin.put("/policies/no-echo", json={"cedar": forbid})).status_code in (200, 201)
        with anyio.fail_after(10):
            while "result" in await call(http, b, key, "up__echo", {"text": "x"}):
                pass
        assert (await b.admin.delete("/policies/no-echo")).status_code == 204
        with anyio.fail_after(10):
            while "result" not in await call(http, a, key, "up__echo", {"text": "x"}):
                pass

        # A kill switch engaged on b stops the client on a.
        engaged = await b.admin.post("/kill-switches", json={"kind": "server", "value": "up"})
        assert engaged.status_code in (200, 201), engaged.text
        with anyio.fail_after(10):
            while "result" in await call(http, a, key, "up__echo", {"text": "x"}):
                pass


async def test_a_legacy_session_goes_on_through_the_other_replica_and_ends_on_both(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server, _ = echo_upstream()
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        two_replicas(tmp_path, "postgres+redis", request) as (a, b),
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        key = await a.create_client("bot")
        other = await a.create_client("other")
        await a.add_server("up", upstream)
        auth = {**HEADERS, "Authorization": f"Bearer {key}"}
        opened = await http.post(a.mcp_url, json=initialize_request(), headers=auth)
        assert opened.status_code == 200
        session_id = opened.headers["mcp-session-id"]
        in_session = {**auth, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
        await http.post(
            a.mcp_url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=in_session
        )

        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "up__echo", "arguments": {"text": "on b"}},
        }
        with anyio.fail_after(10):
            while True:
                answer = await http.post(b.mcp_url, json=body, headers=in_session)
                assert answer.status_code == 200, answer.text
                if "result" in _rpc(answer):
                    break
        assert _rpc(answer)["result"]["content"][0]["text"] == "on b"

        # Another principal presenting the id gets 404 on either replica, like an unknown id.
        foreign = {**in_session, "Authorization": f"Bearer {other}"}
        assert (await http.post(b.mcp_url, json=body, headers=foreign)).status_code == 404
        # A tampered id is unknown.
        tampered = {
            **in_session,
            "Mcp-Session-Id": session_id[:-2] + ("AA" if session_id[-2:] != "AA" else "BB"),
        }
        assert (await http.post(b.mcp_url, json=body, headers=tampered)).status_code == 404

        # Ending it on b ends it on a too.
        assert (await http.delete(b.mcp_url, headers=in_session)).status_code in (200, 204)
        assert (await http.post(b.mcp_url, json=body, headers=in_session)).status_code == 404
        with anyio.fail_after(10):
            while (await http.post(a.mcp_url, json=body, headers=in_session)).status_code != 404:
                pass


def _rpc(response: httpx2.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        import json

        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        messages = [json.loads(d) for d in data if d]
        return next(m for m in messages if "id" in m)
    result: dict[str, Any] = response.json()
    return result


async def test_reloads_through_one_replica_drop_no_call_on_the_other(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """R8: ten changes (servers added and removed, policies edited, a refresh) made through a while
    b serves a steady stream of calls to an unchanged server: every one of them answers."""
    server, _ = echo_upstream()
    other, _ = echo_upstream("other-upstream")
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        serve(other.streamable_http_app(), path="/mcp") as spare,
        two_replicas(tmp_path, "postgres+redis", request) as (a, b),
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        key = await up_on_both(http, a, b, upstream)
        answers: list[bool] = []
        done = anyio.Event()

        async def steady(worker: int) -> None:
            n = 0
            while not done.is_set():
                n += 1
                answer = await call(http, b, key, "up__echo", {"text": f"{worker}-{n}"})
                answers.append(
                    answer.get("result", {}).get("content", [{}])[0].get("text") == f"{worker}-{n}"
                )

        async with anyio.create_task_group() as tg:
            for worker in range(4):
                tg.start_soon(steady, worker)
            for i in range(10):
                match i % 4:
                    case 0:
                        await a.add_server(f"spare{i}", spare)
                    case 1:
                        assert (await a.admin.delete(f"/servers/spare{i - 1}")).status_code == 204
                    case 2:
                        policy = (
                            f'forbid(principal, action == Action::"call_tool", resource == Tool::"x{i}__y");'
                        )
                        assert (await a.admin.put(f"/policies/p{i}", json={"cedar": policy})).is_success
                    case _:
                        assert (await a.admin.post("/servers/up/refresh")).is_success
            await a.add_server("last", spare)
            followed = len(answers)
            with anyio.fail_after(10):  # b has caught up with all of it and kept answering meanwhile
                while "last__echo" not in await tool_names(http, b, key) or len(answers) < followed + 20:
                    pass
            done.set()
        assert answers and all(answers), (answers.count(False), len(answers))
