"""SqlAccessRequestStore: access requests and their decisions (gateway/access_requests.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tollhouse.registry.models import AccessRequest
from tollhouse.registry.tables import AccessRequestRow
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["SqlAccessRequestStore"]

_COLUMNS = AccessRequestRow.__table__.c  # type: ignore[attr-defined]


class SqlAccessRequestStore(TransactionalStore):
    """Access requests over a sync SQLAlchemy engine; each call is one transaction in a worker thread."""

    async def add(self, request: AccessRequest) -> AccessRequest:
        """Store a new request."""

        def work(session: Session) -> AccessRequest:
            session.add(AccessRequestRow.of(request))
            return request

        return await self._run(work, write=True)

    async def get(self, request_id: str) -> AccessRequest | None:
        """One request, or None."""

        def work(session: Session) -> AccessRequest | None:
            row = session.get(AccessRequestRow, request_id)
            return row.to_request() if row is not None else None

        return await self._run(work)

    async def list(
        self, *, status: Sequence[str] = (), principal_key: str | None = None, limit: int = 100
    ) -> list[AccessRequest]:
        """Requests, newest first, optionally of some statuses and one principal."""

        def work(session: Session) -> list[AccessRequest]:
            query = sa.select(AccessRequestRow)
            if status:
                query = query.where(_COLUMNS.status.in_(list(status)))
            if principal_key is not None:
                query = query.where(_COLUMNS.principal_key == principal_key)
            query = query.order_by(_COLUMNS.created_at.desc(), _COLUMNS.id.desc()).limit(limit)
            return [row.to_request() for row in session.scalars(query).all()]

        return await self._run(work)

    async def decide(self, request_id: str, decided: AccessRequest) -> AccessRequest | None:
        """Record a decision on a pending request; None when it is no longer pending (decided meanwhile)."""

        def work(session: Session) -> AccessRequest | None:
            row = session.get(AccessRequestRow, request_id, with_for_update=True)
            if row is None or row.status != "pending":
                return None
            for field in dataclasses.fields(AccessRequest):
                setattr(row, field.name, getattr(decided, field.name))
            return decided

        return await self._run(work, write=True)
