"""When the audit store cannot commit, tools/call fails closed (-31060) and loses no record.

The store is broken for real: the audit table is renamed away from under the gateway (every
insert fails), then put back. The first call already reached the upstream when its record
failed: its answer becomes -31060. Later calls are refused before the upstream. After the
table is back, the queued records (including those of the refused calls) are committed and
the chain verifies. With `fail_closed=False` the same outage answers normally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from mcp.server.mcpserver import MCPServer

from tests.e2e.test_audit_trail import all_records, store_for
from tests.harness import running_gateway
from tests.servers import serve
from tollhouse.gateway.errors import AUDIT_UNAVAILABLE
from tollhouse.gateway.settings import AuditSettings
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"


def counting_upstream() -> tuple[MCPServer, list[str]]:
    calls: list[str] = []
    server = MCPServer("counter")

    @server.tool()
    def count(text: str) -> str:
        """Count the call."""
        calls.append(text)
        return text

    return server, calls


def set_audit_table(tmp_path: Path, *, present: bool) -> None:
    engine = create_engine_for(database_url_for(None, str(tmp_path / "data")))
    old, new = (
        ("audit_records", "audit_records_away") if not present else ("audit_records_away", "audit_records")
    )
    with engine.begin() as connection:
        connection.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))
    engine.dispose()


async def rpc(gw: Any, key: str, i: int) -> tuple[int, dict[str, Any]]:
    body = {
        "jsonrpc": "2.0",
        "id": i,
        "method": "tools/call",
        "params": {
            "name": "counter__count",
            "arguments": {"text": f"call-{i}"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "counter__count",
    }
    response = await gw.admin.post(gw.mcp_url, json=body, headers=headers)
    return response.status_code, response.json()


async def test_calls_fail_closed_while_the_store_is_down_and_no_record_is_lost(tmp_path: Path) -> None:
    upstream, calls = counting_upstream()
    async with (
        serve(upstream.streamable_http_app(host="127.0.0.1"), path="/mcp") as url,
        running_gateway(tmp_path) as gw,
    ):
        await gw.add_server("counter", url)
        key = await gw.create_client("agent")
        assert (await rpc(gw, key, 1))[1]["result"]["content"][0]["text"] == "call-1"

        set_audit_table(tmp_path, present=False)
        status, first = await rpc(gw, key, 2)
        assert first["error"]["code"] == AUDIT_UNAVAILABLE and status == 503
        assert calls == ["call-1", "call-2"]  # it ran, but its answer was withheld
        status, second = await rpc(gw, key, 3)
        assert second["error"]["code"] == AUDIT_UNAVAILABLE and status == 503
        assert calls == ["call-1", "call-2"]  # refused before the upstream

        set_audit_table(tmp_path, present=True)
        checkpoint = await gw.admin.post("/audit/checkpoint")  # flushes the queue first
        assert checkpoint.status_code == 200, checkpoint.text
        assert (await rpc(gw, key, 4))[1]["result"]["content"][0]["text"] == "call-4"
        verified = (await gw.admin.get("/audit/verify")).json()
    records = await all_records(store_for(tmp_path))

    assert verified["intact"], verified["problems"]
    outcomes = [
        (r["correlation"]["jsonrpc_id"], r["outcome"]["result"])
        for r in records
        if r["action"] == "tools/call"
    ]
    # Call 2's record tells what the upstream did; call 3's that the gateway refused it.
    assert outcomes == [(1, "ok"), (2, "ok"), (3, "gateway_error"), (4, "ok")]


async def test_with_fail_closed_off_the_answer_goes_out_and_the_record_follows(tmp_path: Path) -> None:
    upstream, calls = counting_upstream()
    async with (
        serve(upstream.streamable_http_app(host="127.0.0.1"), path="/mcp") as url,
        running_gateway(tmp_path, audit=AuditSettings(fail_closed=False)) as gw,
    ):
        await gw.add_server("counter", url)
        key = await gw.create_client("agent")
        set_audit_table(tmp_path, present=False)
        for i in (1, 2):
            assert (await rpc(gw, key, i))[1]["result"]["content"][0]["text"] == f"call-{i}"
        set_audit_table(tmp_path, present=True)
        assert (await gw.admin.post("/audit/checkpoint")).status_code == 200
    records = await all_records(store_for(tmp_path))

    assert calls == ["call-1", "call-2"]
    assert [r["correlation"]["jsonrpc_id"] for r in records if r["action"] == "tools/call"] == [1, 2]
