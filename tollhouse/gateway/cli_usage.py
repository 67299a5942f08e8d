"""CLI commands for metering: `usage report|chargeback|outbox`, `prices list|set|remove`, `budgets …`.

All of them ask the gateway's admin API: reports come from the events it committed (so a
report includes every event up to the moment it runs), and prices and budgets are stored by
it. `prices set`/`remove` and `budgets grant` read the current list, change one entry and
write the list back (the API replaces whole lists, validated as one).
"""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any

from tollhouse.gateway.cli_common import CliError, admin_client, clean, items_of, print_json, seg, table

__all__ = ["add_usage_commands"]

_REPORT_COLUMNS = (
    "calls",
    "ok",
    "cost_micro",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "tokens_out",
)


def usage_report(args: argparse.Namespace) -> int:
    params = {"by": args.by, **({"period": args.period} if args.period else {})}
    if args.bucket:
        params["bucket"] = args.bucket
    with admin_client(args) as api:
        report = api.request("GET", "/usage/report", params=params)
    keys = [
        *(["bucket"] if args.bucket else []),
        *report["by"],
        *([] if "currency" in report["by"] else ["currency"]),
    ]
    rows = [[item.get(k) for k in (*keys, *_REPORT_COLUMNS)] for item in items_of(report)]
    if args.format == "json":
        print_json(report)
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([*keys, *_REPORT_COLUMNS])
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    else:
        table([*keys, *_REPORT_COLUMNS], [[clean(v) if v is not None else "-" for v in row] for row in rows])
    return 0


def usage_chargeback(args: argparse.Namespace) -> int:
    params = {"period": args.period} if args.period else {}
    with admin_client(args) as api:
        text = api.text("/usage/chargeback.csv", params=params)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            out.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {args.out}: {exc.strerror}") from None
    return 0


