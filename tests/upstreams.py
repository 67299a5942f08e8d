"""Test upstream MCP servers built with the `mcp` SDK, plus ASGI wrappers around them.

Each factory returns a fresh server (an SDK app can be run only once), to be served with
`tests.servers.serve(app, path="/mcp")`. The SDK's `streamable_http_app()` is dual-era:
2026-07-28 requests are served statelessly, 2025-era clients get `Mcp-Session-Id` sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import orjson
from mcp.server import Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve, Sample
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.types import (
    CreateMessageResult,
    EmptyResult,
    ListToolsResult,
    PaginatedRequestParams,
    PingRequest,
    SamplingMessage,
    SubscribeRequestParams,
    TextContent,
    Tool,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "Confirm",
    "HeaderRecorder",
    "Probe",
    "RecordedRequest",
    "cursor_loop_upstream",
    "echo_upstream",
    "legacy_only",
    "paged_upstream",
]

MCP_PATH = "/mcp"
# What a 2025-era SDK answers a request that carries no Mcp-Session-Id.
LEGACY_REJECTION = orjson.dumps(
    {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Bad Request: Missing session ID"}}
)


@dataclass
class Probe:
    """What a test upstream observed; its tools set these, tests await them."""

    started: anyio.Event = field(default_factory=anyio.Event)
    cancelled: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)
    # Every initialised legacy session, so a tool can notify them all on their GET streams.
    legacy_sessions: list[ServerSession] = field(default_factory=list)
    added_tools: int = 0
    # legacy sessions subscribed to each resource URI (resources/subscribe)
    resource_sessions: dict[str, list[ServerSession]] = field(default_factory=dict)
    # net resources/subscribe minus resources/unsubscribe per URI
    subscribed: dict[str, int] = field(default_factory=dict)


class Confirm(BaseModel):
    """What `ask_client` elicits."""

    ok: bool


async def ask_confirm(path: str) -> Elicit[Confirm]:
    """Resolver of `confirm_delete`: ask the client to confirm (module level: annotations resolve here)."""
    return Elicit(f"Really delete {path}?", Confirm)


async def ask_model(text: str) -> Sample:
    """Resolver of `summarize`: ask the client's model."""
    prompt = SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize: {text}"))
    return Sample([prompt], max_tokens=50)


