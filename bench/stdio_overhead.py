"""Benchmark: a `tools/call` through tollhouse to a stdio upstream vs a Streamable HTTP upstream.

Usage: python bench/stdio_overhead.py [--duration S] [--concurrency 1,8] [--eras modern]
                                      [--quick] [--out FILE]

studio (examples/servers/studio.py, Streamable HTTP) and `tollhouse serve` run as child
processes on loopback; the gateway registers studio and `kid`, tests/stdio_server.py, which it
spawns itself and talks to over stdin/stdout. Both have the same `echo` tool (the SDK's
`MCPServer`), so `studio__echo` vs `kid__echo` through the gateway compares the upstream
transports. The load generator, the measurement and the checks are mcp_overhead.py's. It prints
a JSON document (also written to bench/results/) and a table on stderr. Exits 1 if any call
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from mcp_overhead import (
    GATEWAY_ARGV,
    META,
    MODERN,
    ROOT,
    child,
    child_env,
    create_client,
    find_reply,
    free_port,
    gateway_env,
    load_args,
    machine,
    measure,
    memory_mb,
    new_admin_token,
    read_ready,
    register,
    wait_callable,
    wait_healthy,
    write_report,
)

STDIO_SERVER = ROOT / "tests" / "stdio_server.py"
TRANSPORTS = {"http": "studio__echo", "stdio": "kid__echo"}


async def call_tool(http: aiohttp.ClientSession, base: str, key: str, name: str) -> Any:
    """One modern `tools/call` with no arguments through the gateway; the first text content."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
        "Authorization": f"Bearer {key}",
    }
    params = {"name": name, "arguments": {}, "_meta": META}
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    async with http.post(f"{base}/mcp", data=orjson.dumps(message), headers=headers) as response:
        reply = find_reply(await response.read(), response.content_type, 1)
    if response.status != 200 or not isinstance(reply, dict) or "result" not in reply:
        raise RuntimeError(f"{name} failed: HTTP {response.status} {reply!r}")
    return reply["result"]["content"][0]["text"]


