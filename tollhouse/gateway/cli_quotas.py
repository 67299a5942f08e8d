"""CLI commands for limits and kill switches: `tollhouse quotas list|set|remove|recent|kill|unkill|killed`.

They ask the gateway's admin API, so what they show is what the gateway enforces; limits set
here persist in its database like those of a config file (docs/limits.md).
"""

from __future__ import annotations

import argparse
from typing import Any

from tollhouse.gateway.cli_common import (
    UsageError,
    admin_client,
    clean,
    items_of,
    list_command,
    print_json,
    seg,
    table,
)

__all__ = ["add_quota_commands"]


def _match_text(item: dict[str, Any]) -> str:
    match = item.get("match") or {}
    text = ", ".join(f"{k}={v}" for k, v in match.items()) or "(every call)"
    if item.get("per"):
        text += f" per {','.join(item['per'])}"
    return text


def quotas_list(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", "/limits")
    if args.json:
        print_json(data)
        return 0
    storage = data.get("storage") or {}
    down = "" if storage.get("available", True) else " (UNREACHABLE)"
    print(f"counters: {clean(storage.get('backend'))}{down}")
    items = items_of(data)
    if not items:
        print("no limits: no rate or concurrency limit applies")
        return 0
    table(
        ("ID", "MATCH", "RATE", "WINDOW", "CONCURRENCY", "ON STORAGE FAILURE"),
        (
            (
                i.get("id"),
                _match_text(i),
                i.get("rate") or "-",
                i.get("window"),
                i.get("concurrency") or "-",
                i.get("failure_mode"),
            )
            for i in items
        ),
    )
    return 0


def quotas_set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"match": {}}
    for key in ("subject", "team", "client", "server", "tool"):
        value = getattr(args, f"match_{key}")
        if value is not None:
            body["match"][key] = value
    if args.rate is None and args.concurrency is None:
        raise UsageError("give --rate N/UNIT, --concurrency N, or both")
    for key in ("rate", "window", "concurrency", "failure_mode", "description"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.per:
        body["per"] = args.per
    with admin_client(args) as api:
        limit = api.request("PUT", f"/limits/{seg(args.id)}", body=body)
        status = api.last_status
    if args.json:
        print_json(limit)
    else:
        print(f"{'created' if status == 201 else 'updated'} limit {clean(limit.get('id'))}")
    return 0


def quotas_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/limits/{seg(args.id)}")
    print(f"removed limit {clean(args.id)}")
    return 0


def quotas_recent(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", "/limits/recent")
    if args.json:
        print_json(data)
        return 0
    table(
        ("KIND", "SUBJECT", "CLIENT", "TOOL", "LIMITS", "REASON"),
        (
            (
                i.get("kind"),
                i.get("subject"),
                i.get("client_id"),
                i.get("tool"),
                ",".join(i.get("violated_policies") or []),
                i.get("reason"),
            )
            for i in items_of(data)
        ),
    )
    return 0


def quotas_kill(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"kind": args.kind, "value": args.value}
    if args.reason:
        body["reason"] = args.reason
    with admin_client(args) as api:
        engaged = api.request("POST", "/kill-switches", body=body)
    if args.json:
        print_json(engaged)
    else:
        print(f"stopped {clean(args.kind)} {clean(args.value)} on every replica (within seconds)")
    return 0


def quotas_unkill(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/kill-switches/{seg(args.kind)}/{seg(args.value)}")
    print(f"released {clean(args.kind)} {clean(args.value)}")
    return 0


def quotas_killed(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/kill-switches",
        empty="no kill switch is engaged",
        headers=("KIND", "VALUE", "REASON", "BY", "SINCE"),
        row=lambda i: (
            i.get("kind"),
            i.get("value"),
            i.get("reason"),
            i.get("created_by"),
            i.get("created_at"),
        ),
    )


def add_quota_commands(branch: Any, leaf: Any) -> None:
    """Register `tollhouse quotas …` (`branch`/`leaf` are build_parser's helpers)."""
    quotas = branch("quotas", "rate and concurrency limits, refusals, kill switches")
    leaf(quotas, "list", quotas_list, "list the limits and the counter storage", with_json=True)
    set_ = leaf(quotas, "set", quotas_set, "create or replace a limit", with_json=True)
    set_.add_argument("id", metavar="ID")
    for key in ("subject", "team", "client", "server", "tool"):
        set_.add_argument(f"--{key}", dest=f"match_{key}", metavar="VALUE", help=f"match calls by this {key}")
    set_.add_argument("--rate", metavar="N/UNIT", help="N/second, N/minute, N/hour or N/day")
    set_.add_argument("--window", choices=("fixed", "sliding"))
    set_.add_argument("--concurrency", type=int, metavar="N", help="calls in flight at once")
    set_.add_argument("--failure-mode", dest="failure_mode", choices=("open", "closed"))
    set_.add_argument(
        "--per", action="append", metavar="KEY", help="one counter per caller's KEY (repeatable)"
    )
    set_.add_argument("--description", metavar="TEXT")
    remove = leaf(quotas, "remove", quotas_remove, "remove a limit")
    remove.add_argument("id", metavar="ID")
    leaf(quotas, "recent", quotas_recent, "recent refusals (auditor role)", with_json=True)
    kill = leaf(
        quotas, "kill", quotas_kill, "stop a subject, client or server on every replica", with_json=True
    )
    kill.add_argument("kind", choices=("subject", "client", "server"))
    kill.add_argument("value", metavar="VALUE")
    kill.add_argument("--reason", metavar="TEXT")
    unkill = leaf(quotas, "unkill", quotas_unkill, "release a kill switch")
    unkill.add_argument("kind", choices=("subject", "client", "server"))
    unkill.add_argument("value", metavar="VALUE")
    leaf(quotas, "killed", quotas_killed, "list engaged kill switches", with_json=True)
