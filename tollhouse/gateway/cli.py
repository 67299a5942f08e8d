"""The `tollhouse` command line.

Admin commands are a thin client of the admin API (`/admin/api/v1`): they reach the gateway at
`--url` (env `TOLLHOUSE_URL`) with `--token` (env `TOLLHOUSE_ADMIN_TOKEN`), print aligned tables,
or with `--json` the API's JSON and nothing else. `serve`, `demo` and `db upgrade` run locally and
import the gateway only when chosen, so the admin commands start fast.

Failures print one line, `tollhouse: error: <detail>`, on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shlex
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from tollhouse import __version__
from tollhouse.gateway import (
    cli_access,
    cli_agents,
    cli_audit,
    cli_identity,
    cli_policy,
    cli_quotas,
    cli_tools,
    cli_usage,
)
from tollhouse.gateway.cli_common import (
    DEFAULT_URL,
    PROG,
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
    warn,
    when,
)
from tollhouse.registry.config import (
    ConfigError,
    config_from_dict,
    expand_secret_refs,
    parse_yaml,
    render_yaml,
)

__all__ = ["DEFAULT_URL", "build_parser", "main"]


Handler = Callable[[argparse.Namespace], int]


# --- servers ---------------------------------------------------------------------------------


def _target(server: dict[str, Any]) -> str:
    command = server.get("command")
    if command and isinstance(command, list):
        return clean(shlex.join(str(w) for w in command))
    return clean(server.get("url"))


def _command_words(words: list[str], extra: list[str] | None) -> list[str]:
    # One word is a shell-quoted command line ("python -m pkg"); several are taken verbatim.
    if len(words) == 1:
        try:
            words = shlex.split(words[0])
        except ValueError as exc:
            raise UsageError(f"--command: {exc}") from None
    words = [*words, *(extra or [])]
    if not words or not words[0]:
        raise UsageError("--command: needs a program to run")
    return words


def _servers_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.upstream_url is not None:
        for option, given in (("--arg", args.arg), ("--env", args.env), ("--cwd", args.cwd)):
            if given:
                raise UsageError(f"{option} applies to --command servers only")
        body["url"] = args.upstream_url
        if args.sse:
            body["transport"] = "sse"
    else:
        if args.sse:
            raise UsageError("--sse applies to --url servers only")
        body["command"] = _command_words(args.command, args.arg)
        if args.env:
            body["env"] = dict(args.env)
        if args.cwd:
            body["cwd"] = args.cwd
    body_auth = _auth_of(args)
    if body_auth is not None:
        body["auth"] = body_auth
    if args.approval:
        body["approval"] = args.approval
    if args.failure_mode:
        body["failure_mode"] = args.failure_mode
    if args.connect_timeout is not None:
        body["connect_timeout_seconds"] = args.connect_timeout
    if args.call_timeout is not None:
        body["call_timeout_seconds"] = args.call_timeout
    with admin_client(args) as api:
        server = api.request("POST", "/servers", body=body)
    if args.json:
        print_json(server)
        return 0
    health = sub_document(server, "health").get("status", "unknown")
    print(
        f"added server {clean(server.get('name'))} ({clean(server.get('transport'))}, {_target(server)}): "
        f"{server.get('tool_count', 0)} tools, health {clean(health)}"
    )
    return 0


def _servers_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/servers",
        empty="no servers registered",
        headers=("NAME", "TRANSPORT", "TARGET", "HEALTH", "MODE", "ERA", "TOOLS"),
        row=lambda s: (
            s.get("name"),
            s.get("transport"),
            _target(s),
            sub_document(s, "health").get("status"),
            s.get("failure_mode", "open"),
            s.get("era"),
            s.get("tool_count"),
        ),
    )


def _servers_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        server = api.request("GET", f"/servers/{seg(args.name)}")
    if args.json:
        print_json(server)
        return 0
    health, auth = sub_document(server, "health"), sub_document(server, "auth")
    auth_text = clean(auth.get("type", "none"))
    for key in ("token_env", "header", "value_env"):
        if auth.get(key):
            auth_text += f" {key}={clean(auth[key])}"
    pairs: list[tuple[str, Any]] = [
        ("name", clean(server.get("name"))),
        ("transport", clean(server.get("transport"))),
        ("url" if server.get("url") else "command", _target(server)),
    ]
    if env := sub_document(server, "env"):
        pairs.append(("env", " ".join(f"{clean(k)}={clean(v)}" for k, v in env.items())))
    if server.get("cwd"):
        pairs.append(("cwd", clean(server["cwd"])))
    pairs += [
        ("auth", auth_text),
        ("enabled", "yes" if server.get("enabled", True) else "no"),
        ("approval", clean(server.get("approval"))),
        ("fail mode", clean(server.get("failure_mode", "open"))),
        (
            "timeouts",
            f"connect {seconds_text(server.get('connect_timeout_seconds'))}, "
            f"call {seconds_text(server.get('call_timeout_seconds'))}",
        ),
        ("health", clean(health.get("status")) + f" (checked {when(health.get('checked_at'))})"),
    ]
    if health.get("last_error"):
        pairs.append(("last error", clean(health["last_error"])))
    pairs += [
        ("era", clean(server.get("era"))),
        ("protocol", clean(server.get("protocol_version"))),
        ("created", when(server.get("created_at"))),
        ("updated", when(server.get("updated_at"))),
        ("tools", str(server.get("tool_count", 0))),
    ]
    fields(pairs)
    for tool in list_of(server, "tools"):
        print(f"  {clean(tool)}")
    return 0


def _servers_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/servers/{seg(args.name)}")
    print(f"removed server {clean(args.name)}")
    return 0


def _servers_refresh(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        result = api.request("POST", f"/servers/{seg(args.name)}/refresh")
    if args.json:
        print_json(result)
        return 0
    print(
        f"refreshed {clean(result.get('server'))} (snapshot {clean(result.get('snapshot_version'))}): "
        f"{result.get('tools', 0)} tools, {result.get('resources', 0)} resources, "
        f"{result.get('resource_templates', 0)} resource templates, {result.get('prompts', 0)} prompts"
    )
    return 0


# --- tools -----------------------------------------------------------------------------------


def _tools_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/tools",
        empty="no tools",
        headers=("NAME", "SERVER", "DESCRIPTION"),
        row=lambda t: (t.get("name"), t.get("server"), short(t.get("title") or t.get("description"))),
        params={"server": args.server} if args.server else None,
    )


def _tools_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        tool = api.request("GET", f"/tools/{seg(args.name)}")
    if args.json:
        print_json(tool)
        return 0
    definition = sub_document(tool, "definition")
    fields(
        [
            ("name", clean(tool.get("name"))),
            ("server", clean(tool.get("server"))),
            ("tool", clean(tool.get("tool"))),
            ("title", clean(tool.get("title") or definition.get("title"))),
            ("description", clean(tool.get("description") or definition.get("description"))),
            ("sha256", clean(tool.get("sha256"))),
        ]
    )
    pin = sub_document(tool, "pin")
    if pin:
        held = " (server held)" if pin.get("held") else ""
        print(f"pin:         {clean(pin.get('status'))}{held}, decided by {clean(pin.get('decided_by'))}")
        cli_tools.print_findings(list_of(pin, "findings"))
    print("definition:")
    print(json.dumps(definition, indent=2))
    upstream = tool.get("upstream_definition")
    if upstream is not None and upstream != tool.get("definition"):
        print("upstream definition:")
        print(json.dumps(upstream, indent=2))
    return 0


# --- toolsets --------------------------------------------------------------------------------


def _strings(document: dict[str, Any], key: str) -> list[str]:
    return [clean(v) for v in list_of(document, key)]


def _toolset_entries(toolset: dict[str, Any]) -> str:
    """Patterns and aliases of a toolset on one line: `calc__* plus=calc__add`."""
    aliases = [f"{clean(a)}={clean(t)}" for a, t in sub_document(toolset, "aliases").items()]
    return " ".join(_strings(toolset, "tools") + aliases) or "-"


def _print_members(toolset: dict[str, Any]) -> None:
    aliases = sub_document(toolset, "aliases")
    for member in list_of(toolset, "members"):
        target = aliases.get(member) if isinstance(member, str) else None
        print(f"  {clean(member)}" + (f" -> {clean(target)}" if target else ""))


def _toolsets_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/toolsets",
        empty="no toolsets",
        headers=("NAME", "MEMBERS", "TOOLS", "DESCRIPTION"),
        row=lambda t: (
            t.get("name"),
            len(list_of(t, "members")),
            _toolset_entries(t),
            short(t.get("description"), 40),
        ),
    )


def _toolsets_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        toolset = api.request("GET", f"/toolsets/{seg(args.name)}")
    if args.json:
        print_json(toolset)
        return 0
    aliases = sub_document(toolset, "aliases")
    fields(
        [
            ("name", clean(toolset.get("name"))),
            ("description", clean(toolset.get("description"))),
            ("tools", " ".join(_strings(toolset, "tools")) or "-"),
            ("aliases", " ".join(f"{clean(a)}={clean(t)}" for a, t in aliases.items()) or "-"),
            ("created", when(toolset.get("created_at"))),
            ("updated", when(toolset.get("updated_at"))),
            ("members", str(len(list_of(toolset, "members")))),
        ]
    )
    _print_members(toolset)
    return 0


def _toolsets_set(args: argparse.Namespace) -> int:
    if not args.tool and not args.alias:
        raise UsageError("give at least one --tool or --alias")
    aliases: dict[str, str] = {}
    for alias, target in args.alias or []:
        if alias in aliases:
            raise UsageError(f"--alias {alias}: given twice")
        aliases[alias] = target
    body: dict[str, Any] = {"tools": list(args.tool or []), "aliases": aliases}
    if args.description is not None:
        body["description"] = args.description
    with admin_client(args) as api:
        toolset = api.request("PUT", f"/toolsets/{seg(args.name)}", body=body)
        created = api.last_status == 201
    if args.json:
        print_json(toolset)
        return 0
    count = len(list_of(toolset, "members"))
    print(
        f"{'created' if created else 'updated'} toolset {clean(toolset.get('name'))}: "
        f"{count} live tool{'' if count == 1 else 's'}"
    )
    _print_members(toolset)
    return 0


def _toolsets_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/toolsets/{seg(args.name)}")
    print(f"removed toolset {clean(args.name)}")
    return 0


# --- clients ---------------------------------------------------------------------------------


def _print_credentials(client: dict[str, Any]) -> None:
    for key, label in (("client_secret", "client secret"), ("api_key", "API key")):
        if client.get(key):
            print(f"  {label}: {client[key]}")


def _clients_create(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        body: dict[str, Any] = {"name": args.name, "team": args.team}
        if args.scope:
            body["scopes"] = args.scope
        client = api.request("POST", "/clients", body=body)
    if args.json:
        print_json(client)
        return 0
    team = f", team {clean(client.get('team'))}" if client.get("team") else ""
    print(f"created client {clean(client.get('name'))} (id {clean(client.get('client_id'))}{team})")
    _print_credentials(client)
    print("Store the credentials now: they are not shown again.")
    return 0


def _clients_list(args: argparse.Namespace) -> int:
    return list_command(
        args,
        "/clients",
        empty="no clients",
        headers=("CLIENT ID", "NAME", "TEAM", "KEY PREFIX", "CREATED", "STATUS"),
        row=lambda c: (
            c.get("client_id"),
            c.get("name"),
            c.get("team"),
            c.get("key_prefix"),
            when(c.get("created_at")),
            f"revoked {when(c['revoked_at'])}" if c.get("revoked_at") else "active",
        ),
    )


def _clients_revoke(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        client = api.request("POST", f"/clients/{seg(args.client)}/revoke")
    print(f"revoked client {clean(client.get('name'))} ({clean(client.get('client_id'))})")
    return 0


def _auth_of(args: argparse.Namespace) -> dict[str, Any] | None:
    """The `auth` of `servers add`; secrets come from standard input, never from the command line."""
    oauth_options = {
        "client_id": args.client_id,
        "client_secret_env": args.client_secret_env,
        "token_url": args.token_url,
        "authorization_url": args.authorization_url,
        "scope": args.scope,
        "audience": args.audience,
        "resource": args.resource,
    }
    given = {k: v for k, v in oauth_options.items() if v is not None}
    if args.oauth is None and (given or args.client_secret_stdin):
        raise UsageError("--client-id, --scope, ... apply with --oauth only")
    if args.bearer_env:
        return {"type": "bearer", "token_env": args.bearer_env}
    if args.bearer_stdin:
        return {"type": "bearer", "token": _read_secret("token")}
    if args.header_env:
        header, variable = args.header_env
        return {"type": "header", "header": header, "value_env": variable}
    if args.header_stdin:
        return {"type": "header", "header": args.header_stdin, "value": _read_secret("header value")}
    if args.oauth is None:
        return None
    kind = {
        "client-credentials": "oauth_client_credentials",
        "token-exchange": "token_exchange",
        "authorization-code": "oauth_authorization_code",
    }[args.oauth]
    auth: dict[str, Any] = {"type": kind, **given}
    if args.client_secret_stdin:
        if args.client_secret_env:
            raise UsageError("give --client-secret-stdin or --client-secret-env, not both")
        auth["client_secret"] = _read_secret("client secret")
    return auth


def _read_secret(what: str) -> str:
    """One secret from standard input (a prompt without echo on a terminal)."""
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{what}: ")
    else:
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise CliError(f"no {what} on standard input")
    return value


# --- declarative configuration ---------------------------------------------------------------


def _jsonable(value: Any, path: str) -> Any:
    """YAML values as JSON values: YAML has dates, JSON does not."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise CliError(f"{path}: {value} cannot be sent as JSON")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise CliError(f"{path}: a {type(value).__name__} value cannot be sent as JSON")


