"""Benchmark: normal clients' latency through tollhouse while slow clients trickle one byte a second.

Usage: python bench/slowloris.py [--slow 1000] [--concurrency 16] [--duration S] [--rounds R]
                                 [--header-timeout S] [--quick] [--out FILE]

studio (examples/servers/studio.py) and `tollhouse serve` run as child processes on loopback, as in
mcp_overhead.py, whose load generator this reuses: `--concurrency` workers doing a modern `tools/call`
(echo) through the gateway. Each round measures them twice: alone, then while a second child process
(this script with `--slow-worker`) holds `--slow` connections that each send a `POST /mcp` head one
byte per second and, when the gateway drops them, reconnect at once (so the count stays up, as an
attacker's would). The slow phase starts measuring once every slow connection has been dropped at
least once on average (ramp-up, then one header deadline), i.e. in the steady state of dropping and
reconnecting. Reported: p50/p99 of both phases per round, the ratio of the median p99s (target
within 10%), and for the slow connections how long each lasted from its first byte to the gateway's
close (target: within the header deadline + 1 s) and what it was answered. Exits 1 if a normal call
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from mcp_overhead import (
    GATEWAY_ARGV,
    ROOT,
    Client,
    child,
    child_env,
    cpu_seconds,
    free_port,
    gateway_env,
    machine,
    memory_mb,
    new_admin_token,
    read_ready,
    read_ready_words,
    run_load,
    set_up_gateway,
    write_report,
)

TARGET_P99_RATIO = 1.10
SLOW_HEAD = (
    "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris/1.0\r\n"
    "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
    "Authorization: Bearer not-a-real-token-but-long-enough-that-the-head-never-completes\r\n"
    "X-Padding: " + "p" * 200 + "\r\nContent-Length: 2\r\n\r\n{}"
).encode()


# -- the slow clients (the --slow-worker child) -------------------------------------------------------


class SlowStats:
    """What the slow connections saw."""

    def __init__(self) -> None:
        self.opened = 0
        self.connect_errors = 0
        self.lifetimes: list[float] = []  # first byte to the server's close, seconds
        self.answers: dict[str, int] = {}  # status code, or "none" for a close without an answer

    def report(self) -> dict[str, Any]:
        lifetimes = sorted(self.lifetimes)
        return {
            "opened": self.opened,
            "connect_errors": self.connect_errors,
            "dropped": len(lifetimes),
            "answers": self.answers,
            "lifetime_p50_s": round(lifetimes[len(lifetimes) // 2], 3) if lifetimes else None,
            "lifetime_max_s": round(lifetimes[-1], 3) if lifetimes else None,
        }


async def slow_connection(
    host: str, port: int, delay: float, stats: SlowStats, connected: asyncio.Event
) -> None:
    """Trickle SLOW_HEAD one byte a second; when the server closes, record it and reconnect."""
    await asyncio.sleep(delay)
    first = True
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats.connect_errors += 1
            await asyncio.sleep(1)
            continue
        stats.opened += 1
        if first:
            first = False
            connected.set()
        started = time.monotonic()

        async def trickle(writer: asyncio.StreamWriter = writer) -> None:
            for i in range(len(SLOW_HEAD)):
                writer.write(SLOW_HEAD[i : i + 1])
                await asyncio.sleep(1)

        sender = asyncio.create_task(trickle())
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                answer += chunk
        stats.lifetimes.append(time.monotonic() - started)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await sender
        writer.close()
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1 ") else "none"
        stats.answers[status] = stats.answers.get(status, 0) + 1


async def slow_worker(host: str, port: int, count: int) -> None:
    """Hold `count` slow connections until SIGTERM; print READY once all are open, stats at the end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats = SlowStats()
    events = [asyncio.Event() for _ in range(count)]
    # Spread over a second, so the connections' bytes do not all arrive in the same instant.
    tasks = [
        asyncio.create_task(slow_connection(host, port, i / count, stats, events[i])) for i in range(count)
    ]
    await asyncio.gather(*(e.wait() for e in events))
    print(f"READY {count}", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(stats.report()), flush=True)


