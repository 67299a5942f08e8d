"""The audit trail in SQL: each node appends to its own hash chain, one transaction per batch.

`append` reads the node's head (its last record, or — when retention purged every record — its
last checkpoint) and seals the batch onto it inside the same transaction, so what is committed
is always a contiguous chain. The (node, seq) primary key refuses a second writer that shares a
node name: its batch fails rather than forking the chain. Records are stored as their RFC 8785
canonical JSON, exactly what `audit export` writes and `audit verify` hashes; a few of their
fields are copied into indexed columns for `search` (the filters of the console and the API).
Pages are newest first, (time, node, seq) descending, continued with a keyset cursor.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.audit.chain import GENESIS, seal_canonical
from tollhouse.audit.records import rfc3339_ms
from tollhouse.registry.tables import AUDIT_CHECKPOINTS, AUDIT_RECORDS, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["FILTERS", "AuditKey", "CallCounts", "SqlAuditStore"]

# What `search` filters on by exact match (besides the time window `since`/`until`).
FILTERS = ("subject", "team", "client_id", "server", "tool", "outcome", "trace_id", "kind", "action")
# Longer values are not copied into the columns (the record keeps them): a client-chosen tool
# name must not exceed an index entry's size limit and so make a whole batch fail to commit.
_MAX_COLUMN = 256


@dataclass(frozen=True)
class CallCounts:
    """Calls in a time window (`SqlAuditStore.call_counts`)."""

    # (the minute's start, outcome, records), minutes in no particular order.
    by_minute: list[tuple[datetime, str | None, int]]
    # (server, tool, records, of them errors, of them denials), busiest first.
    top_tools: list[tuple[str | None, str | None, int, int, int]]


@dataclass(frozen=True, order=True)
class AuditKey:
    """A record's place in the newest-first order: what a page cursor carries."""

    time: datetime
    node: str
    seq: int

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> AuditKey:
        """The key of a sealed record."""
        return cls(_time_of(record), str(record["node"]), int(record["seq"]))


_APPEND_ATTEMPTS = 20


def _time_of(record: Mapping[str, Any]) -> datetime:
    return utc(datetime.fromisoformat(str(record["time"])))


def _columns(record: Mapping[str, Any]) -> dict[str, str | None]:
    """The filter columns of one record (migration 0011 fills older rows by the same rule)."""

    def part(name: str) -> Mapping[str, Any]:
        value = record.get(name)
        return value if isinstance(value, Mapping) else {}

    who, what = part("who"), part("what")
    teams = who.get("teams")
    values = {
        "kind": record.get("kind"),
        "action": record.get("action"),
        "subject": who.get("subject"),
        "client_id": who.get("client_id"),
        "team": teams[0] if isinstance(teams, list) and teams else None,
        "server": what.get("server"),
        "tool": what.get("tool"),
        "outcome": part("outcome").get("result"),
        "trace_id": part("correlation").get("trace_id"),
    }
    return {k: v if isinstance(v, str) and len(v) <= _MAX_COLUMN else None for k, v in values.items()}


