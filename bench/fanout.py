"""Benchmark: `tools/list` through tollhouse fanned out over many upstreams, cold and warm.

Usage: python bench/fanout.py [--upstreams 20] [--tools 50] [--page-sizes 100,1000]
                              [--concurrency 1,8] [--duration S] [--warmup N] [--quick] [--out FILE]

For each page size (`TOLLHOUSE_LIMITS__PAGE_SIZE`) it starts, as child processes on loopback,
the upstreams (bench/_upstreams.py: one process serving N SDK servers with M tools each, one
port each) and a fresh `tollhouse serve`, then measures:

- cold: registering every upstream through the admin API, one after the other (each POST
  returns once that upstream's catalog is live), then the first complete `tools/list`
  (every page) through the gateway; and a restart of the gateway on the same data directory,
  from spawning the process to the first complete listing (the startup syncs all upstreams
  concurrently).
- warm: `tools/list` (2026-07-28, stateless) for the full listing (following `nextCursor`) and
  for the first page only, at each concurrency: calls/s, p50/p90/p99, CPU per call.

It prints a JSON document (also written to bench/results/), a table on stderr, and the target
check of bench/README.md (warm full listing p50 at concurrency 1). Exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
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
    machine,
    memory_mb,
    new_admin_token,
    percentile,
    read_ready_words,
    register,
    run_load,
    wait_healthy,
    write_report,
)

TARGET_WARM_FULL_P50_MS = 5.0
MAX_PAGES = 10_000


class Lister:
    """A raw 2026-07-28 JSON-RPC client for `tools/list` through the gateway."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, key: str, expected: int, page_size: int
    ) -> None:
        self.http, self.url, self.expected = http, url, expected
        self.first_page_size = min(page_size, expected)
        self.next_id = 0
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/list",
            "Authorization": f"Bearer {key}",
        }
        self.pages = 0  # pages of the last listing
        self.bytes = 0  # response bytes of the last listing
        self.call_wire_ns = 0  # of the current call: request sent to response body read, all pages
        self.wire_ns: list[int] = []  # call_wire_ns of each successful call

    async def page(self, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """One page: its tools and the next cursor (None on the last page)."""
        self.next_id += 1
        params: dict[str, Any] = {"_meta": META}
        if cursor is not None:
            params["cursor"] = cursor
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/list", "params": params}
        t0 = time.perf_counter_ns()
        async with self.http.post(self.url, data=orjson.dumps(message), headers=self.headers) as response:
            body = await response.read()
            self.call_wire_ns += time.perf_counter_ns() - t0
            if response.status != 200:
                raise RuntimeError(f"tools/list: HTTP {response.status} {body[:200]!r}")
            reply = find_reply(body, response.content_type, self.next_id)
        self.pages += 1
        self.bytes += len(body)
        result = reply["result"]
        tools: list[dict[str, Any]] = result["tools"]
        return tools, result.get("nextCursor")

    async def listing(self) -> list[dict[str, Any]]:
        """Every tool, following `nextCursor`."""
        self.pages = self.bytes = self.call_wire_ns = 0
        tools, cursor = await self.page(None)
        while cursor is not None:
            if self.pages >= MAX_PAGES:
                raise RuntimeError("tools/list: too many pages")
            more, cursor = await self.page(cursor)
            tools += more
        return tools

    async def full(self) -> bool:
        """A complete listing; True if it held every tool."""
        try:
            ok = len(await self.listing()) == self.expected
        except Exception:
            return False
        if ok:
            self.wire_ns.append(self.call_wire_ns)
        return ok

    async def first(self) -> bool:
        """The first page only; True if it was full."""
        try:
            self.pages = self.bytes = self.call_wire_ns = 0
            tools, _ = await self.page(None)
            ok = len(tools) == self.first_page_size
        except Exception:
            return False
        if ok:
            self.wire_ns.append(self.call_wire_ns)
        return ok


def start_timing(listers: list[Lister]) -> None:
    """Before a timed run: forget the warm-up's wire times, and freeze this process's heap.

    The freeze keeps the load generator's long-lived objects out of its garbage collections:
    parsing a 430 KB listing allocates ~20k containers, and the full collections they trigger
    would otherwise add about 1 ms of client time to every listing.
    """
    for lister in listers:
        lister.wire_ns.clear()
    gc.collect()
    gc.freeze()


def expected_names(upstreams: int, tools: int) -> set[str]:
    """The exposed names the aggregate listing must hold."""
    return {f"s{i + 1:02d}__t{j:02d}" for i in range(upstreams) for j in range(tools)}


def ms_since(t0: float) -> float:
    """Milliseconds since the perf_counter reading `t0`."""
    return round((time.perf_counter() - t0) * 1e3, 3)


async def cold_start(
    args: argparse.Namespace,
    base: str,
    admin_token: str,
    urls: list[str],
    gw: subprocess.Popen[str],
    page_size: int,
) -> tuple[str, dict[str, Any]]:
    """Create the client, register every upstream, list until complete; (API key, cold figures)."""
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await wait_healthy(http, base, gw, deadline)
        key = await create_client(http, base, admin_token)
        want = expected_names(args.upstreams, args.tools)
        lister = Lister(http, f"{base}/mcp", key, len(want), page_size)
        registration: list[float] = []
        t0 = time.perf_counter()
        for i, url in enumerate(urls):
            t = time.perf_counter()
            await register(http, base, admin_token, {"name": f"s{i + 1:02d}", "url": url})
            registration.append(ms_since(t))
        registered = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            names = {t["name"] for t in await lister.listing()}
            if names == want:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the listing never held all {len(want)} tools ({len(names)} seen)")
            await asyncio.sleep(0.01)
        ns = sorted(int(ms * 1e6) for ms in registration)
        cold = {
            "total_ms": ms_since(t0),
            "registration_ms": {
                "each": registration,
                "sum": round(sum(registration), 3),
                "p50": percentile(ns, 50),
                "max": percentile(ns, 100),
            },
            "first_list_ms": ms_since(registered),
            "list_attempts": attempts,
            "pages": lister.pages,
            "bytes": lister.bytes,
        }
        return key, cold


async def restart_cold(
    base: str, key: str, gw: subprocess.Popen[str], expected: int, page_size: int, t0: float
) -> dict[str, Any]:
    """After spawning the gateway at `t0`: when it was healthy and when it first listed everything."""
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await wait_healthy(http, base, gw, deadline)
        healthy = ms_since(t0)
        lister = Lister(http, f"{base}/mcp", key, expected, page_size)
        while not await lister.full():
            if time.monotonic() > deadline:
                raise RuntimeError("after the restart the listing never became complete")
            await asyncio.sleep(0.01)
        return {"healthy_ms": healthy, "full_list_ms": ms_since(t0)}


async def warm(
    args: argparse.Namespace, base: str, key: str, page_size: int, pids: dict[str, int]
) -> list[dict[str, Any]]:
    """The warm runs for one gateway: full listing and first page at each concurrency."""
    runs: list[dict[str, Any]] = []
    expected = args.upstreams * args.tools
    for mode in ("full", "first_page"):
        for c in args.concurrency:
            connector = aiohttp.TCPConnector(limit=c)
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30)
            ) as http:
                listers = [Lister(http, f"{base}/mcp", key, expected, page_size) for _ in range(c)]
                calls = [lister.full if mode == "full" else lister.first for lister in listers]
                run = await run_load(calls, args.duration, args.warmup, pids, partial(start_timing, listers))
            wire = sorted(ns for lister in listers for ns in lister.wire_ns)
            run["wire_p50_ms"] = percentile(wire, 50)
            run["wire_p99_ms"] = percentile(wire, 99)
            run["gateway_rss_mb"] = memory_mb(pids["gateway"])
            runs.append(
                {
                    "page_size": page_size,
                    "mode": mode,
                    "concurrency": c,
                    "pages_per_call": listers[0].pages,
                    "bytes_per_call": listers[0].bytes,
                    **run,
                }
            )
            print(
                f"  page_size={page_size:<5} {mode:10} c={c:<3} {run['calls_per_s']:>8} calls/s "
                f"p50 {run['p50_ms']} ms",
                file=sys.stderr,
            )
    return runs


