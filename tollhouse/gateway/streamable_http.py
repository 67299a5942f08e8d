"""`HttpUpstream`: the Streamable HTTP connector to one upstream MCP server, in both eras.

Modern upstreams (MCP 2026-07-28, PROTOCOLS.md §1.4-1.5) get one self-contained POST per
request, carrying the `_meta` envelope and the `Mcp-*` routing headers. Legacy upstreams
(2025-03-26 … 2025-11-25, §1.3 and §1.6) get `initialize`d sessions, one per `session_key`.
The era is detected once at `start()`; the HTTP exchange itself lives in `http_rpc`.

Server→client requests on a call's stream are relayed through the caller's `on_request`
(relay.py); without one they are answered -32601, and `ping` with `{}`. Not yet:
`Mcp-Param-*` headers, and resuming broken legacy SSE streams.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio
import orjson
from anyio.abc import TaskStatus

from tollhouse import __version__
from tollhouse.gateway.credentials import CredentialProvider, StaticCredentials
from tollhouse.gateway.errors import (
    METHOD_NOT_FOUND,
    GatewayError,
    UpstreamProtocolError,
    UpstreamRpcError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from tollhouse.gateway.http_rpc import (
    EVENT_STREAM,
    JSON,
    HttpRpc,
    Session,
    SessionExpired,
    UpstreamUnauthorized,
    encode_header_value,
    encode_request,
)
from tollhouse.gateway.upstream import (
    RELAY_CAPABILITIES,
    Era,
    NotificationCallback,
    ProgressCallback,
    ServerDescription,
    ServerRequestHandler,
    resubscribe,
)
from tollhouse.registry.models import JSONObject, Upstream
from tollhouse.tracing import Tracing, traced_request

__all__ = ["LEGACY_PROTOCOL_VERSION", "MODERN_PROTOCOL_VERSION", "HttpUpstream", "encode_header_value"]

_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
_LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
_WATCH_KEY = "tollhouse:watch"
logger = logging.getLogger(__name__)

MODERN_PROTOCOL_VERSION = "2026-07-28"
"""The stateless revision spoken to modern upstreams."""
LEGACY_PROTOCOL_VERSION = "2025-11-25"
"""The handshake revision offered in `initialize`."""
# Handshake-era revisions a legacy upstream may counter-offer (§1.1).
_HANDSHAKE_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
# §1.5: the body field mirrored into Mcp-Name.
_NAME_FIELDS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# A modern server refusing our envelope answers with our id and one of these (§1.2, §1.4);
# any other 400/404/405 to server/discover means a handshake-era server.
_MODERN_REFUSALS = frozenset({-32020, -32021, -32602})
_LISTEN_FILTER = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
_MAX_PAGES = 1000
_MAX_CACHED_METHODS = 64
_SESSION_ID = re.compile(r"[\x21-\x7e]+")  # §1.6: visible ASCII
# Joins a principal key to a session key: per-user credentials get legacy sessions of their own.
_PRINCIPAL_SEP = "\x00"


class _NotModern(Exception):
    """server/discover did not find a 2026-07-28 server."""


class HttpUpstream:
    """An `UpstreamConnector` over Streamable HTTP, for modern and legacy upstreams.

    `credentials` gives the gateway's credential for this upstream (default: the static
    `bearer`/`header` reference, resolved from `environ`, default `os.environ`, at
    `start()`). A per-request provider is asked on every request for the calling
    principal, and a 401 makes it fetch a fresh credential once before the request is
    retried. Nothing from the downstream agent is ever sent upstream: every header is
    built here.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        era: Literal["auto", "modern", "legacy"] = "auto",
        environ: Mapping[str, str] | None = None,
        credentials: CredentialProvider | None = None,
        max_response_bytes: int = 16 * 1024 * 1024,
        max_connections: int = 100,
        client_name: str = "tollhouse",
        client_version: str = __version__,
        tracing: Tracing | None = None,
    ) -> None:
        if upstream.url is None:
            raise ValueError(f"upstream {upstream.name} has no url")
        self.name = upstream.name
        self._upstream = upstream
        self._url = upstream.url
        self._tracing = tracing
        self._requested_era = era
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._credentials: CredentialProvider = credentials or StaticCredentials(upstream, self._environ)
        self._max_bytes = max_response_bytes
        self._max_connections = max_connections
        self._client_info = {"name": client_name, "version": client_version}
        self._envelope: JSONObject = {
            "io.modelcontextprotocol/protocolVersion": MODERN_PROTOCOL_VERSION,
            _CAPABILITIES_KEY: {},
            "io.modelcontextprotocol/clientInfo": self._client_info,
        }
        self._ids = itertools.count(1)
        self._rpc: HttpRpc | None = None
        self._base_headers: dict[str, str] = {}
        self._method_headers: dict[str, dict[str, str]] = {}
        self._sessions: dict[str | None, Session] = {}
        self._session_locks: dict[str | None, anyio.Lock] = {}
        self._resource_uris: frozenset[str] = frozenset()
        self._resubscribe = anyio.Event()
        self._description: ServerDescription | None = None
        self._era: Era | None = None
        self._closed = False

    @property
    def description(self) -> ServerDescription | None:
        """What the upstream said about itself at the last successful `start()`."""
        return self._description

    @property
    def era(self) -> Era | None:
        """The detected era once started, else None."""
        return self._era

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> ServerDescription:
        """Connect, detect the era and learn the upstream's capabilities.

        Raises:
            UpstreamUnavailable: unreachable, a missing credential, or a refused handshake.
        """
        if self._closed:
            raise UpstreamUnavailable(self.name)
        credential = await self._credentials.headers(None)
        rpc = self._rpc
        if rpc is None:
            rpc = self._rpc = HttpRpc(
                self.name,
                self._url,
                connect_timeout_seconds=self._upstream.connect_timeout_seconds,
                max_connections=self._max_connections,
                max_response_bytes=self._max_bytes,
            )
        self._era = None
        await self._end_sessions(rpc)
        self._base_headers = {
            "Accept": f"{JSON}, {EVENT_STREAM}",
            "Content-Type": JSON,
            "User-Agent": f"tollhouse/{__version__}",
            **credential,
        }
        self._method_headers.clear()
        try:
            description = await self._handshake(rpc)
        except BaseException:
            # Nothing stays open after a failed start; the next start() reconnects.
            self._rpc = None
            with anyio.CancelScope(shield=True):
                await self._end_sessions(rpc)
                await rpc.aclose()
            raise
        self._description = description
        self._era = description.era
        return description

    async def aclose(self) -> None:
        """End every legacy session (best effort, bounded) and close the HTTP client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._era = None
        rpc, self._rpc = self._rpc, None
        if rpc is not None:
            with anyio.CancelScope(shield=True):
                await self._end_sessions(rpc)
                await rpc.aclose()

    async def end_session(self, session_key: str) -> None:
        """Forget the legacy session bound to `session_key` and DELETE it upstream (best effort)."""
        keys = [session_key]
        if self._credentials.per_request:
            keys += [k for k in self._sessions if k is not None and k.endswith(_PRINCIPAL_SEP + session_key)]
        for key in keys:
            session = self._sessions.pop(key, None)
            self._session_locks.pop(key, None)
            if session is not None and self._rpc is not None:
                await self._rpc.delete(session)

    async def _end_sessions(self, rpc: HttpRpc) -> None:
        sessions = list(self._sessions.values())
        self._sessions.clear()
        self._session_locks.clear()
        async with anyio.create_task_group() as tg:
            for session in sessions:
                tg.start_soon(rpc.delete, session)

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
        """Send one request and return its `result`; cancelling the caller cancels it upstream.

        `principal_key` is who the call is for: per-user credentials are chosen by it (and
        legacy sessions are kept apart per principal then). The current trace context goes
        along in `_meta` and in the W3C headers, under a CLIENT span when tracing is on.

        Raises:
            UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError, UpstreamRpcError,
            UpstreamAuthorizationRequired.
        """
        send = functools.partial(
            self._request,
            method,
            session_key=session_key,
            on_progress=on_progress,
            timeout_seconds=timeout_seconds,
            on_request=on_request,
            client_capabilities=client_capabilities,
            on_notification=on_notification,
            log_level=log_level,
            principal_key=principal_key,
        )
        return await traced_request(self._tracing, method, params, send, server=self.name, url=self._url)

    async def _request(
        self,
        method: str,
        params: JSONObject,
        trace_headers: Mapping[str, str],
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
        """`request` without tracing: background traffic (list sync, subscriptions) starts no span."""
        rpc = self._rpc
        if rpc is None or self._era is None:
            raise UpstreamUnavailable(self.name)
        timeout = self._upstream.call_timeout_seconds if timeout_seconds is None else timeout_seconds
        credentials = self._credentials
        try:
            with anyio.fail_after(timeout) as scope:
                for attempt in range(2):
                    extra = await credentials.headers(principal_key) if credentials.per_request else None
                    try:
                        if self._era == "modern":
                            request_id = next(self._ids)
                            envelope = self._envelope
                            if client_capabilities is not None:
                                envelope = {**envelope, _CAPABILITIES_KEY: client_capabilities}
                            if log_level is not None:
                                envelope = {**envelope, _LOG_LEVEL_KEY: log_level}
                            body = encode_request(
                                request_id, method, params, envelope, on_progress is not None
                            )
                            headers = self._modern_headers(method, params)
                            if extra or trace_headers:
                                headers = {**headers, **(extra or {}), **trace_headers}
                            return await rpc.call(
                                body, headers, request_id, None, on_progress, None, on_notification
                            )
                        if extra is not None and principal_key is not None:
                            session_key = f"{principal_key}{_PRINCIPAL_SEP}{session_key or ''}"
                        return await self._legacy_request(
                            rpc,
                            method,
                            params,
                            session_key,
                            on_progress,
                            on_request,
                            on_notification,
                            extra,
                            trace_headers,
                        )
                    except UpstreamUnauthorized as exc:
                        if not extra:  # nothing was sent that a fresh credential could replace
                            raise
                        if attempt:
                            raise credentials.refused(principal_key) from exc
                        logger.info("upstream %s: credential refused, fetching a fresh one", self.name)
                        await credentials.on_unauthorized(principal_key)
                raise AssertionError("unreachable")  # pragma: no cover
        except TimeoutError as exc:
            if not scope.cancelled_caught:
                raise
            raise UpstreamTimeout(self.name, timeout) from exc

    async def list_all(self, method: str, key: str) -> list[JSONObject]:
        """Follow `nextCursor` through every page of a list method; `key` names the items.

        Raises:
            UpstreamProtocolError: a malformed page, a repeated cursor, or over 1000 pages;
                and whatever `request` raises.
        """
        items: list[JSONObject] = []
        seen: set[str] = set()
        params: JSONObject = {}
        for _ in range(_MAX_PAGES):
            result = await self._request(method, params, {})
            page = result.get(key)
            if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
                raise UpstreamProtocolError(self.name)
            items.extend(page)
            cursor = result.get("nextCursor")
            if cursor is None:
                return items
            if not isinstance(cursor, str) or cursor in seen:
                raise UpstreamProtocolError(self.name)
            seen.add(cursor)
            params = {"cursor": cursor}
        logger.warning("upstream %s: %s did not end within %d pages", self.name, method, _MAX_PAGES)
        raise UpstreamProtocolError(self.name)

    async def _legacy_request(
        self,
        rpc: HttpRpc,
        method: str,
        params: JSONObject,
        session_key: str | None,
        on_progress: ProgressCallback | None,
        on_request: ServerRequestHandler | None = None,
        on_notification: NotificationCallback | None = None,
        credential: Mapping[str, str] | None = None,
        trace_headers: Mapping[str, str] | None = None,
    ) -> JSONObject:
        for _attempt in range(2):
            session = await self._legacy_session(rpc, session_key, credential)
            if credential:
                # The freshest credential rides on the session from now on (its notifications too).
                session.headers.update(credential)
            request_id = next(self._ids)
            body = encode_request(request_id, method, params, None, on_progress is not None)
            # Per request, not on the session: the session's headers serve its other requests too.
            headers = {**session.headers, **trace_headers} if trace_headers else session.headers
            try:
                return await rpc.call(
                    body, headers, request_id, session, on_progress, on_request, on_notification
                )
            except SessionExpired:
                # §1.6: a 404 means the session is gone and the request was not processed,
                # so re-initialise once and send it again.
                if self._sessions.get(session_key) is session:
                    del self._sessions[session_key]
                logger.info("upstream %s: session expired, re-initialising", self.name)
        raise UpstreamUnavailable(self.name)

    async def _legacy_session(
        self, rpc: HttpRpc, key: str | None, credential: Mapping[str, str] | None = None
    ) -> Session:
        session = self._sessions.get(key)
        if session is not None:
            return session
        lock = self._session_locks.get(key)
        if lock is None:
            lock = self._session_locks[key] = anyio.Lock()
        async with lock:  # concurrent first calls share one initialize
            session = self._sessions.get(key)
            if session is None:
                session, _ = await self._initialize(rpc, credential)
                self._sessions[key] = session
        return session

    def _modern_headers(self, method: str, params: Mapping[str, Any]) -> Mapping[str, str]:
        headers = self._method_headers.get(method)
        if headers is None:
            headers = {
                **self._base_headers,
                "MCP-Protocol-Version": MODERN_PROTOCOL_VERSION,
                "Mcp-Method": encode_header_value(method),
            }
            if len(self._method_headers) < _MAX_CACHED_METHODS:
                self._method_headers[method] = headers
        field = _NAME_FIELDS.get(method)
        if field is not None:
            value = params.get(field)
            if isinstance(value, str):
                return {**headers, "Mcp-Name": encode_header_value(value)}
        return headers

    # -- handshakes ------------------------------------------------------------------

    async def _handshake(self, rpc: HttpRpc) -> ServerDescription:
        """Detect the era and describe the upstream, within the call timeout."""
        timeout = self._upstream.call_timeout_seconds
        try:
            with anyio.fail_after(timeout) as scope:
                if self._requested_era != "legacy":
                    try:
                        return await self._discover(rpc)
                    except _NotModern as exc:
                        if self._requested_era == "modern":
                            logger.warning(
                                "upstream %s: does not speak %s", self.name, MODERN_PROTOCOL_VERSION
                            )
                            raise UpstreamUnavailable(self.name) from exc
                session, result = await self._initialize(rpc)
        except TimeoutError as exc:
            if not scope.cancelled_caught:
                raise
            logger.warning("upstream %s: no handshake answer within %ss", self.name, timeout)
            raise UpstreamUnavailable(self.name) from exc
        except (UpstreamProtocolError, UpstreamRpcError) as exc:
            logger.warning("upstream %s: handshake failed: %s", self.name, exc.message)
            raise UpstreamUnavailable(self.name) from exc
        self._sessions[None] = session  # the handshake's session serves session_key=None
        return ServerDescription(
            era="legacy",
            protocol_version=session.protocol_version,
            capabilities=_object(result.get("capabilities")),
            server_info=_object(result.get("serverInfo")),
            instructions=_string(result.get("instructions")),
        )

    async def _discover(self, rpc: HttpRpc) -> ServerDescription:
        """Probe with server/discover; raise _NotModern for a handshake-era upstream (§1.4)."""
        request_id = next(self._ids)
        params = {"_meta": self._envelope}
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": "server/discover", "params": params}
        )
        response = await rpc.post(body, self._modern_headers("server/discover", params))
        try:
            status = response.status
            if status in (401, 403) or status >= 500:
                logger.warning("upstream %s: server/discover answered HTTP %d", self.name, status)
                raise UpstreamUnavailable(self.name)
            if status == 200 and response.content_type == EVENT_STREAM:
                result = await rpc.read_reply(response, request_id)
            else:
                message = await rpc.read_json(response)
                if message is None or "error" in message or status >= 300:
                    if _is_modern_refusal(message, request_id):
                        logger.warning("upstream %s: server/discover refused our envelope", self.name)
                        raise UpstreamUnavailable(self.name)
                    raise _NotModern
                result = rpc.unwrap(message, request_id, status)
        finally:
            response.release()
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or MODERN_PROTOCOL_VERSION not in versions:
            raise _NotModern
        meta = _object(result.get("_meta"))
        return ServerDescription(
            era="modern",
            protocol_version=MODERN_PROTOCOL_VERSION,
            capabilities=_object(result.get("capabilities")),
            server_info=_object(meta.get(_SERVER_INFO_KEY)),
            instructions=_string(result.get("instructions")),
        )

    async def _initialize(
        self, rpc: HttpRpc, credential: Mapping[str, str] | None = None
    ) -> tuple[Session, JSONObject]:
        """Open a legacy session: initialize, then notifications/initialized (§1.3)."""
        base = {**self._base_headers, **credential} if credential else self._base_headers
        request_id = next(self._ids)
        params = {
            "protocolVersion": LEGACY_PROTOCOL_VERSION,
            # Declared so the upstream may ask; a downstream without the capability gets the
            # request refused by the gateway (relay), not silently dropped.
            "capabilities": RELAY_CAPABILITIES,
            "clientInfo": self._client_info,
        }
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params})
        # initialize is the negotiation itself, so it carries no MCP-Protocol-Version (§1.3).
        response = await rpc.post(body, base)
        try:
            result = await rpc.read_reply(response, request_id)
            session_id = response.headers.get("Mcp-Session-Id")
        finally:
            response.release()
        version = result.get("protocolVersion")
        if version not in _HANDSHAKE_VERSIONS or (
            session_id is not None and not _SESSION_ID.fullmatch(session_id)
        ):
            logger.warning("upstream %s: unusable initialize result (version %r)", self.name, version)
            raise UpstreamProtocolError(self.name)
        headers = {**base, "MCP-Protocol-Version": str(version)}
        if session_id is not None:
            headers["Mcp-Session-Id"] = session_id
        session = Session(session_id, str(version), headers)
        try:
            if not await rpc.send(
                orjson.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), headers
            ):
                raise UpstreamProtocolError(self.name)
        except BaseException:
            await rpc.delete(session)
            raise
        return session, result

    # -- watch -----------------------------------------------------------------------

    async def watch(
        self,
        on_notification: NotificationCallback,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver unsolicited notifications until the stream ends; `task_status` fires once live.

        Legacy: the GET stream of a dedicated session. Modern: `subscriptions/listen` for
        the three list_changed kinds; its acknowledgement is not delivered. An upstream that
        offers no such stream (GET 405, listen -32601) makes it return at once.

        Raises:
            UpstreamUnavailable: the stream cannot be opened.
        """
        rpc = self._rpc
        if rpc is None or self._era is None:
            raise UpstreamUnavailable(self.name)
        if self._era == "modern":
            await self._watch_modern(rpc, on_notification, task_status)
        else:
            await self._watch_legacy(rpc, on_notification, task_status)

    async def set_resource_subscriptions(self, uris: Sequence[str]) -> None:
        """Have the watch stream carry `notifications/resources/updated` for exactly these URIs.

        Legacy: resources/subscribe and unsubscribe on the watch session (its GET stream gets
        the updates). 2026-07-28: the listen stream is reopened with `resourceSubscriptions`.
        """
        wanted, current = frozenset(uris), self._resource_uris
        self._resource_uris = wanted
        if self._era == "legacy":
            await resubscribe(
                functools.partial(self._request, trace_headers={}, session_key=_WATCH_KEY), current, wanted
            )
        elif wanted != current:
            self._resubscribe.set()

    async def _watch_modern(
        self, rpc: HttpRpc, on_notification: NotificationCallback, task_status: TaskStatus[None]
    ) -> None:
        while True:
            self._resubscribe = anyio.Event()
            failure: GatewayError | None = None
            async with anyio.create_task_group() as tg:

                async def listen(started: TaskStatus[None]) -> None:
                    nonlocal failure
                    try:
                        await self._listen_once(rpc, on_notification, started)
                    except GatewayError as exc:
                        failure = exc  # raised below, not as an exception group
                    tg.cancel_scope.cancel()

                tg.start_soon(listen, task_status)
                await self._resubscribe.wait()  # the filter changed: reopen with the new one
                tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
            if not self._resubscribe.is_set():
                return
            task_status = anyio.TASK_STATUS_IGNORED

    async def _listen_once(
        self, rpc: HttpRpc, on_notification: NotificationCallback, task_status: TaskStatus[None]
    ) -> None:
        request_id = next(self._ids)
        notifications: JSONObject = dict(_LISTEN_FILTER)
        if self._resource_uris:
            notifications["resourceSubscriptions"] = sorted(self._resource_uris)
        params = {"notifications": notifications, "_meta": self._envelope}
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": "subscriptions/listen", "params": params}
        )
        response = await rpc.post(body, self._modern_headers("subscriptions/listen", params))
        try:
            if response.status != 200 or response.content_type != EVENT_STREAM:
                try:
                    await rpc.read_reply(response, request_id)
                except UpstreamRpcError as exc:
                    if exc.code != METHOD_NOT_FOUND:
                        raise
                    logger.info("upstream %s: offers no subscriptions/listen", self.name)
                    task_status.started()
                    return
                raise UpstreamUnavailable(self.name)  # answered at once: there is no stream
            await rpc.pump(response, on_notification, task_status=task_status, listen_id=request_id)
        finally:
            response.close()  # closing a listen stream is how it is cancelled (§1.5)

    async def _watch_legacy(
        self, rpc: HttpRpc, on_notification: NotificationCallback, task_status: TaskStatus[None]
    ) -> None:
        # A dedicated session: its GET stream carries only messages unrelated to any request,
        # and it never competes with a request session for the one stream allowed (§1.6).
        # Keyed, so resource subscriptions made on it (set_resource_subscriptions) land here.
        session = await self._legacy_session(rpc, _WATCH_KEY)
        try:
            headers = {k: v for k, v in session.headers.items() if k != "Content-Type"}
            headers["Accept"] = EVENT_STREAM
            response = await rpc.get_stream(headers)
            if response is None:
                logger.info("upstream %s: offers no GET stream", self.name)
                task_status.started()
                return
            try:
                task_status.started()
                await rpc.pump(response, on_notification, session=session)
            finally:
                response.close()
        finally:
            if self._sessions.get(_WATCH_KEY) is session:
                del self._sessions[_WATCH_KEY]
            await rpc.delete(session)


def _is_modern_refusal(message: JSONObject | None, request_id: int) -> bool:
    """True for a 2026-07-28 error about our own envelope, as opposed to a legacy rejection."""
    if message is None or message.get("id") != request_id:
        return False  # the SDK's legacy "Missing session ID" rejection has id null
    error = message.get("error")
    return isinstance(error, dict) and error.get("code") in _MODERN_REFUSALS


def _object(value: Any) -> JSONObject:
    return value if isinstance(value, dict) else {}


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None
