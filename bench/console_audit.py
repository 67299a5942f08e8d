"""Benchmark: rendering the console's audit trail page over 100,000 audit records.

Usage: python bench/console_audit.py [--records N] [--samples N] [--postgres-url URL] [--quick] [--out FILE]

For each database (SQLite always; PostgreSQL when --postgres-url, TOLLHOUSE_BENCH_POSTGRES_URL or
TOLLHOUSE_TEST_POSTGRES_URL names a server: the benchmark creates a scratch database there and
drops it afterwards) it:

1. writes `--records` audit records (default 100,000) through the real store
   (`SqlAuditStore.append`: each record sealed onto its node's hash chain, a batch per
   transaction), spread over the last `--span-hours` (24) on two nodes: mostly tool calls (500 tools, a
   few of them much busier than the rest; realistic outcomes), some A2A messages, tool lists
   and admin actions, from 200 clients in 20 teams, one to four records per trace;
   On PostgreSQL the table is then vacuumed and analyzed, as autovacuum does after such growth
   (without statistics the planner picks poor indexes for a table loaded seconds ago, and without
   the visibility map no scan is index-only); SQLite is left
   as the gateway leaves it (no ANALYZE);
2. starts the real gateway on that database (`create_app`, uvicorn on a loopback port, in this
   process), adds an auditor and signs in through the console's OAuth flow, as a browser would;
3. times `GET /ui/audit?…` (the whole page: the admin API search, the chain status, the template)
   `--samples` times per case, after a warm-up, and the same search on the admin API alone
   (`GET /admin/api/v1/audit/records?…&limit=50`) to separate the query from the page; and the
   overview page (`GET /ui/`, whose figures aggregate the last hour of calls).

Cases: `tool+outcome` (the busiest tool, ok), `tool+rare_outcome` (a quiet tool, cancelled: the
index walk is longest), `subject`, `trace_id`, `no_filter`, `second_page` (the `Older →` link of
the first case, a keyset cursor), `since+kind` (admin actions of the last three hours).

It prints a JSON document (also written to bench/results/console_audit-<UTC time>.json, or --out)
and checks the target: every filtered page's p95 under 300 ms.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import anyio
import httpx2
import sqlalchemy as sa
import uvicorn
from mcp_overhead import ROOT, machine, write_report
from pydantic import SecretStr
from sqlalchemy.pool import NullPool

from tollhouse.audit.records import new_record
from tollhouse.gateway.app import create_app
from tollhouse.gateway.settings import Settings
from tollhouse.registry.audit_store import SqlAuditStore
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade

TARGET_P95_MS = 300.0
ADMIN_TOKEN = "tha_bench-admin-token"
PASSWORD = "bench password, not a secret"
AUDITOR = "auditor"
NODES = ("gw-a", "gw-b")
SERVERS, TOOLS_PER_SERVER, CLIENTS, TEAMS = 20, 25, 200, 20
OUTCOMES = (
    ("ok", 0.85),
    ("tool_error", 0.05),
    ("denied", 0.04),
    ("rate_limited", 0.02),
    ("invalid", 0.02),
    ("upstream_error", 0.015),
    ("cancelled", 0.005),
)
BATCH = 5000
_INPUT = re.compile(r"<input[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r'(\w[\w-]*)="([^"]*)"')
_NEXT = re.compile(r'<a href="([^"]*)"[^>]*data-testid="next-page"')


# -- the records ------------------------------------------------------------------------------


class Population:
    """Generates the records and remembers values worth searching for."""

    def __init__(self, total: int, seed: int, span_hours: float) -> None:
        self.rng = random.Random(seed)
        self.total = total
        self.span_hours = span_hours
        self.now = datetime.now(UTC)
        tools = [(f"s{s:02d}", f"t{t:02d}") for s in range(SERVERS) for t in range(TOOLS_PER_SERVER)]
        self.rng.shuffle(tools)
        self.tools = tools
        # Zipf-like: the first tools get most of the calls.
        self.tool_weights = [1.0 / (rank + 1) for rank in range(len(tools))]
        self.clients = [(f"c_{i:04d}", f"team{i % TEAMS:02d}") for i in range(CLIENTS)]
        self.traces: list[str] = []

    def _trace(self) -> str:
        if self.traces and self.rng.random() < 0.6:
            return self.traces[-1]  # the same request's next record
        trace = secrets.token_hex(16)
        self.traces.append(trace)
        return trace

    def body(self, when: datetime) -> dict[str, Any]:
        client, team = self.rng.choice(self.clients)
        who = {
            "subject": client,
            "client_id": client,
            "teams": [team],
            "kind": "client",
            "source_ip": "10.0.0.7",
        }
        roll = self.rng.random()
        correlation = {"trace_id": self._trace(), "span_id": secrets.token_hex(8), "jsonrpc_id": 1}
        if roll < 0.05:
            return new_record(
                "admin",
                "PUT /admin/api/v1/policies/p1",
                who={"subject": "ada", "source_ip": "10.0.0.9"},
                what={"method": "PUT", "target": "/admin/api/v1/policies/p1"},
                outcome={"result": "ok", "code": 200},
                correlation={"trace_id": correlation["trace_id"]},
                when=when,
            )
        if roll < 0.15:
            return new_record(
                "mcp",
                "tools/list",
                who=who,
                what={"method": "tools/list"},
                outcome={"result": "ok"},
                correlation=correlation,
                when=when,
            )
        outcome = self.rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
        server, tool = self.rng.choices(self.tools, self.tool_weights)[0]
        if roll < 0.20:
            return new_record(
                "a2a",
                "SendMessage",
                who=who,
                what={
                    "method": "SendMessage",
                    "server": "helper",
                    "tool": "helper__ask",
                    "binding": "jsonrpc",
                },
                outcome={"result": outcome, "policies": ["p-agents"]},
                correlation={**correlation, "usage_event": secrets.token_hex(16)},
                when=when,
            )
        return new_record(
            "mcp",
            "tools/call",
            who=who,
            what={
                "method": "tools/call",
                "server": server,
                "tool": tool,
                "pin": secrets.token_hex(32),
                "args_sha256": secrets.token_hex(32),
            },
            where={"snapshot": 42, "policy_version": 7},
            outcome={"result": outcome, "policies": [f"p-{server}"]},
            correlation={**correlation, "usage_event": secrets.token_hex(16)},
            when=when,
        )

    def per_node(self) -> dict[str, list[datetime]]:
        """Each node's record times, oldest first, over the last `span_hours`."""
        span = timedelta(hours=self.span_hours).total_seconds()
        times = sorted(self.now - timedelta(seconds=self.rng.random() * span) for _ in range(self.total))
        nodes: dict[str, list[datetime]] = {n: [] for n in NODES}
        for moment in times:
            nodes[self.rng.choice(NODES)].append(moment)
        return nodes


