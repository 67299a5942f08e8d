"""SseUpstream against the SDK's 2024-11-05 HTTP+SSE server (`MCPServer.sse_app()`) on loopback."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import orjson
import pytest
from anyio.abc import Process
from starlette.types import Receive, Scope, Send

from tests.servers import serve
from tests.upstreams import HeaderRecorder, Probe, echo_upstream
from tollhouse.gateway.errors import (
    METHOD_NOT_FOUND,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.sse_upstream import SSE_PROTOCOL_VERSION, SseUpstream
from tollhouse.registry.models import JSONObject, Upstream, UpstreamAuth

pytestmark = pytest.mark.anyio

SERVER = Path(__file__).resolve().parent.parent / "stdio_server.py"  # has an --sse mode
# Everything the connector may put on the wire; anything else would be a leak.
ALLOWED_HEADERS = {"host", "accept", "content-type", "content-length", "user-agent", "authorization"}


class Sse(NamedTuple):
    """A started connector to an SSE echo upstream, what the upstream saw, and its URL."""

    connector: SseUpstream
    probe: Probe
    recorder: HeaderRecorder
    url: str


def sse_upstream(url: str, auth: UpstreamAuth | None = None) -> Upstream:
    """A registered HTTP+SSE upstream."""
    return Upstream(
        name="old", transport="sse", url=url, auth=auth or UpstreamAuth(), call_timeout_seconds=10
    )


@asynccontextmanager
async def sse_connection(
    *, auth: UpstreamAuth | None = None, environ: Mapping[str, str] | None = None, **options: Any
) -> AsyncIterator[Sse]:
    """A connector to a fresh echo upstream served over HTTP+SSE."""
    mcp, probe = echo_upstream("sse-upstream")
    recorder = HeaderRecorder(mcp.sse_app())
    async with serve(recorder, path="/sse") as url:
        connector = SseUpstream(sse_upstream(url, auth), environ=environ or {}, **options)
        try:
            await connector.start()
            yield Sse(connector, probe, recorder, url)
        finally:
            await connector.aclose()


def call(tool: str, **arguments: Any) -> JSONObject:
    """tools/call params."""
    return {"name": tool, "arguments": arguments}


def bodies(recorder: HeaderRecorder, method: str) -> list[JSONObject]:
    """Decoded bodies of the recorded POSTs for one JSON-RPC method."""
    return [orjson.loads(r.body) for r in recorder.requests if r.rpc_method == method]


async def ignore(method: str, params: JSONObject) -> None:
    """A watch callback for tests that expect nothing in particular."""


# -- session and handshake ------------------------------------------------------------


async def test_start_opens_the_stream_posts_to_the_announced_endpoint_and_initializes() -> None:
    async with sse_connection() as (connector, _, recorder, url):
        description = connector.description
        endpoint = connector.endpoint
        assert connector.era == "legacy"
    assert description is not None
    assert description.protocol_version == SSE_PROTOCOL_VERSION
    assert description.server_info["name"] == "sse-upstream"
    assert description.instructions == "Test upstream."
    assert endpoint is not None and endpoint.startswith(url.removesuffix("/sse") + "/messages/?session_id=")
    get, initialize, initialized = recorder.requests[:3]
    assert (get.method, get.headers["accept"]) == ("GET", "text/event-stream")
    assert initialize.rpc_method == "initialize"
    assert orjson.loads(initialize.body)["params"]["protocolVersion"] == SSE_PROTOCOL_VERSION
    assert initialized.rpc_method == "notifications/initialized"


async def test_list_all_and_tool_results_pass_through_untouched() -> None:
    async with sse_connection() as (connector, _, _recorder, _url):
        tools = await connector.list_all("tools/list", "tools")
        added = await connector.request("tools/call", call("add", a=2, b=3))
        failed = await connector.request("tools/call", call("fail", message="no such file"))
    assert {"echo", "add", "fail", "block"} <= {tool["name"] for tool in tools}
    assert added["structuredContent"] == {"result": 5}
    assert added["isError"] is False
    assert failed["isError"] is True
    assert failed["content"] == [{"type": "text", "text": "Error executing tool fail: no such file"}]


async def test_upstream_json_rpc_error_raises_upstream_rpc_error() -> None:
    async with sse_connection() as (connector, _, _recorder, _url):
        with pytest.raises(UpstreamRpcError) as raised:
            await connector.request("tools/call", call("rpc_error", code=-32000, message="boom"))
        with pytest.raises(UpstreamRpcError) as unknown:
            await connector.request("nope/never", {})
    assert (raised.value.code, raised.value.upstream_data) == (-32000, {"why": "asked to"})
    assert unknown.value.code == METHOD_NOT_FOUND


async def test_concurrent_calls_share_the_one_stream() -> None:
    results: dict[int, JSONObject] = {}

    async def echo(i: int) -> None:
        results[i] = await connector.request(
            "tools/call", call("echo", text=str(i)), session_key=f"agent-{i}"
        )

    async with sse_connection() as (connector, _, recorder, _url):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(echo, i)
        await connector.end_session("agent-1")  # nothing to end: sessions are shared here
    assert {i: r["content"][0]["text"] for i, r in results.items()} == {i: str(i) for i in range(20)}
    assert [r.method for r in recorder.requests].count("GET") == 1


async def test_progress_is_relayed_only_when_it_increases() -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with sse_connection() as (connector, _, recorder, _url):
        result = await connector.request(
            "tools/call", call("progress", steps=[1, 2, 2, 1, 3]), on_progress=on_progress
        )
        (sent,) = bodies(recorder, "tools/call")
    assert result["content"] == [{"type": "text", "text": "done"}]
    assert seen == [(1.0, 3.0, "at 1.0"), (2.0, 3.0, "at 2.0"), (3.0, 3.0, "at 3.0")]
    assert sent["params"]["_meta"] == {"progressToken": sent["id"]}


async def test_server_requests_are_answered_ping_yes_elicitation_no() -> None:
    async with sse_connection() as (connector, _, _recorder, _url):
        result = await connector.request("tools/call", call("ask_client"))
    assert result["content"][0]["text"] == f"pong; elicitation refused with {METHOD_NOT_FOUND}"


# -- cancellation and timeouts -------------------------------------------------------------


async def test_cancelling_the_caller_sends_notifications_cancelled() -> None:
    async with sse_connection() as (connector, probe, recorder, _url):
        async with anyio.create_task_group() as tg:
            tg.start_soon(connector.request, "tools/call", call("block"))
            with anyio.fail_after(5):
                await probe.started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await probe.cancelled.wait()
        (sent,) = bodies(recorder, "tools/call")
        (cancelled,) = bodies(recorder, "notifications/cancelled")
        assert cancelled["params"]["requestId"] == sent["id"]
        echoed = await connector.request("tools/call", call("echo", text="still here"))
    assert echoed["content"] == [{"type": "text", "text": "still here"}]


async def test_call_timeout_raises_upstream_timeout_and_cancels_upstream() -> None:
    async with sse_connection() as (connector, probe, _recorder, _url):
        with pytest.raises(UpstreamTimeout):
            await connector.request("tools/call", call("block"), timeout_seconds=0.5)
        with anyio.fail_after(5):
            await probe.cancelled.wait()


# -- credentials -----------------------------------------------------------------------


async def test_bearer_credential_from_env_is_on_every_request_and_nothing_else() -> None:
    auth = UpstreamAuth(type="bearer", token_env="UP_TOKEN")
    async with sse_connection(auth=auth, environ={"UP_TOKEN": "s3cret"}) as (connector, _, recorder, _url):
        await connector.request("tools/call", call("echo", text="hi"))
    assert len(recorder.requests) >= 4  # GET, initialize, initialized, tools/call
    for request in recorder.requests:
        assert request.headers["authorization"] == "Bearer s3cret"
        assert set(request.headers) <= ALLOWED_HEADERS, request.headers


async def test_missing_credential_variable_fails_start_before_any_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.sse_app())
    auth = UpstreamAuth(type="header", header="X-Api-Key", value_env="UP_KEY_MISSING")
    with caplog.at_level(logging.WARNING):
        async with serve(recorder, path="/sse") as url:
            connector = SseUpstream(sse_upstream(url, auth), environ={})
            with pytest.raises(UpstreamUnavailable):
                await connector.start()
            await connector.aclose()
    assert "UP_KEY_MISSING" in caplog.text
    assert recorder.requests == []


# -- the endpoint event ------------------------------------------------------------------


def announcing(endpoint: str) -> Any:
    """An ASGI app whose event stream announces `endpoint` (with {port} filled in), then ends."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        data = endpoint.format(port=scope["server"][1])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": f"event: endpoint\ndata: {data}\n\n".encode()})

    return app


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.2:{port}/messages/",  # another host
        "//evil.example/messages/",  # scheme-relative: another host
        "http://127.0.0.1:1/messages/",  # another port
        "https://127.0.0.1:{port}/messages/",  # another scheme
    ],
)
async def test_endpoint_on_another_origin_is_refused(endpoint: str) -> None:
    async with serve(announcing(endpoint), path="/sse") as url:
        connector = SseUpstream(sse_upstream(url))
        with pytest.raises(UpstreamProtocolError):
            await connector.start()
        await connector.aclose()


