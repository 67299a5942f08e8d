"""SessionManager: downstream session-era (2025-*) MCP sessions, owned by a principal.

A session id is 256 random bits (visible ASCII) and is bound to the principal that created
it: any other principal presenting it gets 404, like an unknown id. Sessions expire when idle.
Each session has an outbox for notifications that are not tied to a request (list_changed),
drained by the session's GET stream.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tollhouse.auth.principal import Principal
from tollhouse.gateway.views import View
from tollhouse.registry.models import JSONObject

__all__ = ["DownstreamSession", "Pending", "SessionManager", "TooManySessions"]

OnClose = Callable[["DownstreamSession"], Awaitable[None]]
REPLAY_EVENTS = 256


class TooManySessions(Exception):
    """The gateway holds its maximum number of sessions."""


@dataclass
class Pending:
    """A server->client request waiting for the client's answer."""

    done: anyio.Event = field(default_factory=anyio.Event)
    message: JSONObject | None = None


@dataclass
class DownstreamSession:
    """One session-era client connection (state lives here, not in the transport)."""

    id: str
    principal_key: str
    view_key: str
    protocol_version: str
    client_capabilities: JSONObject
    last_seen: float
    inflight: dict[Any, anyio.CancelScope] = field(default_factory=dict)
    outbox_send: MemoryObjectSendStream[tuple[int, JSONObject]] | None = None
    outbox_receive: MemoryObjectReceiveStream[tuple[int, JSONObject]] | None = None
    last_event_id: int = 0
    replay: collections.deque[tuple[int, JSONObject]] = field(
        default_factory=lambda: collections.deque(maxlen=REPLAY_EVENTS)
    )
    stream_attached: bool = False
    log_level: str | None = None
    closed: bool = False
    # answers the client owes to our server->client requests, by request id
    pending: dict[Any, Pending] = field(default_factory=dict)
    # (server, upstream uri) this session subscribed to, and the view that names them
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    view: View | None = None
    # Who opened it and when (wall clock), for the admin API's list of sessions.
    principal: Principal | None = None
    created_at: float = field(default_factory=time.time)

    def notify(self, message: JSONObject) -> None:
        """Send a notification on the GET stream, keeping it for replay (resumability).

        Each event gets the next id; the last `REPLAY_EVENTS` are kept, so a client that
        reconnects with `Last-Event-ID` gets what it missed (MCP 2025-11-25 transports).
        """
        self.last_event_id += 1
        event = (self.last_event_id, message)
        self.replay.append(event)
        if self.outbox_send is None or not self.stream_attached:
            return
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.outbox_send.send_nowait(event)


