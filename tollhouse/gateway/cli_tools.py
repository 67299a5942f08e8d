"""CLI commands for pins: `tools pending`, `tools diff`, `tools approve`, `tools reject`.

They speak only to the admin API. Upstream text (descriptions, instructions, findings'
excerpts) is untrusted: every line printed passes through `clean` or `printable`, so it
cannot move the cursor, rewrite the terminal or hide characters from the person deciding.
"""

from __future__ import annotations

import argparse
from typing import Any

from tollhouse.gateway.cli_common import (
    admin_client,
    clean,
    fields,
    items_of,
    list_of,
    print_json,
    seg,
    short,
    table,
    when,
)

__all__ = [
    "print_diff",
    "print_findings",
    "printable",
    "tools_approve",
    "tools_diff",
    "tools_pending",
    "tools_reject",
]


def printable(line: str) -> str:
    """One line of upstream text with every non-printable character shown as <U+XXXX>."""
    return "".join(ch if ch.isprintable() else f"<U+{ord(ch):04X}>" for ch in line)


def _path(args: argparse.Namespace, action: str) -> str:
    if args.instructions:
        return f"/servers/{seg(args.name)}/instructions/{action}"
    return f"/tools/{seg(args.name)}/{action}"


def print_findings(findings: list[Any]) -> None:
    """The scanner's findings, one per line (advisory: they decide nothing)."""
    if not findings:
        print("findings: none")
        return
    print(f"findings ({len(findings)}, advisory):")
    for finding in findings:
        if isinstance(finding, dict):
            where = f" [{clean(finding.get('where'))}]" if finding.get("where") else ""
            print(f"  - {clean(finding.get('kind'))}{where}: {clean(finding.get('detail'))}")
            print(f"      {short(finding.get('excerpt'), 100)}")


def tools_pending(args: argparse.Namespace) -> int:
    params = {"state": args.state} if args.state else {}
    if args.server:
        params["server"] = args.server
    with admin_client(args) as api:
        data = api.request("GET", "/approvals", params=params or None)
    if args.json:
        print_json(data)
        return 0
    items = items_of(data)
    if not items:
        print("nothing awaits approval" if not args.state else "no such pins")
        return 0
    table(
        ("NAME", "KIND", "STATUS", "REASON", "FINDINGS", "FIRST SEEN"),
        (
            (
                i.get("name"),
                i.get("kind"),
                i.get("status"),
                i.get("reason"),
                len(list_of(i, "findings")),
                when(i.get("first_seen_at")),
            )
            for i in items
        ),
    )
    return 0


def _pin_fields(pin: dict[str, Any]) -> None:
    fields(
        [
            ("name", clean(pin.get("name"))),
            ("kind", clean(pin.get("kind"))),
            ("status", clean(pin.get("status")) + (" (server held)" if pin.get("held") else "")),
            ("reason", clean(pin.get("reason"))),
            ("sha256", clean(pin.get("sha256"))),
            ("approved sha256", clean(pin.get("approved_sha256"))),
            ("first seen", when(pin.get("first_seen_at"))),
            ("decided", f"{when(pin.get('decided_at'))} by {clean(pin.get('decided_by'))}"),
        ]
    )


def tools_diff(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", _path(args, "diff"))
    if args.json:
        print_json(data)
        return 0
    _pin_fields(data)
    print_diff(data, "definition")
    return 0


def print_diff(data: dict[str, Any], what: str) -> None:
    """A pin diff's findings and its readable diff (every line made printable)."""
    print_findings(list_of(data, "findings"))
    diff = data.get("diff")
    if isinstance(diff, str) and diff:
        print("diff (approved -> current):")
        for line in diff.splitlines():
            print(printable(line))
    else:
        print(f"diff: none (the current {what} is the approved one)")


def _decide(args: argparse.Namespace, action: str) -> int:
    body = {"sha256": args.sha256} if args.sha256 else {}
    with admin_client(args) as api:
        pin = api.request("POST", _path(args, action), body=body)
    if args.json:
        print_json(pin)
        return 0
    verb = "approved" if action == "approve" else "rejected"
    what = "instructions of " if pin.get("kind") == "instructions" else ""
    sha = clean(pin.get("sha256"))[:12]
    print(f"{verb} {what}{clean(pin.get('name'))} (sha256 {sha}…) by {clean(pin.get('decided_by'))}")
    if action == "approve" and pin.get("held"):
        print("its server stays held until its instructions are approved")
    return 0


def tools_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def tools_reject(args: argparse.Namespace) -> int:
    return _decide(args, "reject")
