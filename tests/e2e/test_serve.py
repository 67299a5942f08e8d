"""`tollhouse serve` and `db upgrade` as a user runs them, and the gateway on PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from examples.servers import studio
from tests.databases import scratch_postgres
from tests.harness import running_gateway
from tests.servers import serve
from tollhouse.gateway.cli import main
from tollhouse.gateway.serve import load_settings, serve_main

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def read_until(process: Process, marker: str, seen: list[str]) -> str:
    """Read the process's stderr lines until one contains `marker`; returns that line."""
    assert process.stderr is not None
    buffer = ""
    async for chunk in TextReceiveStream(process.stderr):
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        seen.extend(lines)
        for line in lines:
            if marker in line:
                return line
    raise AssertionError(f"{marker!r} never appeared:\n" + "\n".join(seen))


async def start_serve(data_dir: Path, port: int) -> Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
    env.update({"TOLLHOUSE_DATA_DIR": str(data_dir), "TOLLHOUSE_PORT": str(port)})
    return await anyio.open_process(
        [sys.executable, "-m", "tollhouse", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def stop(process: Process) -> int:
    process.send_signal(signal.SIGTERM)
    with anyio.fail_after(30):
        code = await process.wait()
    await process.aclose()
    return code


@pytest.mark.slow
async def test_serve_prints_an_admin_token_once_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    seen: list[str] = []
    process = await start_serve(tmp_path / "data", port)
    try:
        with anyio.fail_after(60):
            line = await read_until(process, "created the admin token", seen)
            await read_until(process, "Uvicorn running", seen)
        token = line.rsplit(" ", 1)[1]
        async with httpx2.AsyncClient(trust_env=False) as http:
            url = f"http://127.0.0.1:{port}/admin/api/v1/servers"
            assert (await http.get(url, headers={"Authorization": f"Bearer {token}"})).status_code == 200
    finally:
        assert await stop(process) == 0
    # Only the hash was stored; a restart keeps the token and prints none.
    seen = []
    process = await start_serve(tmp_path / "data", port)
    try:
        with anyio.fail_after(60):
            await read_until(process, "Uvicorn running", seen)
        assert not any("admin token" in line for line in seen)
        async with httpx2.AsyncClient(trust_env=False) as http:
            url = f"http://127.0.0.1:{port}/admin/api/v1/servers"
            assert (await http.get(url, headers={"Authorization": f"Bearer {token}"})).status_code == 200
    finally:
        assert await stop(process) == 0
    assert token not in (tmp_path / "data" / "tollhouse.db").read_bytes().decode("latin-1")


def test_db_upgrade_creates_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLHOUSE_DATA_DIR", str(tmp_path / "data"))
    assert main(["db", "upgrade"]) == 0
    assert main(["db", "upgrade"]) == 0  # idempotent
    assert (tmp_path / "data" / "tollhouse.db").exists()
    assert "up to date" in capsys.readouterr().out


async def test_the_gateway_runs_on_postgresql_and_keeps_its_registry_across_restarts(
    tmp_path: Path, postgres_url: str
) -> None:
    with scratch_postgres(postgres_url) as database_url:
        async with serve(studio.build_app(), path="/mcp") as studio_url:
            async with running_gateway(tmp_path, database_url=database_url) as gw:
                await gw.add_server("studio", studio_url)
                key = await gw.create_client("agent")
            # A new gateway process on the same database: servers and clients are still there.
            async with running_gateway(tmp_path, database_url=database_url) as gw:
                async with gw.client(key, "2026-07-28") as client:
                    names = {t.name for t in (await client.list_tools()).tools}
                    assert "studio__echo" in names
                servers = (await gw.admin.get("/servers")).json()["items"]
                assert [s["name"] for s in servers] == ["studio"]


async def test_the_openapi_document_lists_every_admin_route(tmp_path: Path) -> None:
    async with running_gateway(tmp_path) as gw:
        document = (await gw.admin.get("/openapi.json")).json()
        assert document["openapi"].startswith("3.")
        paths = set(document["paths"])
        assert {
            "/servers",
            "/servers/{name}",
            "/servers/{name}/refresh",
            "/agents",
            "/agents/{name}",
            "/agents/{name}/refresh",
            "/agents/{name}/card/diff",
            "/agents/{name}/card/approve",
            "/agents/{name}/card/reject",
            "/tools",
            "/tools/{name}",
            "/tools/{name}/diff",
            "/tools/{name}/approve",
            "/tools/{name}/reject",
            "/approvals",
            "/stats",
            "/sessions",
            "/sessions/{id}",
            "/policies",
            "/policies/{id}",
            "/policies/validate",
            "/policies/test",
            "/policies/explain",
            "/decisions",
            "/catalog/search",
            "/access-requests",
            "/access-requests/{id}",
            "/access-requests/{id}/grant",
            "/access-requests/{id}/decline",
            "/audit/records.jsonl",
            "/servers/{name}/instructions/diff",
            "/servers/{name}/instructions/approve",
            "/servers/{name}/instructions/reject",
            "/toolsets",
            "/toolsets/{name}",
            "/clients",
            "/clients/{ref}/revoke",
            "/config/apply",
            "/config/export",
            "/keys",
            "/keys/rotate",
            "/keys/{kid}",
            "/users",
            "/users/{name}",
            "/teams",
            "/teams/{name}",
            "/auth/failures",
            "/limits",
            "/limits/recent",
            "/limits/status",
            "/limits/{id}",
            "/kill-switches",
            "/kill-switches/{kind}/{value}",
            "/usage/report",
            "/usage/chargeback.csv",
            "/usage/outbox",
            "/prices",
            "/budgets",
            "/budgets/{id}",
            "/budgets/{id}/credits",
            "/budgets/{id}/status",
            "/audit/records",
            "/audit/records/{node}/{seq}",
            "/audit/verify",
            "/audit/export",
            "/audit/keys",
            "/audit/status",
            "/audit/checkpoint",
            "/audit/retention",
        } == paths


def test_serve_refuses_a_plain_http_issuer_off_loopback_and_names_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOLLHOUSE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TOLLHOUSE_PUBLIC_URL", "http://gw.example")
    assert serve_main() == 2
    err = capsys.readouterr().err
    assert "invalid settings: public_url must be https://" in err
    assert "TOLLHOUSE_AUTH__BUILTIN_SERVER=false" in err
    # Loopback http (demo, tests) and https are fine; so is http with the built-in server off.
    for url, builtin in (
        ("http://127.0.0.1:9", "true"),
        ("https://gw.example", "true"),
        ("http://gw.example", "false"),
    ):
        monkeypatch.setenv("TOLLHOUSE_PUBLIC_URL", url)
        monkeypatch.setenv("TOLLHOUSE_AUTH__BUILTIN_SERVER", builtin)
        assert load_settings().public_url == url