def echo_upstream(name: str = "echo-upstream", *, subscriptions: bool = True) -> tuple[MCPServer, Probe]:
    """A dual-era MCPServer with tools for relaying, errors, progress, cancellation and list changes.

    Tools: `echo`, `add` (structured output), `fail` (isError result), `rpc_error` (JSON-RPC
    error), `progress` (reports the given progress values in order), `block` (waits for
    `probe.release`, sets `probe.cancelled` if cancelled), `big` (a text of `size` bytes),
    `add_tool` (adds a tool and emits tools list_changed in both eras), `ask_client`
    (legacy: pings the client, then elicits, on the call's own stream). Resource:
    `note://café/menu` (a non-ASCII URI, for `Mcp-Name` encoding). `subscriptions=False`
    leaves `subscriptions/listen` unserved.
    """
    probe = Probe()
    mcp = MCPServer(
        name, version="1.2.3", instructions="Test upstream.", subscriptions=None if subscriptions else False
    )

    async def record_sessions(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        # Legacy list_changed goes to each session's standalone GET stream, so remember them.
        if ctx.method == "notifications/initialized":
            probe.legacy_sessions.append(ctx.session)
        return await call_next(ctx)

    mcp.middleware.append(record_sessions)

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Add two integers (structured output)."""
        return a + b

    @mcp.tool()
    def fail(message: str) -> str:
        """Fail as a tool: an isError result."""
        raise ToolError(message)

    @mcp.tool()
    def rpc_error(code: int, message: str) -> str:
        """Fail as a JSON-RPC error with the given code."""
        raise MCPError(code, message, {"why": "asked to"})

    @mcp.tool()
    async def progress(steps: list[float], ctx: Context) -> str:
        """Report each value in `steps` as progress (out of the last value)."""
        for step in steps:
            await ctx.report_progress(step, steps[-1], f"at {step}")
        return "done"

    @mcp.tool()
    async def block() -> str:
        """Wait until the test releases it; record a cancellation."""
        probe.started.set()
        try:
            await probe.release.wait()
        except anyio.get_cancelled_exc_class():
            probe.cancelled.set()
            raise
        return "released"

    @mcp.tool()
    def big(size: int) -> str:
        """Return a text of `size` bytes."""
        return "x" * size

    @mcp.tool()
    async def add_tool(ctx: Context) -> str:
        """Add a tool, then announce the change to listeners of both eras."""
        probe.added_tools += 1
        tool_name = f"added_{probe.added_tools}"
        mcp.add_tool(lambda: tool_name, name=tool_name, description="Added at runtime.")
        await ctx.notify_tools_changed()  # 2026-07-28 subscriptions/listen streams
        for session in probe.legacy_sessions:  # legacy GET streams
            await session.send_tool_list_changed()
        return tool_name

    @mcp.tool()
    async def ask_client(ctx: Context) -> str:
        """Ping the client and ask it to elicit, both on this call's stream (legacy only)."""
        related = ServerMessageMetadata(related_request_id=ctx.request_id)
        await ctx.request_context.session.send_request(PingRequest(), EmptyResult, metadata=related)
        try:
            await ctx.elicit("Proceed?", Confirm)
        except MCPError as exc:
            return f"pong; elicitation refused with {exc.code}"
        return "pong; elicitation answered"

    @mcp.tool()
    async def confirm_delete(path: str, confirm: Annotated[Confirm, Resolve(ask_confirm)]) -> str:
        """Dual-era elicitation: MRTR input_required on 2026-07-28, elicitation/create in a session."""
        return f"deleted {path}" if confirm.ok else f"kept {path}"

    @mcp.tool()
    async def confirm_then_count(
        path: str, ctx: Context, confirm: Annotated[Confirm, Resolve(ask_confirm)]
    ) -> str:
        """Ask first, then report progress: the progress belongs to the client's later round."""
        for step in (1.0, 2.0):
            await ctx.report_progress(step, 2.0, f"step {step}")
        return f"counted after {'yes' if confirm.ok else 'no'} for {path}"

    @mcp.tool()
    async def summarize(text: str, sampled: Annotated[CreateMessageResult, Resolve(ask_model)]) -> str:
        """Dual-era sampling through a resolver."""
        content = sampled.content
        return f"{sampled.model}: {content.text if isinstance(content, TextContent) else '?'}"

    @mcp.resource("note://watched")
    def watched() -> str:
        """A resource clients subscribe to; `touch` announces changes."""
        return "watched"

    @mcp.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Announce that a resource changed, to listeners of both eras."""
        await ctx.notify_resource_updated(uri)  # 2026-07-28 subscriptions/listen
        for session in probe.resource_sessions.get(uri, []):  # resources/subscribe sessions
            await session.send_resource_updated(uri)
        return "touched"

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        probe.resource_sessions.setdefault(str(params.uri), []).append(ctx.session)
        probe.subscribed[str(params.uri)] = probe.subscribed.get(str(params.uri), 0) + 1
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        probe.subscribed[str(params.uri)] = probe.subscribed.get(str(params.uri), 0) - 1
        return EmptyResult()

    # resources/subscribe is session-era only; MCPServer has no decorator for it (as in everything.py).
    mcp._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    mcp._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    @mcp.resource("note://café/menu")
    def menu() -> str:
        """A resource whose URI is not ASCII."""
        return "croissant"

    return mcp, probe


def paged_upstream(total: int = 250, page_size: int = 100) -> Server[Any]:
    """A low-level Server listing `total` tools (`tool-000`...) in pages of `page_size`.

    The cursor is the decimal offset of the next page.
    """
    tools = [Tool(name=f"tool-{i:03d}", input_schema={"type": "object"}) for i in range(total)]

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + page_size
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < total else None)

    return Server("paged-upstream", version="0.0.1", on_list_tools=list_tools)


def cursor_loop_upstream() -> Server[Any]:
    """A low-level Server whose tools/list always answers the same `nextCursor`."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        return ListToolsResult(
            tools=[Tool(name="again", input_schema={"type": "object"})], next_cursor="again"
        )

    return Server("looping-upstream", version="0.0.1", on_list_tools=list_tools)


def legacy_only(app: ASGIApp) -> ASGIApp:
    """Wrap an SDK app so it refuses 2026-07-28 requests the way a 2025-era SDK server does.

    A request carrying `MCP-Protocol-Version: 2026-07-28` gets HTTP 400 and the JSON-RPC
    error `-32600 Bad Request: Missing session ID` with `id: null`.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            version = dict(scope["headers"]).get(b"mcp-protocol-version")
            if version == b"2026-07-28":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": LEGACY_REJECTION})
                return
        await app(scope, receive, send)

    return wrapped


@dataclass
class RecordedRequest:
    """One HTTP request as an upstream saw it: method, lowercased headers and body."""

    method: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def rpc_method(self) -> str | None:
        """The JSON-RPC method of the body, if it is a request or notification."""
        try:
            message = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None
        method = message.get("method") if isinstance(message, dict) else None
        return method if isinstance(method, str) else None


class HeaderRecorder:
    """ASGI wrapper that records every HTTP request's headers and body in `requests`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[RecordedRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RecordedRequest(
            scope["method"], {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        )
        self.requests.append(record)

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                record.body += message.get("body", b"")
            return message

        await self.app(scope, recording_receive, send)

    def rpc_methods(self) -> list[str | None]:
        """The JSON-RPC method of every recorded request, in arrival order."""
        return [r.rpc_method for r in self.requests]
