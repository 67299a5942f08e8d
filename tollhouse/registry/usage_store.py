"""SqlUsageStore: usage events, their per-sink outbox, and the aggregates reports read.

An event row and one outbox row per configured sink are inserted in one transaction, so an
event the database has is an event every sink will get (at least once). Shipping claims a
batch of due outbox rows by pushing their `next_attempt_at` forward by a lease (with
`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas take different rows), delivers them, and
deletes them on success or reschedules them with backoff on failure; a replica that dies
mid-delivery leaves rows whose lease runs out and which another replica redelivers. Event
ids never change, so receivers deduplicate by id.

Event rows are kept after delivery: reports and the chargeback CSV aggregate them with SQL
GROUP BY (no rollup tables to drift), and trimming a sink's backlog drops only its outbox
rows, never the events.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.registry.tables import USAGE_EVENTS, USAGE_OUTBOX, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["DIMENSIONS", "Claimed", "SqlUsageStore", "UsageRow", "insert_usage"]

# Report dimension -> column; `client` is the client id.
DIMENSIONS: Mapping[str, str] = {
    "subject": "subject",
    "team": "team",
    "client": "client_id",
    "server": "server",
    "tool": "tool",
    "outcome": "outcome",
    "method": "method",
    "currency": "currency",
}
Bucket = Literal["hour", "day"]


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The columns of one event, as the writer inserts them."""

    id: str
    time: datetime
    subject: str
    team: str | None
    client_id: str | None
    server: str
    tool: str
    method: str
    outcome: str
    duration_ms: int
    upstream_ms: int | None
    request_bytes: int
    response_bytes: int
    tokens_in: int | None
    tokens_out: int | None
    cost_micro: int
    currency: str | None
    snapshot_version: int
    event: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """One outbox row claimed for delivery."""

    seq: int
    event_id: str
    event: str
    attempts: int


