"""Benchmark: a small `tools/call` (echo) directly to an upstream and through tollhouse.

Usage: python bench/mcp_overhead.py [--duration S] [--concurrency 1,8,32] [--eras modern,legacy]
                                    [--quick] [--out FILE]

studio (examples/servers/studio.py) and `tollhouse serve` run as child processes on loopback;
this process is the load generator (aiohttp, raw JSON-RPC, the same code for both targets).
For each era x concurrency it measures direct, then through the gateway: calls/s, p50/p90/p99
latency, CPU per call of each child, and the gateway's RSS. It prints a JSON document (also
written to bench/results/), a table on stderr, and the summary against the targets in
bench/README.md. Exits 1 if any call failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop

ROOT = Path(__file__).resolve().parents[1]
MODERN, LEGACY = "2026-07-28", "2025-11-25"
TARGETS = {"added_p50_ms_c1": 1.5, "throughput_ratio_c32": 0.40, "gateway_rss_mb": 150.0}
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
GATEWAY_ARGV = [str(Path(sys.executable).parent / "tollhouse"), "serve"]


class Client:
    """One worker's raw JSON-RPC client; the legacy era holds an `Mcp-Session-Id` session."""

    def __init__(self, http: aiohttp.ClientSession, url: str, tool: str, era: str, key: str | None) -> None:
        self.http, self.url, self.tool, self.era = http, url, tool, era
        self.next_id = 0
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        self.headers["MCP-Protocol-Version"] = MODERN if era == "modern" else LEGACY
        if era == "modern":
            self.headers |= {"Mcp-Method": "tools/call", "Mcp-Name": tool}
        if key is not None:
            self.headers["Authorization"] = f"Bearer {key}"

    async def _post(self, message: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any, str | None]:
        async with self.http.post(self.url, data=orjson.dumps(message), headers=headers) as response:
            body = await response.read()
            reply = find_reply(body, response.content_type, message.get("id"))
            return response.status, reply, response.headers.get("Mcp-Session-Id")

    async def open(self) -> None:
        """Legacy era: initialize a session and send `notifications/initialized`."""
        if self.era == "modern":
            return
        headers = {k: v for k, v in self.headers.items() if k != "MCP-Protocol-Version"}
        params = {
            "protocolVersion": LEGACY,
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        }
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
        status, reply, session = await self._post(init, headers)
        if status != 200 or session is None or not isinstance(reply, dict) or "result" not in reply:
            raise RuntimeError(f"initialize failed: HTTP {status} {reply!r}")
        self.headers["Mcp-Session-Id"] = session
        status, _, _ = await self._post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"}, self.headers
        )
        if status not in (200, 202):
            raise RuntimeError(f"notifications/initialized failed: HTTP {status}")

    async def call(self) -> bool:
        """One `tools/call` echo; True if it returned the echoed text."""
        self.next_id += 1
        params: dict[str, Any] = {"name": self.tool, "arguments": {"text": "hi"}}
        if self.era == "modern":
            params["_meta"] = META
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call", "params": params}
        try:
            status, reply, _ = await self._post(message, self.headers)
            result = reply["result"]
            return status == 200 and not result.get("isError") and result["content"][0]["text"] == "hi"
        except Exception:
            return False

    async def close(self) -> None:
        """Legacy era: end the session (best effort)."""
        if "Mcp-Session-Id" in self.headers:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.http.delete(self.url, headers=self.headers):
                    pass


def find_reply(body: bytes, content_type: str, want: Any) -> Any:
    """The JSON-RPC message answering id `want` in a JSON or SSE body (None if absent)."""
    if content_type != "text/event-stream":
        return orjson.loads(body) if body else None
    for line in body.splitlines():
        data = line[5:].strip() if line.startswith(b"data:") else b""
        if data:
            message = orjson.loads(data)
            if isinstance(message, dict) and message.get("id") == want:
                return message
    return None