async def test_unreachable_upstream_is_unavailable_at_start() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connector = SseUpstream(sse_upstream(f"http://127.0.0.1:{port}/sse"))
    with pytest.raises(UpstreamUnavailable):
        await connector.start()
    with pytest.raises(UpstreamUnavailable):
        await connector.request("tools/call", call("echo", text="hi"))
    await connector.aclose()


async def test_stream_without_an_endpoint_event_is_unavailable() -> None:
    async def no_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async with serve(no_endpoint, path="/sse") as url:
        connector = SseUpstream(sse_upstream(url))
        with pytest.raises(UpstreamUnavailable):
            await connector.start()
        await connector.aclose()


# -- watch and availability ---------------------------------------------------------------


async def test_watch_delivers_tools_list_changed_to_a_callback_that_lists_again() -> None:
    received: list[str] = []
    listed: list[str] = []
    changed = anyio.Event()

    async def on_notification(method: str, params: JSONObject) -> None:
        # As the pool does: the callback itself lists again over the same connection.
        received.append(method)
        listed.extend(tool["name"] for tool in await connector.list_all("tools/list", "tools"))
        changed.set()

    async with sse_connection() as (connector, _, _recorder, _url), anyio.create_task_group() as tg:
        await tg.start(connector.watch, on_notification)
        await connector.request("tools/call", call("add_tool"))
        with anyio.fail_after(5):
            await changed.wait()
        tg.cancel_scope.cancel()
    assert received == ["notifications/tools/list_changed"]
    assert "added_1" in listed


