"""The audit trail on the request path: one record per call, committed before the answer.

A real gateway with a real upstream: every outcome of tools/call (ok, tool_error,
upstream_error, invalid, denied, rate_limited) leaves a record that is already in the
database when the client has its answer; refused tokens and admin changes are recorded too;
the chain verifies against the gateway's own checkpoint keys.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx2
import pytest
import rfc8785

from tests.e2e.test_usage import CALLS, Receiver, call, metered
from tollhouse.audit.chain import verify
from tollhouse.audit.writer import signing_keys
from tollhouse.auth.keyring import KeyRing
from tollhouse.gateway.settings import AuditSettings
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = pytest.mark.anyio


def store_for(tmp_path: Path) -> SqlAuditStore:
    """The gateway's audit store, read directly (the harness keeps its SQLite under tmp_path/data)."""
    return SqlAuditStore(create_engine_for(database_url_for(None, str(tmp_path / "data"))))


async def all_records(store: SqlAuditStore) -> list[dict[str, Any]]:
    return [r async for r in store.records()]


def digest(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps(arguments)).hexdigest()


async def test_every_call_outcome_is_committed_before_its_answer(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    async with metered(tmp_path, Receiver()) as (gw, keys, _):
        seen: dict[str, str] = {}
        for name, (arguments, _) in CALLS.items():
            [seen[name]] = await call(gw, keys["platform"], name, arguments)
            # The answer is out: its record must already be committed (no flush, no wait).
            calls = [r for r in await all_records(store) if r["action"] == "tools/call"]
            assert calls and calls[-1]["what"]["args_sha256"] == digest(arguments), name
        records = await all_records(store)

    calls = [r for r in records if r["action"] == "tools/call"]
    assert [r["outcome"]["result"] for r in calls] == [outcome for _, outcome in CALLS.values()]
    for record, name in zip(calls, CALLS, strict=True):
        assert record["kind"] == "mcp"
        who = record["who"]
        assert who["client_id"] and who["teams"] == ["platform"] and who["source_ip"] == "127.0.0.1"
        assert record["what"]["server"] == "calc" and record["what"]["tool"] == name.split("__")[1]
        assert len(record["what"]["pin"]) == 64
        assert "args" not in record["what"]  # arguments are kept only when the settings ask
        assert record["where"]["snapshot"] >= 1
        assert record["correlation"]["usage_event"]
        assert record["time"].endswith("Z") and len(record["time"]) == len("2026-11-23T10:00:00.123Z")
    ok = calls[0]
    assert ok["outcome"]["policies"] == ["tests-allow-all"]
    denied = calls[list(CALLS).index("calc__block")]
    assert denied["outcome"]["policies"] == ["forbid-block"] and "code" in denied["outcome"]
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


async def test_refused_tokens_admin_changes_and_the_chain(tmp_path: Path) -> None:
    store = store_for(tmp_path)
    async with metered(tmp_path, Receiver(), audit=AuditSettings(record_arguments=True)) as (gw, keys, _):
        await call(gw, keys["platform"], "calc__echo", {"text": "hello"})
        async with httpx2.AsyncClient() as http:
            for _ in range(3):  # one record, then the flood is counted, not recorded
                refused = await http.post(
                    f"{gw.base_url}/mcp", json={}, headers={"Authorization": "Bearer not-a-token"}
                )
                assert refused.status_code == 401
        assert (await gw.admin.delete("/policies/forbid-block")).status_code == 204
        ring_text = (tmp_path / "data" / "keys" / "master.json").read_text()
    records = await all_records(store)
    checkpoints = await store.checkpoints()

    echo = next(r for r in records if r["action"] == "tools/call")
    assert echo["what"]["args"] == {"text": "hello"}
    refusals = [r for r in records if r["action"] == "auth.refused"]
    assert len(refusals) == 1
    assert refusals[0]["outcome"]["result"] == "unauthenticated"
    assert "not-a-token" not in str(records)
    admin = [r for r in records if r["kind"] == "admin"]
    assert any(
        r["action"] == "DELETE /admin/api/v1/policies/forbid-block" and r["outcome"]["result"] == "ok"
        for r in admin
    )
    assert all(r["who"]["subject"] == "admin-token" for r in admin)
    # The writer checkpoints its head on the way out; the chain verifies under the node's keys.
    assert checkpoints and checkpoints[-1]["seq"] == records[-1]["seq"]
    ring = KeyRing.load(None, str(tmp_path / "data"))
    assert ring_text  # the ring the gateway used is the one on disk
    result = verify(records, checkpoints, signing_keys(ring))
    assert result.intact, result.problems
