"""BearerProxy: a loopback reverse proxy that adds `Authorization: Bearer <token>`.

It exists only because the MCP conformance suite sends no credentials, while every MCP
endpoint of tollhouse requires a client key; put in front of `/servers/<name>/mcp`, it
lets the suite test the gateway. It is not a general proxy: loopback targets only.

Each request is forwarded as it came (method, path, query, body, headers) to the same
path under the target's base URL, with the hop-by-hop headers dropped and Authorization
replaced by the proxy's own. The response (any status) comes back with its headers but
the hop-by-hop ones, each body chunk passed on as it arrives, so SSE streams stay open
and flush per event; a client that disconnects closes the upstream request.

Host and Origin are forwarded exactly as the client sent them (no X-Forwarded-*), so
the gateway's own DNS-rebinding defences see what the suite sent and are what its
`dns-rebinding-protection` scenario tests: `Host: evil.example.com` with
`Origin: http://evil.example.com` must be refused by the gateway, and the proxy's own
`127.0.0.1:<port>` must be accepted. The Host header does not decide where the request
goes: the connection is always to the target. The request body is read whole before it
is forwarded (MCP POST bodies are single JSON messages).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import anyio
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

__all__ = ["BearerProxy"]

# RFC 9110 §7.6.1 plus the legacy ones; never forwarded in either direction.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Request: the credential is the proxy's own, and aiohttp sets Content-Length from the body.
_NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "content-length"}
# Response: uvicorn adds its own Date and Server to every response.
_NOT_RETURNED = _HOP_BY_HOP | {"date", "server"}
# aiohttp adds these when absent; the proxy sends only what the client sent.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")


class BearerProxy:
    """ASGI app forwarding every request to `target_base_url` with a bearer token."""

    def __init__(self, target_base_url: str, token: str) -> None:
        target = urlsplit(target_base_url)
        if target.hostname not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"BearerProxy forwards to loopback only, not {target_base_url}")
        self._target = target_base_url.rstrip("/")
        self._authorization = f"Bearer {token}"
        self._http: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No timeouts: SSE streams stay open as long as both ends want them.
                self._http = aiohttp.ClientSession(
                    trust_env=False,
                    timeout=aiohttp.ClientTimeout(total=None),
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    skip_auto_headers=_NO_AUTO_HEADERS,
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._http is not None:
                    await self._http.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._http is not None, "serve BearerProxy with lifespan on"
        body = bytearray()
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = [(k, v) for k, v in headers if k.lower() not in _NOT_FORWARDED]
        headers.append(("Authorization", self._authorization))
        path = scope.get("raw_path") or scope["path"].encode()
        query = b"?" + scope["query_string"] if scope["query_string"] else b""
        url = URL(self._target + (path + query).decode("latin-1"), encoded=True)
        async with anyio.create_task_group() as tg:

            async def cancel_on_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()  # leaving `request()` unfinished closes the upstream connection

            tg.start_soon(cancel_on_disconnect)
            started = False
            try:
                async with self._http.request(
                    scope["method"], url, headers=headers, data=bytes(body) if body else None
                ) as response:
                    passed = [
                        (k, v) for k, v in response.raw_headers if k.decode().lower() not in _NOT_RETURNED
                    ]
                    await send({"type": "http.response.start", "status": response.status, "headers": passed})
                    started = True
                    async for chunk in response.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except aiohttp.ClientError as exc:
                # Mid-stream, returning with the response unfinished makes the server drop the
                # connection: the client sees the truncation as it happened upstream.
                if not started:
                    text = f"Bad Gateway: {exc!r}".encode()
                    plain = [(b"content-type", b"text/plain; charset=utf-8")]
                    await send({"type": "http.response.start", "status": 502, "headers": plain})
                    await send({"type": "http.response.body", "body": text})
            tg.cancel_scope.cancel()
