"""Benchmark: policy decision latency with 10, 100 and 1,000 policies over 50 servers.

Usage: python bench/policy.py [--sizes 10,100,1000] [--servers 50] [--tools 20] [--samples N]
                              [--seed S] [--quick] [--out FILE]

In process, no network: it builds a `PolicyEngine` from a generated, realistic policy set — mostly
team grants per server (some narrowed to a tool glob), some argument-aware grants on single tools
(`context.arguments.path like "/public/*"`), some forbids, and two unscoped policies every request
evaluates — and times single calls (`time.perf_counter_ns` around each) on random requests from
200 principals (1 to 3 of 100 teams each) over `servers x tools` tools:

- `decide_uncached`: `decide()` with the decision cache off (the index, the parsed policy-set
  handles and the parsed resource entities stay cached, as they do in the gateway);
- `decide_cached`: `decide()` once the decision cache holds the requests (a repeat caller);
- `decide_arguments`: `decide()` with arguments on tools with argument-aware policies (never cached);
- `list_uncached`: `visible()` — the list phase — with the decision cache off (partial evaluation
  where an argument-aware policy applies, the plain decision elsewhere);
- `decide_unindexed`: `decide()` evaluating every policy (`index=False`, decision cache off), the
  reference the index is measured against (fewer samples: it is slow by design).

It prints a JSON document (also written to bench/results/policy-<UTC time>.json, or --out) and a
table on stderr, and checks the target: p99 <= 100 us per uncached decision at 1,000 policies.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mcp_overhead import ROOT, machine, write_report

from tollhouse.policies.engine import PolicyEngine
from tollhouse.policies.model import PolicyRecord, PrincipalView, RequestFacts, ToolRef

TARGET_P99_US = 100.0
TARGET_SIZE = 1000
TEAMS = 100
PRINCIPALS = 200
CALL = 'action == Action::"call_tool"'


def percentile_us(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile of sorted nanosecond latencies, in microseconds."""
    index = min(len(sorted_ns) - 1, max(0, int(-(-p * len(sorted_ns) // 100)) - 1))
    return round(sorted_ns[index] / 1000, 1)


def catalog(servers: int, tools: int) -> list[ToolRef]:
    """`servers` x `tools` tools; every fifth tool is in a toolset, every tenth is a delete."""
    refs = []
    for s in range(servers):
        for t in range(tools):
            name = f"delete_{t:02d}" if t % 10 == 9 else f"t{t:02d}"
            toolsets = (f"set{s % 5}",) if t % 5 == 0 else ()
            refs.append(ToolRef(f"s{s:02d}__{name}", f"s{s:02d}", name, toolsets=toolsets))
    return refs


def policies(count: int, servers: int, tools: int, rng: random.Random) -> list[PolicyRecord]:
    """A realistic mix: ~80% team grants per server, ~10% argument-aware, ~8% forbids, 2 global."""
    records = [
        PolicyRecord(
            "global-revoked",
            'forbid(principal, action, resource) when { context.scopes.contains("revoked") };',
        ),
        PolicyRecord(
            "global-admins",
            'permit(principal in Role::"admin", action == Action::"call_tool", resource is Tool);',
        ),
    ]
    for i in range(count - len(records)):
        server = f"s{rng.randrange(servers):02d}"
        team = f"team{rng.randrange(TEAMS):02d}"
        roll = rng.random()
        if roll < 0.10:
            tool = f"{server}__t{rng.randrange(tools - 1):02d}"
            cedar = (
                f'permit(principal in Team::"{team}", {CALL}, resource == Tool::"{tool}") '
                'when { context.arguments.path like "/public/*" };'
            )
        elif roll < 0.18:
            cedar = (
                f'forbid(principal in Team::"{team}", {CALL}, resource in Server::"{server}") '
                'when { resource.name like "*__delete_*" };'
            )
        elif roll < 0.30:
            cedar = (
                f'permit(principal in Team::"{team}", {CALL}, resource in Server::"{server}") '
                f'when {{ resource.name like "{server}__t0*" }};'
            )
        elif roll < 0.33:
            cedar = (
                f'permit(principal in Team::"{team}", action == Action::"call_tool", '
                f'resource in Toolset::"set{rng.randrange(5)}");'
            )
        else:
            cedar = f'permit(principal in Team::"{team}", {CALL}, resource in Server::"{server}");'
        records.append(PolicyRecord(f"p{i:04d}", cedar))
    return records


def people(rng: random.Random) -> list[PrincipalView]:
    out = []
    for i in range(PRINCIPALS):
        teams = tuple(sorted({f"team{rng.randrange(TEAMS):02d}" for _ in range(rng.randint(1, 3))}))
        roles = ("admin",) if i % 50 == 0 else ()
        out.append(PrincipalView(f"user{i:03d}", teams=teams, roles=roles))
    return out


def timed(call: Callable[[], Any], samples: int, warmup: int) -> dict[str, Any]:
    """Run `call` `warmup` times untimed, then `samples` times timed; percentiles in microseconds.

    The callers cycle through `samples` requests and warm up with at least one full cycle, so the
    engine's per-tool and per-principal caches are warm, as they are in a running gateway.
    """
    for _ in range(warmup):
        call()
    gc.collect()
    latencies = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        call()
        latencies.append(time.perf_counter_ns() - start)
    latencies.sort()
    return {
        "samples": samples,
        "p50_us": percentile_us(latencies, 50),
        "p90_us": percentile_us(latencies, 90),
        "p99_us": percentile_us(latencies, 99),
        "mean_us": round(sum(latencies) / len(latencies) / 1000, 1),
    }


def run_size(size: int, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rng = random.Random(args.seed + size)
    tools = catalog(args.servers, args.tools)
    records = policies(size, args.servers, args.tools, rng)
    principals = people(rng)
    facts = RequestFacts(
        scopes=("mcp",), client_id="bench", source_ip="10.0.0.1", protocol_version="2026-07-28"
    )
    started = time.perf_counter()
    uncached = PolicyEngine(records, version=1, decision_cache_size=0)
    load_ms = round((time.perf_counter() - started) * 1000, 1)
    cached = PolicyEngine(records, version=1)
    flat = PolicyEngine(records, version=1, index=False, decision_cache_size=0)

    argument_tools = sorted(
        {
            t
            for t in tools
            if any(
                p.shape.reads_arguments
                for p in uncached.policies
                if p.id in uncached.applicable("call_tool", t)
            )
        },
        key=lambda t: t.exposed,
    )
    requests = [(rng.choice(principals), rng.choice(tools)) for _ in range(args.samples)]
    argument_requests = (
        [
            (
                rng.choice(principals),
                rng.choice(argument_tools),
                {"path": rng.choice(["/public/a", "/etc/passwd"])},
            )
            for _ in range(args.samples)
        ]
        if argument_tools
        else []
    )
    hot = requests[: max(1, args.samples // 10)]  # a working set the decision cache holds

    def cycle(items: list[Any]) -> Callable[[], Any]:
        state = {"i": 0}

        def next_item() -> Any:
            state["i"] = (state["i"] + 1) % len(items)
            return items[state["i"]]

        return next_item

    runs: list[dict[str, Any]] = []
    allowed = sum(uncached.decide(p, "call_tool", t, facts).allowed for p, t in requests)
    shown = sum(uncached.visible(p, t, facts) for p, t in requests)

    pick = cycle(requests)
    runs.append(
        {
            "path": "decide_uncached",
            **timed(lambda: _decide(uncached, pick(), facts), args.samples, args.warmup),
        }
    )

    hot_pick = cycle(hot)
    for p, t in hot:
        cached.decide(p, "call_tool", t, facts)
    runs.append(
        {
            "path": "decide_cached",
            **timed(lambda: _decide(cached, hot_pick(), facts), args.samples, args.warmup),
        }
    )

    if argument_requests:
        arg_pick = cycle(argument_requests)
        runs.append(
            {
                "path": "decide_arguments",
                **timed(lambda: _decide_args(uncached, arg_pick(), facts), args.samples, args.warmup),
            }
        )

    list_pick = cycle(requests)
    runs.append(
        {
            "path": "list_uncached",
            **timed(lambda: _visible(uncached, list_pick(), facts), args.samples, args.warmup),
        }
    )

    flat_pick = cycle(requests)
    flat_samples = max(50, args.samples // (10 if size >= 1000 else 2))
    runs.append(
        {
            "path": "decide_unindexed",
            **timed(lambda: _decide(flat, flat_pick(), facts), flat_samples, 50),
        }
    )

    applicable = [len(uncached.applicable("call_tool", t)) for t in tools]
    for run in runs:
        run["policies"] = size
    info = {
        "policies": size,
        "load_ms": load_ms,
        "argument_aware_tools": len(argument_tools),
        "applicable_per_tool": {"mean": round(sum(applicable) / len(applicable), 1), "max": max(applicable)},
        "allowed_fraction": round(allowed / len(requests), 3),
        "listed_fraction": round(shown / len(requests), 3),
    }
    return runs, info


def _decide(engine: PolicyEngine, item: tuple[PrincipalView, ToolRef], facts: RequestFacts) -> Any:
    return engine.decide(item[0], "call_tool", item[1], facts)


def _decide_args(
    engine: PolicyEngine, item: tuple[PrincipalView, ToolRef, dict[str, Any]], facts: RequestFacts
) -> Any:
    return engine.decide(item[0], "call_tool", item[1], facts, item[2])


def _visible(engine: PolicyEngine, item: tuple[PrincipalView, ToolRef], facts: RequestFacts) -> Any:
    return engine.visible(item[0], item[1], facts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--tools", type=int, default=20, help="tools per server")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=20_000, help="untimed calls first (at least --samples)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 500 samples per path")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.warmup = 500, 500
    args.warmup = max(args.warmup, args.samples)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    runs: list[dict[str, Any]] = []
    infos = []
    for size in sizes:
        size_runs, info = run_size(size, args)
        runs += size_runs
        infos.append(info)
        for run in size_runs:
            print(
                f"{size:>5} policies  {run['path']:<17} p50 {run['p50_us']:>8.1f} us  "
                f"p90 {run['p90_us']:>8.1f} us  p99 {run['p99_us']:>8.1f} us",
                file=sys.stderr,
            )

    target_run = next(
        (r for r in runs if r["policies"] == TARGET_SIZE and r["path"] == "decide_uncached"), None
    )
    value = target_run["p99_us"] if target_run else None
    now = datetime.now(UTC)
    document = {
        "benchmark": "policy",
        "timestamp": now.isoformat(),
        "machine": machine(),
        "settings": {
            "sizes": sizes,
            "servers": args.servers,
            "tools_per_server": args.tools,
            "principals": PRINCIPALS,
            "teams": TEAMS,
            "samples": args.samples,
            "warmup": args.warmup,
            "seed": args.seed,
            "quick": args.quick,
        },
        "engines": infos,
        "runs": runs,
        "summary": {
            "p99_us": {f"{r['policies']}/{r['path']}": r["p99_us"] for r in runs},
            "targets": {
                "decide_uncached_p99_us_at_1000": {
                    "value": value,
                    "target": TARGET_P99_US,
                    "pass": None if value is None else value <= TARGET_P99_US,
                }
            },
        },
    }
    out = args.out or ROOT / "bench" / "results" / f"policy-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    write_report(document, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