async def populate(url: str, population: Population) -> float:
    """Write the records through the store; the seconds it took."""
    engine = create_engine_for(url)
    store = SqlAuditStore(engine)
    started = time.perf_counter()
    try:
        for node, times in population.per_node().items():
            head: tuple[int, str] | None = None
            for first in range(0, len(times), BATCH):
                bodies = [population.body(t) for t in times[first : first + BATCH]]
                sealed = await store.append(node, bodies, head=head)
                head = (int(sealed[-1]["seq"]), str(sealed[-1]["hash"]))
        if engine.dialect.name == "postgresql":
            # Autovacuum vacuums and analyzes a table that grows by 10-20%; a bulk load must not be
            # timed before it (no statistics, and no visibility map for index-only scans).
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE audit_records")
    finally:
        engine.dispose()
    return time.perf_counter() - started


# -- the gateway and a signed-in browser ------------------------------------------------------


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = anyio.Event()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # Ctrl-C stays with the benchmark

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


@asynccontextmanager
async def gateway(data_dir: str, database_url: str | None) -> AsyncIterator[str]:
    """The real gateway on a loopback port, in this process; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        admin_token=SecretStr(ADMIN_TOKEN),
        public_url=base,
        node_name="bench-console",
    )
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on", loop="none")
    server = _Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(60):
            await server.ready.wait()
        if not server.started:
            raise RuntimeError("the gateway did not start")
        try:
            yield base
        finally:
            server.should_exit = True
    sock.close()


def hidden_fields(html: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for tag in _INPUT.findall(html):
        attrs = dict(_ATTR.findall(tag))
        if attrs.get("type") == "hidden" and "name" in attrs:
            found[attrs["name"]] = unescape(attrs.get("value", ""))
    return found


async def sign_in(browser: httpx2.AsyncClient, name: str) -> None:
    """The console's sign-in, hop by hop: /ui/ → /ui/login → /oauth/authorize → /oauth/login → callback."""
    response = await browser.get("/ui/")
    for _ in range(3):
        response = await browser.get(response.headers["location"])
        if response.status_code != 303:
            break
    response = await browser.post(
        "/oauth/login", data={**hidden_fields(response.text), "username": name, "password": PASSWORD}
    )
    response = await browser.get(response.headers["location"])
    response = await browser.get(response.headers["location"])
    if response.status_code != 303:
        raise RuntimeError(f"sign-in failed: {response.status_code}")


