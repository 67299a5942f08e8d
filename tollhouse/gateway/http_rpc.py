"""JSON-RPC over Streamable HTTP to one URL: the I/O layer under `HttpUpstream`.

`HttpRpc` POSTs one message and reads its reply, JSON or SSE (PROTOCOLS.md §1.5, §1.6): it
relays the request's progress, answers legacy server→client requests, caps the bytes it
reads, and maps every failure to an Upstream* error. It knows nothing of eras or
handshakes; a legacy `Session` is just the headers its requests carry.

Hot path: aiohttp and orjson directly, no pydantic, one dict lookup per header set.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import orjson
from anyio.abc import TaskStatus
from yarl import URL

from tollhouse.gateway.errors import (
    GatewayError,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamUnavailable,
)
from tollhouse.gateway.sse import SseError, SseParser
from tollhouse.gateway.upstream import NotificationCallback, ProgressCallback, ServerRequestHandler
from tollhouse.registry.models import JSONObject

__all__ = [
    "EVENT_STREAM",
    "JSON",
    "HttpRpc",
    "Session",
    "SessionExpired",
    "UpstreamUnauthorized",
    "encode_header_value",
    "encode_request",
    "unreachable",
]

logger = logging.getLogger(__name__)

JSON = "application/json"
"""Media type of a single JSON-RPC message body."""
EVENT_STREAM = "text/event-stream"
"""Media type of an SSE reply or stream."""
_RESERVED_META_PREFIX = "io.modelcontextprotocol/"
_ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
_CLEANUP_SECONDS = 5.0
_DRAIN_SECONDS = 0.05
_DRAIN_BYTES = 64 * 1024
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_B64_SENTINEL = re.compile(r"=\?base64\?.*\?=")


def encode_header_value(value: str) -> str:
    """Encode a value for an `Mcp-*` header: verbatim if safe, else the `=?base64?…?=` form (§1.5)."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _B64_SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def encode_request(
    request_id: int, method: str, params: JSONObject, envelope: JSONObject | None, progress: bool
) -> bytes:
    """A request body whose `_meta` keeps the caller's foreign keys; the reserved ones are ours.

    `io.modelcontextprotocol/*` keys are replaced by `envelope` (the 2026-07-28 per-request
    fields, §1.4) and `progressToken` by the request id when `progress` is asked for.
    """
    meta = params.get("_meta")
    if meta is not None or envelope is not None or progress:
        own: JSONObject = {}
        if isinstance(meta, dict):
            own = {
                k: v
                for k, v in meta.items()
                if not (k.startswith(_RESERVED_META_PREFIX) or k == "progressToken")
            }
        if envelope is not None:
            own.update(envelope)
        if progress:
            own["progressToken"] = request_id  # ids are unique per connector, so are tokens
        params = {**params, "_meta": own}
        if not own:
            del params["_meta"]
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def unreachable(name: str, exc: aiohttp.ClientError) -> UpstreamUnavailable:
    """The error for a failed HTTP exchange: `sent=False` when no connection was ever made.

    Only a connect failure (refused, connect timeout, DNS, TLS handshake) proves that no byte
    of the request left; a reset or disconnect on an open (maybe pooled) connection does not.
    """
    never_connected = isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return UpstreamUnavailable(name, sent=not never_connected)


class SessionExpired(Exception):
    """A legacy upstream answered 404 for the session: re-initialise it (§1.6)."""


class UpstreamUnauthorized(UpstreamUnavailable):
    """The upstream answered 401: the gateway's credential was refused.

    The connector gives its credential provider one chance to fetch a fresh one and retries;
    otherwise it is an unavailable upstream like any other.
    """


@dataclass(slots=True)
class Session:
    """One legacy upstream session and the headers every request on it carries."""

    id: str | None
    protocol_version: str
    headers: dict[str, str]


