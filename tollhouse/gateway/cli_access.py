"""CLI for access requests: `access list|show|grant|decline`, and `tools search`.

They speak only to the admin API. Requesters' reasons are untrusted text: every value printed
passes through `clean` (via `table`/`short`), so it cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from tollhouse.gateway.cli_common import admin_client, clean, items_of, print_json, seg, short, table, when

__all__ = ["add_access_commands", "add_search_command"]

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    """`90m`, `8h`, `7d` or plain seconds, as seconds (argparse type)."""
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 90m, 8h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def access_list(args: argparse.Namespace) -> int:
    params = {"status": args.status} if args.status else {}
    with admin_client(args) as api:
        data = api.request("GET", "/access-requests", params=params or None)
    if args.json:
        print_json(data)
        return 0
    items = items_of(data)
    if not items:
        print("no access requests" if not args.status else f"no {args.status} access requests")
        return 0
    table(
        ("ID", "STATE", "TARGET", "FOR", "TEAM", "ASKED", "REASON"),
        (
            (
                i.get("id"),
                i.get("state"),
                i.get("target"),
                i.get("user") or i.get("client_id") or i.get("subject"),
                i.get("team"),
                when(i.get("created_at")),
                short(i.get("reason"), 40),
            )
            for i in items
        ),
    )
    return 0


def _print_request(r: dict[str, Any]) -> None:
    print(f"access request {clean(r.get('id'))}: {clean(r.get('state'))}")
    for label, key in (
        ("target", "target"),
        ("kind", "kind"),
        ("exists", "target_exists"),
        ("subject", "subject"),
        ("user", "user"),
        ("client", "client_id"),
        ("team", "team"),
        ("reason", "reason"),
        ("asked for (s)", "duration_seconds"),
        ("asked at", "created_at"),
        ("decided at", "decided_at"),
        ("decided by", "decided_by"),
        ("note", "note"),
        ("policy", "policy_id"),
        ("expires at", "expires_at"),
    ):
        print(f"  {label + ':':<15}{clean(r.get(key))}")


def access_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", f"/access-requests/{seg(args.id)}")
    if args.json:
        print_json(data)
    else:
        _print_request(data)
    return 0


def access_grant(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"scope": "team" if args.team else "principal"}
    if args.duration is not None:
        body["duration_seconds"] = args.duration
    if args.note:
        body["note"] = args.note
    with admin_client(args) as api:
        data = api.request("POST", f"/access-requests/{seg(args.id)}/grant", body=body)
    if args.json:
        print_json(data)
    else:
        until = f" until {clean(data.get('expires_at'))}" if data.get("expires_at") else " (no end)"
        print(f"granted {clean(data.get('target'))} as policy {clean(data.get('policy_id'))}{until}")
    return 0


def access_decline(args: argparse.Namespace) -> int:
    body = {"note": args.note} if args.note else {}
    with admin_client(args) as api:
        data = api.request("POST", f"/access-requests/{seg(args.id)}/decline", body=body)
    if args.json:
        print_json(data)
    else:
        print(f"declined access request {clean(data.get('id'))} for {clean(data.get('target'))}")
    return 0


def tools_search(args: argparse.Namespace) -> int:
    params = {"q": args.query, "limit": str(args.limit)}
    if args.kind:
        params["kind"] = args.kind
    if args.client:
        params["client"] = args.client
    with admin_client(args) as api:
        data = api.request("GET", "/catalog/search", params=params)
    if args.json:
        print_json(data)
        return 0
    results = data.get("results", []) if isinstance(data, dict) else []
    if not results:
        print("no matches")
        return 0
    table(
        ("NAME", "KIND", "SCORE", "DESCRIPTION"),
        (
            (r.get("name"), r.get("kind"), f"{r.get('score', 0):.2f}", short(r.get("description"), 70))
            for r in results
        ),
    )
    return 0


def add_search_command(tools: Any, leaf: Any) -> None:
    """`tollhouse tools search QUERY` (`leaf` is build_parser's helper)."""
    search = leaf(tools, "search", tools_search, "search tools and agents by what they do", with_json=True)
    search.add_argument("query", metavar="QUERY", help="what you are looking for, in a few words")
    search.add_argument("--limit", type=int, default=10, help="at most this many results (1-100)")
    search.add_argument("--kind", choices=("tool", "agent"), help="only tools or only agents")
    search.add_argument("--client", metavar="CLIENT", help="only what this client (id or name) may see")


def add_access_commands(branch: Any, leaf: Any) -> None:
    """Register `tollhouse access …` (`branch`/`leaf` are build_parser's helpers)."""
    access = branch("access", "review access requests: grant (a scoped, time-limited policy) or decline")
    listing = leaf(access, "list", access_list, "list access requests, newest first", with_json=True)
    listing.add_argument(
        "--status", metavar="STATUSES", help="pending, granted, declined, withdrawn (comma-separated)"
    )
    show = leaf(access, "show", access_show, "show one access request", with_json=True)
    show.add_argument("id", metavar="ID")
    grant = leaf(access, "grant", access_grant, "grant a request (creates its policy)", with_json=True)
    grant.add_argument("id", metavar="ID")
    grant.add_argument(
        "--for",
        dest="duration",
        type=_duration,
        metavar="DURATION",
        help="how long (3600, 90m, 8h, 7d); default: what was asked for, else no end",
    )
    grant.add_argument("--team", action="store_true", help="grant it to the requester's whole team")
    grant.add_argument("--note", help="why (kept on the request)")
    decline = leaf(access, "decline", access_decline, "decline a request", with_json=True)
    decline.add_argument("id", metavar="ID")
    decline.add_argument("--note", help="why (kept on the request)")
