"""HttpUpstream against real SDK upstreams on loopback, in both eras."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal, NamedTuple

import aiohttp
import anyio
import orjson
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.servers import serve
from tests.upstreams import (
    HeaderRecorder,
    Probe,
    cursor_loop_upstream,
    echo_upstream,
    legacy_only,
    paged_upstream,
)
from tollhouse.gateway.errors import (
    METHOD_NOT_FOUND,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.streamable_http import (
    LEGACY_PROTOCOL_VERSION,
    MODERN_PROTOCOL_VERSION,
    HttpUpstream,
    encode_header_value,
)
from tollhouse.registry.models import JSONObject, Upstream, UpstreamAuth

pytestmark = pytest.mark.anyio

EraChoice = Literal["auto", "modern", "legacy"]
ERAS = ["modern", "legacy"]
# Everything the connector may put on the wire; anything else would be a leak.
ALLOWED_HEADERS = {
    "host",
    "accept",
    "content-type",
    "content-length",
    "user-agent",
    "authorization",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "mcp-session-id",
}


@asynccontextmanager
async def connected(
    url: str,
    *,
    era: EraChoice = "auto",
    auth: UpstreamAuth | None = None,
    environ: Mapping[str, str] | None = None,
    call_timeout_seconds: float = 10.0,
    **options: Any,
) -> AsyncIterator[HttpUpstream]:
    """A started HttpUpstream for `url`, closed on the way out."""
    upstream = Upstream(
        name="up", url=url, auth=auth or UpstreamAuth(), call_timeout_seconds=call_timeout_seconds
    )
    connector = HttpUpstream(upstream, era=era, environ=environ or {}, **options)
    try:
        await connector.start()
        yield connector
    finally:
        await connector.aclose()


def upstream_app(app: ASGIApp, era: str) -> HeaderRecorder:
    """The SDK app as a dual-era ("modern") or a 2025-era-only ("legacy") upstream, recorded."""
    return HeaderRecorder(app if era == "modern" else legacy_only(app))


class Echo(NamedTuple):
    """A started connector to an echo upstream, what the upstream saw, and its URL."""

    connector: HttpUpstream
    probe: Probe
    recorder: HeaderRecorder
    url: str


@asynccontextmanager
async def echo_connection(era: str, **options: Any) -> AsyncIterator[Echo]:
    """A connector to a fresh echo upstream of the given era."""
    mcp, probe = echo_upstream()
    recorder = upstream_app(mcp.streamable_http_app(), era)
    async with serve(recorder, path="/mcp") as url, connected(url, **options) as connector:
        assert connector.era == era
        yield Echo(connector, probe, recorder, url)


def call(name: str, **arguments: Any) -> JSONObject:
    """tools/call params."""
    return {"name": name, "arguments": arguments}


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mcp"


def bodies(recorder: HeaderRecorder, method: str) -> list[JSONObject]:
    """Decoded bodies of the recorded requests for one JSON-RPC method."""
    return [orjson.loads(r.body) for r in recorder.requests if r.rpc_method == method]


# -- era detection ---------------------------------------------------------------------


async def test_dual_era_upstream_is_detected_as_modern_via_server_discover() -> None:
    async with echo_connection("modern") as (connector, _, recorder, _url):
        description = connector.description
        assert description is not None
        assert description.protocol_version == MODERN_PROTOCOL_VERSION
        assert description.server_info == {"name": "echo-upstream", "version": "1.2.3"}
        assert description.instructions == "Test upstream."
        assert "tools" in description.capabilities
    (discover,) = recorder.requests
    assert discover.rpc_method == "server/discover"
    assert discover.headers["mcp-protocol-version"] == MODERN_PROTOCOL_VERSION
    assert discover.headers["mcp-method"] == "server/discover"
    assert discover.headers["accept"] == "application/json, text/event-stream"
    meta = orjson.loads(discover.body)["params"]["_meta"]
    assert meta == {
        "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "tollhouse", "version": "0.1.0"},
    }


async def test_legacy_only_upstream_falls_back_to_an_initialized_session() -> None:
    async with echo_connection("legacy") as (connector, _, recorder, _url):
        description = connector.description
        assert description is not None
        assert description.protocol_version == LEGACY_PROTOCOL_VERSION
        assert description.server_info["name"] == "echo-upstream"
        await connector.request("tools/call", call("echo", text="hi"))
        probe_request, initialize, initialized, tools_call = recorder.requests[:4]
    assert probe_request.headers["mcp-method"] == "server/discover"
    assert initialize.rpc_method == "initialize"
    assert "mcp-protocol-version" not in initialize.headers
    assert orjson.loads(initialize.body)["params"]["protocolVersion"] == LEGACY_PROTOCOL_VERSION
    assert initialized.rpc_method == "notifications/initialized"
    session_id = initialized.headers["mcp-session-id"]
    assert tools_call.headers["mcp-session-id"] == session_id
    assert tools_call.headers["mcp-protocol-version"] == LEGACY_PROTOCOL_VERSION
    assert recorder.requests[-1].method == "DELETE"  # aclose ends the session


async def test_forced_legacy_era_initializes_without_probing() -> None:
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.streamable_http_app())
    async with serve(recorder, path="/mcp") as url, connected(url, era="legacy") as connector:
        assert connector.era == "legacy"
    assert recorder.rpc_methods()[:2] == ["initialize", "notifications/initialized"]


async def test_forced_modern_era_refuses_a_legacy_only_upstream() -> None:
    mcp, _ = echo_upstream()
    async with serve(legacy_only(mcp.streamable_http_app()), path="/mcp") as url:
        with pytest.raises(UpstreamUnavailable):
            async with connected(url, era="modern"):
                pass


# -- results and errors ------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_tool_results_pass_through_untouched(era: str) -> None:
    async with echo_connection(era) as (connector, _, _recorder, _url):
        added = await connector.request("tools/call", call("add", a=2, b=3))
        failed = await connector.request("tools/call", call("fail", message="no such file"))
    assert added["structuredContent"] == {"result": 5}
    assert added["content"] == [{"type": "text", "text": "5"}]
    assert added["isError"] is False
    assert failed["isError"] is True
    assert failed["content"] == [{"type": "text", "text": "Error executing tool fail: no such file"}]
    if era == "modern":
        assert added["resultType"] == "complete"
        assert added["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "echo-upstream"


@pytest.mark.parametrize("era", ERAS)
async def test_upstream_json_rpc_error_raises_upstream_rpc_error(era: str) -> None:
    async with echo_connection(era) as (connector, _, _recorder, _url):
        with pytest.raises(UpstreamRpcError) as raised:
            await connector.request("tools/call", call("rpc_error", code=-32000, message="boom"))
        with pytest.raises(UpstreamRpcError) as unknown:
            await connector.request("nope/never", {})
    assert raised.value.code == -32000
    assert raised.value.message == "boom"
    assert raised.value.upstream_data == {"why": "asked to"}
    # Modern: HTTP 404 whose JSON-RPC body distinguishes it from a legacy 404 (§1.5).
    assert unknown.value.code == METHOD_NOT_FOUND


@pytest.mark.parametrize("era", ERAS)
async def test_progress_is_relayed_only_when_it_increases(era: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with echo_connection(era) as (connector, _, recorder, _url):
        result = await connector.request(
            "tools/call", call("progress", steps=[1, 2, 2, 1, 3]), on_progress=on_progress
        )
        (sent,) = bodies(recorder, "tools/call")
    assert result["content"] == [{"type": "text", "text": "done"}]
    assert seen == [(1.0, 3.0, "at 1.0"), (2.0, 3.0, "at 2.0"), (3.0, 3.0, "at 3.0")]
    assert sent["params"]["_meta"]["progressToken"] == sent["id"]


@pytest.mark.parametrize("era", ERAS)
async def test_caller_meta_keeps_foreign_keys_and_loses_reserved_ones(era: str) -> None:
    params = call("echo", text="hi")
    params["_meta"] = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "io.modelcontextprotocol/protocolVersion": "1999-01-01",
        "io.modelcontextprotocol/clientInfo": {"name": "agent"},
        "progressToken": "agent-token",
    }
    async with echo_connection(era) as (connector, _, recorder, _url):
        await connector.request("tools/call", params)
        (sent,) = bodies(recorder, "tools/call")
    meta = sent["params"]["_meta"]
    assert meta["traceparent"] == params["_meta"]["traceparent"]
    assert "progressToken" not in meta
    if era == "modern":
        assert meta["io.modelcontextprotocol/protocolVersion"] == MODERN_PROTOCOL_VERSION
        assert meta["io.modelcontextprotocol/clientInfo"] == {"name": "tollhouse", "version": "0.1.0"}
    else:
        assert set(meta) == {"traceparent"}
    assert params["_meta"]["progressToken"] == "agent-token"  # the caller's params are not mutated


async def test_mcp_name_header_uses_the_base64_form_for_non_ascii_values() -> None:
    async with echo_connection("modern") as (connector, _, recorder, _url):
        result = await connector.request("resources/read", {"uri": "note://café/menu"})
        await connector.request("tools/call", call("echo", text="hi"))
        read, echo = [r for r in recorder.requests if r.rpc_method in ("resources/read", "tools/call")]
    assert result["contents"][0]["text"] == "croissant"
    assert read.headers["mcp-name"] == "=?base64?bm90ZTovL2NhZsOpL21lbnU=?="
    assert echo.headers["mcp-name"] == "echo"
    assert encode_header_value("echo") == "echo"
    assert encode_header_value(" padded") == "=?base64?IHBhZGRlZA==?="


async def test_legacy_server_requests_are_answered_on_the_same_session() -> None:
    async with echo_connection("legacy") as (connector, _, recorder, _url):
        result = await connector.request("tools/call", call("ask_client"))
        session_ids = {r.headers.get("mcp-session-id") for r in recorder.requests[2:-1]}
    assert result["content"][0]["text"] == f"pong; elicitation refused with {METHOD_NOT_FOUND}"
    replies = [orjson.loads(r.body) for r in recorder.requests if r.rpc_method is None and r.body]
    assert [("result" in reply, "error" in reply) for reply in replies] == [(True, False), (False, True)]
    assert len(session_ids) == 1


@pytest.mark.parametrize("era", ERAS)
async def test_oversized_response_is_a_protocol_error(era: str) -> None:
    async with echo_connection(era, max_response_bytes=20_000) as (connector, _, _recorder, _url):
        with pytest.raises(UpstreamProtocolError):
            await connector.request("tools/call", call("big", size=50_000))
        small = await connector.request("tools/call", call("big", size=10))
    assert small["content"] == [{"type": "text", "text": "x" * 10}]


# -- cancellation and timeouts -----------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_cancelling_the_caller_cancels_the_upstream_call(era: str) -> None:
    async with echo_connection(era) as (connector, probe, recorder, _url):
        async with anyio.create_task_group() as tg:
            tg.start_soon(connector.request, "tools/call", call("block"))
            with anyio.fail_after(5):
                await probe.started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(5):
            await probe.cancelled.wait()
        if era == "legacy":
            (sent,) = bodies(recorder, "tools/call")
            (cancelled,) = bodies(recorder, "notifications/cancelled")
            assert cancelled["params"]["requestId"] == sent["id"]
        else:
            assert bodies(recorder, "notifications/cancelled") == []  # 2026: the disconnect is the cancel
        assert (await connector.request("tools/call", call("echo", text="still here")))["isError"] is False


@pytest.mark.parametrize("era", ERAS)
async def test_call_timeout_raises_upstream_timeout_and_cancels_upstream(era: str) -> None:
    async with echo_connection(era) as (connector, probe, _recorder, _url):
        with pytest.raises(UpstreamTimeout) as raised:
            await connector.request("tools/call", call("block"), timeout_seconds=1.0)
        assert probe.started.is_set()
        with anyio.fail_after(5):
            await probe.cancelled.wait()
    assert raised.value.data == {"server": "up", "timeout_seconds": 1.0}


# -- availability ----------------------------------------------------------------------


@pytest.mark.parametrize("era", ["auto", "legacy"])
async def test_dead_upstream_is_unavailable_at_start(era: EraChoice) -> None:
    connector = HttpUpstream(Upstream(name="up", url=closed_port_url()), era=era)
    try:
        with pytest.raises(UpstreamUnavailable):
            await connector.start()
        with pytest.raises(UpstreamUnavailable):
            await connector.request("tools/call", call("echo", text="hi"))
    finally:
        await connector.aclose()


@pytest.mark.parametrize("era", ERAS)
async def test_upstream_stopped_mid_run_is_unavailable(era: str) -> None:
    mcp, _ = echo_upstream()
    app = upstream_app(mcp.streamable_http_app(), era)
    async with serve(app, path="/mcp") as url:
        connector = HttpUpstream(Upstream(name="up", url=url))
        await connector.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            await connector.request("tools/call", call("echo", text="hi"))
    finally:
        await connector.aclose()


async def test_closed_connector_refuses_requests() -> None:
    async with echo_connection("modern") as (connector, _, _recorder, _url):
        pass
    await connector.aclose()  # idempotent
    with pytest.raises(UpstreamUnavailable):
        await connector.request("tools/call", call("echo", text="hi"))


# -- pagination ------------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_list_all_follows_next_cursor_through_every_page_in_order(era: str) -> None:
    recorder = upstream_app(paged_upstream(total=250, page_size=100).streamable_http_app(), era)
    async with serve(recorder, path="/mcp") as url, connected(url) as connector:
        tools = await connector.list_all("tools/list", "tools")
    assert [tool["name"] for tool in tools] == [f"tool-{i:03d}" for i in range(250)]
    assert [body["params"].get("cursor") for body in bodies(recorder, "tools/list")] == [None, "100", "200"]


async def test_list_all_stops_on_a_repeated_cursor() -> None:
    async with (
        serve(cursor_loop_upstream().streamable_http_app(), path="/mcp") as url,
        connected(url) as connector,
    ):
        with pytest.raises(UpstreamProtocolError):
            await connector.list_all("tools/list", "tools")


# -- credentials -----------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_bearer_credential_from_env_is_sent_and_nothing_else(era: str) -> None:
    auth = UpstreamAuth(type="bearer", token_env="UP_TOKEN")
    async with echo_connection(era, auth=auth, environ={"UP_TOKEN": "s3cret"}) as (
        connector,
        _,
        recorder,
        _url,
    ):
        await connector.request("tools/call", call("echo", text="hi"))
    assert recorder.requests
    for request in recorder.requests:
        assert request.headers["authorization"] == "Bearer s3cret"
        assert set(request.headers) <= ALLOWED_HEADERS, request.headers


async def test_header_credential_uses_the_configured_header_name() -> None:
    auth = UpstreamAuth(type="header", header="X-Api-Key", value_env="UP_KEY")
    async with echo_connection("modern", auth=auth, environ={"UP_KEY": "k-123"}) as (
        _,
        _probe,
        recorder,
        _url,
    ):
        pass
    assert all(
        r.headers["x-api-key"] == "k-123" and "authorization" not in r.headers for r in recorder.requests
    )


async def test_missing_credential_variable_fails_start_and_is_named(caplog: pytest.LogCaptureFixture) -> None:
    mcp, _ = echo_upstream()
    recorder = HeaderRecorder(mcp.streamable_http_app())
    auth = UpstreamAuth(type="bearer", token_env="UP_TOKEN_MISSING")
    with caplog.at_level(logging.WARNING, logger="tollhouse.gateway.streamable_http"):
        async with serve(recorder, path="/mcp") as url:
            with pytest.raises(UpstreamUnavailable):
                async with connected(url, auth=auth, environ={}):
                    pass
    assert "UP_TOKEN_MISSING" in caplog.text
    assert recorder.requests == []


# -- legacy sessions -------------------------------------------------------------------


async def test_expired_legacy_session_is_reinitialized_transparently() -> None:
    async with echo_connection("legacy") as (connector, _, recorder, url):
        await connector.request("tools/call", call("echo", text="one"), session_key="agent-1")
        session_id = recorder.requests[-1].headers["mcp-session-id"]
        # The upstream forgets the session behind the connector's back.
        async with aiohttp.ClientSession() as http:
            delete_headers = {"Mcp-Session-Id": session_id, "MCP-Protocol-Version": LEGACY_PROTOCOL_VERSION}
            async with http.delete(url, headers=delete_headers) as deleted:
                assert deleted.status == 200
        result = await connector.request("tools/call", call("echo", text="two"), session_key="agent-1")
        retried = recorder.requests[-1].headers["mcp-session-id"]
    assert result["content"] == [{"type": "text", "text": "two"}]
    assert retried != session_id
    assert recorder.rpc_methods().count("initialize") == 3  # handshake, agent-1, agent-1 again


async def test_one_session_key_maps_to_exactly_one_upstream_session() -> None:
    async with echo_connection("legacy") as (connector, _, recorder, _url):
        for i in range(100):
            result = await connector.request("tools/call", call("echo", text=str(i)), session_key="agent-1")
            assert result["content"] == [{"type": "text", "text": str(i)}]
        async with anyio.create_task_group() as tg:  # concurrent first calls share one initialize
            for i in range(10):
                tg.start_soon(
                    partial(connector.request, session_key="agent-2"), "tools/call", call("echo", text=str(i))
                )
        await connector.end_session("agent-1")
        await connector.request("tools/call", call("echo", text="again"), session_key="agent-1")
    # handshake (session_key None), agent-1, agent-2, agent-1 after end_session
    assert recorder.rpc_methods().count("initialize") == 4
    # end_session ends agent-1; aclose ends the other three
    assert [r.method for r in recorder.requests].count("DELETE") == 4


# -- watch -----------------------------------------------------------------------------


@pytest.mark.parametrize("era", ERAS)
async def test_watch_delivers_tools_list_changed(era: str) -> None:
    received: list[tuple[str, JSONObject]] = []
    changed = anyio.Event()

    async def on_notification(method: str, params: JSONObject) -> None:
        received.append((method, params))
        changed.set()

    async with echo_connection(era) as (connector, _, _recorder, _url):
        async with anyio.create_task_group() as tg:
            await tg.start(connector.watch, on_notification)
            await connector.request("tools/call", call("add_tool"))
            with anyio.fail_after(5):
                await changed.wait()
            tg.cancel_scope.cancel()
        tools = await connector.list_all("tools/list", "tools")
    assert [method for method, _ in received] == ["notifications/tools/list_changed"]
    assert "added_1" in [tool["name"] for tool in tools]


async def test_watch_on_a_stopped_connector_is_unavailable() -> None:
    async def on_notification(method: str, params: JSONObject) -> None:
        raise AssertionError("no notification expected")

    connector = HttpUpstream(Upstream(name="up", url=closed_port_url()))
    with pytest.raises(UpstreamUnavailable):
        await connector.watch(on_notification)


def refuse_get(app: ASGIApp) -> ASGIApp:
    """Wrap an app so a GET (the legacy standalone stream) gets 405, as §1.6 allows."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            await send(
                {"type": "http.response.start", "status": 405, "headers": [(b"allow", b"POST, DELETE")]}
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return wrapped


@pytest.mark.parametrize("era", ERAS)
async def test_watch_returns_at_once_when_the_upstream_offers_no_stream(era: str) -> None:
    async def on_notification(method: str, params: JSONObject) -> None:
        raise AssertionError("no notification expected")

    mcp, _ = echo_upstream(subscriptions=False)
    app = mcp.streamable_http_app() if era == "modern" else refuse_get(mcp.streamable_http_app())
    async with (
        serve(app, path="/mcp") as url,
        connected(url, era="auto" if era == "modern" else "legacy") as connector,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                await tg.start(connector.watch, on_notification)
