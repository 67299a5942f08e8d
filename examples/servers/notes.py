"""notes: a stateful, session-era-only example MCP server.

Notes live per MCP session (keyed by `Mcp-Session-Id`), so two sessions never see each
other's notes. The server behaves like one built on a 2025-era SDK: it speaks only the
2025-11-25 `initialize` handshake, and a 2026-07-28 request is refused with the same
HTTP 400 "Missing session ID" a 2025-era server gives it. tollhouse uses it to prove it
keeps legacy upstream sessions per downstream session. Its `trace_context` tool reports the
W3C `traceparent` a request carried (in `_meta` and as an HTTP header), which shows what
trace context tollhouse propagates upstream.

    python examples/servers/notes.py [--host 127.0.0.1] [--port 0]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context, MCPServer, Message, UserMessage
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from examples.servers._serving import run_cli

__all__ = ["MISSING_SESSION_BODY", "NotesState", "SessionEraOnly", "build_app", "build_server", "main"]

# Byte for byte what a 2025-era SDK server answers to a request without a session.
MISSING_SESSION_BODY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Bad Request: Missing session ID"}}'
)
_TOO_LARGE_BODY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Request body too large"}}'
# Only session-less POSTs are buffered, and the only legitimate one is `initialize`.
_MAX_SESSIONLESS_BODY_BYTES = 1 << 20

# The MCP session of the message being handled. Static resources get no Context, so the
# middleware in build_server() publishes the session id here for every handler.
_current_session: ContextVar[str | None] = ContextVar("notes_current_session", default=None)


@dataclass
class NotesState:
    """Notes per MCP session id."""

    notes: dict[str, list[str]] = field(default_factory=dict)

    def of(self, session_id: str | None) -> list[str]:
        """The notes of one session, created empty on first use.

        Raises:
            ToolError: The message arrived outside an MCP session.
        """
        if session_id is None:
            raise ToolError("notes needs an MCP session (2025-11-25 Streamable HTTP)")
        return self.notes.setdefault(session_id, [])


async def _publish_session(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    request_headers = getattr(ctx.request, "headers", None)
    token = _current_session.set(
        request_headers.get("mcp-session-id") if request_headers is not None else None
    )
    try:
        return await call_next(ctx)
    finally:
        _current_session.reset(token)


def build_server(state: NotesState | None = None, *, name: str = "notes") -> MCPServer:
    """Build the notes `MCPServer`; `state` holds the notes of every session."""
    state = state if state is not None else NotesState()
    server: MCPServer = MCPServer(name, version="0.9.0", middleware=[_publish_session])

    @server.tool()
    def add_note(text: str) -> str:
        """Add a note to this session's notes."""
        notes = state.of(_current_session.get())
        notes.append(text)
        return f"added note {len(notes)}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def list_notes() -> list[str]:
        """List this session's notes, oldest first."""
        return list(state.of(_current_session.get()))

    @server.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    def clear_notes() -> str:
        """Delete all of this session's notes."""
        notes = state.of(_current_session.get())
        count = len(notes)
        notes.clear()
        return f"cleared {count} notes"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def trace_context(ctx: Context) -> str:
        """Report the W3C traceparent this request carried, in `_meta` and as an HTTP header."""
        meta = ctx.request_context.meta or {}
        headers = {key.lower(): value for key, value in (ctx.headers or {}).items()}
        return json.dumps(
            {"meta_traceparent": meta.get("traceparent"), "header_traceparent": headers.get("traceparent")}
        )

    @server.resource("notes://count", name="count", title="Note count", mime_type="text/plain")
    def count() -> str:
        """How many notes this session holds."""
        return str(len(state.of(_current_session.get())))

    @server.prompt(title="Summarize notes")
    def summarize_notes() -> list[Message]:
        """Ask for a summary of this session's notes."""
        lines = "\n".join(f"- {note}" for note in state.of(_current_session.get())) or "(no notes)"
        return [UserMessage(f"Summarize these notes:\n{lines}")]

    return server


class SessionEraOnly:
    """ASGI middleware that refuses 2026-07-28 requests the way a 2025-era server does.

    A 2025-era server answers every session-less request other than `initialize` with
    HTTP 400 "Missing session ID", and that is what a 2026-07-28 request is to it (no
    `Mcp-Session-Id`; `server/discover` instead of `initialize`). Clients that probe
    with `server/discover` read that answer as "legacy server" and fall back to
    `initialize`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass session-era traffic to the wrapped app; refuse 2026-07-28 requests."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if headers.get("mcp-protocol-version") in MODERN_PROTOCOL_VERSIONS:
            await _respond(send, 400, MISSING_SESSION_BODY)
            return
        if scope["method"] != "POST" or "mcp-session-id" in headers:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, _MAX_SESSIONLESS_BODY_BYTES)
        if body is None:
            await _respond(send, 413, _TOO_LARGE_BODY)
            return
        if _jsonrpc_method(body) not in (None, "initialize"):
            await _respond(send, 400, MISSING_SESSION_BODY)
            return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return bytes(body)


def _jsonrpc_method(body: bytes) -> str | None:
    """The method of a single JSON-RPC message; None for anything the SDK should judge itself."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    method = parsed.get("method") if isinstance(parsed, dict) else None
    return method if isinstance(method, str) else None


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> ASGIMessage:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def build_app(state: NotesState | None = None, *, name: str = "notes", host: str = "127.0.0.1") -> Starlette:
    """Build the notes ASGI app: MCP at `/mcp`, 2025-11-25 sessions only.

    `host` is the interface the app will be served on; on a loopback host the SDK turns
    on DNS-rebinding protection (Host and Origin must be loopback too).
    """
    app = build_server(state, name=name).streamable_http_app(host=host)
    app.add_middleware(SessionEraOnly)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run notes until SIGTERM or SIGINT, printing `READY http://HOST:PORT/mcp` once serving."""
    run_cli(lambda host: build_app(host=host), "notes: a session-era example MCP server for tollhouse", argv)


if __name__ == "__main__":
    main()