def usage_outbox(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        outbox = api.request("GET", "/usage/outbox")
    if args.json:
        print_json(outbox)
        return 0
    writer = outbox.get("writer", {})
    print(f"writer: {writer.get('queued', 0)} queued, {writer.get('dropped', 0)} dropped")
    table(
        ("SINK", "TYPE", "PENDING", "OLDEST (s)", "DELIVERED", "FAILURES", "DROPPED", "LAST ERROR"),
        [
            [
                s["name"],
                s["type"],
                s["pending"],
                s["oldest_age_seconds"] if s["oldest_age_seconds"] is not None else "-",
                s["delivered"],
                s["failures"],
                s["dropped"],
                clean(s["last_error"] or "-"),
            ]
            for s in outbox.get("sinks", [])
        ],
    )
    return 0


def prices_list(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        prices = api.request("GET", "/prices")
    if args.json:
        print_json(prices)
        return 0
    table(
        ("SERVER", "TOOL", "PER CALL", "PER SECOND", "PER KIB", "PER TOKEN", "ESTIMATE", "CURRENCY"),
        [
            [
                clean(p["match"].get("server", "*")),
                clean(p["match"].get("tool", "*")),
                p.get("per_call_micro", 0),
                p.get("per_second_micro", 0),
                p.get("per_kib_micro", 0),
                p.get("per_token_micro", 0),
                p.get("estimate_micro", 0),
                p["currency"],
            ]
            for p in items_of(prices)
        ],
    )
    return 0


def _match(args: argparse.Namespace) -> dict[str, str]:
    return {k: v for k, v in (("server", args.server), ("tool", args.tool)) if v}


def prices_set(args: argparse.Namespace) -> int:
    entry: dict[str, Any] = {"match": _match(args), "currency": args.currency}
    for field in ("per_call", "per_second", "per_kib", "per_token", "estimate"):
        value = getattr(args, field)
        if value is not None:
            entry[f"{field}_micro"] = value
    with admin_client(args) as api:
        items = [p for p in items_of(api.request("GET", "/prices")) if p["match"] != entry["match"]]
        result = api.request("PUT", "/prices", body={"items": [*items, entry]})
    if args.json:
        print_json(result)
    else:
        print(f"price set for {entry['match'] or 'every tool'}")
    return 0


def prices_remove(args: argparse.Namespace) -> int:
    match = _match(args)
    with admin_client(args) as api:
        items = items_of(api.request("GET", "/prices"))
        kept = [p for p in items if p["match"] != match]
        if len(kept) == len(items):
            raise CliError(f"no price matches {match or 'every tool'}")
        api.request("PUT", "/prices", body={"items": kept})
    print(f"price removed for {match or 'every tool'}")
    return 0


def budgets_list(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        budgets = api.request("GET", "/budgets")
    if args.json:
        print_json(budgets)
        return 0
    table(
        ("ID", "SCOPE", "NAME", "PERIOD", "AMOUNT", "CURRENCY", "MODE", "FAILURE", "CREDITS"),
        [
            [
                clean(b["id"]),
                b["scope"],
                clean(b["name"]),
                b["period"],
                b["amount_micro"],
                b["currency"],
                b["mode"],
                b["failure_mode"],
                len(b.get("credits", [])),
            ]
            for b in items_of(budgets)
        ],
    )
    return 0


def budgets_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "scope": args.scope,
        "name": args.name,
        "period": args.period,
        "amount_micro": args.amount,
        "currency": args.currency,
        "mode": args.mode,
        "failure_mode": args.failure_mode,
    }
    with admin_client(args) as api:
        current = next((b for b in items_of(api.request("GET", "/budgets")) if b["id"] == args.id), None)
        if current is not None and current.get("credits"):
            body["credits"] = current["credits"]  # `set` changes the cap, not the grants
        result = api.request("PUT", f"/budgets/{seg(args.id)}", body=body)
    if args.json:
        print_json(result)
    else:
        print(f"budget {args.id} set")
    return 0


def budgets_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/budgets/{seg(args.id)}")
    print(f"budget {args.id} removed")
    return 0


def budgets_grant(args: argparse.Namespace) -> int:
    grant: dict[str, Any] = {"id": args.grant_id, "amount_micro": args.amount, "priority": args.priority}
    if args.for_name:
        grant["name"] = args.for_name
    if args.expires:
        grant["expires_at"] = args.expires
    with admin_client(args) as api:
        result = api.request("POST", f"/budgets/{seg(args.id)}/credits", body=grant)
    if args.json:
        print_json(result)
    else:
        print(f"credit {args.grant_id} granted under budget {args.id}")
    return 0


def budgets_status(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        status = api.request("GET", f"/budgets/{seg(args.id)}/status", params={"name": args.name})
    if args.json:
        print_json(status)
        return 0
    print(
        f"{clean(status['budget'])} for {clean(status['name'])} in {status['period']}: "
        f"used {status['used_micro']} of {status['amount_micro']} {status['currency']} micro-units, "
        f"reserved {status['reserved_micro']}, overage {status['overage_micro']}"
    )
    for credit in status.get("credits", []):
        expired = " (expired)" if credit["expired"] else ""
        left = f"{credit['remaining_micro']} of {credit['amount_micro']} left"
        print(f"  credit {clean(credit['id'])}: {left}{expired}")
    return 0


def add_usage_commands(branch: Any, leaf: Any) -> None:
    """Register `tollhouse usage|prices|budgets …` (`branch`/`leaf` are build_parser's helpers)."""
    usage = branch("usage", "usage events: reports and the delivery outbox")
    report = leaf(usage, "report", usage_report, "usage totals for a month or a day")
    report.add_argument(
        "--by",
        default="team",
        help="dimensions, comma-separated: team, tool, server, subject, client, outcome",
    )
    report.add_argument("--period", metavar="YYYY-MM[-DD]", help="default: this month (UTC)")
    report.add_argument("--bucket", choices=("hour", "day"), help="also split by hour or day")
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    chargeback = leaf(usage, "chargeback", usage_chargeback, "the chargeback CSV: cost per team for a month")
    chargeback.add_argument("--period", metavar="YYYY-MM", help="default: this month (UTC)")
    chargeback.add_argument("--out", metavar="FILE", help="write the CSV here instead of standard output")
    leaf(usage, "outbox", usage_outbox, "events not yet delivered, per sink", with_json=True)

    prices = branch("prices", "the price book (integer micro-units of a currency)")
    leaf(prices, "list", prices_list, "list price rules", with_json=True)
    set_ = leaf(
        prices, "set", prices_set, "create or replace the rule for a server/tool match", with_json=True
    )
    remove = leaf(prices, "remove", prices_remove, "remove the rule for a server/tool match")
    for sub in (set_, remove):
        sub.add_argument("--server", metavar="GLOB")
        sub.add_argument("--tool", metavar="GLOB")
    for field in ("per-call", "per-second", "per-kib", "per-token", "estimate"):
        set_.add_argument(f"--{field}", type=int, metavar="MICRO")
    set_.add_argument("--currency", default="USD")

    budgets = branch("budgets", "spend caps per team, client or user, and prepaid credits")
    leaf(budgets, "list", budgets_list, "list budgets", with_json=True)
    bset = leaf(budgets, "set", budgets_set, "create or replace a budget", with_json=True)
    bset.add_argument("id", metavar="ID")
    bset.add_argument("--scope", choices=("team", "client", "user"), required=True)
    bset.add_argument("--name", default="*", help="the team/client/user, or * for each (default)")
    bset.add_argument("--period", choices=("day", "month"), default="month")
    bset.add_argument("--amount", type=int, required=True, metavar="MICRO")
    bset.add_argument("--currency", default="USD")
    bset.add_argument("--mode", choices=("hard", "soft"), default="hard")
    bset.add_argument("--failure-mode", choices=("open", "closed"), default="closed")
    bremove = leaf(budgets, "remove", budgets_remove, "remove a budget (and its credits)")
    bremove.add_argument("id", metavar="ID")
    grant = leaf(budgets, "grant", budgets_grant, "grant prepaid credit under a budget", with_json=True)
    grant.add_argument("id", metavar="BUDGET")
    grant.add_argument("grant_id", metavar="GRANT_ID")
    grant.add_argument("--amount", type=int, required=True, metavar="MICRO")
    grant.add_argument(
        "--for", dest="for_name", metavar="NAME", help="whom it is for (needed if the budget is *)"
    )
    grant.add_argument("--priority", type=int, default=1, help="lower burns first (default 1)")
    grant.add_argument("--expires", metavar="ISO8601")
    status = leaf(budgets, "status", budgets_status, "this period's spend for one name", with_json=True)
    status.add_argument("id", metavar="BUDGET")
    status.add_argument("--name", required=True)
