"""`tollhouse serve --workers 2`: two processes on one port, one SQLite database, one data directory.

Both workers serve (the audit trail names each worker's node), a session created through one
goes on through whichever worker takes the next connection, and SIGTERM to the supervisor
drains both and exits 0 with no process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import anyio
import httpx2
import pytest

from tests.harness import ADMIN_TOKEN, ALLOW_ALL, ROOT, initialize_request
from tests.redis_server import free_port
from tests.servers import serve
from tests.upstreams import echo_upstream

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def workers_of(pid: int) -> list[int]:
    """The worker processes of a supervisor (multiprocessing's resource tracker left out)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    found = []
    for child in path.read_text().split() if path.exists() else []:
        cmdline = Path(f"/proc/{child}/cmdline")
        if cmdline.exists() and b"spawn_main" in cmdline.read_bytes():
            found.append(int(child))
    return found


def alive(pids: list[int]) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


async def test_two_workers_share_one_port_and_sessions_and_stop_together(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
    env |= {
        "TOLLHOUSE_DATA_DIR": str(tmp_path / "data"),
        "TOLLHOUSE_ADMIN_TOKEN": ADMIN_TOKEN,
        "TOLLHOUSE_NODE_NAME": "box",
        "TOLLHOUSE_QUOTAS__LOOP_THRESHOLD": "0",
    }
    server, _ = echo_upstream()
    err = (tmp_path / "serve.err").open("wb")
    argv = [
        sys.executable,
        "-m",
        "tollhouse",
        "serve",
        "--workers",
        "2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    async with (
        serve(server.streamable_http_app(), path="/mcp") as upstream,
        await anyio.open_process(argv, env=env, cwd=ROOT, stdout=err, stderr=err) as supervisor,
        httpx2.AsyncClient(trust_env=False, timeout=30) as http,
    ):
        try:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            with anyio.fail_after(90):
                # Polls a starting process: nothing to wait on but its answers.
                while len(workers_of(supervisor.pid)) < 2 or not await _ready(http, base):  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            api = f"{base}/admin/api/v1"
            assert (
                await http.put(f"{api}/policies/all", json={"cedar": ALLOW_ALL}, headers=admin)
            ).is_success
            key = (
                await http.post(f"{api}/clients", json={"name": "bot", "team": "t"}, headers=admin)
            ).json()["api_key"]
            assert (
                await http.post(f"{api}/servers", json={"name": "up", "url": upstream}, headers=admin)
            ).is_success
            auth = {**HEADERS, "Authorization": f"Bearer {key}"}
            opened = await http.post(f"{base}/mcp", json=initialize_request(), headers=auth)
            session = {
                **auth,
                "Mcp-Session-Id": opened.headers["mcp-session-id"],
                "MCP-Protocol-Version": "2025-11-25",
                "Connection": "close",  # every call on a new connection: either worker may take it
            }
            nodes: set[str] = set()
            with anyio.fail_after(60):
                round_ = 0
                while len(nodes) < 2:
                    round_ += 1
                    async with anyio.create_task_group() as tg:
                        for i in range(16):
                            tg.start_soon(_call, base, session, f"{round_}-{i}")
                    exported = await http.get(
                        f"{api}/audit/records.jsonl", params={"server": "up"}, headers=admin
                    )
                    records = [json.loads(line) for line in exported.text.splitlines() if line.strip()]
                    nodes = {r["node"] for r in records if r.get("action") == "tools/call"}
            assert nodes == {"box-w0", "box-w1"}
        finally:
            workers = workers_of(supervisor.pid)
            supervisor.send_signal(signal.SIGTERM)
            with anyio.fail_after(60):
                code = await supervisor.wait()
            err.close()
        assert code == 0, _tail(tmp_path / "serve.err")
        assert len(workers) == 2 and not alive(workers)


async def _ready(http: httpx2.AsyncClient, base: str) -> bool:
    try:
        return (await http.get(f"{base}/readyz")).status_code == 200
    except httpx2.TransportError:
        return False


async def _call(base: str, session: dict[str, str], tag: str) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "up__echo", "arguments": {"text": tag}},
    }
    async with httpx2.AsyncClient(trust_env=False, timeout=30) as fresh:
        response = await fresh.post(f"{base}/mcp", json=body, headers=session)
    assert response.status_code == 200, response.text
    assert tag in response.text


def _tail(path: Path) -> str:
    return path.read_text()[-3000:]
