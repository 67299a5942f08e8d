"""CLI commands for A2A agents: `agents add|list|show|remove|refresh|diff|approve|reject`.

They speak only to the admin API (`/agents`). An agent's card is upstream text: everything
printed from it passes through `clean` (one line) or `printable` (diff lines), so a card cannot
drive the terminal.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from tollhouse.gateway.cli_common import (
    CliError,
    UsageError,
    admin_client,
    clean,
    fields,
    list_command,
    list_of,
    print_json,
    seconds_text,
    seg,
    short,
    sub_document,
    when,
)
from tollhouse.gateway.cli_tools import print_diff

__all__ = [
    "add_agent_commands",
    "agents_add",
    "agents_approve",
    "agents_diff",
    "agents_list",
    "agents_refresh",
    "agents_reject",
    "agents_remove",
    "agents_show",
]


def _read_json_file(path: str, what: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: the {what} is not UTF-8 text") from None
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path}: the {what} is not JSON: {clean(exc)}") from None
    if not isinstance(document, dict):
        raise CliError(f"{path}: the {what} must be a JSON object")
    return document


def _status(agent: dict[str, Any]) -> str:
    status = clean(agent.get("status"))
    pin = sub_document(agent, "card_pin")
    if agent.get("held"):
        status += f" (held: card {clean(pin.get('status') or 'pending')})"
    return status


def _skills(agent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in list_of(agent, "skills") if isinstance(s, dict)]


def _summary_line(verb: str, agent: dict[str, Any]) -> str:
    skills = ", ".join(clean(s.get("id")) for s in _skills(agent)) or "none"
    return f"{verb} agent {clean(agent.get('name'))}: {_status(agent)}; skills: {skills}"


def agents_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.card_url is not None:
        body["card_url"] = args.card_url
    else:
        body["card"] = _read_json_file(args.card_file, "card")
    if args.jwks_file is not None:
        body["jwks"] = _read_json_file(args.jwks_file, "JWKS")
    if args.require_signature:
        if args.jwks_file is None:
            raise UsageError("--require-signature needs --jwks-file (the public keys that may sign the card)")
        body["require_signature"] = True
    if args.approval:
        body["approval"] = args.approval
    if args.no_tools:
        body["tools"] = "none"
    if args.disabled:
        body["enabled"] = False
    if args.bearer_env:
        body["auth"] = {"type": "bearer", "token_env": args.bearer_env}
    if args.connect_timeout is not None:
        body["connect_timeout_seconds"] = args.connect_timeout
    if args.call_timeout is not None:
        body["call_timeout_seconds"] = args.call_timeout
    with admin_client(args) as api:
        agent = api.request("POST", "/agents", body=body)
    if args.json:
        print_json(agent)
        return 0
    print(_summary_line("added", agent))
    if agent.get("last_error"):
        print(f"last error: {clean(agent['last_error'])}")
    print(f"endpoint: {clean(agent.get('endpoint'))}")
    return 0


def agents_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/agents",
        empty="no agents registered",
        headers=("NAME", "STATUS", "SKILLS", "ENDPOINT"),
        row=lambda a: (
            a.get("name"),
            _status(a),
            short(", ".join(clean(s.get("id")) for s in _skills(a)) or "-", 40),
            a.get("endpoint"),
        ),
    )


def agents_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        agent = api.request("GET", f"/agents/{seg(args.name)}")
    if args.json:
        print_json(agent)
        return 0
    card, health, pin = (
        sub_document(agent, "card"),
        sub_document(agent, "health"),
        sub_document(agent, "card_pin"),
    )
    auth = sub_document(agent, "auth")
    auth_text = clean(auth.get("type", "none")) + (
        f" token_env={clean(auth['token_env'])}" if auth.get("token_env") else ""
    )
    pairs: list[tuple[str, Any]] = [
        ("name", clean(agent.get("name"))),
        ("card", clean(agent.get("card_url")) if agent.get("card_url") else "inline"),
        ("endpoint", clean(agent.get("endpoint"))),
        ("status", _status(agent)),
    ]
    if agent.get("last_error"):
        pairs.append(("last error", clean(agent["last_error"])))
    pairs += [
        ("health", clean(health.get("status")) + f" (checked {when(health.get('checked_at'))})"),
        ("enabled", "yes" if agent.get("enabled", True) else "no"),
        ("approval", clean(agent.get("approval"))),
        ("tools", "skills as MCP tools" if agent.get("tools") == "skills" else "none"),
        ("signature", "required" if agent.get("require_signature") else "not required"),
        ("auth", auth_text),
        (
            "timeouts",
            f"connect {seconds_text(agent.get('connect_timeout_seconds'))}, "
            f"call {seconds_text(agent.get('call_timeout_seconds'))}",
        ),
    ]
    if card:
        pairs += [
            ("agent", f"{clean(card.get('name'))} {clean(card.get('version'))}"),
            ("description", short(card.get("description"), 100)),
            ("A2A", f"{clean(card.get('a2a_version'))} card"),
        ]
    if pin:
        pairs.append(("card pin", f"{clean(pin.get('status'))} (sha256 {clean(pin.get('sha256'))[:12]}…)"))
    pairs += [("created", when(agent.get("created_at"))), ("updated", when(agent.get("updated_at")))]
    fields(pairs)
    skills = _skills(agent)
    print(f"skills ({len(skills)}):")
    for skill in skills:
        tool = f" -> {clean(skill['tool'])}" if skill.get("tool") else ""
        print(f"  {clean(skill.get('id'))}: {short(skill.get('name'), 40)}{tool}")
    return 0


def agents_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/agents/{seg(args.name)}")
    print(f"removed agent {clean(args.name)}")
    return 0


def agents_refresh(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        agent = api.request("POST", f"/agents/{seg(args.name)}/refresh")
    if args.json:
        print_json(agent)
        return 0
    print(_summary_line("refreshed", agent) + f" (snapshot {clean(agent.get('snapshot_version'))})")
    return 0


def agents_diff(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", f"/agents/{seg(args.name)}/card/diff")
    if args.json:
        print_json(data)
        return 0
    fields(
        [
            ("agent", clean(data.get("server"))),
            ("status", clean(data.get("status")) + (" (agent held)" if data.get("held") else "")),
            ("reason", clean(data.get("reason"))),
            ("sha256", clean(data.get("sha256"))),
            ("approved sha256", clean(data.get("approved_sha256"))),
            ("first seen", when(data.get("first_seen_at"))),
            ("decided", f"{when(data.get('decided_at'))} by {clean(data.get('decided_by'))}"),
        ]
    )
    print_diff(data, "card")
    return 0


def _decide(args: argparse.Namespace, action: str) -> int:
    body = {"sha256": args.sha256} if args.sha256 else {}
    with admin_client(args) as api:
        pin = api.request("POST", f"/agents/{seg(args.name)}/card/{action}", body=body)
    if args.json:
        print_json(pin)
        return 0
    verb = "approved" if action == "approve" else "rejected"
    sha, by = clean(pin.get("sha256"))[:12], clean(pin.get("decided_by"))
    print(f"{verb} the card of agent {clean(pin.get('server'))} (sha256 {sha}…) by {by}")
    if pin.get("held"):
        print("the agent stays held until its current card is approved")
    return 0


def agents_approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def agents_reject(args: argparse.Namespace) -> int:
    return _decide(args, "reject")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_agent_commands(branch: Any, leaf: Any) -> None:
    """Register `tollhouse agents …` (`branch`/`leaf` are build_parser's helpers)."""
    agents = branch("agents", "register and inspect A2A agents, and approve their cards")
    add = leaf(agents, "add", agents_add, "register an A2A agent by its card", with_json=True)
    add.add_argument("name", metavar="NAME", help="agent name: 1-32 of a-z, 0-9 and '-'")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--card-url", metavar="URL", help="where the agent serves its card")
    source.add_argument("--card-file", metavar="FILE", help="the agent's card (JSON), registered inline")
    add.add_argument("--approval", choices=("first-use", "manual"), help="card pinning (default first-use)")
    add.add_argument(
        "--require-signature",
        action="store_true",
        help="accept the card only when signed by a key of --jwks-file",
    )
    add.add_argument(
        "--jwks-file", metavar="FILE", help="JWKS (JSON) of the public keys that may sign the card"
    )
    add.add_argument("--no-tools", action="store_true", help="do not expose the skills as MCP tools")
    add.add_argument(
        "--bearer-env",
        metavar="VAR",
        help="send 'Authorization: Bearer $VAR' to the agent (the gateway's env)",
    )
    add.add_argument("--disabled", action="store_true", help="register it disabled")
    add.add_argument("--connect-timeout", type=_seconds, metavar="S", help="connect timeout in seconds")
    add.add_argument("--call-timeout", type=_seconds, metavar="S", help="call timeout in seconds")
    leaf(agents, "list", agents_list, "list registered agents", with_json=True)
    show = leaf(agents, "show", agents_show, "show one agent, its card and skills", with_json=True)
    show.add_argument("name", metavar="NAME")
    remove = leaf(agents, "remove", agents_remove, "remove an agent")
    remove.add_argument("name", metavar="NAME")
    refresh = leaf(agents, "refresh", agents_refresh, "fetch an agent's card again now", with_json=True)
    refresh.add_argument("name", metavar="NAME")
    diff = leaf(
        agents,
        "diff",
        agents_diff,
        "show an agent's approved and current card, and their diff",
        with_json=True,
    )
    diff.add_argument("name", metavar="NAME")
    for action, handler, summary in (
        ("approve", agents_approve, "approve an agent's current card (releases a held agent)"),
        ("reject", agents_reject, "reject an agent's current card (the agent stays held)"),
    ):
        decide = leaf(agents, action, handler, summary, with_json=True)
        decide.add_argument("name", metavar="NAME")
        decide.add_argument(
            "--sha256", metavar="HASH", help="only if the current card still has this hash (from diff)"
        )
