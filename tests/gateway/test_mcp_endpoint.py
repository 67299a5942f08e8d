"""The MCP endpoint on the raw wire: authentication, bad input, session binding, header checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import orjson
import pytest

from examples.servers import studio
from tests.harness import Gateway, initialize_request, running_gateway
from tests.servers import serve
from tollhouse.gateway.errors import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
)

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
ACCEPT = "application/json, text/event-stream"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
}


def modern_headers(key: str, method: str, name: str | None = None) -> dict[str, str]:
    """Headers of a well-formed 2026-07-28 request."""
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
    }
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def rpc(method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    """A 2026-07-28 JSON-RPC request body."""
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": META}}


async def echo_works(http: httpx2.AsyncClient, gw: Gateway, key: str) -> None:
    """The gateway still serves a normal call."""
    body = rpc("tools/call", {"name": "studio__echo", "arguments": {"text": "ok"}})
    response = await http.post(
        gw.mcp_url, json=body, headers=modern_headers(key, "tools/call", "studio__echo")
    )
    assert response.status_code == 200
    assert response.json()["result"]["content"][0]["text"] == "ok"


@pytest.fixture
async def setup(tmp_path: Path) -> Any:
    async with serve(studio.build_app(), path="/mcp") as studio_url, running_gateway(tmp_path) as gw:
        await gw.add_server("studio", studio_url)
        key = await gw.create_client("agent")
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            yield gw, key, http


async def test_missing_wrong_and_revoked_keys_get_401_with_a_bearer_challenge(setup: Any) -> None:
    gw, key, http = setup
    body = rpc("tools/list")
    no_key = {k: v for k, v in modern_headers(key, "tools/list").items() if k != "Authorization"}
    response = await http.post(gw.mcp_url, json=body, headers=no_key)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    response = await http.post(
        gw.mcp_url, json=body, headers=modern_headers("thk_not-a-real-key", "tools/list")
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]

    other = await gw.create_client("short-lived")
    assert (
        await http.post(gw.mcp_url, json=body, headers=modern_headers(other, "tools/list"))
    ).status_code == 200
    clients = (await gw.admin.get("/clients")).json()["items"]
    client_id = next(c["client_id"] for c in clients if c["name"] == "short-lived")
    assert (await gw.admin.post(f"/clients/{client_id}/revoke")).status_code == 200
    assert (
        await http.post(gw.mcp_url, json=body, headers=modern_headers(other, "tools/list"))
    ).status_code == 401
    await echo_works(http, gw, key)


async def test_the_admin_api_needs_the_admin_token_and_refuses_client_keys(setup: Any) -> None:
    gw, key, http = setup
    url = f"{gw.base_url}/admin/api/v1/servers"
    assert (await http.get(url)).status_code == 401
    assert (await http.get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
    response = await http.get(url, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert (await gw.admin.get("/servers")).status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {}, 400, PARSE_ERROR),
        (b"[]", {}, 400, INVALID_REQUEST),
        (orjson.dumps([rpc("tools/list")]), {}, 400, INVALID_REQUEST),
        (orjson.dumps({**rpc("tools/list"), "jsonrpc": "1.0"}), {}, 400, INVALID_REQUEST),
        (orjson.dumps({**rpc("tools/list"), "id": None}), {}, 400, INVALID_REQUEST),
        (orjson.dumps({**rpc("tools/list"), "id": True}), {}, 400, INVALID_REQUEST),
        (orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": 7}), {}, 400, INVALID_REQUEST),
        (
            orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}),
            {},
            400,
            INVALID_PARAMS,
        ),
        (orjson.dumps(rpc("foo/bar")), {"Mcp-Method": "foo/bar"}, 404, METHOD_NOT_FOUND),
        (orjson.dumps(rpc("tools/list")), {"Mcp-Method": "tools/call"}, 400, HEADER_MISMATCH),
        (orjson.dumps(rpc("tools/list")), {"MCP-Protocol-Version": "2025-11-25"}, 400, HEADER_MISMATCH),
        (
            orjson.dumps(rpc("tools/call", {"name": "studio__echo", "arguments": {"text": "x"}})),
            {"Mcp-Method": "tools/call", "Mcp-Name": "studio__add"},
            400,
            HEADER_MISMATCH,
        ),
        (
            orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/list",
                    "params": {"_meta": {**META, "io.modelcontextprotocol/protocolVersion": "2030-01-01"}},
                }
            ),
            {"MCP-Protocol-Version": "2030-01-01"},
            400,
            UNSUPPORTED_PROTOCOL_VERSION,
        ),
        (
            orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/list",
                    "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}},
                }
            ),
            {},
            400,
            INVALID_PARAMS,
        ),
    ],
    ids=[
        "malformed-json",
        "empty-array",
        "batch",
        "wrong-jsonrpc-version",
        "null-id",
        "bool-id",
        "method-not-string",
        "params-not-object",
        "unknown-method",
        "mcp-method-mismatch",
        "protocol-header-mismatch",
        "mcp-name-mismatch",
        "unsupported-version",
        "missing-client-capabilities",
    ],
)
async def test_bad_messages_get_a_clear_error_and_the_gateway_keeps_serving(
    setup: Any, body: bytes, headers: dict[str, str], status: int, code: int
) -> None:
    gw, key, http = setup
    response = await http.post(
        gw.mcp_url, content=body, headers={**modern_headers(key, "tools/list"), **headers}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    await echo_works(http, gw, key)


async def test_transport_level_refusals_use_http_status(setup: Any) -> None:
    gw, key, http = setup
    good = orjson.dumps(rpc("tools/list"))
    base = modern_headers(key, "tools/list")
    too_big = orjson.dumps(
        rpc("tools/call", {"name": "studio__echo", "arguments": {"text": "x" * (1024 * 1024)}})
    )
    response = await http.post(
        gw.mcp_url, content=too_big, headers={**base, "Mcp-Method": "tools/call", "Mcp-Name": "studio__echo"}
    )
    assert response.status_code == 413

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 100_000  # no Content-Length: the limit is enforced while reading
        yield good

    response = await http.post(gw.mcp_url, content=chunks(), headers=base)
    assert response.status_code == 413
    assert (
        await http.post(gw.mcp_url, content=good, headers={**base, "Content-Type": "text/plain"})
    ).status_code == 415
    assert (
        await http.post(gw.mcp_url, content=good, headers={**base, "Accept": "text/html"})
    ).status_code == 406
    assert (await http.put(gw.mcp_url, content=good, headers=base)).status_code == 405
    assert (await http.get(gw.mcp_url, headers=base)).status_code == 405
    evil = {**base, "Origin": "https://evil.example"}
    assert (await http.post(gw.mcp_url, content=good, headers=evil)).status_code == 403
    assert (
        await http.post(gw.mcp_url, content=good, headers={**base, "Origin": "http://localhost:3000"})
    ).status_code == 200
    await echo_works(http, gw, key)


async def test_a_session_belongs_to_the_principal_that_created_it(setup: Any) -> None:
    gw, key, http = setup
    other = await gw.create_client("other")
    init = initialize_request()
    legacy = {"Content-Type": "application/json", "Accept": ACCEPT}
    response = await http.post(gw.mcp_url, json=init, headers={**legacy, "Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json()["result"]["protocolVersion"] == "2025-11-25"
    session_id = response.headers["mcp-session-id"]
    assert len(session_id) >= 32
    in_session = {**legacy, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": "2025-11-25"}
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    assert (
        await http.post(gw.mcp_url, json=ping, headers={**in_session, "Authorization": f"Bearer {key}"})
    ).status_code == 200
    stolen = await http.post(
        gw.mcp_url, json=ping, headers={**in_session, "Authorization": f"Bearer {other}"}
    )
    assert stolen.status_code == 404
    assert (await http.post(gw.mcp_url, json=ping, headers=in_session)).status_code == 401
    # A session-era unknown method is a JSON-RPC error on a 200.
    unknown = await http.post(
        gw.mcp_url,
        json={"jsonrpc": "2.0", "id": 3, "method": "foo/bar"},
        headers={**in_session, "Authorization": f"Bearer {key}"},
    )
    assert unknown.json()["error"]["code"] == METHOD_NOT_FOUND
    deleted = await http.delete(gw.mcp_url, headers={**in_session, "Authorization": f"Bearer {key}"})
    assert deleted.status_code == 200
    gone = await http.post(gw.mcp_url, json=ping, headers={**in_session, "Authorization": f"Bearer {key}"})
    assert gone.status_code == 404
    missing = await http.post(gw.mcp_url, json=ping, headers={**legacy, "Authorization": f"Bearer {key}"})
    assert missing.status_code == 400


async def test_a_client_that_trickles_its_body_is_cut_off_with_408(tmp_path: Path) -> None:
    from tollhouse.gateway.settings import LimitsSettings

    async with running_gateway(tmp_path, limits=LimitsSettings(receive_timeout_seconds=0.5)) as gw:
        key = await gw.create_client("slow")
        host, port = gw.base_url.removeprefix("http://").split(":")
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(host, int(port)) as stream:
                await stream.send(head.encode() + b'{"jsonrpc":')  # and then nothing more
                response = await stream.receive()
        assert response.startswith(b"HTTP/1.1 408 ")


async def test_tools_whose_exposed_name_would_pass_128_characters_are_not_exposed(tmp_path: Path) -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("long")
    long_name = "t" * 120

    @server.tool(name=long_name)
    def long_tool() -> str:
        return "x"

    @server.tool()
    def short() -> str:
        return "y"

    async with serve(server.streamable_http_app(), path="/mcp") as url, running_gateway(tmp_path) as gw:
        await gw.add_server("longname", url)
        names = [t["name"] for t in (await gw.admin.get("/tools")).json()["items"]]
        assert names == ["longname__short"]


async def test_the_sdk_clients_auto_mode_settles_on_2026_07_28(setup: Any) -> None:
    gw, key, _ = setup
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http,
        Client(streamable_http_client(gw.mcp_url, http_client=http)) as client,
    ):
        assert client.protocol_version == MODERN
        assert (await client.call_tool("studio__echo", {"text": "auto"})).content


@pytest.mark.parametrize(
    ("requested", "negotiated"),
    [
        ("2025-11-25", "2025-11-25"),
        ("2025-06-18", "2025-06-18"),
        ("2025-03-26", "2025-03-26"),
        ("1999-01-01", "2025-11-25"),
    ],
)
async def test_initialize_negotiates_a_session_era_version(
    setup: Any, requested: str, negotiated: str
) -> None:
    gw, key, http = setup
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": requested,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "Authorization": f"Bearer {key}"}
    response = await http.post(gw.mcp_url, json=init, headers=headers)
    result = response.json()["result"]
    assert result["protocolVersion"] == negotiated
    assert result["serverInfo"]["name"] == "tollhouse"
    assert result["capabilities"]["tools"] == {"listChanged": True}


async def _read_events(response: httpx2.Response, count: int) -> list[dict[str, str]]:
    """The next `count` SSE events (id and data) of a streaming response."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if current:
                events.append(current)
                current = {}
                if len(events) == count:
                    return events
            continue
        field, _, value = line.partition(":")
        if field:
            current[field] = value.strip()
    return events


async def test_a_session_stream_resumes_after_last_event_id_with_what_it_missed(setup: Any) -> None:
    gw, key, http = setup
    init = initialize_request()
    auth = {"Authorization": f"Bearer {key}", "Accept": ACCEPT}
    created = await http.post(gw.mcp_url, json=init, headers=auth)
    stream_headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "text/event-stream",
        "Mcp-Session-Id": created.headers["mcp-session-id"],
        "MCP-Protocol-Version": "2025-11-25",
    }
    with anyio.fail_after(10):
        async with http.stream("GET", gw.mcp_url, headers=stream_headers) as response:
            (priming,) = await _read_events(response, 1)
            assert priming.get("id") is not None
            assert priming.get("data", "") == ""
        # While no stream is open, the catalog changes twice.
        await gw.admin.post("/servers/studio/refresh")
        await gw.admin.delete("/servers/studio")
        resumed = {**stream_headers, "Last-Event-ID": priming["id"]}
        async with http.stream("GET", gw.mcp_url, headers=resumed) as response:
            events = await _read_events(response, 2)
    missed = [e for e in events if e.get("data")]
    assert missed, events
    assert all(int(e["id"]) > int(priming["id"]) for e in missed)
    assert any("list_changed" in e["data"] for e in missed)
