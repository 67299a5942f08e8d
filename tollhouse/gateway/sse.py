"""Incremental parser for `text/event-stream` bodies (WHATWG HTML, "Server-sent events" §9.2.6).

Pure module: no I/O. Feed it the body's bytes as they arrive, in chunks of any size, and it
returns the events completed so far. It handles CRLF, LF and CR line ends (also split across
chunks), comments, multi-line `data:`, `event:`, `id:` and `retry:`, and bounds the bytes
buffered for one event.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SseError", "SseEvent", "SseParser"]

_BOM = b"\xef\xbb\xbf"


class SseError(ValueError):
    """The stream broke a limit of the parser (an event larger than allowed)."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its type (default "message"), data, and the last event id seen."""

    event: str
    data: str
    id: str | None = None


class SseParser:
    """Turns chunks of an event stream into `SseEvent`s.

    `max_event_bytes` caps the bytes one event may buffer (its data lines plus an
    unfinished line); exceeding it raises `SseError`.
    """

    __slots__ = (
        "_data",
        "_event",
        "_event_bytes",
        "_max_event_bytes",
        "_partial",
        "_skip_lf",
        "_started",
        "last_event_id",
        "retry_ms",
    )

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._max_event_bytes = max_event_bytes
        self._partial = b""  # an unfinished line carried over from the previous chunk
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF completes CRLF
        self._started = False
        self._data: list[bytes] = []
        self._event = ""
        self._event_bytes = 0
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume `chunk` and return the events it completed.

        Raises:
            SseError: an event grew beyond `max_event_bytes`.
        """
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buf = self._partial + chunk if self._partial else chunk
        if not self._started and buf:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._partial = buf  # too short to tell whether it is a BOM
                return []
            self._started = True
            if buf.startswith(_BOM):  # the stream may open with one UTF-8 BOM, which is ignored
                buf = buf[len(_BOM) :]
        events: list[SseEvent] = []
        # bytes.splitlines() splits on exactly LF, CRLF and CR, the three SSE line ends.
        lines = buf.splitlines(keepends=True)
        if lines and not lines[-1].endswith((b"\n", b"\r")):
            self._partial = lines.pop()
            if self._event_bytes + len(self._partial) > self._max_event_bytes:
                raise SseError("event too large")
        else:
            self._partial = b""
            # A CR at the very end may be the first half of a CRLF split across chunks.
            self._skip_lf = buf.endswith(b"\r")
        for raw in lines:
            line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            else:
                self._line(line)
        return events

    def _line(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ':' starts a comment (keep-alives)
            return
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._event_bytes += len(value) + 1
            if self._event_bytes > self._max_event_bytes:
                raise SseError("event too large")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self.retry_ms = int(value)
        # Any other field is ignored, as the spec requires.

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._event_bytes = [], "", 0
        if not data:  # no data lines: nothing is dispatched (priming events, bare ids)
            return None
        return SseEvent(event or "message", b"\n".join(data).decode("utf-8", "replace"), self.last_event_id)
