"""Registry fixtures: a scratch database per test on SQLite and on PostgreSQL, and a stepping clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.databases import scratch_postgres
from tollhouse.registry.migrate import database_url_for
from tollhouse.registry.store import SqlRegistryStore, open_sql_store

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class StepClock:
    """A clock that moves one second forward on every reading."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of its own for this test."""
    if request.param == "sqlite":
        yield database_url_for(None, str(tmp_path / "data"))
        return
    with scratch_postgres(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def clock() -> StepClock:
    """The store's clock."""
    return StepClock()


@pytest.fixture
async def store(database_url: str, clock: StepClock) -> AsyncIterator[SqlRegistryStore]:
    """A migrated store on this test's database, closed (engine disposed) afterwards."""
    opened = await open_sql_store(database_url, "unused", clock=clock)
    try:
        yield opened
    finally:
        await opened.close()