class SessionManager:
    """Creates, finds, expires and closes downstream sessions."""

    def __init__(self, *, idle_seconds: float, max_sessions: int, on_close: OnClose) -> None:
        self._listeners: dict[MemoryObjectSendStream[JSONObject], frozenset[str]] = {}
        # listen streams' resource subscriptions: (view that names them, {(server, upstream uri)})
        self._resource_watchers: dict[
            MemoryObjectSendStream[JSONObject], tuple[View, frozenset[tuple[str, str]]]
        ] = {}
        self._sessions: dict[str, DownstreamSession] = {}
        self._idle = idle_seconds
        self._max = max_sessions
        self._on_close = on_close

    def __len__(self) -> int:
        return len(self._sessions)

    def create(
        self,
        principal: Principal,
        protocol_version: str,
        capabilities: JSONObject,
        *,
        view_key: str = "aggregate",
        view: View | None = None,
    ) -> DownstreamSession:
        """A new session bound to `principal`.

        Raises:
            TooManySessions: the limit is reached.
        """
        if len(self._sessions) >= self._max:
            raise TooManySessions
        send, receive = anyio.create_memory_object_stream[tuple[int, JSONObject]](100)
        session = DownstreamSession(
            id=secrets.token_urlsafe(32),
            principal_key=principal.key,
            view_key=view_key,
            view=view,
            protocol_version=protocol_version,
            client_capabilities=capabilities,
            last_seen=time.monotonic(),
            outbox_send=send,
            outbox_receive=receive,
            principal=principal,
        )
        self._sessions[session.id] = session
        return session

    def get(
        self, session_id: str, principal: Principal, view_key: str = "aggregate"
    ) -> DownstreamSession | None:
        """The live session with this id, owned by `principal`, on this endpoint; else None (same answer)."""
        session = self._sessions.get(session_id)
        if (
            session is None
            or not secrets.compare_digest(session.principal_key, principal.key)
            or session.view_key != view_key
        ):
            return None
        session.last_seen = time.monotonic()
        return session

    def sessions(self) -> list[DownstreamSession]:
        """Every live session on this replica, oldest first (read-only: for the admin API)."""
        return sorted(self._sessions.values(), key=lambda s: s.created_at)

    async def close(self, session_id: str) -> None:
        """End a session: cancel its requests, close its stream and its upstream sessions."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        session.closed = True
        for scope in list(session.inflight.values()):
            scope.cancel()
        if session.outbox_send is not None:
            session.outbox_send.close()  # an attached GET stream sees the end and closes its side
        if session.outbox_receive is not None and not session.stream_attached:
            session.outbox_receive.close()
        with anyio.CancelScope(shield=True):
            await self._on_close(session)

    def broadcast(self, message: JSONObject) -> None:
        """Queue a notification on every session's GET stream and every listen stream that wants it."""
        for session in list(self._sessions.values()):
            session.notify(message)
        method = message.get("method")
        for stream, methods in list(self._listeners.items()):
            if method in methods:
                try:
                    stream.send_nowait(message)
                except anyio.WouldBlock:
                    # A listener that does not read loses its stream, not our memory (it re-listens).
                    self._listeners.pop(stream, None)
                    stream.close()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._listeners.pop(stream, None)

    def resource_updated(self, server: str, uri: str) -> None:
        """Tell every session subscribed to (server, uri) that the resource changed."""
        for session in list(self._sessions.values()):
            if (server, uri) in session.subscriptions and session.view is not None:
                shown = session.view.show_uri(server, uri)
                session.notify(
                    {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": shown}}
                )
        for stream, (view, resources) in list(self._resource_watchers.items()):
            if (server, uri) in resources:
                notification = {
                    "jsonrpc": "2.0",
                    "method": "notifications/resources/updated",
                    "params": {"uri": view.show_uri(server, uri)},
                }
                with contextlib.suppress(
                    anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    stream.send_nowait(notification)

    @contextlib.contextmanager
    def listen(
        self,
        methods: frozenset[str],
        *,
        view: View | None = None,
        resources: frozenset[tuple[str, str]] = frozenset(),
    ) -> Iterator[MemoryObjectReceiveStream[JSONObject]]:
        """Receive the broadcast notifications named in `methods`, and updates of `resources`
        (server, upstream uri) named as `view` shows them (a 2026-07-28 listen stream)."""
        send, receive = anyio.create_memory_object_stream[JSONObject](100)
        self._listeners[send] = methods
        if view is not None and resources:
            self._resource_watchers[send] = (view, resources)
        try:
            with receive:
                yield receive
        finally:
            self._listeners.pop(send, None)
            self._resource_watchers.pop(send, None)
            send.close()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Expire idle sessions until cancelled; close every session on the way out."""
        task_status.started()
        try:
            while True:
                await anyio.sleep(min(self._idle / 4, 30.0))
                cutoff = time.monotonic() - self._idle
                for session in list(self._sessions.values()):
                    if session.last_seen < cutoff and not session.inflight and not session.stream_attached:
                        await self.close(session.id)
        finally:
            for stream in list(self._listeners):
                stream.close()  # listen streams end gracefully
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for session_id in list(self._sessions):
                    await self.close(session_id)