def _apply(args: argparse.Namespace) -> int:
    source = str(args.file)
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{source}: cannot read the file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{source}: the file is not UTF-8 text") from None
    # Validate here first: a broken file is reported with its key path and nothing is sent.
    try:
        raw = parse_yaml(text, source=source)
        # `token: ${VAR}` takes the value from this shell's environment; it travels to the
        # gateway once, over the admin API, and is stored there encrypted.
        raw = expand_secret_refs(raw, os.environ)
        loaded = config_from_dict(raw, source=source)
    except ConfigError as exc:
        raise CliError(clean(str(exc))) from None
    for warning in loaded.warnings:
        warn(f"{source}: {warning}")
    body = {"config": _jsonable(raw, ""), "prune": bool(args.prune)}
    with admin_client(args) as api:
        result = api.request("POST", "/config/apply", body=body)
    if args.json:
        print_json(result)
        return 0
    for warning in list_of(result, "warnings"):
        if warning not in loaded.warnings:
            warn(str(warning))
    counts = []
    for change in ("created", "updated", "deleted", "unchanged"):
        names = list_of(result, change)
        counts.append(f"{len(names)} {change}")
        if change != "unchanged":
            for name in names:
                print(f"{change:<9} {clean(name)}")
    print(f"applied {source}: " + ", ".join(counts))
    new_clients = [
        c
        for c in list_of(result, "clients")
        if isinstance(c, dict) and (c.get("api_key") or c.get("client_secret"))
    ]
    for client in new_clients:
        print(f"client {clean(client.get('name'))} (id {clean(client.get('client_id'))}):")
        _print_credentials(client)
    if new_clients:
        print("Store the credentials now: they are not shown again.")
    return 0


