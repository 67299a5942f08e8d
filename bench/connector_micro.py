"""Micro-benchmark: HttpUpstream.request("tools/call", echo) against an SDK upstream on loopback.

Usage: python bench/connector_micro.py [--calls N]

The upstream (the SDK's dual-era MCPServer with one `echo` tool) runs in a child process, so
the numbers are the connector's side. Prints JSON: calls/s and this process's CPU time per
call, for the modern and legacy eras at concurrency 1 and 16, plus a bare aiohttp POST loop
as the floor.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from functools import partial
from typing import Any, Literal

import aiohttp
import anyio
import orjson

from tollhouse.gateway.streamable_http import HttpUpstream
from tollhouse.registry.models import Upstream


def serve_upstream() -> None:
    """Child process: serve the SDK upstream and print its port."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("bench-upstream", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    # proto=IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted sockets; with proto 0 every
    # response waits out a 40 ms delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections queue until uvicorn accepts, so the port is usable at once
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(mcp.streamable_http_app(), log_level="warning", http="httptools")
    uvicorn.Server(config).run(sockets=[sock])


async def measure(call: Any, calls: int, concurrency: int) -> dict[str, float]:
    """Run `calls` awaits of `call()` over `concurrency` workers; rate and client CPU per call."""
    for _ in range(100):
        await call()
    per_worker = calls // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    wall, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = per_worker * concurrency
    return {"calls_per_s": round(done / wall), "client_cpu_us_per_call": round(cpu / done * 1e6, 1)}


async def bench(url: str, calls: int) -> dict[str, Any]:
    """Every configuration against the upstream at `url`."""
    params = {"name": "echo", "arguments": {"text": "hello"}}
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        headers = {
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": "tools/call",
            "Mcp-Name": "echo",
        }
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {**params, "_meta": meta}}
        )

        async def raw() -> None:
            async with http.post(url, data=body, headers=headers) as response:
                orjson.loads(await response.read())

        for concurrency in (1, 16):
            results[f"bare_aiohttp_modern_c{concurrency}"] = await measure(raw, calls, concurrency)
    eras: tuple[Literal["modern", "legacy"], ...] = ("modern", "legacy")
    for era in eras:
        connector = HttpUpstream(Upstream(name="bench", url=url), era=era)
        await connector.start()
        try:
            one = partial(connector.request, "tools/call", params)
            for concurrency in (1, 16):
                results[f"connector_{era}_c{concurrency}"] = await measure(one, calls, concurrency)
        finally:
            await connector.aclose()
    return results


def main() -> None:
    """Start the upstream, benchmark, print JSON, stop the upstream."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_upstream()
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        results = anyio.run(bench, f"http://127.0.0.1:{port}/mcp", args.calls)
        print(json.dumps({"calls": args.calls, **results}, indent=2))
    finally:
        child.terminate()
        child.wait(timeout=10)


if __name__ == "__main__":
    main()
