"""CLI commands for policies: list, show, set, remove; validate, test and explain.

`validate` and `test --policies FILE` run locally (no gateway needed: a CI job can check a
policy change before it ships); the rest ask the gateway, so `test` and `explain` judge by
the policies it actually runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tollhouse.gateway.cli_common import (
    CliError,
    UsageError,
    admin_client,
    clean,
    fields,
    items_of,
    print_json,
    seg,
    table,
)
from tollhouse.registry.config import ConfigError, parse_yaml, policy_from_dict

__all__ = [
    "policy_explain",
    "policy_list",
    "policy_remove",
    "policy_set",
    "policy_show",
    "policy_test",
    "policy_validate",
]


def _read(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None


def _policies_of(path: str) -> list[dict[str, Any]]:
    """The `policies:` entries of a YAML file (a config file, or one with only that section)."""
    try:
        data = parse_yaml(_read(path), source=path)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    entries = data.get("policies")
    if not isinstance(entries, list):
        raise CliError(f"{path}: no 'policies' list")
    return [e for e in entries if isinstance(e, dict)]


def policy_list(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        data = api.request("GET", "/policies")
    if args.json:
        print_json(data)
        return 0
    policies = items_of(data)
    if not policies:
        print(f"no policies (version {clean(data.get('version'))}): every call is denied")
        return 0
    table(
        ("ID", "KIND", "UPDATED", "BY", "DESCRIPTION"),
        (
            (
                p.get("id"),
                "sugar" if any(k in p for k in ("allow", "deny")) else "cedar",
                p.get("updated_at"),
                p.get("updated_by"),
                p.get("description"),
            )
            for p in policies
        ),
    )
    return 0


def policy_show(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        policy = api.request("GET", f"/policies/{seg(args.id)}")
    if args.json:
        print_json(policy)
        return 0
    fields(
        (
            ("id", clean(policy.get("id"))),
            ("description", clean(policy.get("description"))),
            ("updated", f"{clean(policy.get('updated_at'))} by {clean(policy.get('updated_by'))}"),
        )
    )
    # Cedar text is shown as written (multi-line); it is the admin's own, not upstream text.
    print(str(policy.get("cedar", "")))
    return 0


def policy_set(args: argparse.Namespace) -> int:
    if (args.cedar is None) == (args.file is None):
        raise UsageError("give the policy with --cedar TEXT or --file FILE (Cedar text, or - for stdin)")
    body: dict[str, Any] = {"cedar": args.cedar if args.cedar is not None else _read(args.file)}
    if args.description:
        body["description"] = args.description
    with admin_client(args) as api:
        policy = api.request("PUT", f"/policies/{seg(args.id)}", body=body)
        status = api.last_status
    if args.json:
        print_json(policy)
    else:
        print(f"{'created' if status == 201 else 'updated'} policy {clean(policy.get('id'))}")
    return 0


def policy_remove(args: argparse.Namespace) -> int:
    with admin_client(args) as api:
        api.request("DELETE", f"/policies/{seg(args.id)}")
    print(f"removed policy {clean(args.id)}")
    return 0


def policy_validate(args: argparse.Namespace) -> int:
    from tollhouse.gateway.authorization import validate_entries

    raw = _policies_of(args.file)
    try:
        entries = [policy_from_dict(e, path=f"policies[{i}]") for i, e in enumerate(raw)]
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    problems = validate_entries(entries)
    if args.json:
        print_json({"valid": not problems, "errors": problems, "policies": len(entries)})
    elif problems:
        for problem in problems:
            print(clean(problem))
    else:
        print(f"{len(entries)} policies are valid")
    return 1 if problems else 0


def policy_test(args: argparse.Namespace) -> int:
    import yaml

    try:
        loaded = yaml.safe_load(_read(args.file))
    except yaml.YAMLError as exc:
        raise CliError(f"{args.file}: not YAML: {exc}") from None
    cases = loaded.get("cases") if isinstance(loaded, dict) else loaded
    if not isinstance(cases, list):
        raise CliError(f"{args.file}: expected a list of cases (or `cases:` holding one)")
    if args.policies:
        from tollhouse.gateway.authorization import PolicyProblem, local_test

        try:
            entries = [
                policy_from_dict(e, path=f"policies[{i}]") for i, e in enumerate(_policies_of(args.policies))
            ]
            results = local_test(cases, entries)
        except (ConfigError, PolicyProblem, ValueError) as exc:
            raise CliError(str(exc)) from None
        outcome: dict[str, Any] = {
            "passed": sum(1 for r in results if r["passed"]),
            "failed": sum(1 for r in results if not r["passed"]),
            "results": results,
        }
    else:
        with admin_client(args) as api:
            outcome = api.request("POST", "/policies/test", body={"cases": cases})
    if args.json:
        print_json(outcome)
    else:
        for result in outcome.get("results", []):
            verdict = "PASS" if result.get("passed") else "FAIL"
            expected, actual = result.get("expected"), result.get("actual")
            print(f"{verdict}  {clean(result.get('name'))}: expected {expected}, got {actual}")
            if not result.get("passed") and result.get("explanation"):
                for line in str(result["explanation"]).splitlines():
                    print(f"      {clean(line)}")
        print(f"{outcome.get('passed', 0)} passed, {outcome.get('failed', 0)} failed")
    return 1 if outcome.get("failed") else 0


def policy_explain(args: argparse.Namespace) -> int:
    if (args.user is None) == (args.client is None) and args.user is None:
        raise UsageError("give --user NAME or --client ID (or both: a user through a client)")
    principal: dict[str, Any] = {
        "teams": args.team or [],
        "roles": args.role or [],
        "scopes": args.scope or [],
    }
    if args.user:
        principal["user"] = args.user
    if args.client:
        principal["client"] = args.client
    targets = [k for k in ("tool", "prompt", "resource", "agent") if getattr(args, k)]
    if len(targets) != 1:
        raise UsageError("name exactly one of --tool, --prompt, --resource or --agent")
    resource: dict[str, Any] = {targets[0]: getattr(args, targets[0])}
    if args.server:
        resource["server"] = args.server
    if args.toolset:
        resource["toolsets"] = args.toolset
    context: dict[str, Any] = {}
    if args.arguments:
        try:
            context["arguments"] = json.loads(args.arguments)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--arguments is not JSON: {exc.msg}") from None
    if args.source_ip:
        context["source_ip"] = args.source_ip
    action = args.action or {"tool": "call_tool", "prompt": "get_prompt", "resource": "read_resource"}.get(
        targets[0], "call_agent"
    )
    body = {"principal": principal, "action": action, "resource": resource, "context": context}
    with admin_client(args) as api:
        explanation = api.request("POST", "/policies/explain", body=body)
    if args.json:
        print_json(explanation)
    else:
        for line in str(explanation.get("text", "")).splitlines():
            print(clean(line))
    return 0 if explanation.get("allowed") else 3


def add_policy_commands(branch: Any, leaf: Any, local: Any) -> None:
    """Register `tollhouse policy …` (`branch`/`leaf` are build_parser's helpers)."""
    policy = branch("policy", "authorization policies (Cedar): manage, validate, test, explain")
    leaf(policy, "list", policy_list, "list the policies", with_json=True)
    show = leaf(policy, "show", policy_show, "show one policy and its Cedar text", with_json=True)
    show.add_argument("id", metavar="ID")
    set_ = leaf(policy, "set", policy_set, "create or replace a policy (Cedar text)", with_json=True)
    set_.add_argument("id", metavar="ID")
    set_.add_argument("--cedar", metavar="TEXT", help="the Cedar text")
    set_.add_argument("--file", metavar="FILE", help="a file of Cedar text (- for standard input)")
    set_.add_argument("--description", metavar="TEXT")
    remove = leaf(policy, "remove", policy_remove, "remove a policy")
    remove.add_argument("id", metavar="ID")
    validate = local(
        policy, "validate", policy_validate, "check a file's policies against the schema (locally)"
    )
    validate.add_argument("file", metavar="FILE", help="YAML with a `policies:` list (a config file works)")
    test = leaf(
        policy,
        "test",
        policy_test,
        "run test cases against the gateway's policies (or, with --policies, a file's, locally)",
        with_json=True,
    )
    test.add_argument("file", metavar="FILE", help="YAML test cases (a list, or `cases:` holding one)")
    test.add_argument("--policies", metavar="FILE", help="test these policies instead, without a gateway")
    explain = leaf(
        policy,
        "explain",
        policy_explain,
        "which policies decide a request, and why (exit 3 if denied)",
        with_json=True,
    )
    explain.add_argument("--user", metavar="NAME")
    explain.add_argument("--client", metavar="ID")
    explain.add_argument("--team", action="append", metavar="TEAM")
    explain.add_argument("--role", action="append", metavar="ROLE")
    explain.add_argument("--scope", action="append", metavar="SCOPE")
    explain.add_argument(
        "--action", metavar="ACTION", help="default: from the target (call_tool, get_prompt, …)"
    )
    explain.add_argument("--tool", metavar="SERVER__TOOL")
    explain.add_argument("--prompt", metavar="SERVER__PROMPT")
    explain.add_argument("--resource", metavar="URI")
    explain.add_argument("--agent", metavar="AGENT")
    explain.add_argument("--server", metavar="SERVER")
    explain.add_argument("--toolset", action="append", metavar="TOOLSET")
    explain.add_argument("--arguments", metavar="JSON", help="the call's arguments, as a JSON object")
    explain.add_argument("--source-ip", metavar="ADDRESS")