def _export(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", "/config/export")
    text = render_yaml(data)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"{args.out}: cannot write the file: {exc.strerror or exc}") from None
    return 0


# --- local commands --------------------------------------------------------------------------


def _run_local(module: str, function: str, **kwargs: Any) -> int:
    # Imported on demand: the server stack is heavy and admin commands never need it.
    entry = getattr(importlib.import_module(module), function)
    result = entry(**kwargs)
    return 0 if result is None else int(result)


def _serve(args: argparse.Namespace) -> int:
    return _run_local(
        "tollhouse.gateway.serve",
        "serve_main",
        config=args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
    )


def _demo(args: argparse.Namespace) -> int:
    return _run_local("tollhouse.gateway.demo", "demo_main")


def _db_upgrade(args: argparse.Namespace) -> int:
    return _run_local("tollhouse.gateway.serve", "db_upgrade_main")


# --- argument parsing ------------------------------------------------------------------------


def _pair(left: str, right: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected {left}={right}, got {text!r}")
        return key, value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of processes, got {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected 1 to 64 processes, got {text!r}")
    return value


_ADMIN_EPILOG = (
    f"The gateway is reached at --url (env TOLLHOUSE_URL, default {DEFAULT_URL}) with --token "
    "(env TOLLHOUSE_ADMIN_TOKEN; prefer the variable: arguments are visible to other local users)."
)


def _admin_options(*, url: bool = True) -> argparse.ArgumentParser:
    # SUPPRESS keeps a value given before the command (tollhouse --url X servers list) from being
    # overwritten by the subcommand's own default.
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("gateway")
    if url:
        group.add_argument("--url", default=argparse.SUPPRESS, help="gateway base URL (env TOLLHOUSE_URL)")
    group.add_argument(
        "--token", default=argparse.SUPPRESS, help="admin bearer token (env TOLLHOUSE_ADMIN_TOKEN)"
    )
    return parent


def _json_option() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The `tollhouse` argument parser."""
    admin, as_json = _admin_options(), _json_option()
    # `servers add --url` is the upstream's URL; there the gateway's comes first or from the env.
    token_only = _admin_options(url=False)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="tollhouse: one governed front door for MCP servers and A2A agents.",
        epilog=_ADMIN_EPILOG,
        parents=[admin],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(
        group: Any,
        name: str,
        handler: Handler,
        summary: str,
        *,
        with_json: bool = False,
        local: bool = False,
        connection: argparse.ArgumentParser = admin,
        epilog: str = _ADMIN_EPILOG,
    ) -> argparse.ArgumentParser:
        parents = ([] if local else [connection]) + ([as_json] if with_json else [])
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=summary, description=summary, parents=parents, epilog=None if local else epilog
        )
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    def branch(name: str, summary: str) -> Any:
        sub = commands.add_parser(name, help=summary, description=summary)
        return sub.add_subparsers(dest="action", required=True, metavar="ACTION")

    # local
    serve = leaf(commands, "serve", _serve, "run the gateway", local=True)
    serve.add_argument("--config", metavar="FILE", help="apply this configuration file at start")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=_port, help="port to listen on")
    serve.add_argument(
        "--workers", type=_workers, default=1, metavar="N", help="serve with N processes on one port"
    )
    leaf(commands, "demo", _demo, "run the gateway with the example servers", local=True)
    db = branch("db", "database maintenance")
    leaf(db, "upgrade", _db_upgrade, "migrate the database to the current schema", local=True)

    # declarative configuration
    apply = leaf(commands, "apply", _apply, "apply a configuration file (YAML); idempotent", with_json=True)
    apply.add_argument("file", metavar="FILE", help="configuration file")
    apply.add_argument("--prune", action="store_true", help="also delete what the file does not name")
    export = leaf(commands, "export", _export, "write the current configuration as YAML")
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")

    # servers
    servers = branch("servers", "register and inspect upstream MCP servers")
    add = leaf(
        servers,
        "add",
        _servers_add,
        "register an upstream MCP server",
        with_json=True,
        connection=token_only,
        epilog="Here --url is the upstream's URL: give the gateway's before the command "
        "(tollhouse --url GATEWAY servers add ...) or in TOLLHOUSE_URL (default " + DEFAULT_URL + ").",
    )
    add.add_argument("name", metavar="NAME", help="server name: 1-32 of a-z, 0-9 and '-'")
    target = add.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--url", dest="upstream_url", metavar="URL", help="the server's Streamable HTTP (or --sse) endpoint"
    )
    target.add_argument(
        "--command",
        nargs="+",
        metavar="CMD",
        help="stdio server to start: one shell-quoted string (--command 'python -m pkg') or separate "
        "words (--command python server.py); pass words starting with '-' inside the quotes or with --arg",
    )
    add.add_argument(
        "--arg", action="append", metavar="ARG", help="extra argument for --command (repeatable)"
    )
    add.add_argument(
        "--env",
        action="append",
        type=_pair("KEY", "VALUE"),
        metavar="KEY=VALUE",
        help="environment of the stdio server; the only variables it sees (repeatable)",
    )
    add.add_argument("--cwd", metavar="DIR", help="working directory of the stdio server")
    add.add_argument("--sse", action="store_true", help="the URL speaks the legacy HTTP+SSE transport")
    auth = add.add_mutually_exclusive_group()
    auth.add_argument(
        "--bearer-env", metavar="VAR", help="send 'Authorization: Bearer $VAR' upstream (the gateway's env)"
    )
    auth.add_argument(
        "--header-env",
        type=_pair("NAME", "VAR"),
        metavar="NAME=VAR",
        help="send header NAME with the value of $VAR upstream (the gateway's env)",
    )
    auth.add_argument(
        "--bearer-stdin",
        action="store_true",
        help="read a bearer token from standard input; the gateway stores it encrypted, never shows it",
    )
    auth.add_argument(
        "--header-stdin",
        metavar="NAME",
        help="send header NAME with a value read from standard input (stored encrypted)",
    )
    auth.add_argument(
        "--oauth",
        choices=("client-credentials", "token-exchange", "authorization-code"),
        help="get the upstream token from its OAuth server: the gateway's own (client-credentials), "
        "per user by RFC 8693 exchange, or per user by consent (authorization-code)",
    )
    add.add_argument("--client-id", metavar="ID", help="--oauth: the gateway's client id there")
    add.add_argument(
        "--client-secret-stdin",
        action="store_true",
        help="--oauth: read the client secret from standard input",
    )
    add.add_argument("--client-secret-env", metavar="VAR", help="--oauth: the client secret is $VAR")
    add.add_argument("--token-url", metavar="URL", help="--oauth: token endpoint (default: discovered)")
    add.add_argument(
        "--authorization-url", metavar="URL", help="--oauth authorization-code: authorize endpoint"
    )
    add.add_argument("--scope", metavar="SCOPES", help="--oauth: scopes to ask for (space-separated)")
    add.add_argument("--audience", metavar="AUD", help="--oauth: audience parameter")
    add.add_argument("--resource", metavar="URI", help="--oauth: RFC 8707 resource (default: the URL)")
    add.add_argument("--approval", choices=("first-use", "manual"), help="tool pinning (default first-use)")
    add.add_argument(
        "--failure-mode",
        choices=("open", "closed"),
        help="while this server is down: open (default) drops its tools from /mcp, closed fails /mcp lists",
    )
    add.add_argument("--connect-timeout", type=_seconds, metavar="S", help="connect timeout in seconds")
    add.add_argument("--call-timeout", type=_seconds, metavar="S", help="tool call timeout in seconds")
    leaf(servers, "list", _servers_list, "list registered servers", with_json=True)
    show = leaf(servers, "show", _servers_show, "show one server and its tools", with_json=True)
    show.add_argument("name", metavar="NAME")
    remove = leaf(servers, "remove", _servers_remove, "remove a server")
    remove.add_argument("name", metavar="NAME")
    refresh = leaf(servers, "refresh", _servers_refresh, "re-read a server's catalog now", with_json=True)
    refresh.add_argument("name", metavar="NAME")

    # agents
    cli_agents.add_agent_commands(branch, leaf)
    cli_access.add_access_commands(branch, leaf)

    # tools
    tools = branch("tools", "inspect the tools the gateway exposes, and approve their definitions")
    tools_list = leaf(tools, "list", _tools_list, "list exposed tools", with_json=True)
    tools_list.add_argument("--server", metavar="NAME", help="only this server's tools")
    tools_show = leaf(tools, "show", _tools_show, "show one tool's definition", with_json=True)
    tools_show.add_argument("name", metavar="NAME", help="exposed name, e.g. calc__add")
    cli_access.add_search_command(tools, leaf)
    pending = leaf(
        tools,
        "pending",
        cli_tools.tools_pending,
        "list tools and instructions awaiting approval",
        with_json=True,
    )
    pending.add_argument("--server", metavar="NAME", help="only this server's")
    pending.add_argument(
        "--state",
        metavar="STATES",
        help="pending,changed,rejected,approved or all (default: pending,changed)",
    )
    for action, handler, summary in (
        (
            "diff",
            cli_tools.tools_diff,
            "show a tool's approved and current definition, their diff and findings",
        ),
        ("approve", cli_tools.tools_approve, "approve a tool's current definition (makes it callable)"),
        ("reject", cli_tools.tools_reject, "reject a tool's current definition (keeps it hidden)"),
    ):
        decide = leaf(tools, action, handler, summary, with_json=True)
        decide.add_argument(
            "name", metavar="NAME", help="exposed name (calc__add), or a server with --instructions"
        )
        decide.add_argument(
            "--instructions", action="store_true", help="NAME is a server: act on its instructions"
        )
        if action != "diff":
            decide.add_argument(
                "--sha256",
                metavar="HASH",
                help="only if the current definition still has this hash (from diff)",
            )

    # toolsets
    toolsets = branch("toolsets", "named subsets of the tools, each served at /mcp/NAME")
    leaf(toolsets, "list", _toolsets_list, "list toolsets and their live members", with_json=True)
    toolsets_show = leaf(
        toolsets, "show", _toolsets_show, "show one toolset and its live members", with_json=True
    )
    toolsets_show.add_argument("name", metavar="NAME")
    toolsets_set = leaf(
        toolsets,
        "set",
        _toolsets_set,
        "create or replace a toolset (the options given are its whole definition)",
        with_json=True,
    )
    toolsets_set.add_argument("name", metavar="NAME", help="toolset name: 1-32 of a-z, 0-9 and '-'")
    toolsets_set.add_argument(
        "--tool",
        action="append",
        metavar="PATTERN",
        help="an exposed tool name (calc__add) or a glob over them (files__read_*; only *, ? and [...]) "
        "(repeatable)",
    )
    toolsets_set.add_argument(
        "--alias",
        action="append",
        type=_pair("ALIAS", "SERVER__TOOL"),
        metavar="ALIAS=SERVER__TOOL",
        help="show the tool SERVER__TOOL in this toolset as ALIAS (repeatable)",
    )
    toolsets_set.add_argument("--description", metavar="TEXT", help="what the toolset is for")
    toolsets_remove = leaf(toolsets, "remove", _toolsets_remove, "remove a toolset")
    toolsets_remove.add_argument("name", metavar="NAME")

    # credential-encryption keys
    keys = branch("keys", "the keys that encrypt stored upstream credentials")
    leaf(
        keys,
        "list",
        cli_identity.keys_list,
        "list keys and how many stored credentials each seals",
        with_json=True,
    )
    keys_rotate = leaf(
        keys,
        "rotate",
        cli_identity.keys_rotate,
        "re-encrypt every stored credential under a new key (or, with keys from "
        "TOLLHOUSE_SECRET_KEYS, under the first one)",
        with_json=True,
    )
    keys_rotate.add_argument(
        "--reencrypt-only", action="store_true", help="do not add a key; re-encrypt under the active one"
    )
    keys_remove = leaf(
        keys, "remove", cli_identity.keys_remove, "remove a key no stored credential uses", with_json=True
    )
    keys_remove.add_argument("kid", metavar="KID")

    # clients
    clients = branch("clients", "API clients (agents, scripts) and their credentials")
    create = leaf(
        clients, "create", _clients_create, "create a client; prints its credentials once", with_json=True
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--team", metavar="TEAM", help="team the client's usage bills to")
    create.add_argument(
        "--scope", action="append", metavar="SCOPE", help="an extra scope it may be granted (repeatable)"
    )
    leaf(clients, "list", _clients_list, "list clients", with_json=True)
    revoke = leaf(clients, "revoke", _clients_revoke, "revoke a client's credentials")
    revoke.add_argument("client", metavar="CLIENT", help="client id or name")

    # users and teams
    users = branch("users", "people who sign in (built-in authorization server) and their roles")
    users_create = leaf(
        users,
        "create",
        cli_identity.users_create,
        "create a user; the password is read from standard input",
        with_json=True,
    )
    users_create.add_argument("name", metavar="NAME")
    users_create.add_argument(
        "--role", action="append", choices=("admin", "approver", "auditor", "viewer"), help="(repeatable)"
    )
    users_create.add_argument("--team", action="append", metavar="TEAM", help="(repeatable)")
    users_create.add_argument(
        "--no-password", action="store_true", help="create without a password (external sign-in only)"
    )
    leaf(users, "list", cli_identity.users_list, "list users", with_json=True)
    users_show = leaf(users, "show", cli_identity.users_show, "show one user", with_json=True)
    users_show.add_argument("name", metavar="NAME")
    users_update = leaf(
        users,
        "update",
        cli_identity.users_update,
        "change a user's roles, teams, status or password",
        with_json=True,
    )
    users_update.add_argument("name", metavar="NAME")
    users_update.add_argument(
        "--role", action="append", metavar="ROLE", help="the user's roles (repeatable; '' for none)"
    )
    users_update.add_argument(
        "--team", action="append", metavar="TEAM", help="the user's teams (repeatable; '' for none)"
    )
    state = users_update.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="refuse sign-in and revoke the user's tokens")
    state.add_argument("--enable", action="store_true", help="allow sign-in again")
    users_update.add_argument("--password", action="store_true", help="set a new password (from stdin)")
    users_remove = leaf(users, "remove", cli_identity.users_remove, "remove a user and revoke their tokens")
    users_remove.add_argument("name", metavar="NAME")
    teams = branch("teams", "teams: what clients bill to and users belong to")
    teams_create = leaf(teams, "create", cli_identity.teams_create, "create a team", with_json=True)
    teams_create.add_argument("name", metavar="NAME")
    teams_create.add_argument("--description", metavar="TEXT")
    leaf(teams, "list", cli_identity.teams_list, "list teams", with_json=True)
    teams_remove = leaf(teams, "remove", cli_identity.teams_remove, "remove a team")
    teams_remove.add_argument("name", metavar="NAME")

    # policies
    cli_usage.add_usage_commands(branch, leaf)
    cli_audit.add_audit_commands(branch, leaf)
    cli_policy.add_policy_commands(
        branch,
        leaf,
        lambda group, name, handler, summary: leaf(group, name, handler, summary, local=True, with_json=True),
    )

    cli_quotas.add_quota_commands(branch, leaf)

    # tokens and authentication
    token = leaf(
        commands,
        "token",
        cli_identity.token,
        "get an access token with client credentials (for scripts and curl)",
        with_json=True,
    )
    token.add_argument("--client-id", required=True, metavar="ID")
    token.add_argument(
        "--client-secret", metavar="SECRET", help="the client's secret (env TOLLHOUSE_CLIENT_SECRET)"
    )
    token.add_argument("--scope", action="append", metavar="SCOPE", help="(repeatable; default: mcp a2a)")
    token.add_argument("--resource", metavar="URI", help="the endpoint the token is for (default: all)")
    auth = branch("auth", "authentication records")
    failures = leaf(
        auth, "failures", cli_identity.auth_failures, "recent failed authentications", with_json=True
    )
    failures.add_argument("--limit", type=int, default=50, metavar="N")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `tollhouse` command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler: Handler = args.handler
        command_parser: argparse.ArgumentParser = args.parser
        try:
            return handler(args)
        except UsageError as exc:
            command_parser.error(str(exc))
    except SystemExit as exc:
        # argparse exits for --help, --version and usage errors; report its status instead.
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`tollhouse tools list | head`): stop quietly, as Unix tools do,
        # and keep the interpreter's final flush from raising again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
