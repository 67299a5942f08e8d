"""Change notices between replicas: what one replica changes, every other picks up within a second.

Every replica serves requests from in-memory state (the registry snapshot, compiled policies,
limits), so a change made through one replica must reach the others. The mechanism has two
parts:

- **A log** (`change_notices`, registry/change_log.py): the replica that made a change appends
  one row (topic, subject). It is the source of truth: a replica follows it by sequence number
  and so sees every change, in order, even one whose doorbell it missed.
- **A doorbell** that makes followers read the log at once instead of at their next poll:
  Redis pub/sub when `TOLLHOUSE_REDIS_URL` is set, else PostgreSQL `LISTEN/NOTIFY` (the notify
  is sent by the append's own transaction), else none (SQLite: the poll alone, default 0.5 s).

A follower reloads what the topic names from the database (registry, policies, limits,
usage configuration) rather than trusting the notice's content: a notice says *that*
something changed, never *what* it now is. Each replica skips its own notices.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
import anyio.abc
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollhouse.registry.change_log import NOTIFY_CHANNEL, ChangeNotice, SqlChangeLog

__all__ = [
    "ADMIN_TOPICS",
    "AnnounceChanges",
    "ChangeFeed",
    "Doorbell",
    "PostgresDoorbell",
    "RedisDoorbell",
    "instance_id",
]

logger = logging.getLogger("tollhouse.changes")

Handler = Callable[[Sequence[ChangeNotice]], Awaitable[None]]
Wake = Callable[[], None]
KEEP_NOTICES = timedelta(days=1)

# Admin API path (first segment) -> the topics a successful change there announces.
ADMIN_TOPICS: dict[str, tuple[str, ...]] = {
    "servers": ("registry",),
    "agents": ("registry",),
    "toolsets": ("registry",),
    "tools": ("registry",),
    "policies": ("policies",),
    "access-requests": ("policies",),  # a grant writes a policy
    "limits": ("limits",),
    "kill-switches": ("limits",),
    "clients": ("identity",),
    "users": ("identity",),
    "teams": ("identity",),
    "prices": ("usage",),
    "budgets": ("usage",),
    "config": ("registry", "policies", "limits", "usage", "identity"),
}
# Mutating verbs on these paths only read (a policy check, a simulation).
_READ_ONLY = frozenset({"/policies/validate", "/policies/test", "/policies/explain"})


def instance_id(node_name: str) -> str:
    """This process's name in the log: the node name plus a random suffix, so two workers on
    one host (same node name) still tell their own notices from each other's."""
    return f"{node_name}/{secrets.token_hex(4)}"


class Doorbell(Protocol):
    """Wakes followers when a notice was appended."""

    async def ring(self) -> None:
        """Tell every replica to read the log now (best effort)."""
        ...

    async def listen(self, wake: Wake) -> None:
        """Call `wake()` whenever any replica rings, until cancelled."""
        ...


class RedisDoorbell:
    """Redis pub/sub on `{prefix}:changes`."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self._channel = f"{prefix}:changes"
        self._client = aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._listen_client = aioredis.Redis.from_url(url, socket_connect_timeout=2)

    async def ring(self) -> None:
        await self._client.publish(self._channel, b"1")

    async def listen(self, wake: Wake) -> None:
        pubsub = self._listen_client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            # A (re)subscription may have missed rings: read the log once.
            wake()
            async for _message in pubsub.listen():
                wake()
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._listen_client.aclose()


class PostgresDoorbell:
    """PostgreSQL LISTEN on `tollhouse_changes`; the log's append transaction sends the NOTIFY."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    async def ring(self) -> None:
        return None  # sent by the append's transaction (pg_notify), atomically with the row

    async def listen(self, wake: Wake) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True) as conn:
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            wake()
            async for _notify in conn.notifies():
                wake()

    async def aclose(self) -> None:
        return None


