"""SessionManager: downstream session-era (2025-*) MCP sessions, owned by a principal.

A session id is a sealed token (AES-GCM under a key derived from the shared key ring) holding
what a session needs to go on anywhere: 128 random bits, the owner, the endpoint, the
protocol version, the client's capabilities and the creation time. Any replica that shares
the ring opens it and adopts the session, so killing the replica that created a session does
not end it (DESIGN.md, Scale and state). What lives only in memory — the GET stream's replay
buffer, resource subscriptions, in-flight requests — is per replica; a client that moves
re-opens its stream and re-subscribes, as it would after any reconnection.

A session is bound to the principal that created it: any other principal presenting it gets
404, like an unknown id. Sessions expire when idle (per replica: memory is reclaimed) and at
`max_age_seconds` after creation (everywhere). Ending one (DELETE, or an admin) is announced to
every replica, which then refuses the id until it would have expired anyway.
Each session has an outbox for notifications that are not tied to a request (list_changed),
drained by the session's GET stream.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tollhouse.auth.principal import Principal
from tollhouse.gateway.sealing import Sealer
from tollhouse.gateway.views import View
from tollhouse.registry.models import JSONObject

__all__ = ["DownstreamSession", "Pending", "SessionManager", "TooManySessions"]

OnClose = Callable[["DownstreamSession"], Awaitable[None]]
OnEnd = Callable[[str], Awaitable[None]]
REPLAY_EVENTS = 256
SESSION_PURPOSE = b"tollhouse/mcp-session/v1"
# Only these capabilities matter to the gateway (server->client requests); a session id stays small.
_KEPT_CAPABILITIES = ("sampling", "elicitation", "roots", "tasks")
_MAX_CAPABILITY_BYTES = 2048


def session_digest(session_id: str) -> str:
    """What the change log records of an ended session: never the usable id itself."""
    return hashlib.sha256(session_id.encode()).hexdigest()


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

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_sessions: int,
        on_close: OnClose,
        sealer: Sealer | None = None,
        max_age_seconds: float = 86_400.0,
        on_end: OnEnd | None = None,
    ) -> None:
        # Without a sealer ids are random and sessions live on this replica only (tests, tools).
        self._sealer = sealer
        self._max_age = max_age_seconds
        self._on_end = on_end
        # digest -> wall-clock time after which the id would be refused anyway
        self._ended: dict[str, float] = {}
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
        created_at = time.time()
        kept = _kept_capabilities(capabilities)
        if self._sealer is None:
            session_id = secrets.token_urlsafe(32)
        else:
            session_id = self._sealer.seal(
                {
                    "i": secrets.token_urlsafe(16),
                    "p": principal.key,
                    "v": view_key,
                    "pv": protocol_version,
                    "c": kept,
                    "t": int(created_at),
                }
            )
        return self._hold(session_id, principal, view_key, view, protocol_version, kept, created_at)

    def _hold(
        self,
        session_id: str,
        principal: Principal,
        view_key: str,
        view: View | None,
        protocol_version: str,
        capabilities: JSONObject,
        created_at: float,
    ) -> DownstreamSession:
        send, receive = anyio.create_memory_object_stream[tuple[int, JSONObject]](100)
        session = DownstreamSession(
            id=session_id,
            principal_key=principal.key,
            view_key=view_key,
            view=view,
            protocol_version=protocol_version,
            client_capabilities=capabilities,
            last_seen=time.monotonic(),
            outbox_send=send,
            outbox_receive=receive,
            principal=principal,
            created_at=created_at,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str, principal: Principal, view: View) -> DownstreamSession | None:
        """The live session with this id, owned by `principal`, on this endpoint; else None (same answer).

        A session another replica created (its id opens under the shared ring) is adopted here.
        """
        session = self._sessions.get(session_id)
        if session is None:
            session = self._adopt(session_id, principal, view)
        if (
            session is None
            or not secrets.compare_digest(session.principal_key, principal.key)
            or session.view_key != view.key
        ):
            return None
        if session.created_at + self._max_age < time.time():
            return None
        session.last_seen = time.monotonic()
        return session

    def _adopt(self, session_id: str, principal: Principal, view: View) -> DownstreamSession | None:
        if self._sealer is None or len(self._sessions) >= self._max:
            return None
        claims = self._sealer.open(session_id)
        if not isinstance(claims, dict):
            return None
        owner, view_key, version = claims.get("p"), claims.get("v"), claims.get("pv")
        created_at, capabilities = claims.get("t"), claims.get("c")
        if not (
            isinstance(owner, str)
            and isinstance(view_key, str)
            and isinstance(version, str)
            and isinstance(created_at, int)
            and isinstance(capabilities, dict)
        ):
            return None
        if not secrets.compare_digest(owner, principal.key) or view_key != view.key:
            return None
        if created_at + self._max_age < time.time() or session_digest(session_id) in self._ended:
            return None
        return self._hold(session_id, principal, view_key, view, version, capabilities, float(created_at))

    def ended(self, digest: str, *, at: float | None = None) -> DownstreamSession | None:
        """Another replica ended the session with this digest: refuse it from now on.

        Returns the local copy, if this replica holds one, for the caller to close.
        """
        self._ended[digest] = (at if at is not None else time.time()) + self._max_age
        return next((s for s in self._sessions.values() if session_digest(s.id) == digest), None)

    def sessions(self) -> list[DownstreamSession]:
        """Every live session on this replica, oldest first (read-only: for the admin API)."""
        return sorted(self._sessions.values(), key=lambda s: s.created_at)

    async def close(self, session_id: str, *, end: bool = True) -> None:
        """Close a session here: cancel its requests, close its stream and its upstream sessions.

        `end` (a client's DELETE, an admin) also ends it everywhere: every replica is told to
        refuse the id. Without it (idle here, this replica stopping) another replica may go on.
        """
        if end:
            digest = session_digest(session_id)
            if digest not in self._ended:
                self._ended[digest] = time.time() + self._max_age
                if self._on_end is not None:
                    with anyio.CancelScope(shield=True):
                        await self._on_end(digest)
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
                        await self.close(session.id, end=False)
                now = time.time()
                self._ended = {d: until for d, until in self._ended.items() if until > now}
        finally:
            self.end_streams()
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                for session_id in list(self._sessions):
                    # This replica stops; the sessions go on elsewhere (their ids stay valid).
                    await self.close(session_id, end=self._sealer is None)

    def end_streams(self) -> None:
        """End every long-lived stream gracefully (a draining replica): listen streams and the
        sessions' GET streams close; their clients reconnect, to another replica."""
        for stream in list(self._listeners):
            stream.close()
        for session in list(self._sessions.values()):
            if session.stream_attached and session.outbox_send is not None:
                session.outbox_send.close()


def _kept_capabilities(capabilities: JSONObject) -> JSONObject:
    kept = {k: capabilities[k] for k in _KEPT_CAPABILITIES if k in capabilities}
    if len(orjson.dumps(kept)) > _MAX_CAPABILITY_BYTES:
        # Declared, without the detail: the id must stay a reasonable header.
        kept = {k: {} for k in kept}
    return kept
