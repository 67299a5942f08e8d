"""Searching the audit store on SQLite and PostgreSQL: filters, newest-first pages, heads, purging."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tollhouse.audit.chain import CheckpointSigner
from tollhouse.audit.records import rfc3339_ms
from tollhouse.registry.audit_store import AuditKey, SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, upgrade
from tollhouse.registry.tables import AUDIT_RECORDS

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
SIGNER = CheckpointSigner(bytes(32), "k1")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlAuditStore]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        yield SqlAuditStore(engine)
    finally:
        engine.dispose()


def call(
    i: int, *, subject: str, team: str, tool: str, outcome: str = "ok", seconds: int = 0
) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "mcp",
        "action": "tools/call",
        "who": {"subject": subject, "client_id": f"c_{subject}", "teams": [team, "other"]},
        "what": {"method": "tools/call", "server": "calc", "tool": tool},
        "outcome": {"result": outcome},
        "correlation": {"trace_id": f"{i:032x}"},
        "time": rfc3339_ms(T0 + timedelta(seconds=seconds)),
        "n": i,
    }


async def page_through(store: SqlAuditStore, filters: dict[str, Any], limit: int) -> list[int]:
    seen: list[int] = []
    before: AuditKey | None = None
    while True:
        items, before = await store.search(filters, before=before, limit=limit)
        seen.extend(r["n"] for r in items)
        if before is None:
            return seen


async def test_filters_match_exactly_and_pages_run_newest_first_without_overlap(store: SqlAuditStore) -> None:
    # Two nodes, and several records per second, so the order's ties on time are exercised.
    for i in range(24):
        node = "gw-a" if i % 2 else "gw-b"
        who = ("alice", "platform") if i % 3 else ("bob", "finance")
        await store.append(
            node,
            [call(i, subject=who[0], team=who[1], tool="add" if i % 4 else "echo", seconds=i // 3)],
        )

    everything, more = await store.search({}, limit=100)
    assert more is None and len(everything) == 24
    keys = [AuditKey.of(r) for r in everything]
    assert keys == sorted(keys, reverse=True)
    assert await page_through(store, {}, 5) == [r["n"] for r in everything]

    alice = await page_through(store, {"subject": "alice"}, 3)
    assert sorted(alice) == [i for i in range(24) if i % 3]
    assert await page_through(store, {"team": "finance"}, 4) == [i for i in reversed(range(24)) if i % 3 == 0]
    assert await page_through(store, {"team": "other"}, 4) == []  # the first team only
    echo_bob = await page_through(store, {"tool": "echo", "client_id": "c_bob"}, 2)
    assert echo_bob == [i for i in reversed(range(24)) if i % 4 == 0 and i % 3 == 0]
    assert await page_through(store, {"trace_id": f"{7:032x}"}, 10) == [7]
    assert await page_through(store, {"kind": "mcp", "action": "tools/call", "server": "calc"}, 50) == [
        r["n"] for r in everything
    ]
    window = {"since": T0 + timedelta(seconds=2), "until": T0 + timedelta(seconds=4)}
    assert sorted(await page_through(store, window, 2)) == list(range(6, 12))
    with pytest.raises(ValueError, match="subjet"):
        await store.search({"subjet": "alice"})


async def test_get_heads_windows_and_anchors(store: SqlAuditStore) -> None:
    await store.append("gw-a", [call(i, subject="a", team="t", tool="x", seconds=i) for i in range(6)])
    await store.append("gw-b", [call(9, subject="b", team="t", tool="x", seconds=9)])
    seq, head = await store.head("gw-a")
    await store.add_checkpoint(SIGNER.checkpoint("gw-a", 2, (await store.get("gw-a", 2) or {})["hash"], "t"))
    await store.add_checkpoint(SIGNER.checkpoint("gw-a", seq, head, "t"))

    assert (await store.get("gw-a", 3) or {})["n"] == 2
    assert await store.get("gw-a", 99) is None
    heads = await store.heads()
    assert [(h["node"], h["seq"], h["hash"]) for h in heads] == [
        ("gw-a", 6, head),
        ("gw-b", 1, (await store.get("gw-b", 1) or {})["hash"]),
    ]
    assert heads[0]["time"] == rfc3339_ms(T0 + timedelta(seconds=5))
    assert [c["seq"] for c in await store.latest_checkpoints()] == [6]
    assert [c["seq"] for c in await store.checkpoints("gw-a", first=3)] == [6]
    assert (await store.anchor("gw-a", 6) or {})["seq"] == 2
    assert (await store.covering("gw-a", 3) or {})["seq"] == 6
    assert await store.covering("gw-b", 1) is None
    since, until = T0 + timedelta(seconds=2), T0 + timedelta(seconds=4)
    assert await store.window(since, until) == {"gw-a": (3, 4)}
    assert await store.first_since("gw-a", since) == 3
    assert await store.first_since("gw-a", T0 + timedelta(days=1)) is None
    texts = [t for page in [p async for p in store.pages("gw-a", 2, 5, page=2)] for _, _, t in page]
    assert [t.count('"n":') for t in texts] == [1, 1, 1, 1]

    assert await store.purge_through("gw-a", 2) == 2
    assert (await store.search({}, limit=100))[0][-1]["seq"] == 3
    assert await store.head("gw-a") == (6, head)


async def test_a_row_that_is_not_json_is_shown_by_its_place(store: SqlAuditStore, database_url: str) -> None:
    await store.append("gw-a", [call(i, subject="a", team="t", tool="x") for i in range(2)])
    engine = create_engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(AUDIT_RECORDS).where(AUDIT_RECORDS.c.seq == 1).values(record="{oops"))
    finally:
        engine.dispose()
    items, _ = await store.search({})
    assert items[-1] == {"node": "gw-a", "seq": 1, "time": rfc3339_ms(T0), "unreadable": True}
