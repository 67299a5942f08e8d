"""`StdioUpstream`: an MCP server run as a long-lived child process and spoken to over stdio.

One JSON-RPC message per line on stdin/stdout; stderr is free-form and goes to the
`tollhouse.upstreams.stdio` logger, prefixed with the server name (PROTOCOLS.md §1.7). The
child gets the SDK's minimal environment (PATH, HOME, …) plus the configured `env`, never the
gateway's own (DESIGN.md, Configuration). A process is not a session: every caller shares
the child and `session_key` is ignored. When the child exits, pending and later requests
fail with UpstreamUnavailable and `watch()` returns; the pool then builds a new connector,
which starts a new child.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import anyio
from anyio.abc import ByteReceiveStream, ObjectSendStream, Process, TaskStatus
from mcp.client.stdio import get_default_environment

from tollhouse import __version__
from tollhouse.gateway.errors import (
    GatewayError,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.jsonrpc_stream import JsonRpcStream, Truncated, discover, initialize, list_all
from tollhouse.gateway.streamable_http import LEGACY_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION
from tollhouse.gateway.upstream import (
    Era,
    NotificationCallback,
    ProgressCallback,
    ServerDescription,
    ServerRequestHandler,
    resubscribe,
)
from tollhouse.registry.models import JSONObject, Upstream
from tollhouse.tracing import Tracing, traced_request

__all__ = ["StdioUpstream"]

logger = logging.getLogger(__name__)
stderr_logger = logging.getLogger("tollhouse.upstreams.stdio")

_PROBE_SECONDS = 5.0
_STOP_STEP_SECONDS = 2.0  # each of: exit after stdin closes, after SIGTERM, after SIGKILL (§1.7)
_HEAD_BYTES = 256
_ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
_LISTEN_FILTER = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # kept out of log lines (log injection)


class _Lines:
    """Newline-delimited records from a byte stream, each at most `max_bytes`; cancel-safe.

    A longer record comes back as `Truncated` (its first `head_bytes`) and the rest of it
    is skipped. The only await is the stream read, after which nothing can be lost.
    """

    def __init__(self, stream: ByteReceiveStream | None, max_bytes: int, head_bytes: int) -> None:
        self._stream = stream
        self._max = max_bytes
        self._head = head_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes already searched for a newline
        self._skipping = False
        self._eof = stream is None

    async def next(self) -> bytes | Truncated | None:
        """The next record, or None at the end of the stream."""
        while True:
            index = self._buffer.find(b"\n", self._scanned)
            if index >= 0:
                record = bytes(self._buffer[:index])
                del self._buffer[: index + 1]
                self._scanned = 0
                if self._skipping:
                    self._skipping = False  # the tail of an oversized record
                    continue
                if index > self._max:
                    return Truncated(record[: self._head])
                return record
            if self._skipping:
                self._buffer.clear()
            elif len(self._buffer) > self._max:
                head = bytes(self._buffer[: self._head])
                self._buffer.clear()
                self._skipping = True
                return Truncated(head)
            self._scanned = len(self._buffer)
            if self._eof or self._stream is None:
                if self._buffer and not self._skipping:
                    record = bytes(self._buffer)
                    self._buffer.clear()
                    self._scanned = 0
                    return record  # an unterminated last record
                return None
            try:
                self._buffer += await self._stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                self._eof = True


class StdioUpstream:
    """An `UpstreamConnector` for a stdio MCP server, in either era.

    `era="legacy"` skips the `server/discover` probe (a dual-era server picks its era from
    the first request, so a probe would commit it to 2026-07-28).
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        era: Literal["auto", "modern", "legacy"] = "auto",
        max_message_bytes: int = 16 * 1024 * 1024,
        max_log_line_bytes: int = 8 * 1024,
        client_name: str = "tollhouse",
        client_version: str = __version__,
        tracing: Tracing | None = None,
    ) -> None:
        if not upstream.command:
            raise ValueError(f"upstream {upstream.name} has no command")
        self.name = upstream.name
        self._tracing = tracing
        self._resource_uris: frozenset[str] = frozenset()
        self._upstream = upstream
        self._requested_era = era
        self._max_message_bytes = max_message_bytes
        self._max_log_line_bytes = max_log_line_bytes
        self._client_info = {"name": client_name, "version": client_version}
        self._envelope: JSONObject = {
            "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": self._client_info,
        }
        self._process: Process | None = None
        self._stdout = _Lines(None, 0, 0)
        self._stderr = _Lines(None, 0, 0)
        self._rpc: JsonRpcStream | None = None
        self._description: ServerDescription | None = None
        self._era: Era | None = None
        self._listen = True  # modern: until the child says it offers no subscriptions/listen
        self._closed = False

    @property
    def description(self) -> ServerDescription | None:
        """What the child said about itself at the last successful `start()`."""
        return self._description

    @property
    def era(self) -> Era | None:
        """The detected era while running, else None."""
        return self._era

    @property
    def pid(self) -> int | None:
        """The child's process id while it is ours, else None."""
        return None if self._process is None else self._process.pid

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> ServerDescription:
        """Spawn the child and detect its era.

        Raises:
            UpstreamUnavailable: the command cannot start, or the handshake fails.
        """
        if self._closed:
            raise UpstreamUnavailable(self.name)
        await self._stop()
        upstream = self._upstream
        env = {**get_default_environment(), **upstream.env}
        try:
            # Its own session: on shutdown a signal reaches the whole process group.
            process = await anyio.open_process(
                list(upstream.command), env=env, cwd=upstream.cwd, start_new_session=True
            )
        except OSError as exc:
            logger.warning("upstream %s: cannot start %s: %s", self.name, upstream.command[0], exc)
            raise UpstreamUnavailable(self.name) from exc
        self._process = process
        self._stdout = _Lines(process.stdout, self._max_message_bytes, _HEAD_BYTES)
        self._stderr = _Lines(process.stderr, self._max_log_line_bytes, self._max_log_line_bytes)
        rpc = self._rpc = JsonRpcStream(self.name, self._send, self._receive, drain=self._log_stderr)
        timeout = upstream.call_timeout_seconds
        try:
            with anyio.fail_after(timeout) as scope:
                description = await self._handshake(rpc)
        except TimeoutError as exc:
            await self._stop()
            if not scope.cancelled_caught:
                raise
            logger.warning("upstream %s: no handshake answer within %ss", self.name, timeout)
            raise UpstreamUnavailable(self.name) from exc
        except GatewayError as exc:
            await self._stop()
            logger.warning("upstream %s: handshake failed: %s", self.name, exc.message)
            raise UpstreamUnavailable(self.name) from exc
        except BaseException:
            await self._stop()
            raise
        logger.info("upstream %s: child %d speaks %s", self.name, process.pid, description.protocol_version)
        self._description = description
        self._era = description.era
        return description

    async def aclose(self) -> None:
        """Stop the child: close stdin, then SIGTERM, then SIGKILL, and reap it. Idempotent."""
        self._closed = True
        await self._stop()

    async def end_session(self, session_key: str) -> None:
        """Nothing to do: a process is not a session (§1.7)."""

    async def _stop(self) -> None:
        """Fail every waiter, stop the child within about 6 s, and reap it."""
        self._era = None
        process, self._process = self._process, None
        rpc, self._rpc = self._rpc, None
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if rpc is not None:
                rpc.close()
                with anyio.move_on_after(_STOP_STEP_SECONDS):
                    await rpc.wait_idle()  # nobody else reads stdout/stderr from here on
            async with anyio.create_task_group() as tg:
                # Keep reading, so a child blocked on a full pipe can see stdin close and exit.
                tg.start_soon(self._discard_stdout)
                tg.start_soon(self._log_stderr)
                if process.stdin is not None:
                    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await process.stdin.aclose()
                for step in (None, "SIGTERM", "SIGKILL"):
                    if step is not None:
                        logger.info("upstream %s: %s to child %d", self.name, step, process.pid)
                        _signal_group(process, kill=step == "SIGKILL")
                    with anyio.move_on_after(_STOP_STEP_SECONDS) as waited:
                        await process.wait()
                    if not waited.cancelled_caught:
                        break
                tg.cancel_scope.cancel()
            with anyio.move_on_after(_STOP_STEP_SECONDS):
                await process.aclose()  # closes the pipes; the child is already reaped
            if process.returncode is None:
                logger.warning(
                    "upstream %s: child %d survived SIGKILL; abandoning it", self.name, process.pid
                )

    # -- requests --------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: JSONObject,
        *,
        session_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout_seconds: float | None = None,
        on_request: ServerRequestHandler | None = None,
        client_capabilities: JSONObject | None = None,
        on_notification: NotificationCallback | None = None,
        log_level: str | None = None,
        principal_key: str | None = None,
    ) -> JSONObject:
        """Send one request and return its `result`; cancelling the caller cancels it in the child.

        `session_key` is ignored: every caller shares one channel. It carries no request
        correlation for server->client messages, so a server request is relayed through
        `on_request` only while this is the one relaying call in flight (else -32601), and
        `on_notification` is not used. The current trace context goes along in `_meta` (stdio
        has no headers), under a CLIENT span when tracing is on.

        Raises:
            UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError, UpstreamRpcError.
        """
        send = partial(
            self._request,
            method,
            on_progress=on_progress,
            timeout_seconds=timeout_seconds,
            on_request=on_request,
            client_capabilities=client_capabilities,
            log_level=log_level,
        )
        return await traced_request(self._tracing, method, params, send, server=self.name)

    async def _request(
        self,
        method: str,
        params: JSONObject,
        trace_headers: Mapping[str, str] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout_seconds: float | None = None,
        on_request: ServerRequestHandler | None = None,
        client_capabilities: JSONObject | None = None,
        log_level: str | None = None,
    ) -> JSONObject:
        """`request` without tracing: background traffic (list sync, subscriptions) starts no span."""
        rpc = self._rpc
        if rpc is None or self._era is None:
            raise UpstreamUnavailable(self.name)
        timeout = self._upstream.call_timeout_seconds if timeout_seconds is None else timeout_seconds
        # §1.7: modern stdio has no headers, so every request carries the whole envelope.
        envelope = self._envelope if self._era == "modern" else None
        if envelope is not None and client_capabilities is not None:
            envelope = {**envelope, "io.modelcontextprotocol/clientCapabilities": client_capabilities}
        if envelope is not None and log_level is not None:
            envelope = {**envelope, "io.modelcontextprotocol/logLevel": log_level}
        return await rpc.request(
            method,
            params,
            envelope=envelope,
            on_progress=on_progress,
            timeout_seconds=timeout,
            on_request=on_request,
        )

    async def set_resource_subscriptions(self, uris: Sequence[str]) -> None:
        """Subscribe the one session to these URIs (session era); updates arrive on its stream.

        2026-07-28 over this transport does not carry resource subscriptions yet: recorded only.
        """
        wanted, current = frozenset(uris), self._resource_uris
        self._resource_uris = wanted
        if self.era == "legacy":
            await resubscribe(self._request, current, wanted)

    async def list_all(self, method: str, key: str) -> list[JSONObject]:
        """Follow `nextCursor` through every page of a list method; `key` names the items.

        Raises:
            UpstreamProtocolError: a malformed page, a repeated cursor, or over 1000 pages;
                and whatever `request` raises.
        """
        return await list_all(self.name, self._request, method, key)

    async def watch(
        self,
        on_notification: NotificationCallback,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver unsolicited notifications until the child exits; `task_status` fires once live.

        Legacy: whatever the child sends outside a request. Modern: a `subscriptions/listen`
        request for the three list_changed kinds (its acknowledgement is not delivered), or
        the bare channel if the child offers none.

        Raises:
            UpstreamUnavailable: the child is not running, or exited before acknowledging.
        """
        rpc = self._rpc
        if rpc is None or self._era is None or rpc.ended:
            raise UpstreamUnavailable(self.name)
        if (
            self._era == "modern"
            and self._listen
            and await self._listen_once(rpc, on_notification, task_status)
        ):
            return
        task_status.started()
        await rpc.watch(on_notification)

    async def _listen_once(
        self, rpc: JsonRpcStream, on_notification: NotificationCallback, task_status: TaskStatus[None]
    ) -> bool:
        """Run one listen stream to its end; False when the child offers none."""
        acknowledged = False

        async def relay(method: str, params: JSONObject) -> None:
            nonlocal acknowledged
            if method != _ACKNOWLEDGED:
                await on_notification(method, params)
            elif not acknowledged:
                acknowledged = True
                task_status.started()

        try:
            await rpc.request(
                "subscriptions/listen",
                {"notifications": _LISTEN_FILTER},
                envelope=self._envelope,
                on_notification=relay,
            )
        except UpstreamRpcError as exc:
            if acknowledged:
                return True
            logger.info(
                "upstream %s: no subscriptions/listen (%s); watching the channel", self.name, exc.code
            )
            self._listen = False
            return False
        except UpstreamUnavailable:
            if not acknowledged:
                raise
        return True

    # -- handshake -------------------------------------------------------------------

    async def _handshake(self, rpc: JsonRpcStream) -> ServerDescription:
        """Detect the era (§1.4: stdio probes server/discover; an error or a timeout means legacy).

        After a slow probe, `initialize` is sent while the probe may still answer: a child
        that was merely slow to start is still recognised as modern.
        """
        if self._requested_era == "legacy":
            return await initialize(rpc, LEGACY_PROTOCOL_VERSION, self._client_info)
        if self._requested_era == "modern":
            modern = await discover(rpc, self._envelope)
            if modern is None:
                raise UpstreamProtocolError(self.name)
            return modern
        probe_seconds = min(self._upstream.connect_timeout_seconds, _PROBE_SECONDS)
        send, receive = anyio.create_memory_object_stream[ServerDescription | None](2)
        async with send, receive, anyio.create_task_group() as tg:
            tg.start_soon(self._attempt, partial(discover, rpc, self._envelope), send.clone())
            outstanding = 1
            description: ServerDescription | None = None
            with anyio.move_on_after(probe_seconds):
                description = await receive.receive()
                outstanding -= 1
            if description is None:
                tg.start_soon(
                    self._attempt, partial(initialize, rpc, LEGACY_PROTOCOL_VERSION, self._client_info), send
                )
                outstanding += 1
                while description is None and outstanding:
                    description = await receive.receive()
                    outstanding -= 1
            tg.cancel_scope.cancel()
        if description is None:
            raise UpstreamUnavailable(self.name)
        return description

    async def _attempt(
        self,
        handshake: Callable[[], Awaitable[ServerDescription | None]],
        results: ObjectSendStream[ServerDescription | None],
    ) -> None:
        """Run one handshake and report its description, or None if it failed."""
        async with results:
            description: ServerDescription | None = None
            try:
                description = await handshake()
            except (UpstreamRpcError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable) as exc:
                logger.info("upstream %s: handshake attempt failed: %s", self.name, exc.message)
            await results.send(description)

    # -- the pipes -------------------------------------------------------------------

    async def _send(self, message: bytes) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise UpstreamUnavailable(self.name)
        try:
            await process.stdin.send(message + b"\n")  # orjson never writes a raw newline
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise UpstreamUnavailable(self.name) from exc

    async def _receive(self) -> bytes | Truncated | None:
        while True:
            record = await self._stdout.next()
            if isinstance(record, bytes) and not record.strip():
                continue
            return record

    async def _discard_stdout(self) -> None:
        while await self._stdout.next() is not None:
            pass

    async def _log_stderr(self) -> None:
        """Log each stderr line of the child; binary and overlong lines are made safe."""
        while (record := await self._stderr.next()) is not None:
            if isinstance(record, Truncated):
                line = record.head.decode("utf-8", "replace") + " [truncated]"
            else:
                line = record.decode("utf-8", "replace")
            line = _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", line.rstrip("\r"))
            stderr_logger.info("%s: %s", self.name, line)


def _signal_group(process: Process, *, kill: bool) -> None:
    """SIGTERM (or SIGKILL) the child's process group, so the child's own children stop too."""
    try:
        if sys.platform == "win32":  # no process groups: the child alone
            (process.kill if kill else process.terminate)()
        else:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)  # it leads its group
    except ProcessLookupError:
        pass  # already gone
    except PermissionError:  # a group member we may not signal; the child itself we may
        with contextlib.suppress(ProcessLookupError):
            (process.kill if kill else process.terminate)()
