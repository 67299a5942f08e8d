"""Retention on SQLite and PostgreSQL: purge down to an anchoring checkpoint, record it, checkpoint it."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa

from tests.databases import scratch_postgres
from tollhouse.audit.chain import CheckpointSigner, verify
from tollhouse.audit.records import new_record
from tollhouse.audit.retention import apply_retention, run_retention
from tollhouse.audit.verifier import verify_store
from tollhouse.audit.writer import PURPOSE, AuditTrail, signing_keys
from tollhouse.auth.keyring import KeyRing
from tollhouse.gateway.auditing import Auditor
from tollhouse.gateway.settings import AuditSettings
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade
from tollhouse.registry.tables import AUDIT_RECORDS

pytestmark = pytest.mark.anyio

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)
DAYS = 400
OLD = NOW - timedelta(days=DAYS + 30)
YOUNG = NOW - timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of this test's own (not migrated)."""
    if request.param == "sqlite":
        yield database_url_for(None, str(tmp_path / "data"))
        return
    with scratch_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    made = create_engine_for(database_url)
    try:
        yield made
    finally:
        made.dispose()


class Setup:
    """A running trail for node gw-a, its recorder, and a signer with the trail's own key."""

    def __init__(self, store: SqlAuditStore, ring: KeyRing) -> None:
        self.store = store
        self.ring = ring
        self.trail = AuditTrail(store, "gw-a", lambda: ring, checkpoint_seconds=3600)
        self.auditor = Auditor(self.trail, AuditSettings())
        self.signer = CheckpointSigner(ring.derive(PURPOSE), ring.active_kid)

    async def append(self, node: str, when: datetime, count: int) -> None:
        bodies = [
            new_record("mcp", "tools/call", who={"subject": "alice"}, outcome={"result": "ok"}, when=when)
        ]
        await self.store.append(node, bodies * count)

    async def checkpoint(self, node: str, seq: int) -> None:
        record = await self.store.get(node, seq)
        assert record is not None
        assert await self.store.add_checkpoint(self.signer.checkpoint(node, seq, record["hash"], "t"))

    async def seqs(self, node: str) -> list[int]:
        return [seq for page in [p async for p in self.store.pages(node)] for seq, _, _ in page]


@asynccontextmanager
async def running(engine: sa.Engine) -> AsyncIterator[Setup]:
    setup = Setup(SqlAuditStore(engine), KeyRing.generate())
    async with anyio.create_task_group() as tg:
        await tg.start(setup.trail.run)
        yield setup
        tg.cancel_scope.cancel()


async def test_each_node_is_purged_down_to_an_anchoring_checkpoint_and_the_rest_verifies(
    database_url: str, engine: sa.Engine
) -> None:
    upgrade(database_url)
    async with running(engine) as s:
        await s.append("gw-a", OLD, 5)
        await s.checkpoint("gw-a", 3)
        await s.append("gw-a", OLD + timedelta(days=1), 3)
        await s.checkpoint("gw-a", 8)
        await s.append("gw-a", YOUNG, 2)
        await s.checkpoint("gw-a", 10)
        await s.append("gw-b", OLD, 4)  # a replica's chain, wholly past retention
        await s.checkpoint("gw-b", 2)
        await s.checkpoint("gw-b", 4)
        await s.append("gw-c", OLD, 3)  # never checkpointed: nothing anchors a cut

        summary = await apply_retention(s.trail, s.auditor, DAYS, now=NOW)

        assert summary == {
            "cutoff": "2026-04-27T12:00:00.000Z",
            "days": DAYS,
            "purged": 10,
            "deleted": {"gw-a": 8, "gw-b": 2},
            "through": {"gw-a": 8, "gw-b": 2},
        }
        assert await s.seqs("gw-a") == [9, 10, 11]
        # A node keeps its last record (a chain of checkpoints alone would look deleted).
        assert await s.seqs("gw-b") == [3, 4]
        assert await s.seqs("gw-c") == [1, 2, 3]
        record = await s.store.get("gw-a", 11)
        assert record is not None
        assert (record["kind"], record["action"]) == ("system", "audit.retention")
        assert record["what"] == summary
        # The run is followed by a checkpoint that covers its own record.
        latest = {c["node"]: c["seq"] for c in await s.store.latest_checkpoints()}
        assert latest == {"gw-a": 11, "gw-b": 4}
        keys = signing_keys(s.ring)
        found = await verify_store(s.store, keys)
        assert found.intact, found.problems
        everything = [r async for r in s.store.records()]
        assert verify(everything, await s.store.checkpoints(), keys).intact
        assert (await apply_retention(s.trail, s.auditor, DAYS, now=NOW))["deleted"] == {}


async def test_nothing_is_purged_when_no_checkpoint_anchors_the_cut(
    database_url: str, engine: sa.Engine
) -> None:
    upgrade(database_url)
    async with running(engine) as s:
        await s.append("gw-a", OLD, 5)
        await s.append("gw-a", YOUNG, 2)
        await s.checkpoint("gw-a", 7)  # covers young records only

        summary = await apply_retention(s.trail, s.auditor, DAYS, now=NOW)

        assert (summary["purged"], summary["deleted"], summary["through"]) == (0, {}, {})
        assert await s.seqs("gw-a") == list(range(1, 9))
        last = await s.store.get("gw-a", 8)
        assert last is not None and last["action"] == "audit.retention"
        assert last["what"] == {"cutoff": summary["cutoff"], "days": DAYS, "purged": 0}
        assert [c["seq"] for c in await s.store.latest_checkpoints()] == [8]


async def test_a_record_that_no_longer_matches_its_checkpoint_is_kept_as_evidence(
    database_url: str, engine: sa.Engine
) -> None:
    upgrade(database_url)
    async with running(engine) as s:
        await s.append("gw-a", OLD, 4)
        await s.checkpoint("gw-a", 3)
        await s.append("gw-a", YOUNG, 1)
        with engine.begin() as conn:
            text = conn.execute(
                sa.select(AUDIT_RECORDS.c.record).where(AUDIT_RECORDS.c.seq == 3)
            ).scalar_one()
            edited = text.replace('"subject":"alice"', '"subject":"mallory"')
            conn.execute(sa.update(AUDIT_RECORDS).where(AUDIT_RECORDS.c.seq == 3).values(record=edited))

        summary = await apply_retention(s.trail, s.auditor, DAYS, now=NOW)

        assert summary["deleted"] == {}
        assert await s.seqs("gw-a") == [1, 2, 3, 4, 5, 6]


async def test_the_loop_runs_every_interval_and_a_failing_store_only_costs_a_round(
    database_url: str, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    settings = AuditSettings(retention_days=DAYS, retention_interval_seconds=123)
    rounds: list[float] = []
    third_round = anyio.Event()

    async def sleep(seconds: float) -> None:
        rounds.append(seconds)
        if len(rounds) == 2:  # the first run found no tables; now there are
            await anyio.to_thread.run_sync(upgrade, database_url)
        if len(rounds) == 3:
            third_round.set()
            await anyio.sleep_forever()

    caplog.set_level(logging.ERROR, logger="tollhouse.audit")
    async with running(engine) as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(run_retention, s.trail, s.auditor, settings, sleep=sleep))
            with anyio.fail_after(10):
                await third_round.wait()
            tg.cancel_scope.cancel()
        runs = [r for r in [r async for r in s.store.records()] if r["action"] == "audit.retention"]

    assert rounds == [123, 123, 123]
    assert any("audit retention failed" in m for m in caplog.messages)
    assert len(runs) == 1 and runs[0]["what"]["days"] == DAYS
