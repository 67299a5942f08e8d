"""Benchmark: three replicas and three upstreams under steady load; one upstream, then one replica, killed.

Usage: python bench/load.py [--duration 60] [--clients 24] [--delay-ms 5] [--quick] [--out FILE]
                            [--postgres-url URL] [--redis-url URL]

Children on loopback: three `tollhouse serve` replicas (bench/_cluster.py, the harness the
acceptance tests use: one scratch PostgreSQL database, one Redis prefix, one key ring) and three
upstreams (bench/_upstreams.py, one SDK server with one tool `t00` each, answering after
`--delay-ms`). The upstreams are registered through replica 0; the run starts once every replica
lists every tool (the change notices carry the registrations; `setup.visible_ms` times that).

Then `--clients` workers call `tools/call` (2026-07-28, stateless: one POST each) for `--duration`
seconds, worker j on replica j mod 3, its calls going round the three upstreams. At a third of the
run upstream u2 is SIGKILLed, at two thirds replica 2. A call that meets a transport error (the
replica is gone) is re-issued with a new id on the next replica, and that worker stays there:
what a client behind a load balancer does. The answers are checked (the echoed text of this call).

Output: a JSON document on stdout (also bench/results/load-<UTC time>.json, or `--out`), a short
table on stderr. Exits 1 if a call to a healthy upstream failed (the target is 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from _cluster import Replicas, delete_redis_prefix, running_replicas
from console_audit import scratch_postgres
from mcp_overhead import (
    META,
    MODERN,
    ROOT,
    child,
    child_env,
    create_client,
    find_reply,
    machine,
    memory_mb,
    percentile,
    read_ready,
    register,
    write_report,
)

REPLICAS = UPSTREAMS = 3
UPSTREAM_VICTIM, REPLICA_VICTIM = 1, 2  # u2, replica-2
MAX_ATTEMPTS = REPLICAS  # a call is re-issued on each other replica at most once
TOOL = "t00"
# The load repeats calls at a high rate from one client: the loop breaker (docs/limits.md) would stop it.
# One key drives every client: the per-principal in-flight cap (default 20) would refuse some
# calls, and the load repeats calls the loop breaker would stop. Neither is what is measured.
LOAD_ENV = {
    "TOLLHOUSE_QUOTAS__LOOP_THRESHOLD": "0",
    "TOLLHOUSE_LIMITS__MAX_IN_FLIGHT_PER_PRINCIPAL": "0",
}


def upstream_name(u: int) -> str:
    return f"u{u + 1}"


@dataclass
class Call:
    """One logical call (however many attempts it took) as the client saw it."""

    start: float  # seconds since the load started
    end: float
    upstream: int
    outcome: str  # "ok", "http <status>", the JSON-RPC error code, "isError", "wrong answer", "transport"
    attempts: int
    detail: str = ""


@dataclass
class Run:
    """What the workers record; the event times are set by the events task."""

    calls: list[Call] = field(default_factory=list)
    reissued: int = 0  # attempts that met a transport error and were sent again
    upstream_killed_at: float | None = None
    replica_killed_at: float | None = None


class Worker:
    """One client: raw 2026-07-28 `tools/call` POSTs to its current replica, re-issued on another
    replica after a transport error."""

    def __init__(self, http: aiohttp.ClientSession, urls: list[str], key: str, index: int) -> None:
        self.http, self.urls, self.index = http, urls, index
        self.replica = index % len(urls)
        self.ids = itertools.count(1)
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Authorization": f"Bearer {key}",
        }

    async def call(self, upstream: int, run: Run | None, t0: float) -> Call:
        """One call to `upstream`'s tool; `run` counts re-issues (None during the warm-up)."""
        tool = f"{upstream_name(upstream)}__{TOOL}"
        headers = self.headers | {"Mcp-Name": tool}
        start = time.perf_counter() - t0
        text = secrets.token_hex(4)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            request_id = next(self.ids)
            params = {"name": tool, "arguments": {"text": text}, "_meta": META}
            message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            try:
                url = self.urls[self.replica]
                async with self.http.post(url, data=orjson.dumps(message), headers=headers) as response:
                    body = await response.read()
                    status, content_type = response.status, response.content_type
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as error:
                # The replica is gone (refused, reset, closed): the next one, as a load balancer would.
                self.replica = (self.replica + 1) % len(self.urls)
                if attempt < MAX_ATTEMPTS:
                    if run is not None:
                        run.reissued += 1
                    continue
                return Call(start, time.perf_counter() - t0, upstream, "transport", attempt, repr(error))
            except TimeoutError:
                return Call(start, time.perf_counter() - t0, upstream, "timeout", attempt)
            outcome, detail = judge(status, content_type, body, request_id, f"s01/{TOOL}: {text}")
            return Call(start, time.perf_counter() - t0, upstream, outcome, attempt, detail)
        raise AssertionError("unreachable")


