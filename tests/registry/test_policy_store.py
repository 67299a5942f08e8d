"""SqlPolicyStore on SQLite and PostgreSQL: policies and the version every write bumps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from tollhouse.registry.migrate import create_engine_for, upgrade
from tollhouse.registry.models import PolicyEntry
from tollhouse.registry.policy_store import SqlPolicyStore

pytestmark = pytest.mark.anyio

GRANT = 'permit(principal in Team::"platform", action == Action::"call_tool", resource in Server::"calc");'


@pytest.fixture
async def policies(database_url: str) -> AsyncIterator[SqlPolicyStore]:
    await anyio.to_thread.run_sync(upgrade, database_url)
    engine = create_engine_for(database_url)
    try:
        yield SqlPolicyStore(engine)
    finally:
        engine.dispose()


async def test_writes_bump_the_version_and_load_is_one_consistent_read(policies: SqlPolicyStore) -> None:
    assert await policies.load() == (0, [])
    version = await policies.put([PolicyEntry(id="b", cedar=GRANT, updated_by="ada")])
    assert version == 1
    sugar = {"allow": {"team": "support", "tools": ["files__read_*"]}}
    assert (
        await policies.put([PolicyEntry(id="a", cedar="permit(principal, action, resource);", sugar=sugar)])
        == 2
    )
    version, entries = await policies.load()
    assert version == 2 and [e.id for e in entries] == ["a", "b"]
    assert entries[0].sugar == sugar and entries[1].updated_by == "ada" and entries[1].created_at is not None
    # Replace one and delete the other in one transaction: one version step.
    assert await policies.put([PolicyEntry(id="a", cedar=GRANT, description="now cedar")], delete=["b"]) == 3
    version, entries = await policies.load()
    assert version == 3 and [(e.id, e.sugar, e.description) for e in entries] == [("a", None, "now cedar")]
    assert await policies.put([], delete=["a"]) == 4
    assert await policies.load() == (4, [])
    assert await policies.version() == 4