# -- timing -----------------------------------------------------------------------------------


def percentile_ms(sorted_s: list[float], p: float) -> float:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    index = min(len(sorted_s) - 1, max(0, int(-(-p * len(sorted_s) // 100)) - 1))
    return round(sorted_s[index] * 1000, 1)


async def timed(http: httpx2.AsyncClient, url: str, samples: int, **kwargs: Any) -> tuple[list[float], str]:
    """Sorted seconds per GET of `url` (each checked), after a warm-up; and the last body."""
    body = ""
    for _ in range(3):
        (await http.get(url, **kwargs)).raise_for_status()
    spent: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        response = await http.get(url, **kwargs)
        spent.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code}")
        body = response.text
    return sorted(spent), body


def cases(population: Population) -> list[tuple[str, dict[str, str]]]:
    busiest_server, busiest = population.tools[0]
    quiet_server, quiet = population.tools[len(population.tools) // 2]
    three_hours_ago = (population.now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    return [
        ("tool+outcome", {"tool": busiest, "server": busiest_server, "outcome": "ok"}),
        ("tool+rare_outcome", {"tool": quiet, "server": quiet_server, "outcome": "cancelled"}),
        ("subject", {"subject": population.clients[7][0]}),
        ("trace_id", {"trace_id": population.traces[len(population.traces) // 3]}),
        ("no_filter", {}),
        ("since+kind", {"since": three_hours_ago, "kind": "admin"}),
    ]


def _api_params(query: dict[str, str]) -> dict[str, str]:
    params = {k: v for k, v in query.items() if k != "since"}
    if "since" in query:
        params["since"] = query["since"] + ":00Z"
    return {**params, "limit": "50"}


async def measure(base: str, population: Population, samples: int) -> list[dict[str, Any]]:
    """Each case's page and API timings."""
    runs: list[dict[str, Any]] = []
    async with (
        httpx2.AsyncClient(base_url=base, trust_env=False, timeout=60) as browser,
        httpx2.AsyncClient(
            base_url=f"{base}/admin/api/v1",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            trust_env=False,
            timeout=60,
        ) as admin,
    ):
        created = await admin.post(
            "/users", json={"name": AUDITOR, "password": PASSWORD, "roles": ["auditor"]}
        )
        created.raise_for_status()
        await sign_in(browser, AUDITOR)
        for name, query in cases(population):
            page, body = await timed(browser, "/ui/audit", samples, params=query)
            api, _ = await timed(admin, "/audit/records", samples, params=_api_params(query))
            runs.append(_run(name, query, page, api, body))
            if name == "tool+outcome":
                older = _NEXT.search(body)
                if older is None:
                    raise RuntimeError("the first case has a single page: use more records")
                href = unescape(older[1])
                page2, body2 = await timed(browser, href, samples)
                cursor = href.split("cursor=", 1)[1]
                api2, _ = await timed(
                    admin, "/audit/records", samples, params={**_api_params(query), "cursor": cursor}
                )
                runs.append(_run("second_page", {**query, "cursor": "…"}, page2, api2, body2))
        overview, _ = await timed(browser, "/ui/", samples)
        runs.append(
            {
                "case": "overview",
                "query": {},
                "samples": len(overview),
                "page_p50_ms": percentile_ms(overview, 50),
                "page_p95_ms": percentile_ms(overview, 95),
                "page_max_ms": percentile_ms(overview, 100),
            }
        )
    return runs


def _run(name: str, query: dict[str, str], page: list[float], api: list[float], body: str) -> dict[str, Any]:
    return {
        "case": name,
        "query": query,
        "rows": body.count('data-testid="audit-row"'),
        "samples": len(page),
        "page_p50_ms": percentile_ms(page, 50),
        "page_p95_ms": percentile_ms(page, 95),
        "page_max_ms": percentile_ms(page, 100),
        "api_p50_ms": percentile_ms(api, 50),
        "api_p95_ms": percentile_ms(api, 95),
    }


# -- databases --------------------------------------------------------------------------------


@contextmanager
def scratch_postgres(server_url: str) -> Iterator[str]:
    """A fresh database on that server, dropped afterwards; yields its URL."""
    base = sa.make_url(database_url_for(server_url, ""))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"th_bench_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


async def bench_backend(backend: str, url: str | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="th-bench-") as data_dir:
        store_url = database_url_for(url, data_dir)
        upgrade(store_url)
        population = Population(args.records, args.seed, args.span_hours)
        seconds = await populate(store_url, population)
        async with gateway(data_dir, url) as base:
            runs = await measure(base, population, args.samples)
    return {
        "backend": backend,
        "records": args.records,
        "populate_s": round(seconds, 2),
        "populate_records_per_s": round(args.records / seconds),
        "runs": runs,
    }


def summary(backends: list[dict[str, Any]]) -> dict[str, Any]:
    filtered = [
        (b["backend"], r) for b in backends for r in b["runs"] if r["case"] not in ("no_filter", "overview")
    ]
    worst_backend, worst = max(filtered, key=lambda item: item[1]["page_p95_ms"])
    return {
        "targets": {
            "filtered_page_p95_ms": {
                "value": worst["page_p95_ms"],
                "where": f"{worst_backend} {worst['case']}",
                "target": TARGET_P95_MS,
                "pass": worst["page_p95_ms"] <= TARGET_P95_MS,
            }
        }
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    backends = [await bench_backend("sqlite", None, args)]
    if args.postgres_url:
        with scratch_postgres(args.postgres_url) as url:
            backends.append(await bench_backend("postgresql", url, args))
    return {
        "benchmark": "console_audit",
        "timestamp": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "settings": {
            "records": args.records,
            "samples": args.samples,
            "seed": args.seed,
            "span_hours": args.span_hours,
            "postgres": bool(args.postgres_url),
        },
        "backends": backends,
        "summary": summary(backends),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--span-hours", type=float, default=24.0, help="the records' times spread over this many hours back"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TOLLHOUSE_BENCH_POSTGRES_URL")
        or os.environ.get("TOLLHOUSE_TEST_POSTGRES_URL"),
        help="a PostgreSQL server to bench on too (a scratch database is created and dropped)",
    )
    parser.add_argument("--quick", action="store_true", help="5,000 records, 5 samples: a smoke test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.records, args.samples = 5_000, 5
    return args


if __name__ == "__main__":
    arguments = parse_args()
    report = anyio.run(main, arguments)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    write_report(report, arguments.out or ROOT / "bench" / "results" / f"console_audit-{stamp}.json")
