"""TaskRegistry: upstream task ids behind gateway task ids, bound to their principal.

Tasks (2025-11-25 experimental tasks; the 2026-07-28 `io.modelcontextprotocol/tasks`
extension) outlive the call that created them, and their ids are upstream ids. The gateway
hands out its own random ids instead, so a task id names one upstream unambiguously and is
useless to any other principal: `tasks/get|result|cancel|update` on someone else's id answers
exactly like an unknown id. Entries live in this process until their TTL passes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from tollhouse.registry.models import JSONObject

__all__ = ["TaskRef", "TaskRegistry", "rewrite_task_ids"]

_DEFAULT_TTL_SECONDS = 3600.0
_MAX_TASKS = 100_000
_RELATED_TASK_KEY = "io.modelcontextprotocol/related-task"


@dataclass(frozen=True)
class TaskRef:
    """Where a gateway task id leads."""

    server: str
    upstream_id: str
    principal: str
    session_key: str | None
    expires: float


class TaskRegistry:
    """Maps gateway task ids to (upstream, upstream task id) for their owner only."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskRef] = {}
        self._by_upstream: dict[tuple[str, str, str], str] = {}

    def register(
        self, server: str, upstream_id: str, *, principal: str, session_key: str | None, ttl_ms: Any
    ) -> str:
        """The gateway id for an upstream task (the same one again for a known task)."""
        known = self._by_upstream.get((server, upstream_id, principal))
        if known is not None and known in self._tasks:
            return known
        if len(self._tasks) >= _MAX_TASKS:
            self.expire()
        ttl = ttl_ms / 1000 if isinstance(ttl_ms, (int, float)) and ttl_ms > 0 else _DEFAULT_TTL_SECONDS
        task_id = "task-" + secrets.token_urlsafe(18)
        self._tasks[task_id] = TaskRef(server, upstream_id, principal, session_key, time.time() + ttl)
        self._by_upstream[(server, upstream_id, principal)] = task_id
        return task_id

    def lookup(self, task_id: Any, principal: str) -> TaskRef | None:
        """The task behind `task_id` if `principal` owns it and it has not expired."""
        ref = self._tasks.get(task_id) if isinstance(task_id, str) else None
        if ref is None or ref.principal != principal or ref.expires < time.time():
            return None
        return ref

    def owned(self, principal: str) -> dict[str, TaskRef]:
        """{gateway id: task} of the principal's live tasks."""
        now = time.time()
        return {
            task_id: ref
            for task_id, ref in self._tasks.items()
            if ref.principal == principal and ref.expires >= now
        }

    def expire(self) -> None:
        """Forget tasks whose TTL has passed."""
        now = time.time()
        for task_id, ref in list(self._tasks.items()):
            if ref.expires < now:
                del self._tasks[task_id]
                self._by_upstream.pop((ref.server, ref.upstream_id, ref.principal), None)


def rewrite_task_ids(result: JSONObject, mapping: dict[str, str]) -> JSONObject:
    """`result` with every upstream task id it names (top level, `task`, related-task meta)
    replaced by its gateway id."""
    out = dict(result)
    if isinstance(out.get("taskId"), str) and out["taskId"] in mapping:
        out["taskId"] = mapping[out["taskId"]]
    task = out.get("task")
    if isinstance(task, dict) and task.get("taskId") in mapping:
        out["task"] = {**task, "taskId": mapping[task["taskId"]]}
    meta = out.get("_meta")
    related = meta.get(_RELATED_TASK_KEY) if isinstance(meta, dict) else None
    if isinstance(meta, dict) and isinstance(related, dict) and related.get("taskId") in mapping:
        out["_meta"] = {**meta, _RELATED_TASK_KEY: {**related, "taskId": mapping[related["taskId"]]}}
    return out
