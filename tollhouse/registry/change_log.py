"""SqlChangeLog: the table of change notices replicas follow (gateway/changes.py reads it).

Appending a notice is one short insert; following is one indexed range read by sequence
number. The log outlives any doorbell message, so a replica that missed one (a Redis blip, a
restart) still sees every change, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.registry.tables import CHANGE_NOTICES, ChangeNoticeRow, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["NOTIFY_CHANNEL", "ChangeNotice", "SqlChangeLog"]

NOTIFY_CHANNEL = "tollhouse_changes"


@dataclass(frozen=True)
class ChangeNotice:
    """One change: which replica made it, what kind (topic), about what (subject), when."""

    seq: int
    node: str
    topic: str
    subject: str
    at: datetime


class SqlChangeLog(TransactionalStore):
    """Append and read change notices."""

    async def append(self, node: str, topic: str, subject: str = "") -> int:
        """Record a notice; returns its sequence number."""
        at = self._now()

        def work(session: Session) -> int:
            row = ChangeNoticeRow(node=node, topic=topic, subject=subject, at=at)
            session.add(row)
            session.flush()
            assert row.seq is not None
            if session.get_bind().dialect.name == "postgresql":
                # Delivered at commit, so a listener never reads the log before the row is there.
                session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))
            return row.seq

        return await self._run(work, write=True)

    async def latest(self) -> int:
        """The newest sequence number (0 when the log is empty)."""

        def work(session: Session) -> int:
            return int(session.execute(sa.select(sa.func.max(CHANGE_NOTICES.c.seq))).scalar() or 0)

        return await self._run(work)

    async def since(self, seq: int, *, limit: int = 1000) -> list[ChangeNotice]:
        """Notices after `seq`, oldest first."""

        def work(session: Session) -> list[ChangeNotice]:
            rows = session.execute(
                sa.select(CHANGE_NOTICES)
                .where(CHANGE_NOTICES.c.seq > seq)
                .order_by(CHANGE_NOTICES.c.seq)
                .limit(limit)
            ).all()
            return [_notice(row) for row in rows]

        return await self._run(work)

    async def recent(self, topic: str, after: datetime) -> list[ChangeNotice]:
        """Notices of one topic newer than `after` (a starting replica's view of what still matters)."""
        after = utc(after)

        def work(session: Session) -> list[ChangeNotice]:
            rows = session.execute(
                sa.select(CHANGE_NOTICES)
                .where(CHANGE_NOTICES.c.topic == topic, CHANGE_NOTICES.c.at > after)
                .order_by(CHANGE_NOTICES.c.seq)
            ).all()
            return [_notice(row) for row in rows]

        return await self._run(work)

    async def prune(self, before: datetime) -> int:
        """Delete notices older than `before`; returns how many."""
        before = utc(before)

        def work(session: Session) -> int:
            result = session.execute(sa.delete(CHANGE_NOTICES).where(CHANGE_NOTICES.c.at < before))
            return int(getattr(result, "rowcount", 0) or 0)

        return await self._run(work, write=True)


def _notice(row: sa.Row[tuple[object, ...]]) -> ChangeNotice:
    values = row._mapping
    at = values["at"]
    return ChangeNotice(
        seq=int(values["seq"]),
        node=str(values["node"]),
        topic=str(values["topic"]),
        subject=str(values["subject"]),
        at=at,
    )
