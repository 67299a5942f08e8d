"""McpEndpoint: Streamable HTTP for MCP 2026-07-28 (stateless) and the session era, on one path.

It checks the request (method, Origin, Content-Type, Accept, size, JSON-RPC shape), picks
the era (an `initialize` or a session id means the session era; a 2026-07-28 version in
the header or `_meta` means modern), verifies the 2026-07-28 routing headers against the
body (MCP 2026-07-28 basic/transports: -32020 on mismatch), and frames the handlers'
answers as JSON, or as SSE when progress is requested. The principal comes from
BearerAuthMiddleware in front of it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import anyio
import orjson
from starlette.types import Message, Receive, Scope, Send

from tollhouse.auth.middleware import (
    PRINCIPAL_KEY,
    RESOURCE_METADATA_KEY,
    challenge,
    client_address,
    principal_of,
)
from tollhouse.gateway.auditing import Auditor
from tollhouse.gateway.errors import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    AuditUnavailable,
    GatewayError,
    InsufficientScope,
    InvalidArguments,
    MethodNotFound,
    UpstreamRpcError,
    http_status,
)
from tollhouse.gateway.handlers import MODERN_VERSION, SESSION_VERSIONS, McpHandlers, RequestContext
from tollhouse.gateway.relay import require_capability
from tollhouse.gateway.sessions import DownstreamSession, Pending, SessionManager, TooManySessions
from tollhouse.gateway.settings import LimitsSettings
from tollhouse.gateway.views import View
from tollhouse.registry.models import JSONObject
from tollhouse.tracing import Tracing, error_type_of, target_of

__all__ = ["VIEW_KEY", "McpEndpoint"]

VIEW_KEY = "tollhouse.view"

logger = logging.getLogger("tollhouse.mcp")

_PV_KEY = "io.modelcontextprotocol/protocolVersion"
_CAPS_KEY = "io.modelcontextprotocol/clientCapabilities"
_LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
_LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"
# Session-era methods that 2026-07-28 removed (subscriptions/listen replaces subscribe).
_SESSION_ONLY = frozenset({"resources/subscribe", "resources/unsubscribe"})
_ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
_LISTEN_KINDS = {
    "toolsListChanged": "notifications/tools/list_changed",
    "promptsListChanged": "notifications/prompts/list_changed",
    "resourcesListChanged": "notifications/resources/list_changed",
}
_JSON = (b"content-type", b"application/json")
_MAX_NESTING = 128
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


class _Reject(Exception):
    """Refuse the request with an HTTP status and a JSON-RPC error body."""

    def __init__(
        self, status: int, code: int, message: str, data: Any = None, request_id: Any = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data, self.request_id = (
            status,
            code,
            message,
            data,
            request_id,
        )


class McpEndpoint:
    """The ASGI app behind `/mcp`: one aggregate MCP server, both protocol eras."""

    def __init__(
        self,
        handlers: McpHandlers,
        sessions: SessionManager,
        limits: LimitsSettings,
        resolve_view: Callable[[Scope], View | None],
        auditor: Auditor | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._auditor = auditor
        self._tracing = tracing
        self._handlers = handlers
        self._resolve_view = resolve_view
        self._sessions = sessions
        self._max_body = limits.max_body_bytes
        self._receive_timeout = limits.receive_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            view = self._resolve_view(scope)
        except InvalidArguments as exc:  # a bad query parameter (`disclosure`)
            await _plain(send, 400, f"Bad Request: {exc.message}".encode())
            return
        if view is None:
            await _plain(send, 404, b"Not Found: no such server or toolset")
            return
        scope[VIEW_KEY] = view
        method = scope["method"]
        try:
            if method == "POST":
                await self._post(scope, receive, send, headers)
            elif method == "GET":
                await self._get(scope, receive, send, headers)
            elif method == "DELETE":
                await self._delete(scope, send, headers)
            else:
                await _plain(send, 405, b"Method not allowed", [(b"allow", b"GET, POST, DELETE")])
        except _Reject as r:
            if self._auditor is not None and PRINCIPAL_KEY in scope:
                self._auditor.rejected(
                    principal_of(scope), client_address(scope), r.status, r.code, r.message, r.request_id
                )
            await _error_response(send, r.status, r.request_id, r.code, r.message, r.data)

    # -- POST ---------------------------------------------------------------------------------

    async def _post(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise _Reject(
                415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json"
            )
        if not _accepts_both(headers.get("accept", "")):
            raise _Reject(
                406,
                INVALID_REQUEST,
                "Not Acceptable: Accept must include application/json and text/event-stream",
            )
        body = await self._read_body(receive, headers)
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Reject(400, PARSE_ERROR, "Parse error") from None
        if isinstance(message, list):
            raise _Reject(400, INVALID_REQUEST, "Batch requests are not supported")
        if _deeper_than(message, _MAX_NESTING):
            # Audit digests, guardrails and tracing walk messages recursively; argument validation
            # refuses anything past 64 levels anyway. Found by tests/fuzz (a 500 from RecursionError).
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: nested too deeply")
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
        request_id = message.get("id")
        if "id" in message and (isinstance(request_id, bool) or not isinstance(request_id, (str, int))):
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
        rpc_method = message.get("method")
        if rpc_method is None:
            if "id" in message and ("result" in message or "error" in message):
                await self._client_answer(scope, send, headers, message)
                return
            raise _Reject(400, INVALID_REQUEST, "Invalid Request: no method", request_id=request_id)
        if not isinstance(rpc_method, str):
            raise _Reject(
                400, INVALID_REQUEST, "Invalid Request: method must be a string", request_id=request_id
            )
        params = message.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise _Reject(400, INVALID_PARAMS, "Invalid params: must be an object", request_id=request_id)
        meta = params.get("_meta")
        meta_version = meta.get(_PV_KEY) if isinstance(meta, dict) else None
        header_version = headers.get("mcp-protocol-version")
        session_id = headers.get("mcp-session-id")
        if rpc_method == "initialize" and meta_version is None:
            await self._initialize(scope, send, params, request_id)
        elif header_version == MODERN_VERSION or meta_version is not None:
            await self._modern(scope, receive, send, headers, message, params)
        elif header_version is not None and header_version not in SESSION_VERSIONS:
            # Checked before the session too: an unsupported version is a 400 (2025-06-18 transports).
            raise _Reject(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": [MODERN_VERSION, *SESSION_VERSIONS], "requested": header_version},
                request_id,
            )
        elif session_id is not None:
            await self._in_session(scope, send, headers, session_id, message, params)
        else:
            raise _Reject(400, INVALID_REQUEST, "Bad Request: Missing session ID", request_id=request_id)

    async def _client_answer(
        self, scope: Scope, send: Send, headers: dict[str, str], message: JSONObject
    ) -> None:
        """The client's answer to one of our server->client requests (a relay): wake the asker."""
        session_id = headers.get("mcp-session-id")
        if session_id is not None:
            session = self._sessions.get(session_id, principal_of(scope), scope[VIEW_KEY])
            pending = session.pending.pop(message.get("id"), None) if session is not None else None
            if pending is not None:
                pending.message = message
                pending.done.set()
        await _accepted(send)

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise _Reject(413, INVALID_REQUEST, "Payload Too Large")
        chunks: list[bytes] = []
        size = 0
        # A client that trickles its body is cut off (slowloris); headers are uvicorn's job.
        with anyio.move_on_after(self._receive_timeout) as deadline:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise _Reject(400, INVALID_REQUEST, "Client disconnected")
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self._max_body:
                    raise _Reject(413, INVALID_REQUEST, "Payload Too Large")
                chunks.append(chunk)
                if not msg.get("more_body", False):
                    return b"".join(chunks)
        assert deadline.cancelled_caught
        raise _Reject(408, INVALID_REQUEST, "Request Timeout: the body did not arrive in time")

    # -- 2026-07-28 ---------------------------------------------------------------------------

    async def _modern(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[str, str],
        message: JSONObject,
        params: JSONObject,
    ) -> None:
        rpc_method: str = message["method"]
        request_id = message.get("id")
        meta = params.get("_meta")
        if not isinstance(meta, dict) or _PV_KEY not in meta:
            raise _Reject(400, INVALID_PARAMS, f"Missing _meta.{_PV_KEY}", request_id=request_id)
        version = meta[_PV_KEY]
        if version != MODERN_VERSION:
            raise _Reject(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": [MODERN_VERSION, *SESSION_VERSIONS], "requested": version},
                request_id,
            )
        if headers.get("mcp-protocol-version") != version:
            raise _Reject(
                400, HEADER_MISMATCH, "MCP-Protocol-Version header does not match _meta", None, request_id
            )
        if headers.get("mcp-method") != rpc_method:
            raise _Reject(400, HEADER_MISMATCH, "Mcp-Method header does not match the body", None, request_id)
        name_field = _NAMED.get(rpc_method)
        if name_field is not None and _decode_header(headers.get("mcp-name")) != params.get(name_field):
            raise _Reject(400, HEADER_MISMATCH, "Mcp-Name header does not match the body", None, request_id)
        if not isinstance(meta.get(_CAPS_KEY), dict):
            raise _Reject(400, INVALID_PARAMS, f"Missing _meta.{_CAPS_KEY}", request_id=request_id)
        if "id" not in message:
            await _accepted(send)
            return
        principal = principal_of(scope)
        if rpc_method == "server/discover":
            await _result_response(send, request_id, self._handlers.discover())
            return
        if rpc_method == "subscriptions/listen":
            await self._listen(receive, send, request_id, params, scope[VIEW_KEY])
            return
        try:
            if rpc_method in _SESSION_ONLY:
                raise MethodNotFound(rpc_method)
            handler = self._handlers.handler(rpc_method)
        except MethodNotFound as exc:
            raise _Reject(
                http_status(exc, modern=True), exc.code, exc.message, rpc_method, request_id
            ) from None
        progress_token = meta.get("progressToken")
        stream = _Stream(send, request_id, progress_token, log_level=meta.get(_LOG_LEVEL_KEY))
        rc = RequestContext(
            principal=principal,
            resource_metadata=scope.get(RESOURCE_METADATA_KEY),
            source_ip=client_address(scope),
            response_headers=stream.headers,
            protocol_version=version,
            modern=True,
            view=scope[VIEW_KEY],
            request_id=request_id,
            client_capabilities=meta[_CAPS_KEY],
            notify=stream.notify,
            log_level=_level(meta.get(_LOG_LEVEL_KEY)),
            session_key=f"principal:{principal.key}",
            on_progress=stream.progress if progress_token is not None else None,
        )
        # 2026-07-28: closing the response stream is how a client cancels; watch for it.
        with self._server_span(rpc_method, params, headers, rc) as span:
            outcome: tuple[JSONObject | None, Exception | None] | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
                outcome = await stream.answer(handler, params, rc, rpc_method, self._auditor)
                tg.cancel_scope.cancel()
            self._end_span(span, outcome)

    async def _listen(
        self, receive: Receive, send: Send, request_id: Any, params: JSONObject, view: View
    ) -> None:
        """`subscriptions/listen` (2026-07-28): the response is a stream of the chosen list changes."""
        wanted = params.get("notifications")
        if not isinstance(wanted, dict):
            raise _Reject(
                400, INVALID_PARAMS, "subscriptions/listen needs 'notifications'", request_id=request_id
            )
        honoured: JSONObject = {key: True for key in _LISTEN_KINDS if wanted.get(key) is True}
        tag = {_SUBSCRIPTION_KEY: request_id}
        uris = wanted.get("resourceSubscriptions")
        held = await self._handlers.hold_resources(uris if isinstance(uris, list) else [], view)
        if held:
            honoured["resourceSubscriptions"] = list(held)
        try:
            await self._stream_listen(
                receive, send, request_id, honoured, tag, view, frozenset(held.values())
            )
        finally:
            with anyio.CancelScope(shield=True):
                await self._handlers.release_resources(held)

    async def _stream_listen(
        self,
        receive: Receive,
        send: Send,
        request_id: Any,
        honoured: JSONObject,
        tag: JSONObject,
        view: View,
        resources: frozenset[tuple[str, str]],
    ) -> None:
        kinds = frozenset(_LISTEN_KINDS[k] for k in honoured if k in _LISTEN_KINDS)
        with self._sessions.listen(kinds, view=view, resources=resources) as notifications:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            ack = {"notifications": honoured, "_meta": tag}
            await _sse_event(
                send, {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": ack}
            )
            ended_by_client = False
            async with anyio.create_task_group() as tg:

                async def until_disconnect() -> None:
                    nonlocal ended_by_client
                    await _wait_disconnect(receive)
                    ended_by_client = True
                    tg.cancel_scope.cancel()

                tg.start_soon(until_disconnect)
                async for notification in notifications:
                    event = {**notification, "params": {**notification.get("params", {}), "_meta": tag}}
                    await _sse_event(send, event)
                tg.cancel_scope.cancel()
            if not ended_by_client:
                # The gateway is shutting down: end the subscription gracefully (a result for its id).
                final = {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": {"resultType": "complete", "_meta": tag},
                }
                await _sse_event(send, final, more=False)
                return
        with anyio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- session era --------------------------------------------------------------------------

    async def _initialize(self, scope: Scope, send: Send, params: JSONObject, request_id: Any) -> None:
        if request_id is None:
            raise _Reject(400, INVALID_REQUEST, "initialize must be a request")
        result = self._handlers.initialize(params)
        caps = params.get("capabilities")
        try:
            session = self._sessions.create(
                principal_of(scope),
                result["protocolVersion"],
                caps if isinstance(caps, dict) else {},
                view_key=scope[VIEW_KEY].key,
                view=scope[VIEW_KEY],
            )
        except TooManySessions:
            raise _Reject(503, INTERNAL_ERROR, "Too many sessions", request_id=request_id) from None
        if self._auditor is not None:
            self._auditor.session_started(
                principal_of(scope), client_address(scope), session.id, str(result["protocolVersion"])
            )
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})
        await _send_json(send, 200, body, [(b"mcp-session-id", session.id.encode())])

    async def _in_session(
        self,
        scope: Scope,
        send: Send,
        headers: dict[str, str],
        session_id: str,
        message: JSONObject,
        params: JSONObject,
    ) -> None:
        principal = principal_of(scope)
        session = self._sessions.get(session_id, principal, scope[VIEW_KEY])
        request_id = message.get("id")
        if session is None:
            raise _Reject(404, INVALID_REQUEST, "Session not found", request_id=request_id)
        rpc_method: str = message["method"]
        if "id" not in message:
            if rpc_method == "notifications/cancelled":
                cancelled_id = params.get("requestId")
                # Only a string or an integer can name a request (an array would not even hash).
                valid_id = isinstance(cancelled_id, (str, int)) and not isinstance(cancelled_id, bool)
                scope_to_cancel = session.inflight.get(cancelled_id) if valid_id else None
                if scope_to_cancel is not None:
                    scope_to_cancel.cancel()
            await _accepted(send, session.id)
            return
        if rpc_method == "ping":
            await _result_response(send, request_id, {}, session.id)
            return
        if rpc_method == "logging/setLevel":
            level = _level(params.get("level"))
            if level is None:
                raise _Reject(200, INVALID_PARAMS, "Invalid params: unknown log level", request_id=request_id)
            session.log_level = level
            await _result_response(send, request_id, {}, session.id)
            return
        try:
            handler = self._handlers.handler(rpc_method)
        except MethodNotFound as exc:
            raise _Reject(
                http_status(exc, modern=False), exc.code, exc.message, rpc_method, request_id
            ) from None
        meta = params.get("_meta")
        progress_token = meta.get("progressToken") if isinstance(meta, dict) else None
        stream = _Stream(send, request_id, progress_token, session.id, legacy=True, session=session)
        rc = RequestContext(
            principal=principal,
            resource_metadata=scope.get(RESOURCE_METADATA_KEY),
            source_ip=client_address(scope),
            response_headers=stream.headers,
            protocol_version=session.protocol_version,
            modern=False,
            view=scope[VIEW_KEY],
            request_id=request_id,
            client_capabilities=session.client_capabilities,
            ask=stream.ask,
            notify=stream.notify,
            log_level=session.log_level,
            session=session,
            session_key=session.id,
            on_progress=stream.progress if progress_token is not None else None,
        )
        with anyio.CancelScope() as cancel_scope, self._server_span(rpc_method, params, headers, rc) as span:
            session.inflight[request_id] = cancel_scope
            try:
                self._end_span(span, await stream.answer(handler, params, rc, rpc_method, self._auditor))
            finally:
                session.inflight.pop(request_id, None)
        if cancel_scope.cancelled_caught:
            # notifications/cancelled: the client wants no response (MCP basic/utilities/cancellation).
            await stream.close_without_answer()

    def _server_span(
        self, method: str, params: JSONObject, headers: dict[str, str], rc: RequestContext
    ) -> AbstractContextManager[Any]:
        if self._tracing is None:
            return nullcontext()
        return self._tracing.server_span(
            method,
            params,
            headers,
            target=target_of(method, params),
            request_id=rc.request_id,
            session_id=rc.session.id if rc.session is not None else None,
            protocol_version=rc.protocol_version,
            client_address=rc.source_ip,
        )

    def _end_span(self, span: Any, outcome: tuple[JSONObject | None, Exception | None] | None) -> None:
        """Mark the SERVER span of a request answered with an error (the answer raised nothing).

        No outcome: the client went away and the call was cancelled.
        """
        if span is None or self._tracing is None:
            return
        if outcome is None:
            self._tracing.fail(span, "cancelled")
            return
        result, failure = outcome
        if failure is not None:
            self._tracing.fail(span, error_type_of(failure))
        elif result is not None and result.get("isError") is True:
            self._tracing.fail(span, "tool_error")

    async def _get(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        if headers.get("mcp-protocol-version") == MODERN_VERSION:
            await _plain(send, 405, b"Method not allowed", [(b"allow", b"POST")])
            return
        if "text/event-stream" not in headers.get("accept", ""):
            raise _Reject(406, INVALID_REQUEST, "Not Acceptable: Accept must include text/event-stream")
        session_id = headers.get("mcp-session-id")
        if session_id is None:
            raise _Reject(400, INVALID_REQUEST, "Bad Request: Missing session ID")
        session = self._sessions.get(session_id, principal_of(scope), scope[VIEW_KEY])
        if session is None:
            raise _Reject(404, INVALID_REQUEST, "Session not found")
        if session.stream_attached or session.outbox_receive is None:
            raise _Reject(409, INVALID_REQUEST, "Conflict: only one GET stream per session")
        await _serve_session_stream(session, receive, send, _event_number(headers.get("last-event-id")))

    async def _delete(self, scope: Scope, send: Send, headers: dict[str, str]) -> None:
        if headers.get("mcp-protocol-version") == MODERN_VERSION:
            await _plain(send, 405, b"Method not allowed", [(b"allow", b"POST")])
            return
        session_id = headers.get("mcp-session-id")
        if session_id is None:
            raise _Reject(400, INVALID_REQUEST, "Bad Request: Missing session ID")
        if self._sessions.get(session_id, principal_of(scope), scope[VIEW_KEY]) is None:
            raise _Reject(404, INVALID_REQUEST, "Session not found")
        await self._sessions.close(session_id)
        await _send_json(send, 200, b"{}")


class _Stream:
    """The response to one request: JSON, or SSE once there is progress to report."""

    def __init__(
        self,
        send: Send,
        request_id: Any,
        progress_token: Any,
        session_id: str | None = None,
        *,
        legacy: bool = False,
        session: DownstreamSession | None = None,
        log_level: Any = None,
    ) -> None:
        self._session = session
        self._log_level = log_level
        self._send = send
        self._id = request_id
        self._token = progress_token
        # Response headers: the session id, and whatever the call's stages add before the
        # response starts (rate-limit state); RequestContext.response_headers is this list.
        self.headers: list[tuple[bytes, bytes]] = (
            [(b"mcp-session-id", session_id.encode())] if session_id else []
        )
        self._sse = False
        self._legacy = legacy
        self._last_progress: float | None = None

    async def _start_sse(self) -> None:
        if not self._sse:
            self._sse = True
            await self._send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _SSE_HEADERS + self.headers,
                }
            )

    async def _event(self, payload: JSONObject, *, more: bool = True) -> None:
        data = b"event: message\ndata: " + orjson.dumps(payload) + b"\n\n"
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def progress(self, progress: float, total: float | None, message: str | None) -> None:
        """Relay an upstream progress notification under the client's own token, monotonic."""
        if self._last_progress is not None and progress <= self._last_progress:
            return
        self._last_progress = progress
        await self._start_sse()
        params: JSONObject = {"progressToken": self._token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self._event({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})

    async def notify(self, method: str, params: JSONObject) -> None:
        """Relay a notification the upstream sent during this call: log messages, by level.

        Session era: filtered by the session's `logging/setLevel`. 2026-07-28: sent only when
        the request opted in with `_meta` logLevel (basic/utilities/logging).
        """
        if method != "notifications/message":
            return
        threshold = self._session.log_level if self._session is not None else self._log_level
        if threshold is None and self._session is None:
            return  # 2026-07-28 without opt-in
        level = params.get("level")
        known = threshold in _LOG_LEVELS and level in _LOG_LEVELS
        if known and _LOG_LEVELS.index(level) < _LOG_LEVELS.index(threshold):
            return
        await self._start_sse()
        await self._event({"jsonrpc": "2.0", "method": method, "params": params})

    async def ask(self, method: str, params: JSONObject) -> JSONObject:
        """Send a server->client request on this request's stream and wait for the client's answer.

        Raises:
            UpstreamRpcError: the client lacks the capability, or answered with an error.
        """
        session = self._session
        assert session is not None, "only session-era streams carry server->client requests"
        require_capability(method, session.client_capabilities)
        outgoing_id = f"tollhouse-{secrets.token_hex(8)}"
        pending = Pending()
        session.pending[outgoing_id] = pending
        try:
            await self._start_sse()
            # Related to the call being answered, so it goes on that call's stream (§1.10).
            await self._event({"jsonrpc": "2.0", "id": outgoing_id, "method": method, "params": params})
            await pending.done.wait()
        finally:
            session.pending.pop(outgoing_id, None)
        answer = pending.message or {}
        error = answer.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            raise UpstreamRpcError(
                code if isinstance(code, int) else INTERNAL_ERROR,
                str(error.get("message")),
                error.get("data"),
            )
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def answer(
        self,
        handler: Any,
        params: JSONObject,
        rc: RequestContext,
        method: str = "",
        auditor: Auditor | None = None,
    ) -> tuple[JSONObject | None, Exception | None]:
        """Run the handler, record it, and send its result or error (JSON-RPC errors on a 200 here).

        The audit record is written before anything is sent: a tools/call's answer leaves only
        once its record is committed (or, failing closed, becomes an AuditUnavailable error).
        """
        result: JSONObject | None = None
        failure: Exception | None = None
        try:
            if auditor is not None:
                auditor.before(method, rc.audit)
            result = await handler(params, rc)
        except anyio.get_cancelled_exc_class() as exc:
            if auditor is not None:
                auditor.trail.submit(self._record(auditor, method, params, rc, None, exc))
            raise
        except Exception as exc:
            failure = exc
        if auditor is not None:
            try:
                await auditor.after(
                    method, self._record(auditor, method, params, rc, result, failure), failure
                )
            except AuditUnavailable as exc:
                result, failure = None, exc
        await self._send_answer(result, failure, rc)
        return result, failure

    @staticmethod
    def _record(
        auditor: Auditor,
        method: str,
        params: JSONObject,
        rc: RequestContext,
        result: JSONObject | None,
        failure: BaseException | None,
    ) -> dict[str, Any]:
        return auditor.request_record(
            method,
            params,
            principal=rc.principal,
            source_ip=rc.source_ip,
            notes=rc.audit,
            request_id=rc.request_id,
            session_id=rc.session.id if rc.session is not None else None,
            result=result,
            failure=failure,
        )

    async def _send_answer(
        self, result: JSONObject | None, failure: Exception | None, rc: RequestContext
    ) -> None:
        payload: JSONObject
        if failure is None:
            payload = {"jsonrpc": "2.0", "id": self._id, "result": result}
        elif isinstance(failure, InsufficientScope):
            exc = failure
            payload = {"jsonrpc": "2.0", "id": self._id, "error": exc.to_error()}
            if not self._sse:
                # Step-up (MCP authorization, scope challenge): 403 + WWW-Authenticate naming
                # only the scopes this call lacks; the body still carries the JSON-RPC error.
                header = challenge(
                    resource_metadata=rc.resource_metadata or "",
                    scopes=exc.scopes,
                    error="insufficient_scope",
                    description="The token lacks a scope this tool needs",
                )
                await _send_json(
                    self._send,
                    403,
                    orjson.dumps(payload),
                    [*self.headers, (b"www-authenticate", header)],
                )
                return
        elif isinstance(failure, GatewayError):
            payload = {"jsonrpc": "2.0", "id": self._id, "error": failure.to_error()}
            if failure.status != 200 and not self._sse:
                # A refusal the HTTP exchange can still carry (429 for a limit), with its headers.
                await _send_json(
                    self._send, failure.status, orjson.dumps(payload), [*self.headers, *failure.headers]
                )
                return
        else:
            logger.error("unexpected error answering a request", exc_info=failure)
            payload = {
                "jsonrpc": "2.0",
                "id": self._id,
                "error": {"code": INTERNAL_ERROR, "message": "Internal error"},
            }
        if self._sse:
            await self._event(payload, more=False)
        else:
            await _send_json(self._send, 200, orjson.dumps(payload), self.headers)

    async def close_without_answer(self) -> None:
        """End the HTTP exchange of a cancelled request without a JSON-RPC response."""
        if not self._sse:
            await self._start_sse()
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def _serve_session_stream(
    session: DownstreamSession, receive: Receive, send: Send, resume_after: int | None
) -> None:
    """The session's standalone stream: priming event, events missed since `Last-Event-ID`, live ones."""
    assert session.outbox_receive is not None
    session.stream_attached = True
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_SSE_HEADERS, (b"mcp-session-id", session.id.encode())],
        }
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_disconnect, receive, tg.cancel_scope)
            # The priming event (an id, no data) lets a client resume from here (2025-11-25).
            priming = f"id: {session.last_event_id}\ndata: \n\n".encode()
            await send({"type": "http.response.body", "body": priming, "more_body": True})
            sent = session.last_event_id
            if resume_after is not None:
                for number, notification in list(session.replay):
                    if number > resume_after:
                        await send(_numbered_event(number, notification))
                        sent = max(sent, number)
            async for number, notification in session.outbox_receive:
                if number > sent or resume_after is None:
                    await send(_numbered_event(number, notification))
            tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the client went away
    finally:
        session.stream_attached = False
        if session.closed:
            session.outbox_receive.close()