def judge(status: int, content_type: str, body: bytes, request_id: int, expected: str) -> tuple[str, str]:
    """The outcome of one answer: "ok" only for this call's echoed text."""
    snippet = body[:300].decode(errors="replace")
    if status != 200:
        return f"http {status}", snippet
    try:
        reply = find_reply(body, content_type, request_id)
    except orjson.JSONDecodeError:
        return "bad json", snippet
    if not isinstance(reply, dict):
        return "no reply", snippet
    if "error" in reply:
        return str(reply["error"].get("code")), snippet
    result = reply.get("result") or {}
    if result.get("isError"):
        return "isError", snippet
    content = result.get("content") or [{}]
    return ("ok", "") if content[0].get("text") == expected else ("wrong answer", snippet)


def rss(replicas: Replicas) -> dict[str, float | None]:
    """VmRSS (MB) of each replica's process; None for one that is not running."""
    return {r.name: memory_mb(r.pid) if r.alive else None for r in replicas.replicas}


async def wait_visible(
    http: aiohttp.ClientSession, url: str, key: str, tools: set[str], since: float, deadline: float
) -> float:
    """Poll `tools/list` on one replica until it lists `tools`; ms since `since`."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/list",
        "Authorization": f"Bearer {key}",
    }
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.post(url, data=orjson.dumps(message), headers=headers) as response:
                reply = find_reply(await response.read(), response.content_type, 1)
            listed = {t["name"] for t in (reply or {}).get("result", {}).get("tools", [])}
            if tools <= listed:
                return round((time.monotonic() - since) * 1e3, 1)
        await asyncio.sleep(0.02)
    raise RuntimeError(f"{url} did not list {sorted(tools)} in time")


async def set_up(replicas: Replicas, upstream_urls: list[str]) -> tuple[str, dict[str, Any]]:
    """Register the upstreams and a client through replica 0, then wait until every replica
    lists every tool; the client's key and the setup figures."""
    base = replicas[0].base_url
    token = replicas[0].env["TOLLHOUSE_ADMIN_TOKEN"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        key = await create_client(http, base, token)
        registered = time.monotonic()
        for u, url in enumerate(upstream_urls):
            await register(http, base, token, {"name": upstream_name(u), "url": url})
        since = time.monotonic()
        tools = {f"{upstream_name(u)}__{TOOL}" for u in range(len(upstream_urls))}
        deadline = since + 60
        visible = await asyncio.gather(
            *(wait_visible(http, r.mcp_url, key, tools, since, deadline) for r in replicas.replicas)
        )
    setup = {
        "registration_ms": round((since - registered) * 1e3, 1),
        "visible_ms": {r.name: ms for r, ms in zip(replicas.replicas, visible, strict=True)},
    }
    return key, setup


async def drive(
    replicas: Replicas, upstreams: list[subprocess.Popen[str]], key: str, args: argparse.Namespace
) -> tuple[Run, dict[str, Any]]:
    """Warm up, then run the workers for the duration while the events task kills a victim of each kind."""
    run = Run()
    memory: dict[str, Any] = {}
    urls = [r.mcp_url for r in replicas.replicas]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        workers = [Worker(http, urls, key, j) for j in range(args.clients)]
        warm = [
            await w.call(u % UPSTREAMS, None, 0.0) for w in workers for u in range(args.warmup_per_client)
        ]
        if bad := [c for c in warm if c.outcome != "ok"]:
            raise RuntimeError(f"warm-up calls failed: {bad[:3]}")
        t0 = time.perf_counter()
        end = t0 + args.duration
        memory["start"] = rss(replicas)

        async def events() -> None:
            await asyncio.sleep(max(0.0, t0 + args.kill_upstream_at - time.perf_counter()))
            memory["upstream_killed"] = rss(replicas)
            upstreams[UPSTREAM_VICTIM].send_signal(signal.SIGKILL)
            run.upstream_killed_at = time.perf_counter() - t0
            await asyncio.sleep(max(0.0, t0 + args.kill_replica_at - time.perf_counter()))
            memory["replica_killed"] = rss(replicas)
            replicas.kill(REPLICA_VICTIM, signal.SIGKILL)
            run.replica_killed_at = time.perf_counter() - t0

        async def work(worker: Worker) -> None:
            for n in itertools.count(worker.index):
                if time.perf_counter() >= end:
                    return
                run.calls.append(await worker.call(n % UPSTREAMS, run, t0))

        await asyncio.gather(events(), *(work(w) for w in workers))
        await replicas.wait_exit(REPLICA_VICTIM, 10)
        memory["end"] = rss(replicas)
    return run, memory


def dead_answer(call: Call, upstream_killed_at: float | None) -> bool:
    """An error answer for the killed upstream (a call to it that ended after the kill)."""
    return (
        call.upstream == UPSTREAM_VICTIM
        and upstream_killed_at is not None
        and call.end >= upstream_killed_at
        and call.outcome != "ok"
    )


def phase_figures(calls: list[Call], killed_at: float | None, seconds: float) -> dict[str, Any]:
    """Successful calls' count, rate and latency, failed calls to healthy upstreams, and the
    answers for the dead upstream."""
    ok = sorted(int((c.end - c.start) * 1e9) for c in calls if c.outcome == "ok")
    dead = sum(1 for c in calls if dead_answer(c, killed_at))
    return {
        "seconds": round(seconds, 3),
        "calls": len(ok),
        "calls_per_s": round(len(ok) / seconds, 1) if seconds > 0 else None,
        "answers_per_s": round(len(calls) / seconds, 1) if seconds > 0 else None,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "failed_healthy": sum(1 for c in calls if c.outcome != "ok") - dead,
        "dead_upstream_answers": dead,
        "reissued_calls": sum(1 for c in calls if c.attempts > 1),
    }


def report(run: Run, duration: float) -> dict[str, Any]:
    """Per phase and overall figures, failures, and the dead upstream's answers."""
    killed_u = run.upstream_killed_at if run.upstream_killed_at is not None else duration
    killed_r = run.replica_killed_at if run.replica_killed_at is not None else duration
    bounds = [
        ("steady", 0.0, killed_u),
        ("upstream_down", killed_u, killed_r),
        ("replica_down", killed_r, None),
    ]
    last_end = max((c.end for c in run.calls), default=duration)
    phases = []
    for name, start, stop in bounds:
        inside = [c for c in run.calls if c.start >= start and (stop is None or c.start < stop)]
        figures = phase_figures(inside, run.upstream_killed_at, (stop or last_end) - start)
        phases.append({"phase": name, **figures})
    overall = phase_figures(run.calls, run.upstream_killed_at, last_end)
    dead = [c for c in run.calls if dead_answer(c, run.upstream_killed_at)]
    dead_ns = sorted(int((c.end - c.start) * 1e9) for c in dead)
    failures = [c for c in run.calls if c.outcome != "ok" and not dead_answer(c, run.upstream_killed_at)]
    return {
        "phases": phases,
        "overall": overall,
        "failed_healthy": len(failures),
        "failures": [
            {"at_s": round(c.start, 3), "upstream": upstream_name(c.upstream), "outcome": c.outcome}
            | {"attempts": c.attempts, "detail": c.detail}
            for c in failures[:10]
        ],
        "reissued": run.reissued,
        "dead_upstream": {
            "answers": len(dead),
            "p50_ms": percentile(dead_ns, 50),
            "p99_ms": percentile(dead_ns, 99),
            "max_ms": percentile(dead_ns, 100),
            "codes": dict(Counter(c.outcome for c in dead).most_common()),
            "sample": dead[0].detail if dead else None,
        },
        "events": {
            "upstream_killed_at_s": round(killed_u, 3),
            "replica_killed_at_s": round(killed_r, 3),
        },
    }


async def bench(
    args: argparse.Namespace, tmp: Path, upstreams: list[subprocess.Popen[str]]
) -> dict[str, Any]:
    """The replicas on a scratch database and Redis prefix, set up, driven, measured."""
    urls = [read_ready(proc, time.monotonic() + 60) for proc in upstreams]
    prefix = f"th-bench-{secrets.token_hex(6)}"
    try:
        with scratch_postgres(args.postgres_url) as database:
            async with running_replicas(
                tmp / "cluster",
                REPLICAS,
                database_url=database,
                redis_url=args.redis_url,
                redis_prefix=prefix,
                env=LOAD_ENV | dict(e.split("=", 1) for e in args.gateway_env),
            ) as replicas:
                try:
                    key, setup = await set_up(replicas, urls)
                    run, memory = await drive(replicas, upstreams, key, args)
                except Exception:
                    print(replicas.tails(), file=sys.stderr)
                    raise
    finally:
        await delete_redis_prefix(args.redis_url, prefix)
    return {"setup": setup, **report(run, args.duration), "rss_mb": memory}


def print_table(document: dict[str, Any]) -> None:
    """A short human summary on stderr."""
    lines = [f"{'phase':14} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6} {'dead-upstream':>13}"]
    for p in [*document["phases"], {"phase": "overall", **document["overall"]}]:
        lines.append(
            f"{p['phase']:14} {p['calls_per_s']!s:>8} {p['p50_ms']!s:>8} {p['p99_ms']!s:>8} "
            f"{p['failed_healthy']:>6} {p['dead_upstream_answers']:>13}"
        )
    dead = document["dead_upstream"]
    lines.append(f"re-issued after a transport error: {document['reissued']}")
    lines.append(f"dead upstream: {dead['answers']} answers, p99 {dead['p99_ms']} ms, codes {dead['codes']}")
    lines.append(f"visible on every replica after: {document['setup']['visible_ms']} ms")
    print("\n".join(lines), file=sys.stderr)


def parse_args() -> tuple[argparse.Namespace, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=24, help="concurrent clients (default 24)")
    parser.add_argument(
        "--delay-ms", type=float, default=5.0, help="each upstream call's own time (default 5)"
    )
    parser.add_argument(
        "--warmup-per-client", type=int, default=6, help="calls per client before (default 6)"
    )
    parser.add_argument("--quick", action="store_true", help="15 s, events at 5 s and 10 s (smoke test)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/load-TS.json)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TOLLHOUSE_BENCH_POSTGRES_URL")
        or os.environ.get("TOLLHOUSE_TEST_POSTGRES_URL"),
        help="the PostgreSQL server (a scratch database is created and dropped)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TOLLHOUSE_BENCH_REDIS_URL") or os.environ.get("TOLLHOUSE_TEST_REDIS_URL"),
        help="the Redis server (a key prefix of the run's own, deleted afterwards)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TOLLHOUSE_* setting for every replica, repeatable",
    )
    args = parser.parse_args()
    if not args.postgres_url or not args.redis_url:
        parser.error("replicas need a PostgreSQL and a Redis server: --postgres-url and --redis-url")
    for item in args.gateway_env:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("TOLLHOUSE_"):
            parser.error(f"--gateway-env takes TOLLHOUSE_NAME=VALUE, not {item!r}")
    if args.quick:
        args.duration = 15.0
    args.kill_upstream_at, args.kill_replica_at = args.duration / 3, args.duration * 2 / 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on SIGTERM too
    args.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return args, args.out or ROOT / "bench" / "results" / f"load-{args.stamp}.json"


