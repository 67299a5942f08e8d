"""The audit trail in SQL: each node appends to its own hash chain, one transaction per batch.

`append` reads the node's head (its last record, or — when retention purged every record — its
last checkpoint) and seals the batch onto it inside the same transaction, so what is committed
is always a contiguous chain. The (node, seq) primary key refuses a second writer that shares a
node name: its batch fails rather than forking the chain. Records are stored as their RFC 8785
canonical JSON, exactly what `audit export` writes and `audit verify` hashes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import rfc8785
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.audit.chain import GENESIS, seal
from tollhouse.registry.tables import AUDIT_CHECKPOINTS, AUDIT_RECORDS, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["SqlAuditStore"]


def _time_of(record: Mapping[str, Any]) -> datetime:
    return utc(datetime.fromisoformat(str(record["time"])))


class SqlAuditStore(TransactionalStore):
    """Audit records and checkpoints over a sync SQLAlchemy engine."""

    async def append(self, node: str, bodies: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Seal `bodies` (each with an RFC 3339 `time`) onto `node`'s chain and commit them together."""

        def work(session: Session) -> list[dict[str, Any]]:
            seq, prev = _head(session, node)
            sealed: list[dict[str, Any]] = []
            for body in bodies:
                seq += 1
                record = seal(body, node, seq, prev)
                prev = record["hash"]
                sealed.append(record)
            if sealed:
                session.execute(
                    sa.insert(AUDIT_RECORDS),
                    [
                        {
                            "node": node,
                            "seq": r["seq"],
                            "time": _time_of(r),
                            "hash": r["hash"],
                            "record": rfc8785.dumps(r).decode(),
                        }
                        for r in sealed
                    ],
                )
            return sealed

        return await self._run(work, write=True)

    async def head(self, node: str) -> tuple[int, str]:
        """(last seq, its hash) of `node`'s chain; (0, GENESIS) for a chain not started."""
        return await self._run(lambda session: _head(session, node))

    async def add_checkpoint(self, checkpoint: Mapping[str, Any]) -> bool:
        """Store a signed checkpoint; False when that (node, seq) already has one."""

        def work(session: Session) -> bool:
            exists = session.execute(
                sa.select(AUDIT_CHECKPOINTS.c.seq).where(
                    AUDIT_CHECKPOINTS.c.node == checkpoint["node"],
                    AUDIT_CHECKPOINTS.c.seq == checkpoint["seq"],
                )
            ).first()
            if exists is not None:
                return False
            session.execute(
                sa.insert(AUDIT_CHECKPOINTS).values(
                    node=checkpoint["node"],
                    seq=checkpoint["seq"],
                    created_at=self._now(),
                    checkpoint=json.dumps(dict(checkpoint), sort_keys=True),
                )
            )
            return True

        return await self._run(work, write=True)

    async def checkpoints(self) -> list[dict[str, Any]]:
        """Every checkpoint, by node then seq."""

        def work(session: Session) -> list[dict[str, Any]]:
            rows = session.execute(
                sa.select(AUDIT_CHECKPOINTS.c.checkpoint).order_by(
                    AUDIT_CHECKPOINTS.c.node, AUDIT_CHECKPOINTS.c.seq
                )
            )
            return [json.loads(r.checkpoint) for r in rows]

        return await self._run(work)

    async def records(
        self, *, since: datetime | None = None, until: datetime | None = None, page: int = 5000
    ) -> AsyncIterator[dict[str, Any]]:
        """Records by node then seq (optionally within [since, until)), read a page at a time."""
        after: tuple[str, int] | None = None
        while True:
            batch = await self._run(
                functools.partial(_page, after=after, since=since, until=until, page=page)
            )
            for text in batch:
                yield json.loads(text)
            if len(batch) < page:
                return
            last = json.loads(batch[-1])
            after = (str(last["node"]), int(last["seq"]))


def _head(session: Session, node: str) -> tuple[int, str]:
    row = session.execute(
        sa.select(AUDIT_RECORDS.c.seq, AUDIT_RECORDS.c.hash)
        .where(AUDIT_RECORDS.c.node == node)
        .order_by(AUDIT_RECORDS.c.seq.desc())
        .limit(1)
    ).first()
    if row is not None:
        return int(row.seq), str(row.hash)
    mark = session.execute(
        sa.select(AUDIT_CHECKPOINTS.c.checkpoint)
        .where(AUDIT_CHECKPOINTS.c.node == node)
        .order_by(AUDIT_CHECKPOINTS.c.seq.desc())
        .limit(1)
    ).first()
    if mark is not None:
        checkpoint = json.loads(mark.checkpoint)
        return int(checkpoint["seq"]), str(checkpoint["head"])
    return 0, GENESIS


def _page(
    session: Session,
    *,
    after: tuple[str, int] | None,
    since: datetime | None,
    until: datetime | None,
    page: int,
) -> list[str]:
    query = sa.select(AUDIT_RECORDS.c.record).order_by(AUDIT_RECORDS.c.node, AUDIT_RECORDS.c.seq).limit(page)
    if after is not None:
        node, seq = after
        query = query.where(
            sa.or_(
                AUDIT_RECORDS.c.node > node, sa.and_(AUDIT_RECORDS.c.node == node, AUDIT_RECORDS.c.seq > seq)
            )
        )
    if since is not None:
        query = query.where(AUDIT_RECORDS.c.time >= utc(since))
    if until is not None:
        query = query.where(AUDIT_RECORDS.c.time < utc(until))
    return [r.record for r in session.execute(query)]