def measure_page_size(
    args: argparse.Namespace, runner: asyncio.Runner, tmp: Path, page_size: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fresh upstreams and gateway at one page size: (cold figures, warm runs)."""
    env = child_env()
    logs = tmp / f"page{page_size}"
    logs.mkdir()
    upstreams_argv = [sys.executable, str(ROOT / "bench" / "_upstreams.py")]
    upstreams_argv += ["--count", str(args.upstreams), "--tools", str(args.tools)]
    admin_token = new_admin_token()

    @contextlib.contextmanager
    def gateway(phase: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
        port = free_port()
        gw_env = gateway_env(env, port, admin_token, logs / "data")
        gw_env["TOLLHOUSE_LIMITS__PAGE_SIZE"] = str(page_size)
        log = logs / f"gateway-{phase}.log"
        with child(GATEWAY_ARGV, gw_env, log, pipe=False) as proc:
            try:
                yield f"http://127.0.0.1:{port}", proc
            except RuntimeError:
                print(log.read_text()[-4000:], file=sys.stderr)
                raise

    with child(upstreams_argv, env, logs / "upstreams.log", pipe=True) as upstreams:
        urls = read_ready_words(upstreams, time.monotonic() + 120)
        if len(urls) != args.upstreams:
            raise RuntimeError(f"expected {args.upstreams} upstream URLs, got {len(urls)}")
        with gateway("first") as (base, proc):
            key, cold = runner.run(cold_start(args, base, admin_token, urls, proc, page_size))
            pids = {"gateway": proc.pid, "upstreams": upstreams.pid}
            runs = runner.run(warm(args, base, key, page_size, pids))
            cold["gateway_rss_peak_mb"] = memory_mb(proc.pid, "VmHWM")
        t0 = time.perf_counter()  # the same data directory: the gateway syncs every upstream at startup
        with gateway("restart") as (base, proc):
            expected = args.upstreams * args.tools
            cold["restart"] = runner.run(restart_cold(base, key, proc, expected, page_size, t0))
    return {"page_size": page_size, **cold}, runs


def summarize(cold: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Warm p50s by page size, mode and concurrency, errors, and the target check."""
    p50: dict[str, dict[str, dict[str, float | None]]] = {}
    for r in runs:
        p50.setdefault(str(r["page_size"]), {}).setdefault(r["mode"], {})[str(r["concurrency"])] = r["p50_ms"]
    targets: dict[str, Any] = {}
    for r in runs:
        if r["mode"] == "full" and r["concurrency"] == 1:
            value = r["p50_ms"]
            ok = None if value is None else value <= TARGET_WARM_FULL_P50_MS
            targets[str(r["page_size"])] = {
                "value": value,
                "wire_value": r["wire_p50_ms"],
                "target": TARGET_WARM_FULL_P50_MS,
                "pass": ok,
            }
    return {
        "errors": sum(r["errors"] for r in runs),
        "cold_total_ms": {str(c["page_size"]): c["total_ms"] for c in cold},
        "cold_restart_ms": {str(c["page_size"]): c["restart"]["full_list_ms"] for c in cold},
        "registration_p50_ms": {str(c["page_size"]): c["registration_ms"]["p50"] for c in cold},
        "warm_p50_ms": p50,
        "targets": {"warm_full_list_p50_ms_c1": targets},
    }


def print_table(cold: list[dict[str, Any]], runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A short human table on stderr."""
    lines = [f"{'page':>5} {'cold ms':>9} {'reg p50':>8} {'first list':>10} {'restart ms':>10}"]
    for c in cold:
        lines.append(
            f"{c['page_size']:>5} {c['total_ms']:>9} {c['registration_ms']['p50']!s:>8} "
            f"{c['first_list_ms']:>10} {c['restart']['full_list_ms']:>10}"
        )
    lines.append(
        f"{'page':>5} {'mode':10} {'c':>3} {'pages':>5} {'KB':>6} {'calls/s':>8} {'p50':>7} {'p90':>7} "
        f"{'p99':>7} {'wire p50':>8} {'gw cpu ms':>9} {'bench cpu':>9} {'errors':>6}"
    )
    for r in runs:
        lines.append(
            f"{r['page_size']:>5} {r['mode']:10} {r['concurrency']:>3} {r['pages_per_call']:>5} "
            f"{r['bytes_per_call'] / 1024:>6.0f} {r['calls_per_s']:>8} {r['p50_ms']!s:>7} {r['p90_ms']!s:>7} "
            f"{r['p99_ms']!s:>7} {r['wire_p50_ms']!s:>8} {r['gateway_cpu_ms_per_call']!s:>9} "
            f"{r['bench_cpu_ms_per_call']!s:>9} {r['errors']:>6}"
        )
    for size, t in summary["targets"]["warm_full_list_p50_ms_c1"].items():
        lines.append(
            f"target warm full list p50 (page size {size}): {t['value']} ms "
            f"(wire {t['wire_value']} ms; ≤ {t['target']}) -> {t['pass']}"
        )
    print("\n".join(lines), file=sys.stderr)


def main() -> int:
    """Run every page size, write and print the results; every child is stopped on the way out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--upstreams", type=int, default=20, help="upstream servers (default 20)")
    parser.add_argument("--tools", type=int, default=50, help="tools per upstream (default 50)")
    parser.add_argument("--page-sizes", default="100,1000", help="gateway page sizes (default 100,1000)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated (default 1,8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per warm run (default 5)")
    parser.add_argument("--warmup", type=int, default=50, help="calls before each warm run (default 50)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 10 warm-up calls (smoke test)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/fanout-TS.json)")
    args = parser.parse_args()
    args.page_sizes = [int(p) for p in args.page_sizes.split(",")]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if not 1 <= args.upstreams <= 99 or not 1 <= args.tools <= 100:
        parser.error("--upstreams takes 1..99 and --tools 1..100")
    if args.quick:
        args.duration, args.warmup = 1.0, 10
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on SIGTERM too
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or ROOT / "bench" / "results" / f"fanout-{stamp}.json"

    cold: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="tollhouse-fanout-") as tmp,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        for page_size in args.page_sizes:
            c, r = measure_page_size(args, runner, Path(tmp), page_size)
            cold.append(c)
            runs += r
    summary = summarize(cold, runs)
    settings = ("upstreams", "tools", "page_sizes", "concurrency", "duration", "warmup")
    document = {
        "benchmark": "fanout",
        "timestamp": stamp,
        "machine": machine(),
        "settings": {k: getattr(args, k) for k in settings},
        "cold": cold,
        "runs": runs,
        "summary": summary,
    }
    write_report(document, out)
    print_table(cold, runs, summary)
    print(f"written to {out}", file=sys.stderr)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
