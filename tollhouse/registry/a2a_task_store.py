"""Who owns each A2A task and context created through the gateway.

A2A says every task operation must be scoped to the caller; the upstream agent only ever sees
the gateway's own identity, so the gateway keeps the binding: task id -> owner (and the task's
context). Rows are written once, when a task is first seen; reads go through a bounded cache,
so a replica that did not create a task still finds its owner in the database.
"""

from __future__ import annotations

from collections import OrderedDict

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from tollhouse.registry.tables import A2A_TASKS, utc
from tollhouse.registry.transactions import TransactionalStore

__all__ = ["SqlTaskOwners"]


class SqlTaskOwners(TransactionalStore):
    """Task and context ownership in `a2a_tasks`, with a bounded in-memory cache."""

    def __init__(self, engine: sa.Engine, *, cache_size: int = 100_000) -> None:
        super().__init__(engine)
        self._size = cache_size
        self._tasks: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._contexts: OrderedDict[tuple[str, str], str] = OrderedDict()

    async def record(self, agent: str, task_id: str, context_id: str | None, owner: str) -> str:
        """Bind a task (and its context, if unbound) to `owner`; returns the task's owner.

        The first binding wins: a task already owned by someone else keeps its owner.
        """
        cached = self._get(self._tasks, (agent, task_id))
        if cached is not None:
            return cached

        def work(session: Session) -> str:
            insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
            session.execute(
                insert(A2A_TASKS)
                .values(
                    agent=agent,
                    task_id=task_id,
                    context_id=context_id,
                    owner=owner,
                    created_at=utc(self._clock()),
                )
                .on_conflict_do_nothing(index_elements=["agent", "task_id"])
            )
            stored = session.execute(
                sa.select(A2A_TASKS.c.owner).where(A2A_TASKS.c.agent == agent, A2A_TASKS.c.task_id == task_id)
            ).scalar_one()
            return str(stored)

        stored = await self._run(work, write=True)
        self._put(self._tasks, (agent, task_id), stored)
        if context_id:
            self._put(self._contexts, (agent, context_id), stored)
        return stored

    async def task_owner(self, agent: str, task_id: str) -> str | None:
        """Who owns the task (None: not created through the gateway)."""
        cached = self._get(self._tasks, (agent, task_id))
        if cached is not None:
            return cached

        def work(session: Session) -> str | None:
            return session.execute(
                sa.select(A2A_TASKS.c.owner).where(A2A_TASKS.c.agent == agent, A2A_TASKS.c.task_id == task_id)
            ).scalar_one_or_none()

        owner = await self._run(work)
        if owner is not None:
            self._put(self._tasks, (agent, task_id), owner)
        return owner

    async def task_owners(self, agent: str, task_ids: list[str]) -> dict[str, str]:
        """The owners of several tasks (a task list's page) in at most one query; unknown ids are absent."""
        found = {t: o for t in task_ids if (o := self._get(self._tasks, (agent, t))) is not None}
        missing = [t for t in task_ids if t not in found]
        if not missing:
            return found

        def work(session: Session) -> dict[str, str]:
            rows = session.execute(
                sa.select(A2A_TASKS.c.task_id, A2A_TASKS.c.owner).where(
                    A2A_TASKS.c.agent == agent, A2A_TASKS.c.task_id.in_(missing)
                )
            ).all()
            return {str(task): str(owner) for task, owner in rows}

        for task, owner in (await self._run(work)).items():
            self._put(self._tasks, (agent, task), owner)
            found[task] = owner
        return found

    async def context_owner(self, agent: str, context_id: str) -> str | None:
        """Who owns the context (the owner of its first task; None: unknown here)."""
        cached = self._get(self._contexts, (agent, context_id))
        if cached is not None:
            return cached

        def work(session: Session) -> str | None:
            return session.execute(
                sa.select(A2A_TASKS.c.owner)
                .where(A2A_TASKS.c.agent == agent, A2A_TASKS.c.context_id == context_id)
                .order_by(A2A_TASKS.c.created_at)
                .limit(1)
            ).scalar_one_or_none()

        owner = await self._run(work)
        if owner is not None:
            self._put(self._contexts, (agent, context_id), owner)
        return owner

    def _get(self, cache: OrderedDict[tuple[str, str], str], key: tuple[str, str]) -> str | None:
        value = cache.get(key)
        if value is not None:
            cache.move_to_end(key)
        return value

    def _put(self, cache: OrderedDict[tuple[str, str], str], key: tuple[str, str], value: str) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self._size:
            cache.popitem(last=False)
