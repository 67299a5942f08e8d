"""`JsonRpcStream`: JSON-RPC 2.0 multiplexed over one duplex message channel, plus MCP handshakes.

The channel is an async `send(bytes)` and a cancel-safe async `receive()` of whole messages:
a stdio child's stdin/stdout lines, or the POST endpoint and GET event stream of the
2024-11-05 HTTP+SSE transport (PROTOCOLS.md §1.7). Concurrent requests share it; responses
are matched by id, progress by our own progressToken (§1.10), notifications stamped with a
subscriptionId go to the listen request that opened them, and everything else unsolicited
goes to the current watcher. It knows nothing of processes or HTTP.

Who reads: a connector has no lifespan to host a background task in (the pool calls
`start()` and `aclose()` from different tasks), so the waiting tasks take turns. One waiter
at a time is the reader: it routes messages into the waiters' inboxes until its own inbox
holds something, then hands the channel to another waiter, preferring the watcher, which
never needs to stop. Under the pool, watch() reads and requests only wait on their inbox.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple

import anyio
import orjson

from tollhouse.gateway.errors import (
    METHOD_NOT_FOUND,
    GatewayError,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.http_rpc import _relay_progress, encode_request
from tollhouse.gateway.upstream import (
    RELAY_CAPABILITIES,
    Era,
    NotificationCallback,
    ProgressCallback,
    ServerDescription,
    ServerRequestHandler,
)
from tollhouse.registry.models import JSONObject

__all__ = [
    "HANDSHAKE_VERSIONS",
    "JsonRpcStream",
    "Receive",
    "Send",
    "Truncated",
    "discover",
    "initialize",
    "list_all",
]

logger = logging.getLogger(__name__)

HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
"""Handshake-era revisions a legacy upstream may answer `initialize` with (§1.1)."""
MODERN_PROTOCOL_VERSION = "2026-07-28"
SUBSCRIPTION_ID_KEY = "io.modelcontextprotocol/subscriptionId"
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
_CLEANUP_SECONDS = 5.0
_MAX_QUEUED_NOTIFICATIONS = 1024
_MAX_PAGES = 1000
# The head of an oversized response as the SDKs serialise it; enough to fail the one
# request it answers instead of leaving that caller to time out.
_RESPONSE_HEAD = re.compile(
    rb'\s*\{\s*"jsonrpc"\s*:\s*"2\.0"\s*,\s*"id"\s*:\s*(\d{1,18})\s*,\s*"(?:result|error)"'
)


class Truncated(NamedTuple):
    """What `receive()` returns for a message over the size limit: its first bytes only."""

    head: bytes


Send = Callable[[bytes], Awaitable[None]]
"""Write one message. Raises UpstreamUnavailable when the channel is gone."""
Receive = Callable[[], Awaitable[bytes | str | Truncated | None]]
"""Read the next message (None at the end). Must be cancel-safe: a cancelled call loses nothing.
May raise UpstreamProtocolError or UpstreamUnavailable, which end the channel."""

_Failure = UpstreamUnavailable | UpstreamProtocolError  # how an ended channel fails its waiters
_TOO_LARGE: JSONObject = {}  # sentinel put in an inbox for a response that was dropped


class _Slot:
    """One waiter: a pending request or the watcher."""

    __slots__ = ("inbox", "waiting", "wake")

    def __init__(self) -> None:
        self.inbox: deque[JSONObject] = deque()
        self.wake = anyio.Event()
        self.waiting = False

    def put(self, message: JSONObject) -> None:
        self.inbox.append(message)
        self.wake.set()

    def put_notification(self, message: JSONObject) -> None:
        if len(self.inbox) < _MAX_QUEUED_NOTIFICATIONS:  # a consumer that stopped reading loses the rest
            self.put(message)


class JsonRpcStream:
    """Concurrent JSON-RPC requests, notifications and a watcher over one message channel.

    `drain`, if given, runs alongside whichever task is reading (stdio: the child's stderr),
    so it makes progress exactly when messages do.
    """

    def __init__(
        self,
        name: str,
        send: Send,
        receive: Receive,
        *,
        drain: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.name = name
        self._send = send
        self._receive = receive
        self._drain = drain
        self._ids = itertools.count(1)
        self._pending: dict[int, _Slot] = {}
        # pending requests that can answer server->client requests (relays), by request id
        self._askers: dict[int, ServerRequestHandler] = {}
        self._watcher: _Slot | None = None
        self._reader: _Slot | None = None
        self._reader_scope: anyio.CancelScope | None = None
        self._reader_gone = anyio.Event()
        self._reader_gone.set()
        self._failure: type[_Failure] | None = None

    @property
    def ended(self) -> bool:
        """True once the channel has ended or was closed."""
        return self._failure is not None

    # -- requests ------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        params: JSONObject,
        *,
        envelope: JSONObject | None = None,
        on_progress: ProgressCallback | None = None,
        on_notification: NotificationCallback | None = None,
        timeout_seconds: float = math.inf,
        on_request: ServerRequestHandler | None = None,
    ) -> JSONObject:
        """Send one request and return its `result`; cancelling the caller cancels it upstream.

        `envelope` replaces the reserved `_meta` keys (the 2026-07-28 per-request fields,
        §1.4). With `on_notification` this request is also the watcher: it receives the
        notifications stamped with its id as subscriptionId and all other unsolicited ones.

        Raises:
            UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError, UpstreamRpcError.
        """
        if self._failure is not None:
            raise UpstreamUnavailable(self.name)
        request_id = next(self._ids)
        slot = _Slot()
        self._pending[request_id] = slot
        if on_request is not None:
            self._askers[request_id] = on_request
        if on_notification is not None:
            self._watcher = slot
        try:
            with anyio.fail_after(timeout_seconds) as scope:
                try:
                    await self._send(
                        encode_request(request_id, method, params, envelope, on_progress is not None)
                    )
                    return await self._response(request_id, slot, on_progress, on_notification)
                except anyio.get_cancelled_exc_class():
                    await self._cancel_upstream(request_id)
                    raise
        except TimeoutError as exc:
            if not scope.cancelled_caught:
                raise
            raise UpstreamTimeout(self.name, timeout_seconds) from exc
        finally:
            del self._pending[request_id]
            self._askers.pop(request_id, None)
            if self._watcher is slot:
                self._watcher = None
            self._hand_over()

    async def notify(self, method: str, params: JSONObject | None = None) -> None:
        """Send one notification.

        Raises:
            UpstreamUnavailable: the channel is gone.
        """
        if self._failure is not None:
            raise UpstreamUnavailable(self.name)
        message: JSONObject = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._send(orjson.dumps(message))

    async def watch(self, on_notification: NotificationCallback) -> None:
        """Deliver unsolicited notifications until the channel ends; one watcher at a time (the latest)."""
        slot = _Slot()
        self._watcher = slot
        try:
            while (message := await self._next(slot)) is not None:
                await on_notification(str(message["method"]), _params(message))
        finally:
            if self._watcher is slot:
                self._watcher = None
            self._hand_over()

    def close(self) -> None:
        """End the channel: every waiter fails with UpstreamUnavailable and the reader stops."""
        self._end(UpstreamUnavailable, closed=True)
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    async def wait_idle(self) -> None:
        """Wait until no task is reading the channel (after `close()`, so the transport may)."""
        await self._reader_gone.wait()

    async def _response(
        self,
        request_id: int,
        slot: _Slot,
        on_progress: ProgressCallback | None,
        on_notification: NotificationCallback | None,
    ) -> JSONObject:
        last_progress = -math.inf
        while (message := await self._next(slot)) is not None:
            if message is _TOO_LARGE:
                raise UpstreamProtocolError(self.name)
            method = message.get("method")
            if method is None:
                return self._unwrap(message)
            params = _params(message)
            if "id" in message:
                await self._relay(request_id, message)
                continue
            if method == "notifications/progress":
                if on_progress is not None:
                    last_progress = await _relay_progress(params, request_id, last_progress, on_progress)
            elif method == "notifications/cancelled":
                # The server abandoned our request (§1.7: also how it ends a listen stream).
                logger.info("upstream %s: request %d was cancelled upstream", self.name, request_id)
                raise UpstreamUnavailable(self.name)
            elif on_notification is not None:
                await on_notification(method, params)
        assert self._failure is not None
        raise self._failure(self.name)

    async def _relay(self, request_id: int, message: JSONObject) -> None:
        """Answer a server->client request through the asker of the call it was routed to."""
        asker = self._askers.get(request_id)
        reply: JSONObject = {"jsonrpc": "2.0", "id": message["id"]}
        if asker is None:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": "Method not found"}
        else:
            try:
                reply["result"] = await asker(str(message["method"]), _params(message))
            except GatewayError as exc:
                reply["error"] = exc.to_error()
        await self._send(orjson.dumps(reply))

    def _unwrap(self, message: JSONObject) -> JSONObject:
        error = message.get("error")
        if error is not None:
            if (
                isinstance(error, dict)
                and isinstance(code := error.get("code"), int)
                and isinstance(text := error.get("message"), str)
            ):
                raise UpstreamRpcError(code, text, error.get("data"))
            raise UpstreamProtocolError(self.name)
        result = message.get("result")
        if not isinstance(result, dict):
            raise UpstreamProtocolError(self.name)
        return result

    async def _cancel_upstream(self, request_id: int) -> None:
        """§1.7, §1.10: on stdio and legacy sessions a cancel is an explicit notification."""
        if self._failure is not None:
            return
        params = {"requestId": request_id, "reason": "cancelled by the gateway"}
        with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
            try:
                await self.notify("notifications/cancelled", params)
            except GatewayError:
                logger.debug("upstream %s: could not send a cancel", self.name, exc_info=True)

    # -- reading -------------------------------------------------------------------------

    async def _next(self, slot: _Slot) -> JSONObject | None:
        """The next message for `slot`, reading the channel when nobody else is; None at the end."""
        while True:
            if slot.inbox:
                message = slot.inbox.popleft()
                self._hand_over()  # a woken candidate that will not read passes the turn on
                return message
            if self._failure is not None:
                return None
            if self._reader is None:
                await self._read_for(slot)
                continue
            slot.wake = anyio.Event()
            slot.waiting = True
            try:
                await slot.wake.wait()
            finally:
                slot.waiting = False

    async def _read_for(self, slot: _Slot) -> None:
        self._reader = slot
        self._reader_gone = anyio.Event()
        try:
            with anyio.CancelScope() as scope:
                self._reader_scope = scope
                if self._drain is None:
                    await self._pump(slot)
                else:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._drain)
                        await self._pump(slot)
                        tg.cancel_scope.cancel()
        finally:
            self._reader = None
            self._reader_scope = None
            self._reader_gone.set()
            self._hand_over()

    async def _pump(self, slot: _Slot) -> None:
        while not slot.inbox and self._failure is None:
            try:
                incoming = await self._receive()
            except (UpstreamUnavailable, UpstreamProtocolError) as exc:
                self._end(type(exc))
                return
            if incoming is None:
                self._end(UpstreamUnavailable)
                return
            await self._route(incoming)

    def _hand_over(self) -> None:
        """Wake one waiting slot to take the reader's turn, the watcher first."""
        if self._reader is not None or self._failure is not None:
            return
        watcher = self._watcher
        if watcher is not None and watcher.waiting:
            watcher.wake.set()
            return
        for slot in self._pending.values():
            if slot.waiting:
                slot.wake.set()
                return

    def _end(self, failure: type[_Failure], *, closed: bool = False) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        if not closed:
            logger.info("upstream %s: connection ended (%d requests pending)", self.name, len(self._pending))
        for slot in self._pending.values():
            slot.wake.set()
        if self._watcher is not None:
            self._watcher.wake.set()

    async def _route(self, incoming: bytes | str | Truncated) -> None:
        if isinstance(incoming, Truncated):
            logger.warning("upstream %s: dropped a message over the size limit", self.name)
            head = _RESPONSE_HEAD.match(incoming.head)
            if head is not None and (slot := self._pending.get(int(head[1]))) is not None:
                slot.put(_TOO_LARGE)
            return
        try:
            message = orjson.loads(incoming)
        except orjson.JSONDecodeError:
            logger.warning(
                "upstream %s: skipped a message that is not JSON (%d bytes)", self.name, len(incoming)
            )
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            logger.warning("upstream %s: skipped a message that is not JSON-RPC 2.0", self.name)
            return
        method = message.get("method")
        if method is None:
            if (slot := self._slot(message.get("id"))) is not None:
                slot.put(message)
            return  # else a late answer to a request we gave up on
        if not isinstance(method, str):
            return
        if "id" in message:
            # These transports say nothing about which call a server request belongs to
            # (§1.10): it is relayed only when exactly one call that can relay is in flight.
            if method != "ping" and len(self._askers) == 1:
                (asking,) = self._askers
                if (slot := self._pending.get(asking)) is not None:
                    slot.put(message)  # answered by that call's own task, not by the reader
                    return
            await self._answer(message)
            return
        params = _params(message)
        target: _Slot | None
        if method == "notifications/progress":
            target = self._slot(params.get("progressToken"))
        elif method == "notifications/cancelled":
            target = self._slot(params.get("requestId"))
        else:
            meta = params.get("_meta")
            subscription = meta.get(SUBSCRIPTION_ID_KEY) if isinstance(meta, dict) else None
            target = self._slot(subscription) or self._watcher
        if target is not None:
            target.put_notification(message)

    def _slot(self, request_id: Any) -> _Slot | None:
        """The pending request `request_id` names; ours are ints, and a bool is not one."""
        return self._pending.get(request_id) if type(request_id) is int else None

    async def _answer(self, message: JSONObject) -> None:
        """Answer a server→client request: `ping` → {}, anything else -32601 (relaying is §1.10's)."""
        reply: JSONObject = {"jsonrpc": "2.0", "id": message["id"]}
        if message["method"] == "ping":
            reply["result"] = {}
        else:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": "Method not found"}
        try:
            await self._send(orjson.dumps(reply))
        except GatewayError:
            logger.info("upstream %s: could not answer a server request", self.name)


def _params(message: JSONObject) -> JSONObject:
    params = message.get("params")
    return params if isinstance(params, dict) else {}


def _object(value: Any) -> JSONObject:
    return value if isinstance(value, dict) else {}


def _describe(era: Era, version: str, result: JSONObject, server_info: JSONObject) -> ServerDescription:
    instructions = result.get("instructions")
    return ServerDescription(
        era,
        version,
        _object(result.get("capabilities")),
        server_info,
        instructions if isinstance(instructions, str) else None,
    )


# -- handshakes and lists --------------------------------------------------------------------


async def discover(
    rpc: JsonRpcStream, envelope: JSONObject, timeout_seconds: float = math.inf
) -> ServerDescription | None:
    """Probe with `server/discover` (§1.4); None when the upstream is not a 2026-07-28 server.

    Any error or a timeout means "not modern": stdio has no status code to go by.

    Raises:
        UpstreamUnavailable: the channel ended.
    """
    try:
        result = await rpc.request("server/discover", {}, envelope=envelope, timeout_seconds=timeout_seconds)
    except (UpstreamRpcError, UpstreamProtocolError, UpstreamTimeout) as exc:
        logger.info("upstream %s: server/discover failed (%s); trying initialize", rpc.name, exc.message)
        return None
    versions = result.get("supportedVersions")
    if not isinstance(versions, list) or MODERN_PROTOCOL_VERSION not in versions:
        return None
    server_info = _object(_object(result.get("_meta")).get(_SERVER_INFO_KEY))
    return _describe("modern", MODERN_PROTOCOL_VERSION, result, server_info)


async def initialize(
    rpc: JsonRpcStream, protocol_version: str, client_info: JSONObject, timeout_seconds: float = math.inf
) -> ServerDescription:
    """The legacy handshake (§1.3): `initialize`, then `notifications/initialized`.

    Raises:
        UpstreamUnavailable, UpstreamTimeout, UpstreamRpcError, and UpstreamProtocolError
        for a revision we do not speak.
    """
    params = {
        "protocolVersion": protocol_version,
        "capabilities": RELAY_CAPABILITIES,
        "clientInfo": client_info,
    }
    result = await rpc.request("initialize", params, timeout_seconds=timeout_seconds)
    version = result.get("protocolVersion")
    if not isinstance(version, str) or version not in HANDSHAKE_VERSIONS:
        logger.warning("upstream %s: unusable initialize result (version %r)", rpc.name, version)
        raise UpstreamProtocolError(rpc.name)
    await rpc.notify("notifications/initialized")
    return _describe("legacy", version, result, _object(result.get("serverInfo")))


async def list_all(
    name: str, request: Callable[[str, JSONObject], Awaitable[JSONObject]], method: str, key: str
) -> list[JSONObject]:
    """Follow `nextCursor` through every page of a list method; `key` names the items.

    Raises:
        UpstreamProtocolError: a malformed page, a repeated cursor, or over 1000 pages;
            and whatever `request` raises.
    """
    items: list[JSONObject] = []
    seen: set[str] = set()
    params: JSONObject = {}
    for _ in range(_MAX_PAGES):
        result = await request(method, params)
        page = result.get(key)
        if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
            raise UpstreamProtocolError(name)
        items.extend(page)
        cursor = result.get("nextCursor")
        if cursor is None:
            return items
        if not isinstance(cursor, str) or cursor in seen:
            raise UpstreamProtocolError(name)
        seen.add(cursor)
        params = {"cursor": cursor}
    logger.warning("upstream %s: %s did not end within %d pages", name, method, _MAX_PAGES)
    raise UpstreamProtocolError(name)
