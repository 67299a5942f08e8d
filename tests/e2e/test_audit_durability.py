"""Audit durability (SECURITY_GOALS A3): SIGKILL the gateway mid-traffic, lose no answered call's record.

`tollhouse serve` runs as a child process in front of a real upstream. Eight workers make
2,000 tools/call requests with distinct arguments while the gateway is killed with SIGKILL at
random moments four times (and restarted on the same port and data directory). Every call
whose answer reached a client must have a committed record (matched by the SHA-256 of its
arguments), and the chain across the restarts must still verify.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import rfc8785
import sqlalchemy as sa
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from examples.servers import studio
from tests.e2e.test_serve import free_port
from tests.harness import ADMIN_TOKEN, ALLOW_ALL
from tests.servers import serve
from tollhouse.audit.chain import verify
from tollhouse.audit.writer import signing_keys
from tollhouse.auth.keyring import KeyRing
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CALLS = 2000
WORKERS = 8
KILLS = 4
MODERN = "2026-07-28"


class Gateway:
    """`tollhouse serve` as a child process that can be killed and restarted."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process: Process | None = None
        self.up = anyio.Event()
        self.starts = 0

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
        env.update(
            {
                "TOLLHOUSE_DATA_DIR": str(self.data_dir),
                "TOLLHOUSE_PORT": str(self.port),
                "TOLLHOUSE_ADMIN_TOKEN": ADMIN_TOKEN,
            }
        )
        self.process = await anyio.open_process(
            [sys.executable, "-m", "tollhouse", "serve"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        ready = anyio.Event()
        output: list[str] = []
        tg.start_soon(self._drain, self.process, ready, output)
        with anyio.fail_after(60):
            await ready.wait()
        assert self.process.returncode is None, "".join(output)
        self.starts += 1
        self.up.set()

    async def _drain(self, process: Process, ready: anyio.Event, output: list[str]) -> None:
        """Watch stderr for readiness, then keep reading it so the child never blocks on a full pipe."""
        assert process.stderr is not None
        async for chunk in TextReceiveStream(process.stderr):
            if not ready.is_set():
                output.append(chunk)
                if "Uvicorn running" in "".join(output[-2:]):
                    ready.set()
        ready.set()  # the process ended: start() reports what it said

    async def kill(self) -> None:
        assert self.process is not None
        self.up = anyio.Event()
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self.process.aclose()

    async def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            assert await self.process.wait() == 0
        await self.process.aclose()


def call_body(i: int) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {
            "name": "studio__echo",
            "arguments": {"text": f"call-{i}"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }


def digest(i: int) -> str:
    return hashlib.sha256(rfc8785.dumps({"text": f"call-{i}"})).hexdigest()


async def test_every_answered_call_has_a_committed_record_across_sigkills(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    kill_after = sorted(rng.sample(range(100, CALLS - 100), KILLS))
    data_dir = tmp_path / "data"
    gateway = Gateway(data_dir, free_port())
    base = f"http://127.0.0.1:{gateway.port}"
    answered: set[int] = set()
    failed: set[int] = set()
    next_id = 0
    done = 0
    reached = [anyio.Event() for _ in kill_after]

    async with serve(studio.build_app(), path="/mcp") as studio_url, anyio.create_task_group() as tg:
        await gateway.start(tg)
        admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx2.AsyncClient(base_url=f"{base}/admin/api/v1", headers=admin_headers) as admin:
            assert (
                await admin.post("/servers", json={"name": "studio", "url": studio_url})
            ).status_code == 201
            put = await admin.put("/policies/allow-all", json={"cedar": ALLOW_ALL})
            assert put.status_code == 201, put.text
            created = await admin.post("/clients", json={"name": "agent", "team": "platform"})
            key = created.json()["api_key"]
        headers = {
            "Authorization": f"Bearer {key}",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "studio__echo",
        }

        async def worker() -> None:
            nonlocal next_id, done
            async with httpx2.AsyncClient(timeout=30, trust_env=False) as http:
                while next_id < CALLS:
                    i, next_id = next_id, next_id + 1
                    up = gateway.up
                    await up.wait()
                    try:
                        response = await http.post(f"{base}/mcp", json=call_body(i), headers=headers)
                    except httpx2.TransportError:
                        # The gateway died under this call: it may or may not be recorded. The
                        # next round waits for the restart (kill() swapped in a fresh `up`).
                        failed.add(i)
                        continue
                    body = response.json()
                    if response.status_code == 200 and "result" in body:
                        assert body["result"]["content"][0]["text"] == f"call-{i}"
                        answered.add(i)
                    else:
                        failed.add(i)
                    done += 1
                    for index, threshold in enumerate(kill_after):
                        if done >= threshold:
                            reached[index].set()

        async def killer() -> None:
            for event in reached:
                await event.wait()
                await gateway.kill()
                await gateway.start(tg)

        async with anyio.create_task_group() as traffic:
            traffic.start_soon(killer)
            for _ in range(WORKERS):
                traffic.start_soon(worker)
        await gateway.stop()
        tg.cancel_scope.cancel()

    engine = create_engine_for(database_url_for(None, str(data_dir)))
    store = SqlAuditStore(engine)
    records = [r async for r in store.records()]
    with engine.connect() as connection:
        usage_ids = set(connection.scalars(sa.text("SELECT id FROM usage_events")))
    recorded = {r["what"].get("args_sha256") for r in records if r["action"] == "tools/call"}
    missing = sorted(i for i in answered if digest(i) not in recorded)
    assert gateway.starts == KILLS + 1
    assert len(answered) >= CALLS * 0.9, f"seed {seed}: only {len(answered)} answered"
    assert not missing, f"seed {seed}: answered calls without a record: {missing[:20]}"
    # Each answered call's usage event committed with its record (the same transaction, M4).
    by_digest = {r["what"].get("args_sha256"): r for r in records if r["action"] == "tools/call"}
    unmetered = [i for i in answered if by_digest[digest(i)]["correlation"]["usage_event"] not in usage_ids]
    assert not unmetered, f"seed {seed}: answered calls without a usage event: {unmetered[:20]}"
    result = verify(records, await store.checkpoints(), signing_keys(KeyRing.load(None, str(data_dir))))
    assert result.intact, (seed, result.problems[:5])