async def set_up(
    base: str, admin_token: str, studio_url: str, proc: subprocess.Popen[str]
) -> tuple[str, int, dict[str, dict[str, Any]]]:
    """Register studio and kid, create a client; (API key, kid's pid, each upstream's era)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await wait_healthy(http, base, proc, deadline)
        await register(http, base, admin_token, {"name": "studio", "url": studio_url})
        await register(
            http, base, admin_token, {"name": "kid", "command": [sys.executable, str(STDIO_SERVER)]}
        )
        key = await create_client(http, base, admin_token)
        for tool in TRANSPORTS.values():
            await wait_callable(http, base, key, tool, deadline)
        kid_pid = int(await call_tool(http, base, key, "kid__pid"))
        eras: dict[str, dict[str, Any]] = {}
        auth = {"Authorization": f"Bearer {admin_token}"}
        for name in ("studio", "kid"):
            async with http.get(f"{base}/admin/api/v1/servers/{name}", headers=auth) as r:
                out = await r.json()
            eras[name] = {
                "transport": out["transport"],
                "era": out["era"],
                "protocol_version": out["protocol_version"],
            }
        return key, kid_pid, eras


async def bench(args: argparse.Namespace, base: str, key: str, pids: dict[str, int]) -> list[dict[str, Any]]:
    """For each era x concurrency: echo over HTTP, then over stdio, through the gateway."""
    runs: list[dict[str, Any]] = []
    for era in args.eras:
        for c in args.concurrency:
            for transport, tool in TRANSPORTS.items():
                watched = {"gateway": pids["gateway"], "upstream": pids[transport]}
                run = await measure(f"{base}/mcp", tool, era, key, c, args.duration, args.warmup, watched)
                run["gateway_rss_mb"] = memory_mb(pids["gateway"])
                runs.append({"transport": transport, "era": era, "concurrency": c, **run})
                print(f"  {transport:5} {era:6} c={c:<3} {run['calls_per_s']:>8} calls/s", file=sys.stderr)
    return runs


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """stdio vs HTTP by era and concurrency: throughput ratio and p50 difference; errors."""
    by = {(r["transport"], r["era"], r["concurrency"]): r for r in runs}
    ratio: dict[str, dict[str, float]] = {}
    p50_delta: dict[str, dict[str, float | None]] = {}
    for (transport, era, c), stdio in by.items():
        if transport != "stdio":
            continue
        http = by[("http", era, c)]
        ratio.setdefault(era, {})[str(c)] = round(stdio["calls_per_s"] / max(http["calls_per_s"], 1e-9), 3)
        delta = None
        if stdio["p50_ms"] is not None and http["p50_ms"] is not None:
            delta = round(stdio["p50_ms"] - http["p50_ms"], 3)
        p50_delta.setdefault(era, {})[str(c)] = delta
    return {
        "stdio_over_http_throughput": ratio,
        "stdio_minus_http_p50_ms": p50_delta,
        "errors": sum(r["errors"] for r in runs),
    }


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A short human table on stderr."""
    by = {(r["transport"], r["era"], r["concurrency"]): r for r in runs}
    lines = [
        f"{'era':6} {'c':>3} {'http/s':>8} {'stdio/s':>8} {'ratio':>6} {'p50 http/stdio ms':>18} "
        f"{'p99 http/stdio ms':>18} {'up cpu http/stdio':>18} {'errors':>6}"
    ]
    for (transport, era, c), s in by.items():
        if transport == "stdio":
            h = by[("http", era, c)]
            lines.append(
                f"{era:6} {c:>3} {h['calls_per_s']:>8} {s['calls_per_s']:>8} "
                f"{summary['stdio_over_http_throughput'][era][str(c)]:>6} "
                f"{h['p50_ms']!s:>8} / {s['p50_ms']!s:<7} {h['p99_ms']!s:>8} / {s['p99_ms']!s:<7} "
                f"{h['upstream_cpu_ms_per_call']!s:>8} / {s['upstream_cpu_ms_per_call']!s:<7} "
                f"{h['errors'] + s['errors']:>6}"
            )
    print("\n".join(lines), file=sys.stderr)


def main() -> int:
    """Start the children, run every benchmark, write and print the results, stop the children."""
    args, out = load_args(__doc__ or "", "stdio_overhead", concurrency="1,8", eras="modern")

    env = child_env()
    admin_token = new_admin_token()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    studio_argv = [sys.executable, str(ROOT / "examples/servers/studio.py"), "--port", "0"]
    with (
        tempfile.TemporaryDirectory(prefix="tollhouse-bench-") as tmp,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        gw_env = gateway_env(env, port, admin_token, Path(tmp) / "data") | dict(
            e.split("=", 1) for e in args.gateway_env
        )
        log = Path(tmp) / "gateway.log"
        with child(studio_argv, env, Path(tmp) / "studio.log", pipe=True) as studio:
            studio_url = read_ready(studio, time.monotonic() + 60)
            with child(GATEWAY_ARGV, gw_env, log, pipe=False) as gateway:
                try:
                    key, kid_pid, upstreams = runner.run(set_up(base, admin_token, studio_url, gateway))
                except RuntimeError:
                    print(log.read_text()[-4000:], file=sys.stderr)
                    raise
                pids = {"gateway": gateway.pid, "http": studio.pid, "stdio": kid_pid}
                runs = runner.run(bench(args, base, key, pids))
                peak = memory_mb(gateway.pid, "VmHWM")
    summary = summarize(runs) | {"gateway_rss_peak_mb": peak}
    document = {
        "benchmark": "stdio_overhead",
        "timestamp": args.stamp,
        "machine": machine(),
        "settings": {k: getattr(args, k) for k in ("duration", "warmup", "concurrency", "eras")},
        "upstreams": upstreams,
        "runs": runs,
        "summary": summary,
    }
    write_report(document, out)
    print_table(runs, summary)
    print(f"written to {out}", file=sys.stderr)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
