"""One transaction per store call, off the event loop: what the registry's small stores share.

The stores run synchronous SQLAlchemy in a worker thread; writes use the engine variant that
takes SQLite's write lock at BEGIN (see `migrate.with_write_lock`), so a read-then-write
transaction never fails half-way against a concurrent writer.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from tollhouse.registry.migrate import with_write_lock
from tollhouse.registry.tables import utc

__all__ = ["Clock", "TransactionalStore", "utcnow"]

T = TypeVar("T")
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


class TransactionalStore:
    """Base of a store whose every call is one transaction in a worker thread."""

    def __init__(self, engine: sa.Engine, *, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._reads = sessionmaker(engine, expire_on_commit=False)
        self._writes = sessionmaker(with_write_lock(engine), expire_on_commit=False)

    async def _run(self, work: Callable[[Session], T], *, write: bool = False) -> T:
        def transaction() -> T:
            with (self._writes if write else self._reads).begin() as session:
                return work(session)

        return await anyio.to_thread.run_sync(transaction)

    def _now(self) -> datetime:
        return utc(self._clock())
