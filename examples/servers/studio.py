"""studio: a modern example MCP server that exercises every feature tollhouse relays.

It serves both eras on one endpoint (`MCPServer.streamable_http_app()`): 2026-07-28
stateless requests and 2025-11-25 `Mcp-Session-Id` sessions. Everything it returns is
deterministic, so tests and benchmarks can compare results exactly.

    python examples/servers/studio.py [--host 127.0.0.1] [--port 0]
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer, Message, UserMessage
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    PromptReference,
    ResourceTemplateReference,
    ToolAnnotations,
)
from starlette.applications import Starlette

from examples.servers._serving import run_cli

__all__ = [
    "ITEMS",
    "ITEM_TEMPLATE",
    "LANGUAGES",
    "LOGO_PNG",
    "README",
    "StudioState",
    "build_app",
    "build_server",
    "main",
]

README = "# studio\n\nAn example MCP server for tollhouse: tools, resources, prompts and completions.\n"
# The smallest valid PNG: one transparent pixel.
LOGO_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
ITEM_TEMPLATE = "studio://items/{item_id}"
LANGUAGES = ("go", "java", "javascript", "python", "ruby", "rust", "typescript")
ITEMS: dict[str, dict[str, Any]] = {
    "alpha": {"name": "Alpha", "price": 3},
    "beta": {"name": "Beta", "price": 5},
    "gamma": {"name": "Gamma", "price": 8},
}


@dataclass
class StudioState:
    """What the server observed, so an in-process test can see what reached the upstream.

    `waiting` is set when `wait_for_cancel` starts waiting; `cancelled` is set (and
    `cancel_count` bumped) when a `wait_for_cancel` call is cancelled.
    """

    waiting: anyio.Event = field(default_factory=anyio.Event)
    cancelled: anyio.Event = field(default_factory=anyio.Event)
    wait_count: int = 0
    cancel_count: int = 0


def _matching(values: Sequence[str], prefix: str) -> Completion:
    found = [value for value in values if value.startswith(prefix.lower())]
    return Completion(values=found, total=len(found), has_more=False)


def build_server(state: StudioState | None = None, *, name: str = "studio") -> MCPServer:
    """Build the studio `MCPServer`; `state` records cancellations for tests."""
    state = state if state is not None else StudioState()
    server: MCPServer = MCPServer(name, version="1.0.0", instructions="Example upstream for tollhouse.")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def slow_count(n: int, ctx: Context) -> str:
        """Count to n, reporting progress at each step."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i}/{n}")
            await anyio.sleep(0.01)
        return f"counted to {n}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def wait_for_cancel(seconds: float) -> str:
        """Wait for the given number of seconds unless the call is cancelled first."""
        state.wait_count += 1
        state.waiting.set()
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            state.cancel_count += 1
            state.cancelled.set()
            raise
        return f"waited {seconds} seconds"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def fail(message: str) -> str:
        """Fail with the given message (a tool error: isError is true)."""
        raise ToolError(message)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def headers(ctx: Context) -> dict[str, str]:
        """Return the HTTP request headers this server received, names lowercased."""
        return {key.lower(): value for key, value in (ctx.headers or {}).items()}

    @server.resource("studio://readme", name="readme", title="README", mime_type="text/markdown")
    def readme() -> str:
        """What this server is for."""
        return README

    @server.resource("studio://logo.png", name="logo", title="Logo", mime_type="image/png")
    def logo() -> bytes:
        """A one-pixel PNG (a binary resource)."""
        return LOGO_PNG

    @server.resource(ITEM_TEMPLATE, name="item", title="Item", mime_type="application/json")
    def item(item_id: str) -> str:
        """One catalogue item as JSON."""
        if item_id not in ITEMS:
            raise ResourceNotFoundError(f"no item {item_id!r}")
        return json.dumps({"id": item_id, **ITEMS[item_id]}, sort_keys=True)

    @server.prompt(title="Code review")
    def review(code: str, language: str = "python") -> list[Message]:
        """Ask for a review of a piece of code."""
        return [UserMessage(f"Please review this {language} code:\n\n```{language}\n{code}\n```")]

    # MCPServer.completion() is unannotated in the SDK, hence the ignore.
    @server.completion()  # type: ignore[no-untyped-call, untyped-decorator]
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion | None:
        if isinstance(ref, PromptReference) and ref.name == "review" and argument.name == "language":
            return _matching(LANGUAGES, argument.value)
        if (
            isinstance(ref, ResourceTemplateReference)
            and ref.uri == ITEM_TEMPLATE
            and argument.name == "item_id"
        ):
            return _matching(sorted(ITEMS), argument.value)
        return None

    return server


def build_app(
    state: StudioState | None = None, *, name: str = "studio", host: str = "127.0.0.1"
) -> Starlette:
    """Build the studio ASGI app, serving MCP at `/mcp` for both protocol eras.

    `host` is the interface the app will be served on; on a loopback host the SDK turns
    on DNS-rebinding protection (Host and Origin must be loopback too).
    """
    return build_server(state, name=name).streamable_http_app(host=host)


def main(argv: Sequence[str] | None = None) -> None:
    """Run studio until SIGTERM or SIGINT, printing `READY http://HOST:PORT/mcp` once serving."""
    run_cli(lambda host: build_app(host=host), "studio: an example MCP server for tollhouse", argv)


if __name__ == "__main__":
    main()
