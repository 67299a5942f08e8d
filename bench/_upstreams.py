"""Many SDK upstreams in one process: N `MCPServer` apps with M small tools each, one port each.

Usage: python bench/_upstreams.py [--count 20] [--tools 50] [--delay-ms 0]

Each upstream is the SDK's dual-era `MCPServer` (Streamable HTTP at `/mcp`) named `sNN`, with
tools `t00`..`tMM` (a small input schema: a required string and an optional integer). All of
them run in this one process on one event loop, each behind its own uvicorn server on its own
loopback port, so a fan-out benchmark costs one child process instead of N. Once every server
is accepting connections it prints exactly one line, `READY <url> <url> ...`, and it stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
import uvloop
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

__all__ = ["build_server", "main"]


def _tool(server: str, index: int, delay: float) -> Callable[..., Any]:
    def tool(text: str, count: int = 1) -> str:
        return f"{server}/t{index:02d}: " + text * count

    async def slow_tool(text: str, count: int = 1) -> str:
        await asyncio.sleep(delay)  # stands for the upstream's own work (bench/load.py)
        return tool(text, count)

    return slow_tool if delay > 0 else tool


def build_server(name: str, tools: int, delay: float = 0.0) -> MCPServer:
    """An upstream called `name` with `tools` tools `t00`, `t01`, ... (small schemas), each answering
    after `delay` seconds."""
    server: MCPServer = MCPServer(name, version="1.0.0", log_level="WARNING")
    for i in range(tools):
        server.add_tool(
            _tool(name, i, delay),
            name=f"t{i:02d}",
            description=f"Tool {i} of {name}: repeat the text `count` times.",
            annotations=ToolAnnotations(read_only_hint=True),
        )
    return server


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to main() (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen() -> socket.socket:
    # proto=IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted sockets; with proto 0 every
    # response waits out a 40 ms delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue until uvicorn accepts, so the port is usable at once
    return sock


async def serve(count: int, tools: int, delay: float = 0.0) -> None:
    """Serve `count` upstreams until SIGTERM or SIGINT."""
    sockets = [_listen() for _ in range(count)]
    servers = [
        _Server(
            uvicorn.Config(
                build_server(f"s{i + 1:02d}", tools, delay).streamable_http_app(host="127.0.0.1"),
                log_level="warning",
                lifespan="on",
            )
        )
        for i in range(count)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(s.serve([sock])) for s, sock in zip(servers, sockets, strict=True)]
    try:
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):
                raise SystemExit("an upstream failed to start")
            await asyncio.sleep(0.01)
        urls = [f"http://127.0.0.1:{sock.getsockname()[1]}/mcp" for sock in sockets]
        print("READY " + " ".join(urls), flush=True)
        await stop.wait()
    finally:
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in sockets:
            sock.close()


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="upstreams (default 20)")
    parser.add_argument("--tools", type=int, default=50, help="tools per upstream (default 50)")
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="each call answers after this (default 0)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mcp").setLevel(logging.WARNING)
    uvloop.run(serve(args.count, args.tools, args.delay_ms / 1000))


if __name__ == "__main__":
    main()
