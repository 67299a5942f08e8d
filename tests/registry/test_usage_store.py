"""The usage store on SQLite and PostgreSQL: outbox claims and leases, trimming, aggregates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from tollhouse.registry.migrate import create_engine_for, upgrade
from tollhouse.registry.usage_store import SqlUsageStore, UsageRow

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlUsageStore]:
    upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        yield SqlUsageStore(engine)
    finally:
        engine.dispose()


def row(i: int, *, team: str = "platform", hours: int = 0, cost: int = 10, outcome: str = "ok") -> UsageRow:
    return UsageRow(
        id=f"ev-{i}",
        time=T0 + timedelta(hours=hours),
        subject="s",
        team=team,
        client_id="c",
        server="calc",
        tool="add",
        method="tools/call",
        outcome=outcome,
        duration_ms=5,
        upstream_ms=4,
        request_bytes=10,
        response_bytes=20,
        tokens_in=None,
        tokens_out=3,
        cost_micro=cost,
        currency="USD",
        snapshot_version=1,
        event=f'{{"id":"ev-{i}"}}',
    )


async def test_claims_lease_rows_and_delivered_rows_leave_the_outbox(store: SqlUsageStore) -> None:
    await store.insert([row(i) for i in range(5)], ["a", "b"], T0)
    await store.insert([row(0)], ["a", "b"], T0)  # a known id is not inserted twice

    first = await store.claim("a", 3, T0, lease_seconds=60)
    assert [c.event_id for c in first] == ["ev-0", "ev-1", "ev-2"]
    assert [c.event_id for c in await store.claim("a", 10, T0, 60)] == ["ev-3", "ev-4"]  # leased ones skipped
    assert await store.claim("a", 10, T0 + timedelta(seconds=30), 60) == []
    await store.delivered([c.seq for c in first])
    again = await store.claim("a", 10, T0 + timedelta(seconds=61), 60)  # the lease of ev-3, ev-4 ran out
    assert [c.event_id for c in again] == ["ev-3", "ev-4"]
    await store.retry_at([again[0].seq], T0)

    backlog = await store.backlog()
    assert {k: v["pending"] for k, v in backlog.items()} == {"a": 2, "b": 5}
    assert backlog["a"]["max_attempts"] == 1 and backlog["b"]["oldest"] == T0
    assert await store.trim("b", 2) == 3
    assert [c.event_id for c in await store.claim("b", 10, T0, 60)] == ["ev-3", "ev-4"]
    assert await store.count() == 5


async def test_aggregates_group_by_dimensions_and_buckets(store: SqlUsageStore) -> None:
    rows = [
        row(0),
        row(1, hours=1),
        row(2, team="finance", cost=7),
        row(3, hours=30, outcome="denied", cost=0),
    ]
    await store.insert(rows, [], T0)
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)

    by_team = await store.aggregate(["team"], start, end)
    assert [(r["team"], r["calls"], r["ok"], r["cost_micro"], r["tokens_out"]) for r in by_team] == [
        ("finance", 1, 1, 7, 3),
        ("platform", 3, 2, 20, 9),
    ]
    hourly = await store.aggregate(["team"], start, end, "hour")
    assert [(r["bucket"], r["team"], r["calls"]) for r in hourly] == [
        ("2026-11-23T10:00:00Z", "finance", 1),
        ("2026-11-23T10:00:00Z", "platform", 1),
        ("2026-11-23T11:00:00Z", "platform", 1),
        ("2026-11-24T16:00:00Z", "platform", 1),
    ]
    daily = await store.aggregate(["outcome"], start, end, "day")
    assert [(r["bucket"], r["outcome"], r["calls"]) for r in daily] == [
        ("2026-11-23T00:00:00Z", "ok", 3),
        ("2026-11-24T00:00:00Z", "denied", 1),
    ]
    assert await store.aggregate(["team"], end, end + timedelta(days=1)) == []
