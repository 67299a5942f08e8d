"""Benchmark: latency the admit stage adds to one tools/call, with memory and with Redis counters.

Usage: python bench/admission.py [--samples N] [--redis-url URL] [--quick] [--out FILE]

In process, no network but Redis: it builds the real `AdmitStage` over an `AdmissionService`
holding one rate limit that applies to the call (and the loop breaker, on by default, with
distinct arguments per call so it never blocks), and times `stage(ctx, call_next)` with a
`call_next` that returns at once (`time.perf_counter_ns` around each call, after a warm-up).
The baseline is the same loop calling `call_next` directly; `added_*` subtract its median.

Steps measured (each a `run` in the report):
- `rate_memory`: one fixed-window rate limit, in-process counters;
- `rate_redis`: the same with Redis counters (the limit and the loop breaker in one Lua
  round trip), when Redis answers at --redis-url (default TOLLHOUSE_TEST_REDIS_URL or
  redis://127.0.0.1:6379/0);
- `rate_redis_sliding`: a sliding-window limit on Redis (`limits`' two-round-trip strategy).
- `redis_round_trip` (reported beside the runs): one bare EVALSHA from the same client library,
  the floor under any Redis-backed step on the machine at hand.
- `rate_budget_memory`, `rate_budget_redis`: the issue's figure, one rate limit and one hard
  budget through the real AdmitStage and BudgetStage (reserve before the call, settle after;
  on Redis the reservation overlaps the counters' round trip and the settlement runs in the
  background, concurrently with the next calls), memory or Redis. The run then checks the
  ledger: every call's cost booked, nothing left reserved.

It runs on uvloop, the event loop `tollhouse serve` uses.

It prints a JSON document (also written to bench/results/admission-<UTC time>.json, or --out)
and checks the target: p50 <= 300 us added per call (one rate limit + one budget) with Redis on
loopback.
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import uvloop
from mcp_overhead import ROOT, machine, write_report

from tollhouse.auth.principal import Principal
from tollhouse.gateway.admission import AdmissionService, AdmitStage
from tollhouse.gateway.metering import BudgetStage, Metering, UsageWriter
from tollhouse.gateway.pipeline import CallContext
from tollhouse.gateway.settings import QuotaSettings
from tollhouse.gateway.snapshot import ExposedItem
from tollhouse.policies.budgets import Budgets, MemoryLedger, RedisLedger, budget_from_dict
from tollhouse.policies.pricing import PriceBook, price_from_dict
from tollhouse.registry.limits import LimitSpec, LimitsState
from tollhouse.registry.models import JSONObject
from tollhouse.registry.usage_store import SqlUsageStore

TARGET_P50_US = 300.0
TOOL = ExposedItem(exposed="calc__add", server="calc", name="add", definition={}, upstream_definition={})
PRINCIPAL = Principal(subject="c_bench", client_id="c_bench", teams=("platform",))


def percentile_us(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile of sorted nanosecond latencies, in microseconds."""
    index = min(len(sorted_ns) - 1, max(0, int(-(-p * len(sorted_ns) // 100)) - 1))
    return round(sorted_ns[index] / 1000, 1)


async def done(ctx: CallContext) -> JSONObject:
    """The rest of the chain, instantly."""
    return {"content": []}


async def timed(samples: int, one: Callable[[int], Awaitable[Any]]) -> list[int]:
    """Sorted per-call nanoseconds of `one(i)` over `samples` calls, after a warm-up."""
    for i in range(min(200, samples)):
        await one(-1 - i)
    out = []
    gc.disable()
    try:
        for i in range(samples):
            start = time.perf_counter_ns()
            await one(i)
            out.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    return sorted(out)


def context(i: int) -> CallContext:
    return CallContext(
        principal=PRINCIPAL,
        name=TOOL.exposed,
        arguments={"a": i, "b": 1},
        protocol_version="2026-07-28",
        tool=TOOL,
    )


async def drop_keys(client: Any, prefix: str) -> None:
    """Remove the run's keys from the shared Redis."""
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)


async def step(samples: int, redis_url: str | None, window: Literal["fixed", "sliding"]) -> list[int]:
    """Time the admit stage with one applicable rate limit (a quota the run never exhausts)."""
    prefix = f"th-bench-{secrets.token_hex(4)}"
    service = AdmissionService(QuotaSettings(redis_prefix=prefix), redis_url=redis_url)
    spec = LimitSpec(id="bench", match={"server": "calc"}, rate="1000000000/hour", window=window)
    service.apply(LimitsState(1, (spec,), ()))
    stage = AdmitStage(service)
    try:
        return await timed(samples, lambda i: stage(context(i), done))
    finally:
        shared: Any = getattr(service.counters, "_shared", None)
        if shared is not None:
            await drop_keys(shared.client, prefix)
        await service.counters.aclose()


async def step_with_budget(samples: int, redis_url: str | None) -> list[int]:
    """One rate limit and one hard budget through the real AdmitStage and BudgetStage.

    With Redis, AdmitStage reserves the budget in the same gather as the loop breaker and the
    rate limit, and BudgetStage settles in the background (the settlements run concurrently
    with the following calls, as under load; the run waits for them before it ends).
    """
    import redis.asyncio
    import sqlalchemy as sa

    prefix = f"th-bench-{secrets.token_hex(4)}"
    service = AdmissionService(QuotaSettings(redis_prefix=prefix), redis_url=redis_url)
    spec = LimitSpec(id="bench", match={"server": "calc"}, rate="1000000000/hour", window="fixed")
    service.apply(LimitsState(1, (spec,), ()))
    client = redis.asyncio.Redis.from_url(redis_url) if redis_url else None
    ledger: Any = RedisLedger(client, prefix=f"{prefix}:budget:") if client is not None else MemoryLedger()
    rule = budget_from_dict(
        {"id": "bench", "scope": "team", "name": "platform", "amount_micro": 10**15, "currency": "USD"}
    )
    prices = PriceBook(
        [price_from_dict({"match": {"server": "calc"}, "per_call_micro": 100, "currency": "USD"})]
    )
    engine = sa.create_engine("sqlite://")  # the event writer is never reached: no events here
    metering = Metering(
        UsageWriter(SqlUsageStore(engine), ()),
        Budgets(ledger, rules=[rule]),
        source="http://127.0.0.1",
        prices=prices,
    )
    admit, budget = AdmitStage(service, budgets=metering), BudgetStage(metering)

    async def rest(ctx: CallContext) -> JSONObject:
        return await budget(ctx, done)

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(metering.run_settlements)
            ns = await timed(samples, lambda i: admit(context(i), rest))
            await metering.settled()
            status = await metering.budgets.status(rule, "platform")
            tg.cancel_scope.cancel()
        calls = samples + min(200, samples)
        if status["spent_micro"] != 100 * calls or status["reserved_micro"] != 0:
            raise SystemExit(f"budget ledger disagrees: {status} after {calls} calls")
        return ns
    finally:
        engine.dispose()
        if client is not None:
            await drop_keys(client, prefix)
            await client.aclose()
        await service.counters.aclose()


async def redis_floor(samples: int, url: str) -> list[int]:
    """The machine's floor: one bare EVALSHA round trip (INCR of one key) from this client."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    key = f"th-bench-{secrets.token_hex(4)}"
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    try:
        return await timed(samples, lambda i: script(keys=[key]))
    finally:
        await client.delete(key)
        await client.aclose()


async def redis_answers(url: str) -> bool:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return bool(await client.ping())
    except Exception:
        return False
    finally:
        await client.aclose()


STEPS: dict[str, tuple[bool, Literal["fixed", "sliding"]]] = {
    # name: (needs Redis, window)
    "rate_memory": (False, "fixed"),
    "rate_redis": (True, "fixed"),
    "rate_redis_sliding": (True, "sliding"),
}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    samples = 2000 if args.quick else args.samples
    baseline = await timed(samples, lambda i: done(context(i)))
    base_p50 = baseline[len(baseline) // 2] / 1000
    have_redis = await redis_answers(args.redis_url)
    runs = []
    for name, (needs_redis, window) in STEPS.items():
        if needs_redis and not have_redis:
            continue
        ns = await step(samples, args.redis_url if needs_redis else None, window)
        run: dict[str, Any] = {
            "path": name,
            "samples": len(ns),
            "p50_us": percentile_us(ns, 50),
            "p90_us": percentile_us(ns, 90),
            "p99_us": percentile_us(ns, 99),
        }
        run["added_p50_us"] = round(run["p50_us"] - base_p50, 1)
        run["added_p99_us"] = round(run["p99_us"] - base_p50, 1)
        runs.append(run)
        print(f"{name:20s} p50 {run['p50_us']:8.1f} us  p99 {run['p99_us']:8.1f} us", file=sys.stderr)
    for name, needs_redis in (("rate_budget_memory", False), ("rate_budget_redis", True)):
        if needs_redis and not have_redis:
            continue
        ns = await step_with_budget(samples, args.redis_url if needs_redis else None)
        run = {
            "path": name,
            "samples": len(ns),
            "p50_us": percentile_us(ns, 50),
            "p90_us": percentile_us(ns, 90),
            "p99_us": percentile_us(ns, 99),
        }
        run["added_p50_us"] = round(run["p50_us"] - base_p50, 1)
        run["added_p99_us"] = round(run["p99_us"] - base_p50, 1)
        runs.append(run)
        print(f"{name:20s} p50 {run['p50_us']:8.1f} us  p99 {run['p99_us']:8.1f} us", file=sys.stderr)
    if have_redis:
        ns = await redis_floor(samples, args.redis_url)
        floor = {"p50_us": percentile_us(ns, 50), "p99_us": percentile_us(ns, 99)}
        print(
            f"{'redis_round_trip':20s} p50 {floor['p50_us']:8.1f} us  p99 {floor['p99_us']:8.1f} us",
            file=sys.stderr,
        )
    # The target: one rate limit plus one budget, with Redis on loopback.
    redis_run = next((r for r in runs if r["path"] == "rate_budget_redis"), None)
    target: dict[str, Any] = {
        "value": redis_run["added_p50_us"] if redis_run else None,
        "target": TARGET_P50_US,
        "pass": bool(redis_run and redis_run["added_p50_us"] <= TARGET_P50_US),
    }
    return {
        "benchmark": "admission",
        "timestamp": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "settings": {"samples": samples, "quick": args.quick, "redis": have_redis},
        "baseline": {"p50_us": round(base_p50, 1), "p99_us": percentile_us(baseline, 99)},
        # One bare Redis round trip from Python on this machine: the floor of any Redis-backed step.
        "redis_round_trip": floor if have_redis else None,
        "runs": runs,
        "summary": {"targets": {"added_p50_us_redis": target}},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("TOLLHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--quick", action="store_true", help="few samples: a smoke test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    document = uvloop.run(main_async(args))  # the event loop `tollhouse serve` runs on
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    write_report(document, args.out or ROOT / "bench" / "results" / f"admission-{stamp}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
