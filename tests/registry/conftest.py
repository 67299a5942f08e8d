"""Registry fixtures: a scratch database per test on SQLite and on PostgreSQL, and a stepping clock."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

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


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    """A fresh database on the server of `server_url`, dropped on exit; yields its URL."""
    base = sa.make_url(database_url_for(server_url, ""))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"th_{secrets.token_hex(8)}"
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        admin.dispose()


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
