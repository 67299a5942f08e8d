"""Metering end to end: one usage event per call, shipped at least once to failing sinks and
counted exactly once by id; reports and chargeback equal the events; budgets refuse and recover."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import MCPError
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.e2e.test_cli import run_cli
from tests.harness import ADMIN_TOKEN, Gateway, running_gateway
from tests.redis_server import free_port, private_redis
from tests.servers import serve
from tests.upstreams import echo_upstream
from tollhouse.gateway.errors import BUDGET_EXHAUSTED, METERING_UNAVAILABLE, RATE_LIMITED
from tollhouse.gateway.settings import QuotaSettings, UsageSettings, UsageSinkSettings

pytestmark = pytest.mark.anyio

FORBID_BLOCK = 'forbid(principal, action == Action::"call_tool", resource == Tool::"calc__block");'
# tool -> (arguments, expected outcome)
CALLS: dict[str, tuple[dict[str, Any], str]] = {
    "calc__echo": ({"text": "hi"}, "ok"),
    "calc__fail": ({"message": "no"}, "tool_error"),
    "calc__rpc_error": ({"code": -32000, "message": "boom"}, "upstream_error"),
    "calc__add": ({"a": "x", "b": 1}, "invalid"),
    "calc__block": ({}, "denied"),
}


@dataclass
class Receiver:
    """A webhook sink that fails some deliveries, loses some acknowledgements, and dedupes by id."""

    fail_rate: float = 0.0
    lost_ack_rate: float = 0.0
    seed: int = 7
    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    deliveries: int = 0
    duplicates: int = 0
    failed: int = 0
    content_types: set[str] = field(default_factory=set)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    async def endpoint(self, request: Request) -> Response:
        self.deliveries += 1
        self.content_types.add(request.headers.get("content-type", ""))
        if self._random.random() < self.fail_rate:
            self.failed += 1
            return Response(status_code=503)
        for event in json.loads(await request.body()):
            if event["id"] in self.events:
                self.duplicates += 1
            self.events[event["id"]] = event
        self.changed.set()
        self.changed = anyio.Event()
        if self._random.random() < self.lost_ack_rate:
            return Response(status_code=500)  # stored, but the gateway will send it again
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/ingest", self.endpoint, methods=["POST"])])

    async def wait_for(self, count: int, seconds: float = 60) -> None:
        with anyio.fail_after(seconds):
            while len(self.events) < count:
                await self.changed.wait()


def usage_settings(jsonl: Path, webhook_url: str, **extra: Any) -> UsageSettings:
    return UsageSettings(
        sinks=(
            UsageSinkSettings(name="file", type="jsonl", path=str(jsonl)),
            UsageSinkSettings(name="meter", type="openmeter", url=webhook_url),
        ),
        retry_min_seconds=0.01,
        retry_max_seconds=0.05,
        poll_seconds=0.05,
        lease_seconds=5,
        **extra,
    )


@asynccontextmanager
async def metered(
    tmp_path: Path, receiver: Receiver, **overrides: Any
) -> AsyncIterator[tuple[Gateway, dict[str, str], Path]]:
    calc, _ = echo_upstream("calc")
    jsonl = tmp_path / "usage.jsonl"
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        serve(receiver.app(), path="/ingest") as ingest_url,
        running_gateway(tmp_path, usage=usage_settings(jsonl, ingest_url), **overrides) as gw,
    ):
        await gw.add_server("calc", calc_url)
        response = await gw.admin.put("/policies/forbid-block", json={"cedar": FORBID_BLOCK})
        assert response.status_code == 201, response.text
        keys = {
            "platform": await gw.create_client("bot-platform", team="platform"),
            "finance": await gw.create_client("bot-finance", team="finance"),
        }
        yield gw, keys, jsonl


async def call(
    gw: Gateway, key: str, name: str, arguments: dict[str, Any], n: int = 1, *, vary: bool = False
) -> list[str]:
    """Make `n` calls on one connection; each one's outcome as the client saw it.

    With `vary`, string arguments get a serial number, so the loop breaker (identical calls)
    does not step in.
    """
    seen: list[str] = []
    async with gw.client(key, "2026-07-28") as client:
        for i in range(n):
            sent = {k: f"{v}{i}" if vary and isinstance(v, str) else v for k, v in arguments.items()}
            try:
                result = await client.call_tool(name, sent)
            except MCPError as exc:
                seen.append(str(exc.code))
                continue
            seen.append("tool_error" if result.is_error else "ok")
    return seen


async def drive(gw: Gateway, keys: dict[str, str], total: int) -> Counter[tuple[str, str, str]]:
    """`total` calls spread over teams and outcomes, 8 at a time; the ground truth it produced."""
    plan = [(team, tool) for team in keys for tool in CALLS]
    truth: Counter[tuple[str, str, str]] = Counter()
    subjects = {team: await subject_of(gw, team) for team in keys}
    per_slot = total // len(plan)

    async def run(team: str, tool: str) -> None:
        arguments, expected = CALLS[tool]
        await call(gw, keys[team], tool, arguments, per_slot, vary=True)
        truth[(subjects[team], tool.partition("__")[2], expected)] += per_slot

    async with anyio.create_task_group() as tg:
        for team, tool in plan:
            tg.start_soon(run, team, tool)
    return truth


async def drained(gw: Gateway) -> dict[str, Any]:
    """The outbox once nothing is pending (each poll is a real request; no fixed sleeps)."""
    with anyio.fail_after(30):
        while True:
            outbox: dict[str, Any] = (await gw.admin.get("/usage/outbox")).json()
            if outbox["pending"] == 0 and outbox["writer"]["queued"] == 0:
                return outbox
            await anyio.lowlevel.checkpoint()


async def subject_of(gw: Gateway, team: str) -> str:
    clients = (await gw.admin.get("/clients")).json()["items"]
    client = next(c for c in clients if c["name"] == f"bot-{team}")
    return str(client["client_id"])


def totals(events: Any) -> Counter[tuple[str, str, str]]:
    return Counter((e["subject"], e["data"]["tool"], e["data"]["outcome"]) for e in events)


async def test_each_outcome_is_one_event_with_its_measurements(tmp_path: Path) -> None:
    receiver = Receiver()
    async with metered(tmp_path, receiver) as (gw, keys, jsonl):
        response = await gw.admin.put(
            "/prices",
            json={"items": [{"match": {"server": "calc"}, "per_call_micro": 2000, "currency": "USD"}]},
        )
        assert response.status_code == 200, response.text
        for tool, (arguments, _) in CALLS.items():
            await call(gw, keys["platform"], tool, arguments)
        await receiver.wait_for(len(CALLS))
        outbox = await drained(gw)
        subject = await subject_of(gw, "platform")

    events = {e["data"]["tool"]: e for e in receiver.events.values()}
    assert {t: e["data"]["outcome"] for t, e in events.items()} == {
        t.partition("__")[2]: o for t, (_, o) in CALLS.items()
    }
    echo = events["echo"]
    assert echo["specversion"] == "1.0" and echo["type"] == "io.tollhouse.usage.v1"
    assert echo["source"] == gw.base_url and echo["datacontenttype"] == "application/json"
    assert echo["subject"] == subject
    assert echo["id"][14] == "7"  # a UUIDv7
    data = echo["data"]
    assert (data["team"], data["server"], data["method"], data["cost_micro"], data["currency"]) == (
        "platform",
        "calc",
        "tools/call",
        2000,
        "USD",
    )
    assert data["request_bytes"] == len('{"text":"hi"}') and data["response_bytes"] > 0
    assert data["duration_ms"] >= data["upstream_ms"] >= 0 and data["snapshot_version"] > 0
    # Refused and failed calls are free; the tool ran for tool_error, so it is billed.
    assert events["fail"]["data"]["cost_micro"] == 2000
    assert all(events[t]["data"]["cost_micro"] == 0 for t in ("rpc_error", "add", "block"))
    assert events["add"]["data"]["error_code"] == -32602
    # The JSONL sink got the same events, one per line; OpenMeter's batch content type was used.
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert {e["id"] for e in lines} == set(receiver.events)
    assert receiver.content_types == {"application/cloudevents-batch+json"}
    assert outbox["pending"] == 0 and {s["name"] for s in outbox["sinks"]} == {"file", "meter"}
    assert all(s["delivered"] == len(CALLS) for s in outbox["sinks"])


async def test_resource_reads_and_prompt_gets_are_metered(tmp_path: Path) -> None:
    receiver = Receiver()
    async with metered(tmp_path, receiver) as (gw, keys, _):
        async with gw.client(keys["platform"], "2026-07-28") as client:
            resources = (await client.list_resources()).resources
            await client.read_resource(str(resources[0].uri))
        await receiver.wait_for(1)
    (event,) = receiver.events.values()
    assert (event["data"]["method"], event["data"]["outcome"]) == ("resources/read", "ok")


async def check_exactly_once(tmp_path: Path, total: int) -> None:
    receiver = Receiver(fail_rate=0.1, lost_ack_rate=0.3)
    async with metered(tmp_path, receiver) as (gw, keys, _):
        truth = await drive(gw, keys, total)
        expected = sum(truth.values())
        await receiver.wait_for(expected, seconds=max(60, total / 20))
        report = (await gw.admin.get("/usage/report", params={"by": "subject,tool,outcome"})).json()

    assert receiver.failed > 0 and receiver.duplicates > 0  # the sink really misbehaved
    assert totals(receiver.events.values()) == truth
    reported = Counter({(r["subject"], r["tool"], r["outcome"]): r["calls"] for r in report["items"]})
    assert reported == truth


async def test_a_failing_sink_still_counts_every_call_exactly_once(tmp_path: Path) -> None:
    await check_exactly_once(tmp_path, 300)


@pytest.mark.slow
async def test_ten_thousand_calls_through_a_failing_sink_count_exactly_once(tmp_path: Path) -> None:
    await check_exactly_once(tmp_path, 10_000)


async def test_the_report_and_the_chargeback_csv_equal_the_events(tmp_path: Path) -> None:
    receiver = Receiver()
    async with metered(tmp_path, receiver) as (gw, keys, _):
        prices = [
            {"match": {"server": "calc"}, "per_call_micro": 1500, "currency": "USD"},
            {"match": {"server": "calc", "tool": "echo"}, "per_call_micro": 333, "per_kib_micro": 7},
        ]
        assert (await gw.admin.put("/prices", json={"items": prices})).status_code == 200
        await drive(gw, keys, 50)
        period = datetime.now(UTC).strftime("%Y-%m")
        report = (await gw.admin.get("/usage/report", params={"by": "team", "period": period})).json()
        by_tool = (await gw.admin.get("/usage/report", params={"by": "tool", "bucket": "day"})).json()
        chargeback = await gw.admin.get("/usage/chargeback.csv", params={"period": period})
        await receiver.wait_for(50)

    events = list(receiver.events.values())
    cost = Counter[str]()
    calls = Counter[str]()
    for e in events:
        cost[e["data"]["team"]] += e["data"]["cost_micro"]
        calls[e["data"]["team"]] += 1
    reported_calls, reported_cost = Counter[str](), Counter[str]()
    for r in report["items"]:
        reported_calls[r["team"]] += r["calls"]
        reported_cost[r["team"]] += r["cost_micro"]
    assert (reported_calls, reported_cost) == (calls, cost)
    assert report["totals"]["calls"] == len(events)
    assert sum(r["cost_micro"] for r in by_tool["items"]) == sum(cost.values())
    assert {r["bucket"][:10] for r in by_tool["items"]} == {datetime.now(UTC).strftime("%Y-%m-%d")}
    assert chargeback.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(chargeback.text)))
    charged = Counter[str]()
    for r in rows:
        charged[r["team"]] += int(r["cost_micro"])
    assert charged == cost
    assert sum(int(r["calls"]) for r in rows) == len(events)
    assert all(
        r["cost"] == f"{int(r['cost_micro']) // 10**6}.{int(r['cost_micro']) % 10**6:06d}" for r in rows
    )


async def test_a_hard_budget_refuses_with_31050_and_a_credit_grant_lets_calls_through(tmp_path: Path) -> None:
    receiver = Receiver()
    async with metered(tmp_path, receiver) as (gw, keys, _):
        await gw.admin.put("/prices", json={"items": [{"match": {"server": "calc"}, "per_call_micro": 1000}]})
        budget = {"scope": "team", "name": "platform", "period": "day", "amount_micro": 3000, "mode": "hard"}
        assert (await gw.admin.put("/budgets/daily", json=budget)).status_code == 201

        seen = await call(gw, keys["platform"], "calc__echo", {"text": "x"}, 5)
        assert seen == ["ok", "ok", "ok", str(BUDGET_EXHAUSTED), str(BUDGET_EXHAUSTED)]
        assert await call(gw, keys["finance"], "calc__echo", {"text": "x"}) == ["ok"]  # other team

        grant = {"id": "topup", "name": "platform", "amount_micro": 2000}
        assert (await gw.admin.post("/budgets/daily/credits", json=grant)).status_code == 201
        seen = await call(gw, keys["platform"], "calc__echo", {"text": "x"}, 3)
        assert seen == ["ok", "ok", str(BUDGET_EXHAUSTED)]
        status = (await gw.admin.get("/budgets/daily/status", params={"name": "platform"})).json()
        report = (await gw.admin.get("/usage/report", params={"by": "team,outcome"})).json()

    assert (status["used_micro"], status["credits"][0]["used_micro"], status["reserved_micro"]) == (
        3000,
        2000,
        0,
    )
    outcomes = {(r["team"], r["outcome"]): r["calls"] for r in report["items"]}
    assert outcomes == {("platform", "ok"): 5, ("platform", "rate_limited"): 3, ("finance", "ok"): 1}


async def test_a_refusal_carries_the_budget_and_when_it_resets(tmp_path: Path) -> None:
    async with metered(tmp_path, Receiver()) as (gw, keys, _):
        await gw.admin.put("/prices", json={"items": [{"match": {"server": "calc"}, "per_call_micro": 1}]})
        await gw.admin.put("/budgets/zero", json={"scope": "client", "name": "*", "amount_micro": 0})
        async with gw.client(keys["platform"], "2026-07-28") as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("calc__echo", {"text": "x"})
    data = refused.value.error.data
    assert refused.value.code == BUDGET_EXHAUSTED
    assert data["budget"] == "zero" and data["period"] == datetime.now(UTC).strftime("%Y-%m")
    assert 0 < data["retry_after_seconds"] <= 31 * 86400


async def test_on_redis_a_call_refused_by_a_rate_limit_holds_no_budget_and_costs_are_booked(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """With Redis, the reservation rides along with the rate limit and settles in the background.

    The rate-refused call's reservation is released at once, and a status read right after the
    calls already sees every settlement (this replica's own are booked before it answers).
    """
    quotas = QuotaSettings(redis_prefix=redis_prefix, loop_threshold=0)
    async with metered(tmp_path, Receiver(), redis_url=SecretStr(redis_url), quotas=quotas) as (gw, keys, _):
        await gw.admin.put("/prices", json={"items": [{"match": {"server": "calc"}, "per_call_micro": 1000}]})
        budget = {"scope": "team", "name": "platform", "amount_micro": 10**9, "mode": "hard"}
        assert (await gw.admin.put("/budgets/spend", json=budget)).status_code == 201
        limit = {"match": {"team": "platform"}, "rate": "3/minute"}
        assert (await gw.admin.put("/limits/three", json=limit)).status_code in (200, 201)
        seen = await call(gw, keys["platform"], "calc__echo", {"text": "x"}, 5)
        status = (await gw.admin.get("/budgets/spend/status", params={"name": "platform"})).json()
    assert seen == ["ok", "ok", "ok", str(RATE_LIMITED), str(RATE_LIMITED)]
    assert (status["spent_micro"], status["reserved_micro"]) == (3000, 0)


async def test_redis_killed_mid_run_fails_closed_then_recovers(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    async with metered(tmp_path, Receiver(), redis_url=SecretStr(url)) as (gw, keys, _):
        await gw.admin.put("/prices", json={"items": [{"match": {"server": "calc"}, "per_call_micro": 10}]})
        budget = {"scope": "team", "name": "*", "amount_micro": 10**9, "failure_mode": "closed"}
        await gw.admin.put("/budgets/spend", json=budget)
        async with private_redis(port) as server:
            assert await call(gw, keys["platform"], "calc__echo", {"text": "x"}) == ["ok"]
            server.kill()
        assert await call(gw, keys["platform"], "calc__echo", {"text": "x"}) == [str(METERING_UNAVAILABLE)]
        async with private_redis(port):
            with anyio.fail_after(10):
                while await call(gw, keys["platform"], "calc__echo", {"text": "x"}) != ["ok"]:
                    await anyio.lowlevel.checkpoint()
            status = (await gw.admin.get("/budgets/spend/status", params={"name": "platform"})).json()
        report = (await gw.admin.get("/usage/report", params={"by": "outcome"})).json()
    assert status["spent_micro"] == 10  # the fresh Redis holds only the call after recovery
    outcomes = {r["outcome"]: r["calls"] for r in report["items"]}
    assert outcomes["rate_limited"] >= 1 and outcomes["ok"] >= 2


async def test_the_cli_sets_prices_and_budgets_and_reports_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with metered(tmp_path, Receiver()) as (gw, keys, _):
        g = ["--url", gw.base_url, "--token", ADMIN_TOKEN]
        code, _, err = await run_cli(capsys, *g, "prices", "set", "--server", "calc", "--per-call", "2000")
        assert code == 0, err
        code, out, _ = await run_cli(capsys, *g, "prices", "list", "--json")
        assert json.loads(out)["items"] == [
            {"match": {"server": "calc"}, "per_call_micro": 2000, "currency": "USD"}
        ]
        code, _, err = await run_cli(
            capsys, *g, "budgets", "set", "cap", "--scope", "team", "--amount", "4000", "--period", "day"
        )
        assert code == 0, err
        code, _, err = await run_cli(
            capsys, *g, "budgets", "grant", "cap", "g1", "--for", "platform", "--amount", "1"
        )
        assert code == 0, err
        assert await call(gw, keys["platform"], "calc__echo", {"text": "x"}, 3, vary=True) == [
            "ok",
            "ok",
            str(BUDGET_EXHAUSTED),
        ]
        code, out, _ = await run_cli(capsys, *g, "budgets", "status", "cap", "--name", "platform", "--json")
        assert json.loads(out)["used_micro"] == 4000
        code, out, err = await run_cli(
            capsys, *g, "usage", "report", "--by", "team,outcome", "--format", "csv"
        )
        assert code == 0, err
        rows = list(csv.DictReader(io.StringIO(out)))
        assert {(r["team"], r["outcome"]): (r["calls"], r["cost_micro"]) for r in rows} == {
            ("platform", "ok"): ("2", "4000"),
            ("platform", "rate_limited"): ("1", "0"),
        }
        code, out, _ = await run_cli(capsys, *g, "usage", "report", "--by", "tool", "--format", "table")
        assert code == 0 and "echo" in out
        code, out, err = await run_cli(capsys, *g, "usage", "chargeback")
        assert code == 0, err
        charged = list(csv.DictReader(io.StringIO(out)))
        # The refused call had no price, hence no currency: a row of its own, at no cost.
        assert sorted((r["team"], r["currency"], r["calls"], r["cost_micro"]) for r in charged) == [
            ("platform", "", "1", "0"),
            ("platform", "USD", "2", "4000"),
        ]
        saved = tmp_path / "chargeback.csv"
        code, _, err = await run_cli(
            capsys, *g, "usage", "chargeback", "--period", "2026-01", "--out", str(saved)
        )
        assert code == 0, err
        assert list(csv.DictReader(io.StringIO(saved.read_text()))) == []  # a month without calls
        code, _, err = await run_cli(capsys, *g, "usage", "chargeback", "--period", "november")
        assert code != 0 and "period" in err
        code, _, err = await run_cli(capsys, *g, "prices", "remove", "--server", "calc")
        assert code == 0, err
