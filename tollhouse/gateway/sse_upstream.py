"""`SseUpstream`: the deprecated 2024-11-05 HTTP+SSE transport (PROTOCOLS.md §1.7).

A GET of the registered URL opens an event stream whose first `endpoint` event names the
URL to POST to. Every client message is POSTed there (202); every server message, responses
included, arrives as a `message` event on the GET stream and goes through a `JsonRpcStream`.
The era is always legacy: `initialize` with 2024-11-05.

One GET stream is one upstream session, shared by every caller: `session_key` is ignored
and `end_session` does nothing. An event over `max_response_bytes` breaks the stream for
everyone (SSE has no per-message recovery); the pool then reconnects.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence

import aiohttp
import anyio
from anyio.abc import TaskStatus
from yarl import URL

from tollhouse import __version__
from tollhouse.gateway.credentials import CredentialProvider, StaticCredentials
from tollhouse.gateway.errors import GatewayError, UpstreamProtocolError, UpstreamUnavailable
from tollhouse.gateway.http_rpc import EVENT_STREAM, JSON, unreachable
from tollhouse.gateway.jsonrpc_stream import JsonRpcStream, initialize, list_all
from tollhouse.gateway.sse import SseError, SseEvent, SseParser
from tollhouse.gateway.upstream import (
    Era,
    NotificationCallback,
    ProgressCallback,
    ServerDescription,
    ServerRequestHandler,
    resubscribe,
)
from tollhouse.registry.models import JSONObject, Upstream
from tollhouse.tracing import Tracing, inject_headers, traced_request

__all__ = ["SSE_PROTOCOL_VERSION", "SseUpstream"]

logger = logging.getLogger(__name__)

SSE_PROTOCOL_VERSION = "2024-11-05"
"""The revision offered in `initialize`: the last one that defined this transport."""
_CLEANUP_SECONDS = 2.0
_POST_BODY_BYTES = 4096  # an accepted POST's body ("Accepted") is read to reuse the connection


class _ForeignEndpoint(UpstreamProtocolError):
    """The `endpoint` event named a URL off the registered origin, or no URL at all."""


class _Events:
    """The events of one SSE response, one at a time; cancel-safe (only the read awaits)."""

    def __init__(self, name: str, response: aiohttp.ClientResponse, max_event_bytes: int) -> None:
        self._name = name
        self._response = response
        self._parser = SseParser(max_event_bytes)
        self._queue: deque[SseEvent] = deque()

    async def next(self) -> SseEvent | None:
        """The next event, or None when the stream ends or breaks.

        Raises:
            UpstreamProtocolError: an event was over the size limit.
        """
        while not self._queue:
            try:
                chunk = await self._response.content.readany()
            except (aiohttp.ClientError, ConnectionError) as exc:
                logger.info("upstream %s: event stream broke: %r", self._name, exc)
                return None
            if not chunk:
                return None
            try:
                self._queue.extend(self._parser.feed(chunk))
            except SseError as exc:
                logger.warning("upstream %s: an event was over the size limit", self._name)
                raise UpstreamProtocolError(self._name) from exc
        return self._queue.popleft()


class SseUpstream:
    """An `UpstreamConnector` over the 2024-11-05 HTTP+SSE transport (legacy era only).

    `credentials` gives the gateway's credential (default: the static reference, resolved
    from `environ`, default `os.environ`, at `start()`); it goes on the GET and on every
    POST, and nothing else of the caller's does. One session serves every caller, so a
    per-request provider is asked for the gateway's own credential (never a user's) before
    each POST, which keeps a cached OAuth token fresh.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        environ: Mapping[str, str] | None = None,
        credentials: CredentialProvider | None = None,
        max_response_bytes: int = 16 * 1024 * 1024,
        client_name: str = "tollhouse",
        client_version: str = __version__,
        tracing: Tracing | None = None,
    ) -> None:
        if upstream.url is None:
            raise ValueError(f"upstream {upstream.name} has no url")
        self.name = upstream.name
        self._resource_uris: frozenset[str] = frozenset()
        self._upstream = upstream
        self._tracing = tracing
        self._url = URL(upstream.url)
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._credentials: CredentialProvider = credentials or StaticCredentials(upstream, self._environ)
        self._max_bytes = max_response_bytes
        self._client_info = {"name": client_name, "version": client_version}
        self._http: aiohttp.ClientSession | None = None
        self._stream: aiohttp.ClientResponse | None = None
        self._events: _Events | None = None
        self._endpoint: URL | None = None
        self._post_headers: dict[str, str] = {}
        self._rpc: JsonRpcStream | None = None
        self._description: ServerDescription | None = None
        self._closed = False

    @property
    def description(self) -> ServerDescription | None:
        """What the upstream said about itself at the last successful `start()`."""
        return self._description

    @property
    def era(self) -> Era | None:
        """Always "legacy" once started, else None."""
        return None if self._rpc is None or self._description is None else "legacy"

    @property
    def endpoint(self) -> str | None:
        """The POST URL the upstream announced, once started."""
        return None if self._endpoint is None else str(self._endpoint)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> ServerDescription:
        """Open the event stream, learn the POST endpoint and `initialize`.

        Raises:
            UpstreamUnavailable: unreachable, a missing credential, or a refused handshake.
            UpstreamProtocolError: the endpoint is not on the registered URL's origin (SSRF guard).
        """
        if self._closed:
            raise UpstreamUnavailable(self.name)
        await self._stop()
        credential = await self._credentials.headers(None)
        base = {"User-Agent": f"tollhouse/{__version__}", **credential}
        self._post_headers = {**base, "Content-Type": JSON}
        self._http = aiohttp.ClientSession(
            # Callers put a deadline on every call, so only the socket connect has its own.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._upstream.connect_timeout_seconds),
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding",),
        )
        try:
            with anyio.fail_after(self._upstream.connect_timeout_seconds):
                announced = await self._open(self._http, {**base, "Accept": EVENT_STREAM})
            self._endpoint = self._resolve(announced)
            rpc = self._rpc = JsonRpcStream(self.name, self._post, self._receive)
            with anyio.fail_after(self._upstream.call_timeout_seconds):
                description = await initialize(rpc, SSE_PROTOCOL_VERSION, self._client_info)
        except _ForeignEndpoint:
            await self._stop()
            raise
        except (GatewayError, TimeoutError) as exc:
            await self._stop()
            logger.warning("upstream %s: could not open an SSE session: %r", self.name, exc)
            raise UpstreamUnavailable(self.name) from exc
        except BaseException:
            await self._stop()
            raise
        self._description = description
        return description

    async def aclose(self) -> None:
        """Close the event stream and the HTTP client. Idempotent."""
        self._closed = True
        await self._stop()

    async def end_session(self, session_key: str) -> None:
        """Nothing to do: every caller shares the one SSE session."""

    async def _stop(self) -> None:
        rpc, self._rpc = self._rpc, None
        stream, self._stream = self._stream, None
        http, self._http = self._http, None
        self._events = None
        self._endpoint = None
        with anyio.CancelScope(shield=True):
            if rpc is not None:
                rpc.close()
                with anyio.move_on_after(_CLEANUP_SECONDS):
                    await rpc.wait_idle()
            if stream is not None:
                stream.close()  # ends the upstream session
            if http is not None:
                await http.close()

    async def _open(self, http: aiohttp.ClientSession, headers: Mapping[str, str]) -> str:
        """GET the event stream and read up to its `endpoint` event; returns that event's data."""
        try:
            response = await http.get(self._url, headers=headers, allow_redirects=False)
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(self.name) from exc
        self._stream = response
        if response.status != 200 or response.content_type != EVENT_STREAM:
            logger.warning(
                "upstream %s: GET answered HTTP %d %s", self.name, response.status, response.content_type
            )
            raise UpstreamUnavailable(self.name)
        events = self._events = _Events(self.name, response, self._max_bytes)
        while (event := await events.next()) is not None:
            if event.event == "endpoint":
                return event.data
        raise UpstreamUnavailable(self.name)

    def _resolve(self, data: str) -> URL:
        """The POST URL, relative to the stream's; it must stay on the registered origin."""
        try:
            endpoint = self._url.join(URL(data.strip())).with_fragment(None).with_user(None)
        except ValueError as exc:
            raise _ForeignEndpoint(self.name) from exc
        if (endpoint.scheme, endpoint.host, endpoint.port) != (
            self._url.scheme,
            self._url.host,
            self._url.port,
        ):
            # A peer-supplied URL: following it to another origin would be SSRF (§2.5).
            logger.warning("upstream %s: refused an endpoint on another origin", self.name)
            raise _ForeignEndpoint(self.name)
        return endpoint

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

        `session_key` is ignored: every caller shares one channel. It carries no request
        correlation for server->client messages, so a server request is relayed through
        `on_request` only while this is the one relaying call in flight (else -32601), and
        `on_notification` is not used. The current trace context goes along in `_meta` and in
        the W3C headers of the POST, under a CLIENT span when tracing is on.

        Raises:
            UpstreamUnavailable, UpstreamTimeout, UpstreamProtocolError, UpstreamRpcError.
        """
        send = functools.partial(
            self._request,
            method,
            on_progress=on_progress,
            timeout_seconds=timeout_seconds,
            on_request=on_request,
        )
        return await traced_request(self._tracing, method, params, send, server=self.name, url=str(self._url))

    async def _request(
        self,
        method: str,
        params: JSONObject,
        trace_headers: Mapping[str, str] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout_seconds: float | None = None,
        on_request: ServerRequestHandler | None = None,
    ) -> JSONObject:
        """`request` without tracing: background traffic (list sync, subscriptions) starts no span.

        `trace_headers` is not used: the POST is made by the channel, which adds the headers
        of the span current in the sending task (`_post`).
        """
        rpc = self._rpc
        if rpc is None or self._description is None:
            raise UpstreamUnavailable(self.name)
        timeout = self._upstream.call_timeout_seconds if timeout_seconds is None else timeout_seconds
        return await rpc.request(
            method, params, on_progress=on_progress, timeout_seconds=timeout, on_request=on_request
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
        """Deliver unsolicited notifications until the event stream ends; `task_status` fires at once.

        Raises:
            UpstreamUnavailable: the connector is not started.
        """
        rpc = self._rpc
        if rpc is None or self._description is None or rpc.ended:
            raise UpstreamUnavailable(self.name)
        task_status.started()
        await rpc.watch(on_notification)

    # -- the channel -----------------------------------------------------------------

    async def _post(self, body: bytes) -> None:
        http, endpoint = self._http, self._endpoint
        if http is None or endpoint is None or http.closed:
            raise UpstreamUnavailable(self.name)
        if self._credentials.per_request:
            self._post_headers.update(await self._credentials.headers(None))
        # The channel gives no per-request headers, so they come from the sending task's
        # context: inside `request` that is the CLIENT span (as HTTP client instrumentation does).
        trace: dict[str, str] = {}
        inject_headers(trace)
        headers = {**self._post_headers, **trace} if trace else self._post_headers
        try:
            async with http.post(endpoint, data=body, headers=headers, allow_redirects=False) as r:
                status = r.status
                await r.content.read(_POST_BODY_BYTES)
        except aiohttp.ClientError as exc:
            raise unreachable(self.name, exc) from exc
        if 200 <= status < 300:
            return
        # 404: the session is gone upstream; 5xx: the upstream is failing.
        logger.warning("upstream %s: POST answered HTTP %d", self.name, status)
        if status == 404 or status >= 500:
            raise UpstreamUnavailable(self.name)
        raise UpstreamProtocolError(self.name)

    async def _receive(self) -> str | None:
        events = self._events
        if events is None:
            return None
        while (event := await events.next()) is not None:
            if event.event == "message" and event.data:
                return event.data
        return None