def percentile(sorted_ns: list[int], p: float) -> float | None:
    """Nearest-rank percentile of sorted nanosecond latencies, in ms."""
    if not sorted_ns:
        return None
    index = min(len(sorted_ns) - 1, max(0, int(-(-p * len(sorted_ns) // 100)) - 1))
    return round(sorted_ns[index] / 1e6, 3)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A /proc/PID/status memory figure (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for pid {pid}")


async def measure(
    url: str, tool: str, era: str, key: str | None, c: int, seconds: float, warmup: int, pids: dict[str, int]
) -> dict[str, Any]:
    """Warm up, then run `c` workers for `seconds`; rate, latency percentiles, child CPU per call."""
    connector = aiohttp.TCPConnector(limit=c)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        clients = [Client(http, url, tool, era, key) for _ in range(c)]
        await asyncio.gather(*(client.open() for client in clients))
        try:
            return await run_load([client.call for client in clients], seconds, warmup, pids)
        finally:
            await asyncio.gather(*(client.close() for client in clients))


async def run_load(
    calls: Sequence[Callable[[], Awaitable[bool]]],
    seconds: float,
    warmup: int,
    pids: dict[str, int],
    on_timed_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One worker per entry of `calls` (each returns True on success): warm up with `warmup` calls
    in all, then call for `seconds`; rate, latency percentiles, CPU per call of `pids` and of
    this process. `on_timed_start` runs between the warm-up and the timed part."""
    c = len(calls)

    async def warm(call: Callable[[], Awaitable[bool]]) -> int:
        return [await call() for _ in range(max(1, warmup // c))].count(False)

    errors = sum(await asyncio.gather(*(warm(call) for call in calls)))
    if on_timed_start is not None:
        on_timed_start()
    latencies: list[int] = []
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    cpu_before["bench"] = time.process_time()
    start = time.perf_counter_ns()
    end = start + int(seconds * 1e9)

    async def worker(call: Callable[[], Awaitable[bool]]) -> None:
        nonlocal errors
        while time.perf_counter_ns() < end:
            t0 = time.perf_counter_ns()
            ok = await call()
            if ok:
                latencies.append(time.perf_counter_ns() - t0)
            else:
                errors += 1

    await asyncio.gather(*(worker(call) for call in calls))
    elapsed = (time.perf_counter_ns() - start) / 1e9
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["bench"] = time.process_time() - cpu_before["bench"]
    latencies.sort()
    done = max(1, len(latencies))
    run: dict[str, Any] = {
        "calls": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
    }
    for name, used in cpu.items():
        run[f"{name}_cpu_ms_per_call"] = round(used / done * 1e3, 3)
    return run


@contextlib.contextmanager
def child(argv: list[str], env: dict[str, str], log: Path, pipe: bool) -> Iterator[subprocess.Popen[str]]:
    """A child process (output to `log`, or stdout piped), terminated then killed on exit."""
    with log.open("w") as output:
        stdout = subprocess.PIPE if pipe else output
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=stdout, stderr=output, text=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def read_ready(proc: subprocess.Popen[str], deadline: float) -> str:
    """The URL from the child's `READY <url>` line."""
    return read_ready_words(proc, deadline)[0]


def read_ready_words(proc: subprocess.Popen[str], deadline: float) -> list[str]:
    """The words after `READY` on the child's `READY ...` line."""
    assert proc.stdout is not None
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([proc.stdout], [], [], remaining)[0]:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                return line.split()[1:]
    raise RuntimeError("the upstream did not print READY in time")


def child_env() -> dict[str, str]:
    """This environment without TOLLHOUSE_* settings, with the repository on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOLLHOUSE_")}
    return env | {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def new_admin_token() -> str:
    """A fresh admin token for a benchmark gateway."""
    return "tha_" + secrets.token_urlsafe(24)


def gateway_env(
    env: dict[str, str], port: int, admin_token: str, data_dir: Path | None = None
) -> dict[str, str]:
    """`env` plus the settings of a loopback gateway on `port` (data in `data_dir` if given)."""
    out = env | {
        "TOLLHOUSE_HOST": "127.0.0.1",
        "TOLLHOUSE_PORT": str(port),
        "TOLLHOUSE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TOLLHOUSE_ADMIN_TOKEN": admin_token,
        # The load repeats one identical call: the loop breaker (docs/limits.md) would stop it.
        "TOLLHOUSE_QUOTAS__LOOP_THRESHOLD": "0",
        # Up to 32 concurrent calls on one key: the per-principal in-flight cap would refuse some.
        "TOLLHOUSE_LIMITS__MAX_IN_FLIGHT_PER_PRINCIPAL": "0",
    }
    if data_dir is not None:
        out["TOLLHOUSE_DATA_DIR"] = str(data_dir)
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def write_report(document: dict[str, Any], out: Path) -> None:
    """Write the JSON report to `out` and print it on stdout."""
    text = json.dumps(document, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


def free_port() -> int:
    """A loopback port that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_healthy(
    http: aiohttp.ClientSession, base: str, proc: subprocess.Popen[str], deadline: float
) -> None:
    """Poll the gateway's /healthz until it answers 200."""
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not become healthy (see its log)")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)


async def register(http: aiohttp.ClientSession, base: str, admin_token: str, server: dict[str, Any]) -> None:
    """`POST /admin/api/v1/servers` (it returns once the server's catalog is live)."""
    auth = {"Authorization": f"Bearer {admin_token}"}
    async with http.post(f"{base}/admin/api/v1/servers", json=server, headers=auth) as r:
        if r.status != 201:
            raise RuntimeError(f"registering {server['name']} failed: {r.status} {await r.text()}")


async def create_client(
    http: aiohttp.ClientSession, base: str, admin_token: str, credential: str = "api-key"
) -> str:
    """Create the `bench` client; returns its API key, or an OAuth client-credentials token."""
    auth = {"Authorization": f"Bearer {admin_token}"}
    body = {"name": "bench", "team": "bench"}
    async with http.post(f"{base}/admin/api/v1/clients", json=body, headers=auth) as r:
        if r.status != 201:
            raise RuntimeError(f"creating a client failed: {r.status} {await r.text()}")
        created = await r.json()
    # Policy denies by default: the bench team may use everything (one policy, as a small deployment has).
    grant = {"cedar": 'permit(principal in Team::"bench", action, resource);'}
    async with http.put(f"{base}/admin/api/v1/policies/bench-team", json=grant, headers=auth) as r:
        if r.status not in (200, 201):
            raise RuntimeError(f"adding the bench policy failed: {r.status} {await r.text()}")
    if credential == "api-key":
        key: str = created["api_key"]
        return key
    basic = aiohttp.BasicAuth(created["client_id"], created["client_secret"])
    async with http.post(f"{base}/oauth/token", data={"grant_type": "client_credentials"}, auth=basic) as r:
        if r.status != 200:
            raise RuntimeError(f"the token request failed: {r.status} {await r.text()}")
        token: str = (await r.json())["access_token"]
        return token


async def wait_callable(http: aiohttp.ClientSession, base: str, key: str, tool: str, deadline: float) -> None:
    """Call `tool` (echo) through the gateway until it succeeds."""
    probe = Client(http, f"{base}/mcp", tool, "modern", key)
    while not await probe.call():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tool} did not become callable through the gateway")
        await asyncio.sleep(0.05)


async def set_up_gateway(
    base: str, admin_token: str, upstream: str, proc: subprocess.Popen[str], credential: str = "api-key"
) -> str:
    """Wait for /healthz, register studio, create a client; returns its API key (or OAuth token)."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await wait_healthy(http, base, proc, deadline)
        await register(http, base, admin_token, {"name": "studio", "url": upstream})
        key = await create_client(http, base, admin_token, credential)
        await wait_callable(http, base, key, "studio__echo", deadline)
        return key


async def bench(args: argparse.Namespace, upstream: str, base: str, key: str, pids: dict[str, int]) -> Any:
    """Every run, direct then gateway for each era x concurrency."""
    runs: list[dict[str, Any]] = []
    for era in args.eras:
        for c in args.concurrency:
            for target, url, tool, auth in (
                ("direct", upstream, "echo", None),
                ("gateway", f"{base}/mcp", "studio__echo", key),
            ):
                watched = pids if target == "gateway" else {"upstream": pids["upstream"]}
                run = await measure(url, tool, era, auth, c, args.duration, args.warmup, watched)
                if target == "gateway":
                    run["gateway_rss_mb"] = memory_mb(pids["gateway"])
                runs.append({"target": target, "era": era, "concurrency": c, **run})
                print(f"  {target:7} {era:6} c={c:<3} {run['calls_per_s']:>8} calls/s", file=sys.stderr)
    return runs


def summarize(runs: list[dict[str, Any]], peak_mb: float) -> dict[str, Any]:
    """Added p50 at c=1, through/direct ratios, max RSS, errors and the targets' verdicts."""
    by = {(r["target"], r["era"], r["concurrency"]): r for r in runs}
    added: dict[str, float | None] = {}
    ratios: dict[str, dict[str, float]] = {}
    for (target, era, c), gw in by.items():
        if target != "gateway":
            continue
        direct = by[("direct", era, c)]
        ratios.setdefault(era, {})[str(c)] = round(gw["calls_per_s"] / max(direct["calls_per_s"], 1e-9), 3)
        if c == 1 and gw["p50_ms"] is not None and direct["p50_ms"] is not None:
            added[era] = round(gw["p50_ms"] - direct["p50_ms"], 3)
    rss = max((r["gateway_rss_mb"] for r in runs if "gateway_rss_mb" in r), default=0.0)
    worst_added = max((v for v in added.values() if v is not None), default=None)
    worst_ratio = min((r["32"] for r in ratios.values() if "32" in r), default=None)

    def verdict(value: float | None, target: float, at_most: bool) -> dict[str, Any]:
        ok = None if value is None else (value <= target if at_most else value >= target)
        return {"value": value, "target": target, "pass": ok}

    return {
        "added_p50_ms_c1": added,
        "throughput_ratio": ratios,
        "gateway_rss_max_mb": rss,
        "gateway_rss_peak_mb": peak_mb,
        "errors": sum(r["errors"] for r in runs),
        "targets": {
            "added_p50_ms_c1": verdict(worst_added, TARGETS["added_p50_ms_c1"], True),
            "throughput_ratio_c32": verdict(worst_ratio, TARGETS["throughput_ratio_c32"], False),
            "gateway_rss_mb": verdict(max(rss, peak_mb), TARGETS["gateway_rss_mb"], True),
        },
    }


def print_table(runs: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    """A short human table on stderr."""
    by = {(r["target"], r["era"], r["concurrency"]): r for r in runs}
    head = (
        f"{'era':6} {'c':>3} {'direct/s':>9} {'gw/s':>8} {'ratio':>6} {'p50 d/gw ms':>14} {'p99 d/gw ms':>14}"
    )
    lines = [head + f" {'gw cpu ms':>9} {'errors':>6}"]
    for (target, era, c), gw in by.items():
        if target == "gateway":
            d = by[("direct", era, c)]
            lines.append(
                f"{era:6} {c:>3} {d['calls_per_s']:>9} {gw['calls_per_s']:>8} "
                f"{summary['throughput_ratio'][era][str(c)]:>6} {d['p50_ms']!s:>6} / {gw['p50_ms']!s:<5} "
                f"{d['p99_ms']!s:>6} / {gw['p99_ms']!s:<5} {gw.get('gateway_cpu_ms_per_call')!s:>9} "
                f"{d['errors'] + gw['errors']:>6}"
            )
    for name, t in summary["targets"].items():
        lines.append(f"target {name}: {t['value']} (target {t['target']}) -> {t['pass']}")
    print("\n".join(lines), file=sys.stderr)


def load_args(description: str, name: str, *, concurrency: str, eras: str) -> tuple[argparse.Namespace, Path]:
    """The flags every load benchmark takes, parsed, and the report path; SIGTERM exits cleanly."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--concurrency", default=concurrency, help=f"comma-separated (default {concurrency})")
    parser.add_argument(
        "--eras", default=eras, help=f"modern (2026-07-28), legacy (2025-11-25) (default {eras})"
    )
    parser.add_argument("--warmup", type=int, default=200, help="calls before each run (default 200)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, 50 warm-up calls (smoke test)")
    parser.add_argument("--out", type=Path, help=f"JSON file (default bench/results/{name}-TS.json)")
    parser.add_argument(
        "--credential",
        choices=("api-key", "oauth"),
        default="api-key",
        help="the agent's bearer: an API key, or an OAuth client-credentials JWT (default api-key)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a TOLLHOUSE_* setting for the gateway, repeatable\n"
        "(e.g. TOLLHOUSE_AUDIT__DURABLE=false: records committed after the answer)",
    )
    args = parser.parse_args()
    for item in args.gateway_env:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("TOLLHOUSE_"):
            parser.error(f"--gateway-env takes TOLLHOUSE_NAME=VALUE, not {item!r}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.eras = [e.strip() for e in args.eras.split(",")]
    if not set(args.eras) <= {"modern", "legacy"}:
        parser.error("--eras takes modern and/or legacy")
    if args.quick:
        args.duration, args.warmup = 1.0, 50
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on SIGTERM too
    args.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or ROOT / "bench" / "results" / f"{name}-{args.stamp}.json"
    return args, out


def main() -> int:
    """Start the children, run every benchmark, write and print the results, stop the children."""
    args, out = load_args(__doc__ or "", "mcp_overhead", concurrency="1,8,32", eras="modern,legacy")

    env = child_env()
    admin_token = new_admin_token()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gw_env = gateway_env(env, port, admin_token) | dict(e.split("=", 1) for e in args.gateway_env)
    studio_argv = [sys.executable, str(ROOT / "examples/servers/studio.py"), "--port", "0"]
    with (
        tempfile.TemporaryDirectory(prefix="tollhouse-bench-") as tmp,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        gw_env["TOLLHOUSE_DATA_DIR"] = str(Path(tmp) / "data")
        with child(studio_argv, env, Path(tmp) / "studio.log", pipe=True) as studio:
            upstream = read_ready(studio, time.monotonic() + 60)
            with child(GATEWAY_ARGV, gw_env, Path(tmp) / "gateway.log", pipe=False) as gateway:
                try:
                    key = runner.run(set_up_gateway(base, admin_token, upstream, gateway, args.credential))
                except RuntimeError:
                    print((Path(tmp) / "gateway.log").read_text()[-4000:], file=sys.stderr)
                    raise
                pids = {"gateway": gateway.pid, "upstream": studio.pid}
                runs = runner.run(bench(args, upstream, base, key, pids))
                peak = memory_mb(gateway.pid, "VmHWM")
    summary = summarize(runs, peak)
    document = {
        "benchmark": "mcp_overhead",
        "timestamp": args.stamp,
        "machine": machine(),
        "settings": {
            k: getattr(args, k)
            for k in ("duration", "warmup", "concurrency", "eras", "credential", "gateway_env")
        },
        "runs": runs,
        "summary": summary,
    }
    write_report(document, out)
    print_table(runs, summary)
    print(f"written to {out}", file=sys.stderr)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