class HttpRpc:
    """JSON-RPC exchanges with one upstream URL over one pooled aiohttp session.

    Create it inside a running event loop; `aclose()` closes the pool.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        connect_timeout_seconds: float,
        max_connections: int,
        max_response_bytes: int,
    ) -> None:
        self.name = name
        self._url = URL(url)
        self._max_bytes = max_response_bytes
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            # Callers put a deadline on every call, so only the socket connect has its own.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Identity bodies only, so max_response_bytes bounds what we actually parse.
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._http.close()

    async def call(
        self,
        body: bytes,
        headers: Mapping[str, str],
        request_id: int,
        session: Session | None = None,
        on_progress: ProgressCallback | None = None,
        on_request: ServerRequestHandler | None = None,
        on_notification: NotificationCallback | None = None,
    ) -> JSONObject:
        """POST one request and return its result; cancelling the caller cancels it upstream.

        Raises:
            UpstreamUnavailable, UpstreamProtocolError, UpstreamRpcError, and SessionExpired
            when `session` is no longer known upstream.
        """
        try:
            response = await self.post(body, headers)
            try:
                result = await self.read_reply(
                    response, request_id, session, on_progress, on_request, on_notification
                )
            except (UpstreamRpcError, SessionExpired):
                response.release()  # a complete answer: the connection may be reused
                raise
            except BaseException:
                # §1.5: closing the response stream is the 2026-07-28 cancel; a half-read
                # connection must not go back to the pool either.
                response.close()
                raise
            response.release()
            return result
        except anyio.get_cancelled_exc_class():
            if session is not None:
                # §1.6: a disconnect is not a cancel on legacy sessions; say so explicitly.
                await self._notify_cancelled(session, request_id)
            raise

    async def post(self, body: bytes, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """POST `body`; the caller releases or closes the response.

        Raises:
            UpstreamUnavailable: the upstream cannot be reached.
        """
        if self._http.closed:
            raise UpstreamUnavailable(self.name, sent=False)
        try:
            return await self._http.post(self._url, data=body, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise unreachable(self.name, exc) from exc

    async def get_stream(self, headers: Mapping[str, str]) -> aiohttp.ClientResponse | None:
        """Open a GET event stream (the legacy standalone stream, §1.6); None if not offered (405).

        Raises:
            UpstreamUnavailable: it cannot be opened.
        """
        if self._http.closed:
            raise UpstreamUnavailable(self.name)
        try:
            response = await self._http.get(self._url, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name) from exc
        if response.status == 405:  # §1.6: a server may decline to offer the stream
            response.release()
            return None
        if response.status != 200 or response.content_type != EVENT_STREAM:
            response.close()
            logger.warning("upstream %s: no GET stream (HTTP %d)", self.name, response.status)
            raise UpstreamUnavailable(self.name)
        return response

    async def send(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """POST a notification or a response; True when the upstream accepted it."""
        try:
            response = await self.post(body, headers)
        except UpstreamUnavailable:
            logger.debug("upstream %s: one-way POST failed", self.name, exc_info=True)
            return False
        try:
            await response.read()
        except aiohttp.ClientError:
            return False
        finally:
            response.release()
        return 200 <= response.status < 300

    async def delete(self, session: Session) -> None:
        """End a legacy session upstream; best effort, bounded and shielded (§1.6)."""
        if session.id is None or self._http.closed:
            return
        with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
            try:
                async with self._http.delete(self._url, headers=session.headers, allow_redirects=False):
                    pass
            except aiohttp.ClientError:
                logger.debug("upstream %s: DELETE of a session failed", self.name, exc_info=True)

    async def read_reply(
        self,
        response: aiohttp.ClientResponse,
        request_id: int,
        session: Session | None = None,
        on_progress: ProgressCallback | None = None,
        on_request: ServerRequestHandler | None = None,
        on_notification: NotificationCallback | None = None,
    ) -> JSONObject:
        """The result of the response to `request_id`, from a JSON body or an event stream."""
        status = response.status
        if status >= 500:
            raise UpstreamUnavailable(self.name)
        if status == 404 and session is not None and session.id is not None:
            raise SessionExpired
        if status == 401:
            raise UpstreamUnauthorized(self.name)
        content_type = response.content_type
        if content_type == JSON:
            return self.unwrap(self._decode(await self._read_body(response)), request_id, status)
        if content_type == EVENT_STREAM and status == 200:
            return await self._read_stream(
                response, request_id, session, on_progress, on_request, on_notification
            )
        raise UpstreamProtocolError(self.name)

    async def read_json(self, response: aiohttp.ClientResponse) -> JSONObject | None:
        """The body as a JSON object, or None when it is not one."""
        if response.content_type != JSON:
            return None
        try:
            return self._decode(await self._read_body(response))
        except UpstreamProtocolError:
            return None

    def unwrap(self, message: JSONObject, request_id: int, status: int) -> JSONObject:
        """The `result` of a JSON-RPC response.

        Raises:
            UpstreamRpcError: it is an error response.
            UpstreamProtocolError: it is not a response to `request_id` with an object result.
        """
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
        if not 200 <= status < 300 or message.get("id") != request_id or not isinstance(result, dict):
            raise UpstreamProtocolError(self.name)
        return result

    async def pump(
        self,
        response: aiohttp.ClientResponse,
        on_notification: NotificationCallback,
        *,
        task_status: TaskStatus[None] | None = None,
        session: Session | None = None,
        listen_id: int | None = None,
    ) -> None:
        """Deliver a watch stream's notifications until it ends or breaks.

        With `listen_id` (a 2026-07-28 listen stream, §1.5) the acknowledgement is not
        delivered but fires `task_status`, and the response to `listen_id` ends the stream.

        Raises:
            UpstreamUnavailable: the stream ended before it was acknowledged.
            UpstreamProtocolError: an event was malformed or too large.
        """
        parser = SseParser(self._max_bytes)
        try:
            async for chunk in response.content.iter_any():
                for event in parser.feed(chunk):
                    if event.event != "message" or not event.data:
                        continue
                    message = self._decode(event.data)
                    method = message.get("method")
                    if method is None:
                        if listen_id is not None and message.get("id") == listen_id:
                            self.unwrap(message, listen_id, 200)
                            return  # the listen stream's graceful end
                    elif "id" in message:
                        await self._answer_server_request(session, message)
                    elif method == _ACKNOWLEDGED and listen_id is not None:
                        if task_status is not None:
                            task_status.started()
                            task_status = None
                    else:
                        params = message.get("params")
                        await on_notification(str(method), params if isinstance(params, dict) else {})
        except SseError as exc:
            raise UpstreamProtocolError(self.name) from exc
        except aiohttp.ClientError as exc:
            logger.info("upstream %s: watch stream broke: %r", self.name, exc)
        if task_status is not None:
            raise UpstreamUnavailable(self.name)

    async def _read_stream(
        self,
        response: aiohttp.ClientResponse,
        request_id: int,
        session: Session | None,
        on_progress: ProgressCallback | None,
        on_request: ServerRequestHandler | None = None,
        on_notification: NotificationCallback | None = None,
    ) -> JSONObject:
        """Read an SSE reply up to the response to `request_id`, handling what comes before it."""
        parser = SseParser(self._max_bytes)
        budget = self._max_bytes
        last_progress = -math.inf
        try:
            async for chunk in response.content.iter_any():
                budget -= len(chunk)
                if budget < 0:
                    raise UpstreamProtocolError(self.name)
                for event in parser.feed(chunk):
                    if event.event != "message" or not event.data:
                        continue  # priming events carry no data (§1.6)
                    message = self._decode(event.data)
                    method = message.get("method")
                    if method is None:
                        if message.get("id") == request_id:
                            await _drain(response)
                            return self.unwrap(message, request_id, 200)
                        continue  # a late reply to an abandoned request of ours
                    if "id" in message:
                        await self._answer_server_request(session, message, on_request)
                    elif method == "notifications/progress":
                        if on_progress is not None:
                            last_progress = await _relay_progress(
                                message.get("params"), request_id, last_progress, on_progress
                            )
                    elif on_notification is not None:
                        params = message.get("params")
                        await on_notification(str(method), params if isinstance(params, dict) else {})
        except SseError as exc:
            raise UpstreamProtocolError(self.name) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name) from exc
        raise UpstreamUnavailable(self.name)  # §1.5: a broken stream loses the request

    async def _answer_server_request(
        self, session: Session | None, message: JSONObject, on_request: ServerRequestHandler | None = None
    ) -> None:
        """Answer a legacy server→client request on its session: `ping` → {}; others are relayed
        through `on_request` when the call has one (§1.10), else refused with -32601."""
        if session is None:
            return  # 2026-07-28 has no server→client requests (§1.5): nowhere to answer
        reply: JSONObject = {"jsonrpc": "2.0", "id": message["id"]}
        method = message.get("method")
        params = message.get("params")
        if method == "ping":
            reply["result"] = {}
        elif on_request is not None and isinstance(method, str):
            try:
                reply["result"] = await on_request(method, params if isinstance(params, dict) else {})
            except GatewayError as exc:
                reply["error"] = exc.to_error()
        else:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        await self.send(orjson.dumps(reply), session.headers)

    async def _notify_cancelled(self, session: Session, request_id: int) -> None:
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": request_id, "reason": "cancelled by the gateway"},
            }
        )
        with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
            await self.send(body, session.headers)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        length = response.content_length
        try:
            if length is not None:
                if length > self._max_bytes:
                    raise UpstreamProtocolError(self.name)
                return await response.read()
            chunks: list[bytes] = []
            budget = self._max_bytes
            async for chunk in response.content.iter_any():
                budget -= len(chunk)
                if budget < 0:
                    raise UpstreamProtocolError(self.name)
                chunks.append(chunk)
            return b"".join(chunks)
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name) from exc

    def _decode(self, data: bytes | str) -> JSONObject:
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamProtocolError(self.name) from exc
        if not isinstance(message, dict):
            raise UpstreamProtocolError(self.name)
        return message


async def _relay_progress(params: Any, token: int, last: float, on_progress: ProgressCallback) -> float:
    """Relay one notifications/progress for our token if it advances (§1.8: monotonic)."""
    if not isinstance(params, dict) or params.get("progressToken") != token:
        return last
    progress = params.get("progress")
    if not isinstance(progress, int | float) or isinstance(progress, bool) or not progress > last:
        return last
    total = params.get("total")
    message = params.get("message")
    await on_progress(
        float(progress),
        float(total) if isinstance(total, int | float) and not isinstance(total, bool) else None,
        message if isinstance(message, str) else None,
    )
    return float(progress)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read a finished SSE reply to its end, so its connection can go back to the pool.

    Servers end the stream right after the response (the SDK's terminator follows within
    microseconds); one that keeps it open costs a new connection, not the caller's time.
    """
    content = response.content
    budget = _DRAIN_BYTES
    with anyio.move_on_after(_DRAIN_SECONDS):
        try:
            while budget > 0 and not content.at_eof():
                budget -= len(await content.readany())
        except aiohttp.ClientError:
            pass  # the response is released either way; a broken one is not pooled
