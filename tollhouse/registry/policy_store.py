"""SqlPolicyStore: the stored authorization policies and their version.

Every write bumps one version number in the same transaction (`settings_kv`), so a replica
that sees a new version knows its compiled policy set is stale, and every decision can name
the version it was made under.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.registry.models import PolicyEntry
from tollhouse.registry.tables import POLICIES, PolicyRow, SettingRow, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["POLICY_VERSION_SETTING", "SqlPolicyStore"]

POLICY_VERSION_SETTING = "policy_version"


class SqlPolicyStore(TransactionalStore):
    """Policies over a sync SQLAlchemy engine; each call is one transaction in a worker thread."""

    async def load(self) -> tuple[int, list[PolicyEntry]]:
        """The current version and every policy, by id (one consistent read)."""

        def work(session: Session) -> tuple[int, list[PolicyEntry]]:
            rows = session.scalars(sa.select(PolicyRow).order_by(POLICIES.c.id)).all()
            return _version(session), [_entry(r) for r in rows]

        return await self._run(work)

    async def version(self) -> int:
        """The current policy version (0 before any change)."""
        return await self._run(_version)

    async def put(self, entries: Sequence[PolicyEntry], *, delete: Sequence[str] = ()) -> int:
        """Insert or replace `entries` and delete the ids in `delete`, in one transaction; the new version."""

        def work(session: Session) -> int:
            now = utc(self._clock())
            for entry in entries:
                row = session.get(PolicyRow, entry.id, with_for_update=True)
                if row is None:
                    session.add(
                        PolicyRow(
                            id=entry.id,
                            cedar=entry.cedar,
                            sugar=entry.sugar,
                            description=entry.description,
                            updated_by=entry.updated_by,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                else:
                    row.cedar, row.sugar, row.description = entry.cedar, entry.sugar, entry.description
                    row.updated_by, row.updated_at = entry.updated_by, now
            if delete:
                session.execute(sa.delete(POLICIES).where(POLICIES.c.id.in_(list(delete))))
            return _bump(session)

        return await self._run(work, write=True)


def _version(session: Session) -> int:
    row = session.get(SettingRow, POLICY_VERSION_SETTING)
    return int(row.value) if row is not None else 0


def _bump(session: Session) -> int:
    row = session.get(SettingRow, POLICY_VERSION_SETTING, with_for_update=True)
    if row is None:
        session.add(SettingRow(key=POLICY_VERSION_SETTING, value="1"))
        return 1
    row.value = str(int(row.value) + 1)
    return int(row.value)


def _entry(row: PolicyRow) -> PolicyEntry:
    return PolicyEntry(
        id=row.id,
        cedar=row.cedar,
        sugar=row.sugar,
        description=row.description,
        updated_by=row.updated_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
