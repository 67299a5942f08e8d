"""Stored rate/concurrency limits and kill switches, and their version.

Limits written in a config file or through the admin API persist here (table `limits`), so
every replica enforces the same rules and a restart keeps them; kill switches (table
`kill_switches`) stop a subject, a client or a server on every replica. Every write bumps one
version number in `settings_kv` in the same transaction, so a replica polls a single row to
know whether it must reload (DESIGN.md: no database reads on the request path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.registry.tables import KILL_SWITCHES, LIMITS, KillSwitchRow, LimitRow, SettingRow, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = [
    "KILL_KINDS",
    "LIMITS_VERSION_SETTING",
    "MATCH_KEYS",
    "PERIODS",
    "RATE_RE",
    "KillSwitch",
    "LimitSpec",
    "LimitsState",
    "SqlLimitStore",
]

LIMITS_VERSION_SETTING = "limits_version"
# DESIGN.md, Contract details: limits[].match keys.
MATCH_KEYS = ("subject", "team", "client", "server", "tool")
PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE_RE = re.compile(r"^\s*([1-9][0-9]{0,9})\s*/\s*(second|minute|hour|day)s?\s*$")
KILL_KINDS = ("subject", "client", "server")
KillKind = Literal["subject", "client", "server"]


@dataclass(frozen=True)
class LimitSpec:
    """One limit as written: which calls it counts (`match`, all keys must match) and its bounds.

    `per` names dimensions whose caller value splits the bucket (`per: [client]`: one counter per
    client); without it every matching call shares one counter.
    """

    id: str
    match: Mapping[str, str] = field(default_factory=dict)
    rate: str | None = None
    window: Literal["fixed", "sliding"] = "fixed"
    concurrency: int | None = None
    failure_mode: Literal["open", "closed"] = "open"
    per: tuple[str, ...] = ()
    description: str | None = None
    updated_by: str | None = field(default=None, compare=False)
    updated_at: datetime | None = field(default=None, compare=False)

    def body(self) -> dict[str, object]:
        """The definition as stored (everything but id and bookkeeping)."""
        out: dict[str, object] = {"match": dict(self.match), "window": self.window}
        out["failure_mode"] = self.failure_mode
        if self.rate is not None:
            out["rate"] = self.rate
        if self.concurrency is not None:
            out["concurrency"] = self.concurrency
        if self.per:
            out["per"] = list(self.per)
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class KillSwitch:
    """Calls by this subject or client, or to this server, are refused on every replica."""

    kind: KillKind
    value: str
    reason: str | None = None
    created_by: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class LimitsState:
    """One consistent read: the version, the limits by id, the kill switches."""

    version: int
    limits: tuple[LimitSpec, ...]
    kills: tuple[KillSwitch, ...]


class SqlLimitStore(TransactionalStore):
    """Limits and kill switches over a sync SQLAlchemy engine; each call is one transaction in a thread."""

    async def version(self) -> int:
        """The current version (0 before any write)."""
        return await self._run(_version)

    async def load(self) -> LimitsState:
        """Everything, in one read."""

        def work(session: Session) -> LimitsState:
            limits = session.scalars(sa.select(LimitRow).order_by(LIMITS.c.position, LIMITS.c.id)).all()
            kills = session.scalars(
                sa.select(KillSwitchRow).order_by(KILL_SWITCHES.c.kind, KILL_SWITCHES.c.value)
            ).all()
            return LimitsState(
                _version(session), tuple(_spec(r) for r in limits), tuple(_kill(r) for r in kills)
            )

        return await self._run(work)

    async def put_limits(
        self, specs: list[LimitSpec], *, delete: list[str] | None = None, prune: bool = False
    ) -> list[str]:
        """Upsert `specs` (in this order), delete the ids in `delete` (or, with `prune`, every other one).

        Returns the ids that changed (a deleted id is prefixed with '-').
        """

        def work(session: Session) -> list[str]:
            now = utc(self._clock())
            changed: list[str] = []
            position = int(session.scalar(sa.select(sa.func.max(LIMITS.c.position))) or 0)
            for spec in specs:
                row = session.get(LimitRow, spec.id, with_for_update=True)
                body = spec.body()
                if row is None:
                    position += 1
                    session.add(
                        LimitRow(
                            id=spec.id,
                            position=position,
                            spec=body,
                            updated_by=spec.updated_by,
                            updated_at=now,
                        )
                    )
                    changed.append(spec.id)
                elif row.spec != body:
                    row.spec, row.updated_by, row.updated_at = body, spec.updated_by, now
                    changed.append(spec.id)
            doomed = list(delete or ())
            if prune:
                named = {s.id for s in specs}
                doomed += [i for i in session.scalars(sa.select(LIMITS.c.id)) if i not in named]
            if doomed:
                existing = set(session.scalars(sa.select(LIMITS.c.id).where(LIMITS.c.id.in_(doomed))))
                session.execute(sa.delete(LIMITS).where(LIMITS.c.id.in_(doomed)))
                changed += [f"-{i}" for i in sorted(existing)]
            if changed:
                _bump(session)
            return changed

        return await self._run(work, write=True)

    async def set_kill(self, kill: KillSwitch) -> None:
        """Engage (or re-describe) a kill switch."""

        def work(session: Session) -> None:
            row = session.get(KillSwitchRow, (kill.kind, kill.value), with_for_update=True)
            if row is None:
                session.add(
                    KillSwitchRow(
                        kind=kill.kind,
                        value=kill.value,
                        reason=kill.reason,
                        created_by=kill.created_by,
                        created_at=utc(self._clock()),
                    )
                )
            else:
                row.reason, row.created_by = kill.reason, kill.created_by
            _bump(session)

        await self._run(work, write=True)

    async def clear_kill(self, kind: str, value: str) -> bool:
        """Release a kill switch; False if it was not engaged."""

        def work(session: Session) -> bool:
            gone = session.execute(
                sa.delete(KILL_SWITCHES).where(KILL_SWITCHES.c.kind == kind, KILL_SWITCHES.c.value == value)
            )
            if not gone.rowcount:  # type: ignore[attr-defined]  # a CursorResult
                return False
            _bump(session)
            return True

        return await self._run(work, write=True)


def _version(session: Session) -> int:
    row = session.get(SettingRow, LIMITS_VERSION_SETTING)
    return int(row.value) if row is not None else 0


def _bump(session: Session) -> None:
    row = session.get(SettingRow, LIMITS_VERSION_SETTING, with_for_update=True)
    if row is None:
        session.add(SettingRow(key=LIMITS_VERSION_SETTING, value="1"))
    else:
        row.value = str(int(row.value) + 1)


def _spec(row: LimitRow) -> LimitSpec:
    body = row.spec
    concurrency = body.get("concurrency")
    return LimitSpec(
        id=row.id,
        match={str(k): str(v) for k, v in dict(body.get("match") or {}).items()},
        rate=body.get("rate"),
        window="sliding" if body.get("window") == "sliding" else "fixed",
        concurrency=int(concurrency) if concurrency is not None else None,
        failure_mode="closed" if body.get("failure_mode") == "closed" else "open",
        per=tuple(str(p) for p in body.get("per") or ()),
        description=body.get("description"),
        updated_by=row.updated_by,
        updated_at=row.updated_at,
    )


def _kill(row: KillSwitchRow) -> KillSwitch:
    kind: KillKind = "subject" if row.kind == "subject" else "client" if row.kind == "client" else "server"
    return KillSwitch(
        kind=kind, value=row.value, reason=row.reason, created_by=row.created_by, created_at=row.created_at
    )
