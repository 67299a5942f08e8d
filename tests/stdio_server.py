"""A stdio MCP server for the StdioUpstream tests, run as a child process.

Usage: python tests/stdio_server.py [--legacy-only | --silent-discover | --sse]

By default it is the SDK's dual-era server (`mcp.run("stdio")`): the first request picks the
era. `--legacy-only` serves only the handshake era, refusing `server/discover` with an error,
as a 2025-era server does; `--silent-discover` never answers `server/discover` at all.
stdout carries only JSON-RPC; `block` reports on stderr so tests can follow it.

`--sse` serves the same tools over the 2024-11-05 HTTP+SSE transport on a loopback port
instead (printed on stdout), so a test can kill a whole SSE upstream process.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Annotated, Any

import anyio
from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.types import EmptyResult, PingRequest
from pydantic import BaseModel


class Confirm(BaseModel):
    """What `ask_client` elicits."""

    ok: bool


async def ask_confirm(path: str) -> Elicit[Confirm]:
    """Resolver of `confirm_delete` (module level: annotations resolve in module globals)."""
    return Elicit(f"Really delete {path}?", Confirm)


def build() -> MCPServer:
    """The server and its tools."""
    mcp = MCPServer(
        "stdio-upstream", version="0.3.0", instructions="Stdio test upstream.", log_level="WARNING"
    )
    added = 0

    @mcp.tool()
    async def confirm_delete(path: str, confirm: Annotated[Confirm, Resolve(ask_confirm)]) -> str:
        """Dual-era elicitation: input_required on 2026-07-28 (the only era relayed over stdio)."""
        return f"deleted {path}" if getattr(confirm, "ok", False) else f"kept {path}"

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
    async def progress(steps: list[float], ctx: Context) -> str:
        """Report each value in `steps` as progress (out of the last value)."""
        for step in steps:
            await ctx.report_progress(step, steps[-1], f"at {step}")
        return "done"

    @mcp.tool()
    async def block(tag: str) -> str:
        """Wait forever; say on stderr when it starts and when it is cancelled."""
        print(f"block {tag} started", file=sys.stderr, flush=True)
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            print(f"block {tag} cancelled", file=sys.stderr, flush=True)
            raise
        return "unreachable"

    @mcp.tool()
    def env_probe(name: str) -> str | None:
        """The value of an environment variable in this process, or None."""
        return os.environ.get(name)

    @mcp.tool()
    def pid() -> int:
        """This process's id."""
        return os.getpid()

    @mcp.tool()
    def cwd() -> str:
        """This process's working directory."""
        return os.getcwd()

    @mcp.tool()
    def crash() -> str:
        """Exit at once, without answering."""
        os._exit(3)

    @mcp.tool()
    def stderr(data_hex: str) -> str:
        """Write the given bytes to stderr."""
        sys.stderr.buffer.write(bytes.fromhex(data_hex))
        sys.stderr.buffer.flush()
        return "written"

    @mcp.tool()
    def big(size: int) -> str:
        """Return a text of `size` bytes."""
        return "x" * size

    @mcp.tool()
    async def ask_client(ctx: Context) -> str:
        """Ping the client, then ask it to elicit (handshake era only)."""
        await ctx.request_context.session.send_request(PingRequest(), EmptyResult)
        try:
            await ctx.elicit("Proceed?", Confirm)
        except MCPError as exc:
            return f"pong; elicitation refused with {exc.code}"
        return "pong; elicitation answered"

    @mcp.tool()
    async def stubborn() -> str:
        """From now on ignore SIGTERM, and outlive the closing of stdin."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=threading.Event().wait).start()  # non-daemon: blocks the exit
        return "stubborn"

    @mcp.tool()
    async def add_tool(ctx: Context) -> str:
        """Add a tool, then announce the change in this connection's era."""
        nonlocal added
        added += 1
        name = f"added_{added}"
        mcp.add_tool(lambda: name, name=name, description="Added at runtime.")
        if ctx.protocol_version == "2026-07-28":
            await ctx.notify_tools_changed()  # to subscriptions/listen streams
        else:
            await ctx.request_context.session.send_tool_list_changed()
        return name

    return mcp


async def serve_legacy_only(mcp: MCPServer, *, silent_discover: bool) -> None:
    """Serve only the handshake era over stdio (a 2025-era server)."""
    server = mcp._lowlevel_server

    async def swallow_discover(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "server/discover":
            await anyio.sleep_forever()
        return await call_next(ctx)

    if silent_discover:
        server.middleware.insert(0, swallow_discover)
    async with stdio_server() as (read_stream, write_stream), server.lifespan(server) as state:
        await serve_loop(
            server,
            read_stream,
            write_stream,
            lifespan_state=state,
            init_options=server.create_initialization_options(),
        )


def serve_sse(mcp: MCPServer) -> None:
    """Serve HTTP+SSE (GET /sse) on 127.0.0.1; print the port once it can take connections."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue until uvicorn accepts, so the port is usable at once
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(uvicorn.Config(mcp.sse_app(), log_level="warning")).run(sockets=[sock])


def main() -> None:
    """Run the server in the mode the arguments ask for."""
    mcp = build()
    if "--sse" in sys.argv:
        serve_sse(mcp)
    elif "--legacy-only" in sys.argv or "--silent-discover" in sys.argv:
        anyio.run(lambda: serve_legacy_only(mcp, silent_discover="--silent-discover" in sys.argv))
    else:
        mcp.run("stdio")


if __name__ == "__main__":
    main()