class SqlUsageStore(TransactionalStore):
    """Usage events over a sync SQLAlchemy engine; each call is one transaction in a worker thread."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self._dialect = engine.dialect.name

    async def insert(self, rows: Sequence[UsageRow], sinks: Sequence[str], now: datetime) -> None:
        """Insert events and their outbox rows (one per sink), in one transaction; known ids are skipped."""

        await self._run(functools.partial(insert_usage, rows=rows, sinks=sinks, now=now), write=True)

    async def claim(self, sink: str, limit: int, now: datetime, lease_seconds: float) -> list[Claimed]:
        """Up to `limit` due rows of `sink`, oldest first, leased to the caller for `lease_seconds`."""

        def work(session: Session) -> list[Claimed]:
            due = utc(now)
            query = (
                sa.select(USAGE_OUTBOX.c.seq, USAGE_OUTBOX.c.event_id, USAGE_OUTBOX.c.attempts)
                .where(USAGE_OUTBOX.c.sink == sink, USAGE_OUTBOX.c.next_attempt_at <= due)
                .order_by(USAGE_OUTBOX.c.seq)
                .limit(limit)
            )
            if self._dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            picked = session.execute(query).all()
            if not picked:
                return []
            seqs = [p.seq for p in picked]
            session.execute(
                sa.update(USAGE_OUTBOX)
                .where(USAGE_OUTBOX.c.seq.in_(seqs))
                .values(next_attempt_at=due + timedelta(seconds=lease_seconds))
            )
            events = dict(
                session.execute(
                    sa.select(USAGE_EVENTS.c.id, USAGE_EVENTS.c.event).where(
                        USAGE_EVENTS.c.id.in_([p.event_id for p in picked])
                    )
                ).all()
            )
            return [Claimed(p.seq, p.event_id, events[p.event_id], p.attempts) for p in picked]

        return await self._run(work, write=True)

    async def delivered(self, seqs: Sequence[int]) -> None:
        """Forget delivered outbox rows."""

        def work(session: Session) -> None:
            session.execute(sa.delete(USAGE_OUTBOX).where(USAGE_OUTBOX.c.seq.in_(list(seqs))))

        await self._run(work, write=True)

    async def retry_at(self, seqs: Sequence[int], when: datetime) -> None:
        """Reschedule failed rows (one more attempt each)."""

        def work(session: Session) -> None:
            session.execute(
                sa.update(USAGE_OUTBOX)
                .where(USAGE_OUTBOX.c.seq.in_(list(seqs)))
                .values(next_attempt_at=utc(when), attempts=USAGE_OUTBOX.c.attempts + 1)
            )

        await self._run(work, write=True)

    async def trim(self, sink: str, keep: int) -> int:
        """Drop `sink`'s oldest outbox rows beyond `keep`; how many were dropped."""

        def work(session: Session) -> int:
            count = session.scalar(
                sa.select(sa.func.count()).select_from(USAGE_OUTBOX).where(USAGE_OUTBOX.c.sink == sink)
            )
            excess = int(count or 0) - keep
            if excess <= 0:
                return 0
            oldest = (
                sa.select(USAGE_OUTBOX.c.seq)
                .where(USAGE_OUTBOX.c.sink == sink)
                .order_by(USAGE_OUTBOX.c.seq)
                .limit(excess)
                .scalar_subquery()
            )
            result = session.execute(sa.delete(USAGE_OUTBOX).where(USAGE_OUTBOX.c.seq.in_(oldest)))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

        return await self._run(work, write=True)

    async def backlog(self) -> dict[str, dict[str, Any]]:
        """Per sink: undelivered rows, the oldest one's event time, and the most attempts any row had."""

        def work(session: Session) -> dict[str, dict[str, Any]]:
            rows = session.execute(
                sa.select(
                    USAGE_OUTBOX.c.sink,
                    sa.func.count(),
                    sa.func.min(USAGE_EVENTS.c.time),
                    sa.func.max(USAGE_OUTBOX.c.attempts),
                )
                .join(USAGE_EVENTS, USAGE_EVENTS.c.id == USAGE_OUTBOX.c.event_id)
                .group_by(USAGE_OUTBOX.c.sink)
            ).all()
            return {
                r[0]: {"pending": int(r[1]), "oldest": _aware(r[2]), "max_attempts": int(r[3] or 0)}
                for r in rows
            }

        return await self._run(work)

    async def count(self) -> int:
        """How many events the table holds."""

        def work(session: Session) -> int:
            return int(session.scalar(sa.select(sa.func.count()).select_from(USAGE_EVENTS)) or 0)

        return await self._run(work)

    async def aggregate(
        self, by: Sequence[str], start: datetime, end: datetime, bucket: Bucket | None = None
    ) -> list[dict[str, Any]]:
        """Totals of the events in [start, end) grouped by `by` (DIMENSIONS keys) and currency.

        With `bucket`, also by UTC hour or day (`bucket` key, ISO start of the bucket).
        """
        columns: list[Any] = [USAGE_EVENTS.c[DIMENSIONS[d]].label(d) for d in by]
        if "currency" not in by:
            columns.append(USAGE_EVENTS.c.currency.label("currency"))
        if bucket is not None:
            columns.insert(0, self._bucket(bucket).label("bucket"))
        totals = [
            sa.func.count().label("calls"),
            sa.func.sum(USAGE_EVENTS.c.cost_micro).label("cost_micro"),
            sa.func.sum(USAGE_EVENTS.c.duration_ms).label("duration_ms"),
            sa.func.sum(sa.func.coalesce(USAGE_EVENTS.c.upstream_ms, 0)).label("upstream_ms"),
            sa.func.sum(USAGE_EVENTS.c.request_bytes).label("request_bytes"),
            sa.func.sum(USAGE_EVENTS.c.response_bytes).label("response_bytes"),
            sa.func.sum(sa.func.coalesce(USAGE_EVENTS.c.tokens_in, 0)).label("tokens_in"),
            sa.func.sum(sa.func.coalesce(USAGE_EVENTS.c.tokens_out, 0)).label("tokens_out"),
            sa.func.sum(sa.case((USAGE_EVENTS.c.outcome == "ok", 1), else_=0)).label("ok"),
        ]

        def work(session: Session) -> list[dict[str, Any]]:
            query = (
                sa.select(*columns, *totals)
                .where(USAGE_EVENTS.c.time >= utc(start), USAGE_EVENTS.c.time < utc(end))
                .group_by(*columns)
                .order_by(*columns)
            )
            out: list[dict[str, Any]] = []
            for row in session.execute(query).mappings():
                item = dict(row)
                for key in (t.name for t in totals):
                    item[key] = int(item[key] or 0)
                if bucket is not None:
                    item["bucket"] = _bucket_text(item["bucket"])
                out.append(item)
            return out

        return await self._run(work)

    def _bucket(self, bucket: Bucket) -> Any:
        column = USAGE_EVENTS.c.time
        if self._dialect == "postgresql":
            return sa.func.date_trunc(bucket, sa.func.timezone("UTC", column))
        return sa.func.strftime("%Y-%m-%dT%H:00:00" if bucket == "hour" else "%Y-%m-%dT00:00:00", column)


def _values(row: UsageRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "time": utc(row.time),
        "subject": row.subject,
        "team": row.team,
        "client_id": row.client_id,
        "server": row.server,
        "tool": row.tool,
        "method": row.method,
        "outcome": row.outcome,
        "duration_ms": row.duration_ms,
        "upstream_ms": row.upstream_ms,
        "request_bytes": row.request_bytes,
        "response_bytes": row.response_bytes,
        "tokens_in": row.tokens_in,
        "tokens_out": row.tokens_out,
        "cost_micro": row.cost_micro,
        "currency": row.currency,
        "snapshot_version": row.snapshot_version,
        "event": row.event,
    }


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite's MIN() is text
    assert isinstance(moment, datetime)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _bucket_text(value: Any) -> str:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    return f"{value}Z"


def insert_usage(session: Session, *, rows: Sequence[UsageRow], sinks: Sequence[str], now: datetime) -> None:
    """Insert events and their outbox rows inside `session`'s transaction; known ids are skipped.

    The audit writer calls this in its own transaction, so a call's usage event and its audit
    record commit together (SECURITY_GOALS M4).
    """
    if not rows:
        return
    ids = [r.id for r in rows]
    known = set(session.scalars(sa.select(USAGE_EVENTS.c.id).where(USAGE_EVENTS.c.id.in_(ids))))
    fresh = [r for r in rows if r.id not in known]
    if not fresh:
        return
    session.execute(sa.insert(USAGE_EVENTS), [_values(r) for r in fresh])
    if sinks:
        due = utc(now)
        session.execute(
            sa.insert(USAGE_OUTBOX),
            [
                {"sink": s, "event_id": r.id, "attempts": 0, "next_attempt_at": due}
                for r in fresh
                for s in sinks
            ],
        )