class SqlAuditStore(TransactionalStore):
    """Audit records and checkpoints over a sync SQLAlchemy engine."""

    async def append(
        self,
        node: str,
        bodies: Sequence[Mapping[str, Any]],
        *,
        head: tuple[int, str] | None = None,
        extra: Callable[[Session], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Seal `bodies` (each with an RFC 3339 `time`) onto `node`'s chain and commit them together.

        `head` is the writer's own idea of the chain's head (its last commit), which saves a
        read per batch; when another writer moved the head meanwhile, the insert conflicts
        and the batch is sealed again onto the head read from the database. `extra` writes
        more rows in the same transaction (the calls' usage events).
        """
        known = head

        def work(session: Session) -> list[dict[str, Any]]:
            seq, prev = known if known is not None else _head(session, node)
            sealed: list[dict[str, Any]] = []
            rows: list[dict[str, Any]] = []
            for body in bodies:
                seq += 1
                record, text = seal_canonical(body, node, seq, prev)
                prev = record["hash"]
                sealed.append(record)
                rows.append(
                    {
                        "node": node,
                        "seq": seq,
                        "time": _time_of(record),
                        "hash": prev,
                        "record": text,
                        **_columns(record),
                    }
                )
            if rows:
                session.execute(sa.insert(AUDIT_RECORDS), rows)
            if extra is not None:
                extra(session)
            return sealed

        # Two writers sharing a node name (replicas left at the default host name) race for
        # the same seq: the loser's insert hits the primary key and is sealed again onto the
        # new head, so the node's chain stays one contiguous, database-sequenced chain.
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                return await self._run(work, write=True)
            except sa.exc.IntegrityError:
                known = None
                if attempt == _APPEND_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

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

        try:
            return await self._run(work, write=True)
        except sa.exc.IntegrityError:
            return False  # another writer of the same node stored this checkpoint first

    async def checkpoints(
        self, node: str | None = None, *, first: int | None = None, last: int | None = None
    ) -> list[dict[str, Any]]:
        """Every checkpoint (of `node`, with first <= seq <= last when given), by node then seq."""

        def work(session: Session) -> list[dict[str, Any]]:
            query = sa.select(AUDIT_CHECKPOINTS.c.checkpoint).order_by(
                AUDIT_CHECKPOINTS.c.node, AUDIT_CHECKPOINTS.c.seq
            )
            if node is not None:
                query = query.where(AUDIT_CHECKPOINTS.c.node == node)
            if first is not None:
                query = query.where(AUDIT_CHECKPOINTS.c.seq >= first)
            if last is not None:
                query = query.where(AUDIT_CHECKPOINTS.c.seq <= last)
            return [json.loads(r.checkpoint) for r in session.execute(query)]

        return await self._run(work)

    async def latest_checkpoints(self) -> list[dict[str, Any]]:
        """Each node's newest checkpoint, by node."""

        def work(session: Session) -> list[dict[str, Any]]:
            newest = _newest_per_node(session, AUDIT_CHECKPOINTS, AUDIT_CHECKPOINTS.c.checkpoint)
            return [json.loads(r.checkpoint) for r in newest]

        return await self._run(work)

    async def anchor(self, node: str, seq: int) -> dict[str, Any] | None:
        """`node`'s newest checkpoint before `seq` (what a chain starting at `seq` hangs from)."""

        def work(session: Session) -> dict[str, Any] | None:
            text = session.execute(
                sa.select(AUDIT_CHECKPOINTS.c.checkpoint)
                .where(AUDIT_CHECKPOINTS.c.node == node, AUDIT_CHECKPOINTS.c.seq < seq)
                .order_by(AUDIT_CHECKPOINTS.c.seq.desc())
                .limit(1)
            ).scalar()
            return json.loads(text) if text is not None else None

        return await self._run(work)

    async def covering(self, node: str, seq: int) -> dict[str, Any] | None:
        """`node`'s oldest checkpoint at or after `seq`: the one that anchors that record."""

        def work(session: Session) -> dict[str, Any] | None:
            text = session.execute(
                sa.select(AUDIT_CHECKPOINTS.c.checkpoint)
                .where(AUDIT_CHECKPOINTS.c.node == node, AUDIT_CHECKPOINTS.c.seq >= seq)
                .order_by(AUDIT_CHECKPOINTS.c.seq)
                .limit(1)
            ).scalar()
            return json.loads(text) if text is not None else None

        return await self._run(work)

    async def search(
        self, filters: Mapping[str, Any], *, before: AuditKey | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], AuditKey | None]:
        """Up to `limit` records matching `filters`, newest first and older than `before`; and the
        cursor of the next page (None when this is the last).

        `filters` holds `since`/`until` (datetimes: since <= time < until) and exact matches on
        the names in FILTERS; None values are ignored. A record whose stored text is not JSON
        comes back as {node, seq, time, "unreadable": true} (`audit verify` names it).

        Raises:
            ValueError: a filter name that is not one of those.
        """
        _check_filters(filters)
        query = _newest_first(filters, before, limit + 1)
        rows = await self._run(functools.partial(_rows, query))
        items = [_loaded(r.node, int(r.seq), r.time, r.record) for r in rows[:limit]]
        if len(rows) <= limit:
            return items, None
        last = rows[limit - 1]
        return items, AuditKey(utc(last.time), last.node, int(last.seq))

    async def matching(
        self, filters: Mapping[str, Any], *, page: int = 1000
    ) -> AsyncIterator[list[tuple[AuditKey, str]]]:
        """Every record matching `filters` (as `search` takes them), newest first, a page at a time:
        each as its key and its text exactly as stored (RFC 8785).

        Each page is read when asked for and continues below the last key of the one before,
        so records committed meanwhile with a newer time never join a listing under way.

        Raises:
            ValueError: a filter name that is not one of FILTERS, since or until.
        """
        _check_filters(filters)
        before: AuditKey | None = None
        while True:
            rows = await self._run(functools.partial(_rows, _newest_first(filters, before, page)))
            if rows:
                yield [(AuditKey(utc(r.time), r.node, int(r.seq)), r.record) for r in rows]
            if len(rows) < page:
                return
            last = rows[-1]
            before = AuditKey(utc(last.time), last.node, int(last.seq))

    async def call_counts(
        self,
        since: datetime,
        until: datetime,
        *,
        actions: Collection[str],
        errors: Collection[str],
        denials: Collection[str],
        top: int = 10,
    ) -> CallCounts:
        """Records of `actions` with since <= time < until: counts per minute and outcome, and the
        `top` tools by count (with how many of their outcomes are in `errors` and `denials`).

        Both are aggregates over the (action, time, …) index's range for each action, so the
        cost follows the records in the window, not the size of the trail.
        """
        table = AUDIT_RECORDS
        window = sa.and_(
            table.c.action.in_(list(actions)), table.c.time >= utc(since), table.c.time < utc(until)
        )

        def work(session: Session) -> CallCounts:
            minute = _minute(table.c.time, session.get_bind().dialect.name).label("minute")
            calls = sa.func.count().label("calls")
            per_minute = session.execute(
                sa.select(minute, table.c.outcome, calls).where(window).group_by("minute", table.c.outcome)
            )
            tools = session.execute(
                sa.select(
                    table.c.server,
                    table.c.tool,
                    calls,
                    sa.func.sum(sa.case((table.c.outcome.in_(list(errors)), 1), else_=0)),
                    sa.func.sum(sa.case((table.c.outcome.in_(list(denials)), 1), else_=0)),
                )
                .where(window)
                .group_by(table.c.server, table.c.tool)
                .order_by(sa.desc("calls"), table.c.server, table.c.tool)
                .limit(top)
            )
            return CallCounts(
                by_minute=[
                    (datetime.fromisoformat(m).replace(tzinfo=UTC), o, int(n)) for m, o, n in per_minute
                ],
                top_tools=[(s, t, int(n), int(e or 0), int(d or 0)) for s, t, n, e, d in tools],
            )

        return await self._run(work)

    async def get(self, node: str, seq: int) -> dict[str, Any] | None:
        """The record at `seq` in `node`'s chain, or None."""

        def work(session: Session) -> str | None:
            return session.execute(
                sa.select(AUDIT_RECORDS.c.record).where(
                    AUDIT_RECORDS.c.node == node, AUDIT_RECORDS.c.seq == seq
                )
            ).scalar()

        text = await self._run(work)
        return json.loads(text) if text is not None else None

    async def heads(self) -> list[dict[str, Any]]:
        """Each node's last record: {node, seq, hash, time} (the stored time, RFC 3339), by node."""

        def work(session: Session) -> list[dict[str, Any]]:
            table = AUDIT_RECORDS
            rows = _newest_per_node(session, table, table.c.node, table.c.seq, table.c.hash, table.c.time)
            return [
                {"node": r.node, "seq": int(r.seq), "hash": r.hash, "time": rfc3339_ms(r.time)} for r in rows
            ]

        return await self._run(work)

    async def window(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, tuple[int, int]]:
        """Per node, (first seq, last seq) of its records with since <= time < until."""

        def work(session: Session) -> dict[str, tuple[int, int]]:
            table = AUDIT_RECORDS
            query = sa.select(table.c.node, sa.func.min(table.c.seq), sa.func.max(table.c.seq)).group_by(
                table.c.node
            )
            if since is not None:
                query = query.where(table.c.time >= utc(since))
            if until is not None:
                query = query.where(table.c.time < utc(until))
            return {node: (int(first), int(last)) for node, first, last in session.execute(query)}

        return await self._run(work)

    async def pages(
        self, node: str, first: int = 1, last: int | None = None, *, page: int = 5000
    ) -> AsyncIterator[list[tuple[int, str, str]]]:
        """`node`'s records with first <= seq (<= last), by seq, a page of (seq, hash, text) at a time.

        The text is the record exactly as stored (RFC 8785), as exports carry it.
        """
        after = first - 1
        while True:

            def work(session: Session, after: int = after) -> list[tuple[int, str, str]]:
                query = (
                    sa.select(AUDIT_RECORDS.c.seq, AUDIT_RECORDS.c.hash, AUDIT_RECORDS.c.record)
                    .where(AUDIT_RECORDS.c.node == node, AUDIT_RECORDS.c.seq > after)
                    .order_by(AUDIT_RECORDS.c.seq)
                    .limit(page)
                )
                if last is not None:
                    query = query.where(AUDIT_RECORDS.c.seq <= last)
                return [(int(r.seq), r.hash, r.record) for r in session.execute(query)]

            batch = await self._run(work)
            if batch:
                yield batch
            if len(batch) < page:
                return
            after = batch[-1][0]

    async def first_since(self, node: str, since: datetime) -> int | None:
        """The smallest seq of `node`'s records with time >= `since` (None: all are older)."""

        def work(session: Session) -> int | None:
            value = session.execute(
                sa.select(sa.func.min(AUDIT_RECORDS.c.seq)).where(
                    AUDIT_RECORDS.c.node == node, AUDIT_RECORDS.c.time >= utc(since)
                )
            ).scalar()
            return int(value) if value is not None else None

        return await self._run(work)

    async def purge_through(self, node: str, seq: int) -> int:
        """Delete `node`'s records with seq <= `seq`; how many were deleted."""

        def work(session: Session) -> int:
            result = session.execute(
                sa.delete(AUDIT_RECORDS).where(AUDIT_RECORDS.c.node == node, AUDIT_RECORDS.c.seq <= seq)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]  # a CursorResult

        return await self._run(work, write=True)

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


def _newest_per_node(session: Session, table: sa.Table, *columns: sa.ColumnElement[Any]) -> list[Any]:
    """`columns` of each node's highest-seq row in `table`, by node.

    A walk of the (node, seq) primary key: one seek for the next node, one for its last row.
    There are few nodes and many rows, so this stays fast where a GROUP BY reads every row.
    """
    found: list[Any] = []
    node: str | None = None
    while True:
        after = sa.select(table.c.node).order_by(table.c.node).limit(1)
        if node is not None:
            after = after.where(table.c.node > node)
        node = session.execute(after).scalar()
        if node is None:
            return found
        found.append(
            session.execute(
                sa.select(*columns).where(table.c.node == node).order_by(table.c.seq.desc()).limit(1)
            ).one()
        )


def _rows(query: sa.Select[Any], session: Session) -> list[Any]:
    """A search's rows. On PostgreSQL with a plan made for the values at hand: how selective a
    tool, subject or outcome is varies by orders of magnitude, and once psycopg prepares the
    statement a generic plan may intersect two filter indexes and sort thousands of rows where
    the one selective index, read newest first, stops after a page."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
    return list(session.execute(query))


def _check_filters(filters: Mapping[str, Any]) -> None:
    unknown = set(filters) - {"since", "until", *FILTERS}
    if unknown:
        raise ValueError(f"unknown audit filters: {', '.join(sorted(unknown))}")


def _newest_first(filters: Mapping[str, Any], before: AuditKey | None, limit: int) -> sa.Select[Any]:
    """Up to `limit` records matching `filters` older than `before`, (time, node, seq) descending."""
    table = AUDIT_RECORDS
    query = (
        sa.select(table.c.time, table.c.node, table.c.seq, table.c.record)
        .order_by(table.c.time.desc(), table.c.node.desc(), table.c.seq.desc())
        .limit(limit)
    )
    for name in FILTERS:
        if filters.get(name) is not None:
            query = query.where(table.c[name] == str(filters[name]))
    if filters.get("since") is not None:
        query = query.where(table.c.time >= utc(filters["since"]))
    if filters.get("until") is not None:
        query = query.where(table.c.time < utc(filters["until"]))
    if before is not None:
        # A row-value comparison, so the filter column's (…, time, node, seq) index serves it.
        query = query.where(
            sa.tuple_(table.c.time, table.c.node, table.c.seq)
            < sa.tuple_(
                sa.literal(utc(before.time), table.c.time.type),
                sa.literal(before.node, table.c.node.type),
                sa.literal(before.seq, table.c.seq.type),
            )
        )
    return query


def _minute(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[str]:
    """`column`'s UTC minute as text, `2026-11-23 10:04`, on both backends."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD HH24:MI")
    # SQLite keeps the naive UTC time as SQLAlchemy's fixed-width text, `2026-11-23 10:04:05.123456`
    # (tables.UTCDateTime): its first 16 characters are the minute, cut faster than strftime parses.
    return sa.func.substr(column, 1, 16)


def _loaded(node: str, seq: int, time: datetime, text: str) -> dict[str, Any]:
    """A stored record; one whose text is not a JSON object is shown by its place only."""
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return record
    return {"node": node, "seq": seq, "time": rfc3339_ms(utc(time)), "unreadable": True}


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