# -- the benchmark ------------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit (children inherit it) towards `needed`; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard == resource.RLIM_INFINITY else min(max(soft, needed), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds (its sockets among them)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def measure_phase(
    base: str, key: str, args: argparse.Namespace, pids: dict[str, int]
) -> dict[str, Any]:
    """`--concurrency` workers calling studio__echo through the gateway for `--duration` seconds."""
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        clients = [
            Client(http, f"{base}/mcp", "studio__echo", "modern", key) for _ in range(args.concurrency)
        ]
        run = await run_load([c.call for c in clients], args.duration, args.warmup, pids)
    run["gateway_fds"] = open_fds(pids["gateway"])
    run["gateway_rss_mb"] = memory_mb(pids["gateway"])
    return run


def slow_phase(
    runner: asyncio.Runner, base: str, key: str, port: int, args: argparse.Namespace, pids: dict[str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start the slow worker, wait for its steady state, measure, stop it; the run and its stats."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--slow-worker", "--port", str(port)]
    argv += ["--slow", str(args.slow)]
    worker = subprocess.Popen(argv, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        read_ready_words(worker, time.monotonic() + 60)
        # Every connection has been dropped about once: the steady state of drop and reconnect.
        # Meanwhile the gateway serves only the slow clients: what they cost it, in CPU.
        cpu_before = {"gateway": cpu_seconds(pids["gateway"]), "slow_worker": cpu_seconds(worker.pid)}
        started = time.monotonic()
        time.sleep(args.header_timeout + 1)  # no event loop runs between phases
        elapsed = time.monotonic() - started
        idle = {
            f"{name}_cpu_pct_slow_only": round((cpu_seconds(pid) - cpu_before[name]) / elapsed * 100, 1)
            for name, pid in (("gateway", pids["gateway"]), ("slow_worker", worker.pid))
        }
        fds = open_fds(pids["gateway"])
        run = runner.run(measure_phase(base, key, args, pids))
        run["gateway_fds_before"] = fds
        run |= idle
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return run, stats


def summarize(rounds: list[dict[str, Any]], header_timeout: float) -> dict[str, Any]:
    """Median p50/p99 per phase, the p99 ratio and the slow connections' lifetimes, against targets."""
    base_p99 = statistics.median(r["baseline"]["p99_ms"] for r in rounds)
    slow_p99 = statistics.median(r["slow"]["p99_ms"] for r in rounds)
    ratio = round(slow_p99 / base_p99, 3) if base_p99 else None
    lifetime_max = max((r["slow_clients"]["lifetime_max_s"] or 0.0) for r in rounds)
    answers: dict[str, int] = {}
    for r in rounds:
        for status, n in r["slow_clients"]["answers"].items():
            answers[status] = answers.get(status, 0) + n
    return {
        "baseline_p50_ms": statistics.median(r["baseline"]["p50_ms"] for r in rounds),
        "baseline_p99_ms": base_p99,
        "slow_p50_ms": statistics.median(r["slow"]["p50_ms"] for r in rounds),
        "slow_p99_ms": slow_p99,
        "p99_ratio": ratio,
        "slow_dropped": sum(r["slow_clients"]["dropped"] for r in rounds),
        "slow_answers": answers,
        "slow_lifetime_max_s": lifetime_max,
        "gateway_cpu_pct_slow_only": statistics.median(
            r["slow"]["gateway_cpu_pct_slow_only"] for r in rounds
        ),
        "slow_worker_cpu_pct": statistics.median(r["slow"]["slow_worker_cpu_pct_slow_only"] for r in rounds),
        "errors": sum(r["baseline"]["errors"] + r["slow"]["errors"] for r in rounds),
        "targets": {
            "p99_ratio": {
                "value": ratio,
                "target": TARGET_P99_RATIO,
                "pass": None if ratio is None else ratio <= TARGET_P99_RATIO,
            },
            "slow_lifetime_max_s": {
                "value": lifetime_max,
                "target": header_timeout + 1,
                "pass": lifetime_max <= header_timeout + 1,
            },
        },
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--slow", type=int, default=1000, help="slow connections (default 1000)")
    parser.add_argument("--concurrency", type=int, default=16, help="normal clients (default 16)")
    parser.add_argument(
        "--duration", type=float, default=15.0, help="seconds per measured phase (default 15)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="baseline + slow pairs (default 3)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before each phase (default 200)")
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help="the gateway's limits.header_timeout_seconds (default: its own, 10 s)",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s phases, 50 slow, 1 s deadline")
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/slowloris-TS.json)")
    parser.add_argument("--slow-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.slow, args.duration, args.rounds, args.warmup = min(args.slow, 50), 2.0, 1, 50
        args.header_timeout = args.header_timeout or 1.0
    args.gateway_header_timeout = args.header_timeout
    args.header_timeout = args.header_timeout or 10.0
    return args


def main() -> int:
    """Start the children, run the rounds, write and print the report, stop the children."""
    args = parse_args()
    if args.slow_worker:
        uvloop.run(slow_worker("127.0.0.1", args.port, args.slow))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on SIGTERM too
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or ROOT / "bench" / "results" / f"slowloris-{stamp}.json"
    fd_limit = raise_fd_limit(args.slow * 2 + 1024)

    env = child_env()
    admin_token = new_admin_token()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gw_env = gateway_env(env, port, admin_token)
    if args.gateway_header_timeout is not None:
        gw_env["TOLLHOUSE_LIMITS__HEADER_TIMEOUT_SECONDS"] = str(args.gateway_header_timeout)
    studio_argv = [sys.executable, str(ROOT / "examples/servers/studio.py"), "--port", "0"]
    rounds: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="tollhouse-bench-") as tmp,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        gw_env["TOLLHOUSE_DATA_DIR"] = str(Path(tmp) / "data")
        with child(studio_argv, env, Path(tmp) / "studio.log", pipe=True) as studio:
            upstream = read_ready(studio, time.monotonic() + 60)
            with child(GATEWAY_ARGV, gw_env, Path(tmp) / "gateway.log", pipe=False) as gateway:
                try:
                    key = runner.run(set_up_gateway(base, admin_token, upstream, gateway))
                except RuntimeError:
                    print((Path(tmp) / "gateway.log").read_text()[-4000:], file=sys.stderr)
                    raise
                pids = {"gateway": gateway.pid, "upstream": studio.pid}
                for i in range(args.rounds):
                    baseline = runner.run(measure_phase(base, key, args, pids))
                    slow, stats = slow_phase(runner, base, key, port, args, pids)
                    rounds.append({"round": i + 1, "baseline": baseline, "slow": slow, "slow_clients": stats})
                    print(
                        f"  round {i + 1}: p99 {baseline['p99_ms']} ms alone, {slow['p99_ms']} ms with "
                        f"{args.slow} slow; {stats['dropped']} slow dropped, "
                        f"the longest after {stats['lifetime_max_s']} s",
                        file=sys.stderr,
                    )
    summary = summarize(rounds, args.header_timeout)
    document = {
        "benchmark": "slowloris",
        "timestamp": stamp,
        "machine": machine() | {"fd_limit": fd_limit},
        "settings": {
            "slow": args.slow,
            "concurrency": args.concurrency,
            "duration": args.duration,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "header_timeout_seconds": args.header_timeout,
        },
        "rounds": rounds,
        "summary": summary,
    }
    write_report(document, out)
    for name, t in summary["targets"].items():
        print(f"target {name}: {t['value']} (target {t['target']}) -> {t['pass']}", file=sys.stderr)
    print(f"written to {out}", file=sys.stderr)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