def _numbered_event(number: int, payload: JSONObject) -> Message:
    data = f"id: {number}\nevent: message\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"
    return {"type": "http.response.body", "body": data, "more_body": True}


def _event_number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


async def _sse_event(send: Send, payload: JSONObject, *, more: bool = True) -> None:
    data = b"event: message\ndata: " + orjson.dumps(payload) + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


def _level(value: Any) -> str | None:
    return value if value in _LOG_LEVELS else None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers in `value` nest more than `limit` levels (iterative: no recursion of its own)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


def _accepts_both(accept: str) -> bool:
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if "*/*" in kinds:
        return True
    return "application/json" in kinds and "text/event-stream" in kinds


def _decode_header(value: str | None) -> str | None:
    """Decode the `=?base64?...?=` form the 2026-07-28 transport uses for unsafe header values."""
    if value is not None and value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return value


async def _send_json(send: Send, status: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _result_response(
    send: Send, request_id: Any, result: JSONObject, session_id: str | None = None
) -> None:
    extra = [(b"mcp-session-id", session_id.encode())] if session_id else []
    await _send_json(send, 200, orjson.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}), extra)


async def _error_response(
    send: Send, status: int, request_id: Any, code: int, message: str, data: Any
) -> None:
    error: JSONObject = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    await _send_json(send, status, orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}))


async def _accepted(send: Send, session_id: str | None = None) -> None:
    extra = [(b"mcp-session-id", session_id.encode())] if session_id else []
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0"), *extra]})
    await send({"type": "http.response.body", "body": b""})


async def _plain(send: Send, status: int, text: bytes, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(text)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": text})
