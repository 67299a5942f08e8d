"""CLI commands for identities and keys: users, teams, tokens, failed authentications, the key ring."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

import httpx2

from tollhouse.gateway.cli_common import (
    DEFAULT_URL,
    TIMEOUT_SECONDS,
    CliError,
    UsageError,
    admin_client,
    clean,
    fields,
    list_command,
    list_of,
    print_json,
    seg,
    table,
    warn,
)

__all__ = [
    "auth_failures",
    "keys_list",
    "keys_remove",
    "keys_rotate",
    "teams_create",
    "teams_list",
    "teams_remove",
    "token",
    "users_create",
    "users_list",
    "users_remove",
    "users_show",
    "users_update",
]


def _keys_table(data: dict[str, Any]) -> None:
    table(
        ("KEY ID", "ACTIVE", "ROWS"),
        ((k.get("kid"), "yes" if k.get("active") else "", k.get("rows", 0)) for k in list_of(data, "keys")),
    )
    unknown = data.get("unknown")
    if isinstance(unknown, dict) and unknown:
        warn("rows sealed under keys this gateway does not have: " + ", ".join(map(clean, unknown)))


def keys_list(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", "/keys")
    if args.json:
        print_json(data)
        return 0
    print(f"credential-encryption keys (from {clean(data.get('source'))}):")
    _keys_table(data)
    return 0


def keys_rotate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.reencrypt_only:
        body["generate"] = False
    with admin_client(args) as api:
        data = api.request("POST", "/keys/rotate", body=body)
    if args.json:
        print_json(data)
        return 0
    count = data.get("reencrypted", 0)
    print(f"active key {clean(data.get('active'))}; re-encrypted {count} stored credentials")
    _keys_table(data)
    return 0


def keys_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("DELETE", f"/keys/{seg(args.kid)}")
    if args.json:
        print_json(data)
        return 0
    print(f"removed key {clean(args.kid)}")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    """The password from standard input (one line; never from the command line, where `ps` shows it)."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise CliError("the passwords differ")
        return first
    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise CliError("no password on standard input")
    return line


def _user_fields(user: dict[str, Any]) -> None:
    fields(
        (
            ("name", clean(user.get("name"))),
            ("roles", clean(", ".join(user.get("roles") or []) or None)),
            ("teams", clean(", ".join(user.get("teams") or []) or None)),
            ("disabled", "yes" if user.get("disabled") else "no"),
            ("password", "set" if user.get("has_password") else "not set"),
            ("created", clean(user.get("created_at"))),
        )
    )


def users_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "roles": args.role or [], "teams": args.team or []}
    if not args.no_password:
        body["password"] = _read_password(args)
    with admin_client(args) as api:
        user = api.request("POST", "/users", body=body)
    if args.json:
        print_json(user)
        return 0
    print(f"created user {clean(user.get('name'))}")
    return 0


def users_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/users",
        empty="no users",
        headers=("NAME", "ROLES", "TEAMS", "STATUS"),
        row=lambda u: (
            u.get("name"),
            ",".join(u.get("roles") or []) or None,
            ",".join(u.get("teams") or []) or None,
            "disabled" if u.get("disabled") else "active",
        ),
    )


def users_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        user = api.request("GET", f"/users/{seg(args.name)}")
    if args.json:
        print_json(user)
    else:
        _user_fields(user)
    return 0


def users_update(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.role is not None:
        body["roles"] = [] if args.role == [""] else args.role
    if args.team is not None:
        body["teams"] = [] if args.team == [""] else args.team
    if args.disable:
        body["disabled"] = True
    if args.enable:
        body["disabled"] = False
    if args.password:
        body["password"] = _read_password(args)
    if not body:
        raise UsageError("nothing to change: give --role, --team, --enable, --disable or --password")
    with admin_client(args) as api:
        user = api.request("PATCH", f"/users/{seg(args.name)}", body=body)
    if args.json:
        print_json(user)
    else:
        _user_fields(user)
    return 0


def users_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/users/{seg(args.name)}")
    print(f"removed user {clean(args.name)}")
    return 0


def teams_create(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        team = api.request("POST", "/teams", body={"name": args.name, "description": args.description})
    if args.json:
        print_json(team)
    else:
        print(f"created team {clean(team.get('name'))}")
    return 0


def teams_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/teams",
        empty="no teams",
        headers=("NAME", "DESCRIPTION"),
        row=lambda t: (t.get("name"), t.get("description")),
    )


def teams_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/teams/{seg(args.name)}")
    print(f"removed team {clean(args.name)}")
    return 0


def token(args: argparse.Namespace) -> int:
    """Client credentials at the gateway's token endpoint: prints the access token."""
    url = (getattr(args, "url", None) or os.environ.get("TOLLHOUSE_URL") or DEFAULT_URL).rstrip("/")
    secret = args.client_secret or os.environ.get("TOLLHOUSE_CLIENT_SECRET")
    if not secret:
        raise UsageError("give --client-secret or set TOLLHOUSE_CLIENT_SECRET")
    form = {"grant_type": "client_credentials"}
    if args.scope:
        form["scope"] = " ".join(args.scope)
    if args.resource:
        form["resource"] = args.resource
    try:
        with httpx2.Client(timeout=TIMEOUT_SECONDS, trust_env=False) as http:
            response = http.post(f"{url}/oauth/token", data=form, auth=(args.client_id, secret))
    except httpx2.HTTPError:
        raise CliError(f"cannot reach the gateway at {url} (is it running?)") from None
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code != 200 or not isinstance(document, dict) or "access_token" not in document:
        error = document.get("error") if isinstance(document, dict) else None
        raise CliError(f"the token request was refused ({response.status_code} {clean(error)})")
    if args.json:
        print_json(document)
    else:
        print(document["access_token"])
    return 0


def auth_failures(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/auth/failures",
        empty="no failed authentications",
        headers=("TIME", "STATUS", "REASON", "PATH", "SOURCE", "TOKEN"),
        row=lambda i: (
            datetime.fromtimestamp(float(i.get("at", 0)), UTC).isoformat(timespec="seconds"),
            i.get("status"),
            i.get("reason"),
            i.get("path"),
            i.get("source"),
            i.get("token_fingerprint"),
        ),
        params={"limit": str(args.limit)},
    )
