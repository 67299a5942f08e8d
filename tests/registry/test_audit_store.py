"""The audit store on SQLite and PostgreSQL: a chain per node, checkpoints, paging, tampering found."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tollhouse.audit.chain import GENESIS, CheckpointSigner, verify
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, upgrade
from tollhouse.registry.tables import AUDIT_RECORDS

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
SIGNER = CheckpointSigner(bytes(32), "k1")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[sa.Engine]:
    upgrade(database_url)
    made = create_engine_for(database_url)
    try:
        yield made
    finally:
        made.dispose()


def body(i: int, minutes: int = 0) -> dict[str, Any]:
    at = T0 + timedelta(minutes=minutes, milliseconds=i)
    return {
        "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": "tools/call",
        "n": i,
    }


async def everything(store: SqlAuditStore, **window: Any) -> list[dict[str, Any]]:
    return [r async for r in store.records(**window)]


async def test_batches_extend_each_nodes_chain_and_the_trail_verifies(engine: sa.Engine) -> None:
    store = SqlAuditStore(engine)
    assert await store.head("gw-a") == (0, GENESIS)
    first = await store.append("gw-a", [body(1), body(2)])
    await store.append("gw-b", [body(3)])
    second = await store.append("gw-a", [body(4)])
    assert [r["seq"] for r in first + second] == [1, 2, 3]
    assert second[0]["prev"] == first[1]["hash"]
    assert await store.head("gw-a") == (3, second[0]["hash"])
    seq, head = await store.head("gw-a")
    assert await store.add_checkpoint(SIGNER.checkpoint("gw-a", seq, head, "2026-11-23T10:31:00.000Z"))
    assert not await store.add_checkpoint(SIGNER.checkpoint("gw-a", seq, head, "2026-11-23T10:32:00.000Z"))
    records = await everything(store)
    assert [(r["node"], r["seq"]) for r in records] == [("gw-a", 1), ("gw-a", 2), ("gw-a", 3), ("gw-b", 1)]
    result = verify(records, await store.checkpoints(), {"k1": SIGNER.public_key})
    assert result.intact and result.nodes == {"gw-a": 3, "gw-b": 1}


async def test_records_page_through_and_filter_by_time(engine: sa.Engine) -> None:
    store = SqlAuditStore(engine)
    await store.append("gw-a", [body(i, minutes=i) for i in range(7)])
    paged = [r["seq"] async for r in store.records(page=2)]
    assert paged == [1, 2, 3, 4, 5, 6, 7]
    window = await everything(store, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=5))
    assert [r["n"] for r in window] == [2, 3, 4]


async def test_a_row_edited_or_deleted_in_the_database_is_found(engine: sa.Engine) -> None:
    store = SqlAuditStore(engine)
    await store.append("gw-a", [body(i) for i in range(5)])
    seq, head = await store.head("gw-a")
    await store.add_checkpoint(SIGNER.checkpoint("gw-a", seq, head, "2026-11-23T10:31:00.000Z"))
    with engine.begin() as conn:
        text = conn.execute(sa.select(AUDIT_RECORDS.c.record).where(AUDIT_RECORDS.c.seq == 2)).scalar_one()
        conn.execute(
            sa.update(AUDIT_RECORDS)
            .where(AUDIT_RECORDS.c.seq == 2)
            .values(record=text.replace('"n":1', '"n":9'))
        )
        conn.execute(sa.delete(AUDIT_RECORDS).where(AUDIT_RECORDS.c.seq == 4))
    problems = verify(await everything(store), await store.checkpoints(), {"k1": SIGNER.public_key}).problems
    assert {(p.kind, p.seq) for p in problems} == {("edited", 2), ("gap", 5)}


async def test_a_chain_whose_records_were_all_purged_continues_from_its_checkpoint(engine: sa.Engine) -> None:
    store = SqlAuditStore(engine)
    await store.append("gw-a", [body(i) for i in range(3)])
    seq, head = await store.head("gw-a")
    await store.add_checkpoint(SIGNER.checkpoint("gw-a", seq, head, "2026-11-23T10:31:00.000Z"))
    with engine.begin() as conn:
        conn.execute(sa.delete(AUDIT_RECORDS))
    assert await store.head("gw-a") == (3, head)
    later = await store.append("gw-a", [body(9)])
    assert (later[0]["seq"], later[0]["prev"]) == (4, head)
    assert verify(await everything(store), await store.checkpoints(), {"k1": SIGNER.public_key}).intact
