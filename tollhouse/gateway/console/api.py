"""The console's access to the admin API: in-process ASGI calls with the signed-in user's token.

The console holds no authority of its own. Every read and every change it makes goes through
the admin API with the user's access token, so the admin API's role checks, validation and
admin-action audit records are the only ones there are; the console only decides what to
show. The browser's address is passed on as the request's client, so the audit trail names
where a change came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import anyio
import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AdminApi", "ApiError", "InProcess", "Reply"]

ADMIN_PREFIX = "/admin/api/v1"
MAX_REPLY_BYTES = 64 * 1024 * 1024


class ApiError(Exception):
    """An admin API refusal (its problem+json), carried to the page that asked."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail

    @property
    def about_the_form(self) -> bool:
        """True when the submitted values were refused (show the form again with the reason)."""
        return self.status in (400, 409, 422)


@dataclass(frozen=True)
class Reply:
    """A buffered answer."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass(frozen=True)
class InProcess:
    """Calls an ASGI app in this process, as if over HTTP from `client`."""

    app: ASGIApp
    root_path: str = ""

    def _scope(
        self,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
    ) -> Scope:
        full = self.root_path + path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": full,
            "raw_path": full.encode(),
            "root_path": self.root_path,
            "query_string": query.encode(),
            "headers": list(headers),
            "client": client,
            "server": ("tollhouse-console", 0),
            "state": {},
        }

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        client: tuple[str, int] | None = None,
    ) -> Reply:
        """The whole answer (capped at 64 MiB)."""
        status = 500
        response_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        done = anyio.Event()
        sent_body = False

        async def receive() -> Message:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status, response_headers, size
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise ApiError(502, "Too large", "the admin API's answer is too large to show")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    done.set()

        scope = self._scope(
            method, path, query, [*headers, (b"content-length", str(len(body)).encode())], client
        )
        try:
            await self.app(scope, receive, send)
        finally:
            done.set()
        return Reply(status, response_headers, b"".join(chunks))

    def relay(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: Sequence[tuple[bytes, bytes]] = (),
        client: tuple[str, int] | None = None,
    ) -> Response:
        """A response that, when sent, runs the app and streams its answer to the browser as is."""
        return _Relay(self.app, self._scope(method, path, query, headers, client))


class _Relay(Response):
    """Streams another app's answer (a CSV or JSONL export) without buffering it."""

    _KEPT = frozenset({b"content-type", b"content-disposition", b"content-length"})

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        super().__init__()
        # The relayed app sends its own length (or streams without one).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k.lower() != b"content-length"]
        self._app = app
        self._target = scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def relay_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() in self._KEPT]
                message = {**message, "headers": [*headers, *self.raw_headers]}
            await send(message)

        await self._app(self._target, receive, relay_send)


class AdminApi:
    """The admin API as the signed-in user."""

    def __init__(self, caller: InProcess, *, token: str, client: tuple[str, int] | None) -> None:
        self._caller = caller
        self._auth = (b"authorization", f"Bearer {token}".encode())
        self._client = client

    async def call(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        """The decoded JSON answer of a 2xx; an ApiError with the problem's text otherwise."""
        headers = [self._auth, (b"accept", b"application/json")]
        body = b""
        if json is not None:
            body = orjson.dumps(json)
            headers.append((b"content-type", b"application/json"))
        reply = await self._caller.request(
            method, path, query=_query(params), headers=headers, body=body, client=self._client
        )
        if reply.status >= 400:
            raise _error(reply)
        if reply.status == 204 or not reply.body:
            return None
        content_type = reply.header("content-type") or ""
        if "json" not in content_type:
            return reply.body
        return reply.json()

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params=params)

    async def post(self, path: str, json: Any = None, **params: Any) -> Any:
        return await self.call("POST", path, params=params, json=json if json is not None else {})

    async def put(self, path: str, json: Any) -> Any:
        return await self.call("PUT", path, json=json)

    async def patch(self, path: str, json: Any) -> Any:
        return await self.call("PATCH", path, json=json)

    async def delete(self, path: str) -> Any:
        return await self.call("DELETE", path)

    def download(self, path: str, params: Mapping[str, Any] | None = None) -> Response:
        """The admin API's answer streamed to the browser as it is (a CSV or JSONL export)."""
        return self._caller.relay(
            "GET", path, query=_query(params), headers=[self._auth], client=self._client
        )


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        if isinstance(value, list | tuple):
            pairs.extend((key, str(v)) for v in value)
        else:
            pairs.append((key, str(value)))
    return urlencode(pairs)


def _error(reply: Reply) -> ApiError:
    try:
        problem = reply.json()
    except orjson.JSONDecodeError:
        problem = None
    if isinstance(problem, dict):
        return ApiError(reply.status, str(problem.get("title") or "Error"), str(problem.get("detail") or ""))
    return ApiError(reply.status, "Error", f"the admin API answered {reply.status}")