class ChangeFeed:
    """Announce this replica's changes; follow everyone else's."""

    def __init__(
        self,
        log: SqlChangeLog,
        node: str,
        *,
        doorbell: Doorbell | None = None,
        poll_seconds: float = 0.5,
    ) -> None:
        self._log = log
        self.node = node
        self._doorbell = doorbell
        self._poll = poll_seconds
        self._handlers: dict[str, list[Handler]] = {}
        self._seen = 0
        self._wake = anyio.Event()

    def on(self, topic: str, handler: Handler) -> None:
        """Run `handler(notices)` for each batch of another replica's notices on `topic`."""
        self._handlers.setdefault(topic, []).append(handler)

    async def announce(self, topic: str, subject: str = "") -> None:
        """Record a change made through this replica and wake the others."""
        await self._log.append(self.node, topic, subject)
        if self._doorbell is not None:
            try:
                await self._doorbell.ring()
            except Exception as exc:  # the others still see it at their next poll
                logger.warning("change doorbell failed (%s); replicas will poll", type(exc).__name__)

    async def aclose(self) -> None:
        """Close the doorbell's connections."""
        close = getattr(self._doorbell, "aclose", None)
        if close is not None:
            await close()

    async def recent(self, topic: str, within: timedelta) -> list[ChangeNotice]:
        """Notices of `topic` from the last `within` (what a starting replica must know)."""
        return await self._log.recent(topic, datetime.now(UTC) - within)

    async def mark(self) -> int:
        """The log's newest sequence number: pass it to `run` to follow everything after now."""
        return await self._log.latest()

    async def run(
        self,
        start_after: int | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow the log (after `start_after`, default: its end) until cancelled."""
        self._seen = await self._log.latest() if start_after is None else start_after
        if start_after is not None:
            await self.catch_up()
        async with anyio.create_task_group() as tg:
            if self._doorbell is not None:
                tg.start_soon(self._listen, self._doorbell)
            tg.start_soon(self._prune)
            task_status.started()
            while True:
                with anyio.move_on_after(self._poll):
                    await self._wake.wait()
                self._wake = anyio.Event()
                try:
                    await self.catch_up()
                except Exception:  # a database hiccup: the next round retries
                    logger.exception("reading change notices failed")

    async def catch_up(self) -> None:
        """Handle every notice newer than the last one seen."""
        while True:
            notices = await self._log.since(self._seen)
            if not notices:
                return
            self._seen = notices[-1].seq
            theirs = [n for n in notices if n.node != self.node]
            by_topic: dict[str, list[ChangeNotice]] = {}
            for notice in theirs:
                by_topic.setdefault(notice.topic, []).append(notice)
            for topic, batch in by_topic.items():
                for handler in self._handlers.get(topic, ()):
                    try:
                        await handler(batch)
                    except Exception:  # one failing follower must not stop the others
                        logger.exception("following %s changes failed", topic)

    def _ring(self) -> None:
        self._wake.set()

    async def _listen(self, doorbell: Doorbell) -> None:
        delay = 0.5
        while True:
            try:
                await doorbell.listen(self._ring)
            except Exception as exc:  # polling covers the gap; reconnect with backoff
                logger.warning("change doorbell lost (%s); reconnecting", type(exc).__name__)
            await anyio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _prune(self) -> None:
        while True:
            await anyio.sleep(3600)
            try:
                await self._log.prune(datetime.now(UTC) - KEEP_NOTICES)
            except Exception:
                logger.exception("pruning change notices failed")


class AnnounceChanges:
    """ASGI wrapper of the admin API: after a successful change, announce its topics.

    One place instead of one call in every handler: whatever changes the registry through the
    admin API (CLI, console, REST) reaches the other replicas. The notice's subject is the
    request path (`/servers/calc/refresh`), never a body: no secret reaches the log.
    """

    def __init__(self, app: ASGIApp, announce: Callable[[str, str], Awaitable[None]]) -> None:
        self._app = app
        self._announce = announce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self._app(scope, receive, send)
            return
        path = _route_path(scope)
        topics = () if path in _READ_ONLY else ADMIN_TOPICS.get(path.strip("/").split("/", 1)[0], ())
        if not topics:
            await self._app(scope, receive, send)
            return
        status: dict[str, Any] = {}

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self._app(scope, receive, watching)
        if 200 <= status.get("code", 500) < 300:
            for topic in topics:
                try:
                    # The path is the subject: followers may act on it (a refresh refreshes there too).
                    await self._announce(topic, path)
                except Exception:  # the change stands; others pick it up at their periodic sync
                    logger.exception("announcing a %s change failed", topic)


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