@asynccontextmanager
async def sse_process() -> AsyncIterator[tuple[str, Process]]:
    """tests/stdio_server.py --sse in a child process: its /sse URL and the process (killed after)."""
    process = await anyio.open_process([sys.executable, str(SERVER), "--sse"])
    try:
        assert process.stdout is not None
        with anyio.fail_after(10):
            port = int((await process.stdout.receive()).decode().strip())
        yield f"http://127.0.0.1:{port}/sse", process
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.aclose()


async def stderr_line(process: Process, text: str) -> None:
    """Read the process's stderr until a line contains `text`."""
    assert process.stderr is not None
    seen = b""
    with anyio.fail_after(5):
        while text.encode() not in seen:
            seen += await process.stderr.receive()


async def test_killed_upstream_fails_the_pending_call_and_ends_watch() -> None:
    failure: list[BaseException] = []
    watch_ended = anyio.Event()

    async def pending() -> None:
        try:
            await connector.request("tools/call", call("block", tag="K"))
        except UpstreamUnavailable as exc:
            failure.append(exc)

    async def watch() -> None:
        await connector.watch(ignore)
        watch_ended.set()

    async with sse_process() as (url, process):
        connector = SseUpstream(sse_upstream(url))
        try:
            await connector.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                tg.start_soon(pending)
                await stderr_line(process, "block K started")
                process.kill()
                with anyio.fail_after(5):
                    await watch_ended.wait()
                tg.cancel_scope.cancel()
            assert len(failure) == 1
            with pytest.raises(UpstreamUnavailable):
                await connector.request("tools/call", call("echo", text="anyone?"))
        finally:
            await connector.aclose()


async def test_upstream_stopped_gracefully_ends_watch_and_later_calls_are_unavailable() -> None:
    mcp, _ = echo_upstream()
    watch_ended = anyio.Event()

    async def watch() -> None:
        await connector.watch(ignore)
        watch_ended.set()

    async with anyio.create_task_group() as tg:
        async with serve(mcp.sse_app(), path="/sse") as url:
            connector = SseUpstream(sse_upstream(url))
            await connector.start()
            tg.start_soon(watch)
        with anyio.fail_after(5):
            await watch_ended.wait()
    try:
        with pytest.raises(UpstreamUnavailable):
            await connector.request("tools/call", call("echo", text="anyone?"))
    finally:
        await connector.aclose()


async def test_closed_connector_refuses_requests() -> None:
    async with sse_connection() as (connector, _, _recorder, _url):
        pass
    await connector.aclose()  # idempotent
    with pytest.raises(UpstreamUnavailable):
        await connector.request("tools/call", call("echo", text="hi"))
    with pytest.raises(UpstreamUnavailable):
        await connector.watch(ignore)
