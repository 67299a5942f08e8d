"""A connection-level receive deadline and head size limit: slow or bloated requests cannot hold a connection.

uvicorn arms no timer while a request arrives: every byte cancels its keep-alive timer and nothing
replaces it, so a client sending one byte a second, or a header line that never ends, holds a
connection (and httptools buffers an unfinished header value without bound) for as long as it
likes. ASGI middleware cannot help, since the app is called only once the headers are complete; so
the bounds live in the HTTP protocol, a subclass of uvicorn's httptools protocol that
`receive_deadline_protocol(limits)` binds to the settings (uvicorn's `Config(http=...)` takes a
protocol class and instantiates it per connection).

What it bounds (`LimitsSettings`):
- the head: the request line and headers must be complete within `header_timeout_seconds` of the
  request's first byte (of the connection's opening, for its first request), and hold at most
  `max_header_bytes` (431 otherwise);
- the body: at most `receive_timeout_seconds` between two reads, and all of it within
  `body_timeout_seconds` of the headers' end, so a trickle that resets a per-read timer still ends;
- nothing once the request is fully received: a response, however long it streams (SSE), is never
  cut. Between requests on a keep-alive connection uvicorn's keep-alive timeout governs, and the
  head deadline starts again at the next request's first byte.

On expiry the client gets 408 (431 for a head too large) when that cannot be mistaken for part of
another response, and the connection is closed: at once without an answer (a connection that never
sent a byte is treated as an idle keep-alive connection is), or after a lingering half-close of at
most two seconds with one, so that the client reads the answer rather than a reset.

Cost: one timer per connection, re-armed lazily. Reads only record the time; the timer, when it
fires, works out the current deadline from the state and either expires the connection or re-arms
itself for what is left. A request that arrives in one read arms nothing. While the gateway itself
has stopped reading (uvicorn pauses reading behind a pipelined request or a full body buffer) or
the client waits for `100 Continue`, the client is not the slow party: the bounds start afresh.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from typing import ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tollhouse.gateway.settings import LimitsSettings

__all__ = ["ReceiveDeadlineProtocol", "receive_deadline_protocol"]

_log = logging.getLogger(__name__)

# A timer may fire a little early (uvloop rounds delays to milliseconds): within this of the
# deadline counts as reached, so the timer does not spin on sub-millisecond re-arms.
_SLACK = 0.002
# How long a refused connection lingers, discarding what still arrives, so its answer is read.
_LINGER_S = 2.0


class _Phase(Enum):
    IDLE = "idle"  # between requests: uvicorn's keep-alive timeout governs
    HEAD = "head"  # request line and headers arriving
    BODY = "body"  # body arriving
    CLOSED = "closed"  # refused, upgraded or lost: nothing more to bound


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that has been answered and closed."""


class ReceiveDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the receive bounds of `limits` (see the module docstring)."""

    limits: ClassVar[LimitsSettings] = LimitsSettings()

    # Per-connection state, set up in connection_made.
    _phase: _Phase
    _started: float  # when the current head or body began
    _last_read: float
    _head_bytes: int  # bytes of the current head, as read
    _message_begun: bool  # a request (not just blank lines) has begun in this head
    _count_chunk: bool
    _timer: asyncio.TimerHandle | None
    _timer_at: float

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = None
        self._timer_at = 0.0
        self._count_chunk = False
        # A connection that opens and sends nothing is held by no uvicorn timer either.
        self._begin(_Phase.HEAD, self.loop.time())
        self._arm(self._deadline())

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = _Phase.CLOSED
        self._cancel_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, with the bookkeeping around parsing; the parser callbacks
        # below read the time of this read from _last_read.
        if self._phase is _Phase.CLOSED:
            return
        self._unset_keepalive_if_required()
        self._last_read = self.loop.time()
        if self._phase is _Phase.IDLE:
            self._begin(_Phase.HEAD, self._last_read)
        # Every byte of this read belongs to a head unless a head begins inside it (pipelining):
        # on_message_begin then clears this, and the exact size check at the head's end still holds.
        self._count_chunk = self._phase is _Phase.HEAD
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Refused):
                self._bad_request()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._phase is _Phase.HEAD:
            if self._count_chunk:
                self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large")
                return
            self._arm(self._deadline())
        elif self._phase is _Phase.BODY:
            self._arm(self._deadline())

    def handle_websocket_upgrade(self) -> None:
        self._phase = _Phase.CLOSED
        self._cancel_timer()
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        if self._phase is _Phase.CLOSED:
            # Refused and lingering: nothing to finish, and uvicorn's drain should not wait for it.
            self.transport.close()
            return
        super().shutdown()

    # -- parser callbacks --------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase is not _Phase.HEAD:
            # A pipelined request starting inside a read: the read's earlier bytes are not its head.
            self._begin(_Phase.HEAD, self._last_read)
            self._count_chunk = False
        self._message_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large")
            raise _Refused
        self._begin(_Phase.BODY, self._last_read)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The request is in: what follows (the response, however long it streams) is not bounded here.
        self._phase = _Phase.IDLE
        self._cancel_timer()
        super().on_message_complete()

    # -- deadlines ---------------------------------------------------------------------------------

    def _begin(self, phase: _Phase, now: float) -> None:
        self._phase = phase
        self._started = now
        self._last_read = now
        if phase is _Phase.HEAD:
            self._head_bytes = 0
            self._message_begun = False

    def _deadline(self) -> float:
        limits = self.limits
        if self._phase is _Phase.HEAD:
            return self._started + limits.header_timeout_seconds
        return min(
            self._last_read + limits.receive_timeout_seconds, self._started + limits.body_timeout_seconds
        )

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first and then re-arms for what is left
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase is _Phase.IDLE or self._phase is _Phase.CLOSED or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        waiting_on_us = self.flow.read_paused or (
            self._phase is _Phase.BODY and cycle is not None and cycle.waiting_for_100_continue
        )
        if waiting_on_us:
            self._started = self._last_read = now
            self._arm(self._deadline())
            return
        deadline = self._deadline()
        if now + _SLACK < deadline:
            self._arm(deadline)
            return
        self._refuse(408, "Request Timeout")

    # -- answers -----------------------------------------------------------------------------------

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` if the client can tell what it answers, then close the connection."""
        phase = self._phase
        self._phase = _Phase.CLOSED
        self._cancel_timer()
        cycle = self.cycle
        if phase is _Phase.BODY:
            answer = cycle is not None and not cycle.response_started
            if cycle is not None and not cycle.response_complete:
                # The app sees a disconnect, and its late sends are dropped rather than written after ours.
                cycle.disconnected = True
                cycle.message_event.set()
        else:
            # No request begun (an idle connection) gets no answer, nor does a head pipelined behind
            # a response still being written: the answer would corrupt that response.
            answer = self._message_begun and (cycle is None or cycle.response_complete)
        _log.debug("closing the connection from %s: %d %s", self.client, status, message)
        if not answer:
            self.transport.close()
            return
        self._write_answer(status, message)
        # Closing with unread bytes makes the kernel send RST, which can destroy the answer before
        # the client reads it: half-close instead, discard what still arrives (data_received ignores
        # it), and close once the client does or _LINGER_S later (nginx's lingering close).
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(_LINGER_S, self.transport.close)

    def _bad_request(self) -> None:
        self._phase = _Phase.CLOSED
        self._cancel_timer()
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    def _write_answer(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))


def receive_deadline_protocol(limits: LimitsSettings) -> type[ReceiveDeadlineProtocol]:
    """A protocol class bound to `limits`, for `uvicorn.Config(http=...)` (one instance per connection)."""

    class BoundReceiveDeadlineProtocol(ReceiveDeadlineProtocol):
        pass

    BoundReceiveDeadlineProtocol.limits = limits
    return BoundReceiveDeadlineProtocol
