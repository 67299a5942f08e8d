"""A real tollhouse on a loopback port, with helpers to register upstreams and connect clients.

`running_gateway(tmp_path)` builds the app with `create_app` (SQLite in tmp_path, a known
admin token), serves it with `tests.servers.serve`, and yields a `Gateway` handle that
talks to it only through its HTTP interfaces: the admin API and the MCP endpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from pydantic import SecretStr

from tests.servers import loopback_socket, serve
from tollhouse.gateway.app import Deps, create_app
from tollhouse.gateway.settings import LimitsSettings, Settings, UpstreamDefaults

ADMIN_TOKEN = "tha_test-admin-token"
Mode = Literal["legacy", "2026-07-28"]
MODES: tuple[Mode, ...] = ("legacy", "2026-07-28")


@dataclass
class Gateway:
    """Handle on a running gateway."""

    base_url: str
    admin: httpx2.AsyncClient

    @property
    def mcp_url(self) -> str:
        """The aggregate MCP endpoint."""
        return f"{self.base_url}/mcp"

    async def add_server(self, name: str, url: str | None = None, **extra: Any) -> dict[str, Any]:
        """Register an upstream (a URL, or `command=[...]` for stdio) through the admin API."""
        body = {"name": name, **({"url": url} if url is not None else {}), **extra}
        response = await self.admin.post("/servers", json=body)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def create_client(self, name: str, team: str | None = "platform") -> str:
        """Create an API client; returns its key."""
        response = await self.admin.post("/clients", json={"name": name, "team": team})
        assert response.status_code == 201, response.text
        key: str = response.json()["api_key"]
        return key

    @asynccontextmanager
    async def client(
        self, key: str, mode: Mode, *, path: str = "/mcp", **options: Any
    ) -> AsyncIterator[Client]:
        """The official `mcp` client connected to an MCP endpoint of the gateway (default /mcp) with a key."""
        async with (
            create_mcp_http_client(headers={"Authorization": f"Bearer {key}"}) as http,
            Client(
                streamable_http_client(f"{self.base_url}{path}", http_client=http), mode=mode, **options
            ) as c,
        ):
            yield c


def initialize_request(version: str = "2025-11-25", request_id: int = 1) -> dict[str, Any]:
    """A raw session-era `initialize` request body, for tests that speak HTTP themselves."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }


class Changes:
    """A condition for tests: whoever changes shared state calls `note()`; `until(check)` waits,
    re-checking at every change, instead of polling on a timer."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    def note(self) -> None:
        """Something changed: wake every waiter."""
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, check: Callable[[], bool], seconds: float = 10) -> None:
        """Wait until `check()` holds, for at most `seconds`."""
        with anyio.fail_after(seconds):
            while True:
                changed = self._changed
                if check():
                    return
                await changed.wait()


MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "0"},
}


async def modern_request(
    http: httpx2.AsyncClient,
    url: str,
    key: str,
    method: str,
    params: dict[str, Any],
    *,
    name: str | None = None,
    request_id: int = 1,
) -> httpx2.Response:
    """One stateless 2026-07-28 request over raw HTTP: `_meta` in the params, the header checks."""
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": MODERN_META}}
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": method,
        **({"Mcp-Name": name} if name is not None else {}),
    }
    return await http.post(url, json=body, headers=headers)


async def modern_tool_call(
    http: httpx2.AsyncClient, url: str, key: str, name: str, arguments: dict[str, Any], *, request_id: int = 1
) -> httpx2.Response:
    """One stateless 2026-07-28 `tools/call` over raw HTTP (for tests that check the wire itself)."""
    params = {"name": name, "arguments": arguments}
    return await modern_request(http, url, key, "tools/call", params, name=name, request_id=request_id)


def gateway_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test gateway: SQLite under tmp_path, a known admin token, fast retries."""
    values: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "admin_token": SecretStr(ADMIN_TOKEN),
        "upstreams": UpstreamDefaults(retry_min_seconds=0.05, retry_max_seconds=0.5),
        "limits": LimitsSettings(),
    }
    values.update(overrides)
    return Settings(**values)


ALLOW_ALL = "permit(principal, action, resource);"


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, deps: Deps | None = None, *, allow_all: bool = True, **overrides: Any
) -> AsyncIterator[Gateway]:
    """Serve a fresh gateway on 127.0.0.1:0 for the duration of the block.

    The port is bound first so the gateway's public URL (its OAuth issuer and the base of
    every resource URI) is the address clients actually use. Policy denies by default, so
    unless `allow_all=False` the gateway gets one policy permitting everything (id
    `tests-allow-all`): tests of other features need not write policies.
    """
    sock = loopback_socket()
    overrides.setdefault("public_url", f"http://127.0.0.1:{sock.getsockname()[1]}")
    settings = gateway_settings(tmp_path, **overrides)
    app = create_app(settings, deps)
    async with (
        serve(app, sock=sock, limits=settings.limits) as base_url,
        httpx2.AsyncClient(
            base_url=f"{base_url}/admin/api/v1",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            trust_env=False,
            timeout=30,
        ) as admin,
    ):
        if allow_all:
            response = await admin.put("/policies/tests-allow-all", json={"cedar": ALLOW_ALL})
            assert response.status_code in (200, 201), response.text
        yield Gateway(base_url=base_url, admin=admin)


ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ChildServer:
    """An example server running as a child process."""

    process: anyio.abc.Process
    url: str

    @property
    def port(self) -> int:
        """The port it serves on."""
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    async def kill(self) -> None:
        """SIGKILL it, as a crash would, and reap it."""
        self.process.kill()
        await self.process.wait()


@asynccontextmanager
async def spawn_example(name: str, port: int = 0) -> AsyncIterator[ChildServer]:
    """Run examples/servers/<name>.py in a child process; yields once it printed READY."""
    process = await anyio.open_process(
        [sys.executable, str(ROOT / "examples" / "servers" / f"{name}.py"), "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = b""
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        words = line.decode().split()
        assert words[0] == "READY", line
        yield ChildServer(process, words[1])
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
        await process.aclose()