def main() -> int:
    """Start the upstreams, run the cluster under load, write and print the report."""
    args, out = parse_args()
    env = child_env()
    argv = [sys.executable, str(ROOT / "bench" / "_upstreams.py"), "--count", "1", "--tools", "1"]
    argv += ["--delay-ms", str(args.delay_ms)]
    with tempfile.TemporaryDirectory(prefix="tollhouse-bench-") as tmp, contextlib.ExitStack() as stack:
        upstreams = [
            stack.enter_context(child(argv, env, Path(tmp) / f"{upstream_name(u)}.log", pipe=True))
            for u in range(UPSTREAMS)
        ]
        result = uvloop.run(bench(args, Path(tmp), upstreams))
    document = {
        "benchmark": "load",
        "timestamp": args.stamp,
        "machine": machine(),
        "settings": {
            "duration": args.duration,
            "clients": args.clients,
            "replicas": REPLICAS,
            "upstreams": UPSTREAMS,
            "upstream_delay_ms": args.delay_ms,
            "warmup_per_client": args.warmup_per_client,
            "kill_upstream": {
                "at_s": round(args.kill_upstream_at, 3),
                "upstream": upstream_name(UPSTREAM_VICTIM),
            },
            "kill_replica": {"at_s": round(args.kill_replica_at, 3), "replica": f"replica-{REPLICA_VICTIM}"},
            "max_attempts": MAX_ATTEMPTS,
            "gateway_env": args.gateway_env,
        },
        **result,
        "summary": {
            "targets": {
                "failed_healthy_calls": {
                    "value": result["failed_healthy"],
                    "target": 0,
                    "pass": result["failed_healthy"] == 0,
                }
            }
        },
    }
    write_report(document, out)
    print_table(document)
    print(f"written to {out}", file=sys.stderr)
    return 1 if result["failed_healthy"] else 0


if __name__ == "__main__":
    sys.exit(main())
