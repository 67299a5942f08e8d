"""Micro-benchmark: StdioUpstream.request("tools/call", echo) against an SDK server child process.

Usage: python bench/stdio_micro.py [--calls N]

The connector spawns this file with `--serve` (the SDK's dual-era MCPServer with one `echo`
tool, on stdio). Prints JSON: calls/s and this process's CPU time per call, for both eras at
concurrency 1 and 16, with no watcher (callers take turns reading stdout) and with a running
`watch()` (how the pool runs it: the watcher reads, callers only wait).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Literal

import anyio

from tollhouse.gateway.stdio import StdioUpstream
from tollhouse.registry.models import JSONObject, Upstream


def serve_upstream() -> None:
    """Child process: the SDK server on stdio."""
    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("bench-upstream", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    mcp.run("stdio")


async def measure(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> dict[str, float]:
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


async def ignore(method: str, params: JSONObject) -> None:
    """The watcher's callback: nothing is expected."""


async def bench(calls: int) -> dict[str, Any]:
    """Every configuration, each against a fresh child."""
    params = {"name": "echo", "arguments": {"text": "hello"}}
    upstream = Upstream(name="bench", transport="stdio", command=(sys.executable, __file__, "--serve"))
    results: dict[str, Any] = {}
    eras: tuple[Literal["auto", "legacy"], ...] = ("auto", "legacy")
    for era in eras:
        connector = StdioUpstream(upstream, era=era)
        await connector.start()
        label = connector.era
        try:
            one = partial(connector.request, "tools/call", params)
            for concurrency in (1, 16):
                results[f"{label}_c{concurrency}"] = await measure(one, calls, concurrency)
            async with anyio.create_task_group() as tg:
                await tg.start(connector.watch, ignore)
                for concurrency in (1, 16):
                    results[f"{label}_watching_c{concurrency}"] = await measure(one, calls, concurrency)
                tg.cancel_scope.cancel()
        finally:
            await connector.aclose()
    return results


def main() -> None:
    """Benchmark and print JSON; the children are stopped by the connector."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_upstream()
        return
    results = anyio.run(bench, args.calls)
    print(json.dumps({"calls": args.calls, **results}, indent=2))


if __name__ == "__main__":
    main()
