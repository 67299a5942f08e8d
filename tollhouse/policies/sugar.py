"""YAML sugar for the common grants, compiled to Cedar text (the engine only ever sees Cedar).

    - id: support-read
      allow:
        team: support                       # or user / client / role; a name or a list
        tools: ["files__read_*"]            # globs on the exposed name (`*` only)
        actions: [call_tool]                # default: call_tool (call_agent for agents)
        when_arguments: {path: {like: "/public/*"}}
        until: "2026-12-31T18:00:00Z"         # a time-limited grant: context.time < that instant
      guardrails: {arguments: {pii: redact}, results: {secrets: block}}
    - id: no-deletes
      deny: {tools: ["*__delete_*"]}

Selectors of different kinds must all hold (AND); the values of one selector are alternatives
(OR). A single server — given as `servers: [s]` or as the literal server part of every tool
glob — becomes the policy's scope (`resource in Server::"s"`), which is what the engine indexes
on: such grants cost nothing for requests on other servers. Guardrails become the annotations
`@guardrail_arguments` / `@guardrail_results`. Unknown keys are errors that name the key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from tollhouse.policies.compile import GUARDRAIL_ACTIONS
from tollhouse.policies.model import ACTIONS, PolicyRecord
from tollhouse.policies.schema import cedar_string
from tollhouse.registry.models import SEPARATOR

__all__ = ["SugarError", "compile_entry", "compile_sugar", "glob_pattern", "until_epoch"]

_ENTRY_KEYS = ("id", "description", "cedar", "allow", "deny", "guardrails")
_RULE_KEYS = (
    "team",
    "user",
    "client",
    "role",
    "tools",
    "servers",
    "toolsets",
    "agents",
    "actions",
    "when_arguments",
    "scopes",
    "source_ips",
    "until",
)
_PRINCIPALS = {
    "team": ("in", "Team"),
    "role": ("in", "Role"),
    "user": ("==", "User"),
    "client": ("==", "Client"),
}
_OPERATORS = ("like", "not_like", "equals", "not_equals", "one_of", "lt", "le", "gt", "ge", "present")
_COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


class SugarError(ValueError):
    """A sugar entry that cannot be compiled; the message names the entry's key path."""


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
        raise SugarError(f"{where}: expected a non-empty string or list of strings")
    return list(items)


def _check_keys(data: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise SugarError(f"{where}: expected a mapping")
    for key in data:
        if key not in allowed:
            raise SugarError(f"{where}: unknown key {key!r} (known: {', '.join(allowed)})")
    return data


def glob_pattern(glob: str) -> str:
    """A `*` glob as a Cedar `like` pattern literal: `*` stays a wildcard, everything else is literal."""
    if "?" in glob or "[" in glob:
        raise SugarError(f"glob {glob!r}: only '*' is supported as a wildcard")
    return '"' + "*".join(cedar_string(part)[1:-1] for part in glob.split("*")) + '"'


def _any(conditions: list[str]) -> str:
    return conditions[0] if len(conditions) == 1 else "(" + " || ".join(conditions) + ")"


def _principal(rule: Mapping[str, Any], where: str) -> tuple[str, list[str]]:
    """The principal scope and, when several principals are named, a condition instead."""
    named = [
        (key, name) for key in _PRINCIPALS if key in rule for name in _strings(rule[key], f"{where}.{key}")
    ]
    terms = [f"principal {_PRINCIPALS[k][0]} {_PRINCIPALS[k][1]}::{cedar_string(n)}" for k, n in named]
    if not terms:
        return "principal", []
    if len(terms) == 1:
        return terms[0], []
    return "principal", [_any(terms)]


def _resource(rule: Mapping[str, Any], where: str) -> tuple[str, list[str]]:
    """The resource scope (one server, tool or agent if possible: the engine indexes it) and conditions."""
    conditions: list[str] = []
    tools = _strings(rule["tools"], f"{where}.tools") if "tools" in rule else []
    servers = _strings(rule["servers"], f"{where}.servers") if "servers" in rule else []
    toolsets = _strings(rule["toolsets"], f"{where}.toolsets") if "toolsets" in rule else []
    agents = _strings(rule["agents"], f"{where}.agents") if "agents" in rule else []
    if agents and (tools or servers or toolsets):
        raise SugarError(f"{where}: agents cannot be combined with tools, servers or toolsets")
    if agents:
        if len(agents) == 1:
            return f"resource in Agent::{cedar_string(agents[0])}", []
        return "resource", [_any([f"resource in Agent::{cedar_string(a)}" for a in agents])]
    literal_servers = {t.partition(SEPARATOR)[0] for t in tools if SEPARATOR in t.partition("*")[0]}
    scope = "resource"
    if len(servers) == 1:
        scope = f"resource in Server::{cedar_string(servers[0])}"
    elif servers:
        conditions.append(_any([f"resource in Server::{cedar_string(s)}" for s in servers]))
    elif (
        tools
        and len(literal_servers) == 1
        and all(t.startswith(next(iter(literal_servers)) + SEPARATOR) for t in tools)
    ):
        scope = f"resource in Server::{cedar_string(next(iter(literal_servers)))}"
    if len(tools) == 1 and "*" not in tools[0] and not servers and not toolsets:
        return f"resource == Tool::{cedar_string(tools[0])}", conditions
    if tools:
        conditions.append(_any([f"resource.name like {glob_pattern(t)}" for t in tools]))
    if toolsets:
        sets = [f"resource in Toolset::{cedar_string(t)}" for t in toolsets]
        if scope == "resource" and len(toolsets) == 1:
            scope = sets[0]
        else:
            conditions.append(_any(sets))
    return scope, conditions


def _actions(rule: Mapping[str, Any], where: str) -> str:
    default = ["call_agent"] if "agents" in rule else ["call_tool"]
    actions = _strings(rule["actions"], f"{where}.actions") if "actions" in rule else default
    for action in actions:
        if action not in ACTIONS:
            raise SugarError(f"{where}.actions: unknown action {action!r} (known: {', '.join(ACTIONS)})")
    if len(actions) == 1:
        return f'action == Action::"{actions[0]}"'
    return "action in [" + ", ".join(f'Action::"{a}"' for a in actions) + "]"


def _literal(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return cedar_string(value)
    raise SugarError(f"{where}: expected a string, an integer or a boolean")


def _argument_conditions(spec: Any, where: str) -> list[str]:
    spec = _check_keys(spec, [k for k in spec] if isinstance(spec, Mapping) else [], where)
    conditions: list[str] = []
    for name, tests in spec.items():
        if not isinstance(name, str) or not name:
            raise SugarError(f"{where}: argument names must be non-empty strings")
        here = f"{where}.{name}"
        ref = f"context.arguments[{cedar_string(name)}]"
        if isinstance(tests, str):
            tests = {"like": tests}
        tests = _check_keys(tests, _OPERATORS, here)
        for op, value in tests.items():
            at = f"{here}.{op}"
            if op in ("like", "not_like"):
                if not isinstance(value, str):
                    raise SugarError(f"{at}: expected a glob string")
                test = f"{ref} like {glob_pattern(value)}"
                conditions.append(test if op == "like" else f"!({test})")
            elif op in ("equals", "not_equals"):
                conditions.append(f"{ref} {'==' if op == 'equals' else '!='} {_literal(value, at)}")
            elif op == "one_of":
                if not isinstance(value, list) or not value:
                    raise SugarError(f"{at}: expected a non-empty list")
                items = ", ".join(_literal(v, at) for v in value)
                conditions.append(f"[{items}].contains({ref})")
            elif op == "present":
                if not isinstance(value, bool):
                    raise SugarError(f"{at}: expected true or false")
                test = f"context.arguments has {cedar_string(name)}"
                conditions.append(test if value else f"!({test})")
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SugarError(f"{at}: expected an integer")
                conditions.append(f"{ref} {_COMPARISONS[op]} {value}")
    return conditions


def _context_conditions(rule: Mapping[str, Any], where: str) -> list[str]:
    conditions: list[str] = []
    if "scopes" in rule:
        scopes = ", ".join(cedar_string(s) for s in _strings(rule["scopes"], f"{where}.scopes"))
        conditions.append(f"context.scopes.containsAll([{scopes}])")
    if "source_ips" in rule:
        ranges = []
        for cidr in _strings(rule["source_ips"], f"{where}.source_ips"):
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SugarError(f"{where}.source_ips: {cidr!r} is not an address or network") from None
            ranges.append(f'context.source_ip.isInRange(ip("{network}"))')
        conditions.append(_any(ranges))
    if "when_arguments" in rule:
        conditions += _argument_conditions(rule["when_arguments"], f"{where}.when_arguments")
    if "until" in rule:
        conditions.append(f"context.time < {until_epoch(rule['until'], f'{where}.until')}")
    return conditions


def until_epoch(value: Any, where: str = "until") -> int:
    """A rule's `until` (RFC 3339 with an offset, or epoch seconds) as epoch seconds.

    Raises:
        SugarError: not a timestamp with an offset, or not a positive whole number.
    """
    if isinstance(value, datetime):  # YAML reads an unquoted timestamp as one
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise SugarError(f"{where}: {value!r} is not an RFC 3339 timestamp") from None
    elif isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    else:
        raise SugarError(f"{where}: expected an RFC 3339 timestamp or epoch seconds")
    if moment.tzinfo is None:
        raise SugarError(f"{where}: give the timestamp's offset (Z or +HH:MM)")
    return int(moment.timestamp())


def _guardrail_annotations(spec: Any, where: str) -> list[str]:
    spec = _check_keys(spec, ("arguments", "results"), where)
    lines = []
    for stage, detectors in spec.items():
        detectors = _check_keys(
            detectors, list(detectors) if isinstance(detectors, Mapping) else [], f"{where}.{stage}"
        )
        items = []
        for detector, action in detectors.items():
            if action not in GUARDRAIL_ACTIONS:
                raise SugarError(
                    f"{where}.{stage}.{detector}: action must be one of {', '.join(GUARDRAIL_ACTIONS)}"
                )
            items.append(f"{detector}:{action}")
        if items:
            lines.append(f"@guardrail_{stage}({cedar_string(', '.join(items))})")
    return lines


def compile_sugar(policy_id: str, sugar: Mapping[str, Any], *, description: str | None = None) -> str:
    """The Cedar text of one sugar policy: `sugar` holds `allow` or `deny`, and maybe `guardrails`.

    Raises:
        SugarError: an unknown key, a bad value, or not exactly one of allow/deny.
    """
    _check_keys(sugar, ("allow", "deny", "guardrails"), policy_id)
    effects = [key for key in ("allow", "deny") if key in sugar]
    if len(effects) != 1:
        raise SugarError(f"{policy_id}: give exactly one of 'allow' or 'deny'")
    where = f"{policy_id}.{effects[0]}"
    rule = _check_keys(sugar[effects[0]] or {}, _RULE_KEYS, where)
    principal, conditions = _principal(rule, where)
    resource, resource_conditions = _resource(rule, where)
    conditions += resource_conditions + _context_conditions(rule, where)
    annotations = [f"@id({cedar_string(policy_id)})"]
    if description:
        annotations.append(f"@description({cedar_string(description)})")
    if "guardrails" in sugar:
        if effects[0] == "deny":
            raise SugarError(f"{policy_id}.guardrails: guardrails belong on allow rules (a deny never runs)")
        annotations += _guardrail_annotations(sugar["guardrails"], f"{policy_id}.guardrails")
    effect = "permit" if effects[0] == "allow" else "forbid"
    head = f"{effect} (\n  {principal},\n  {_actions(rule, where)},\n  {resource}\n)"
    body = " when {\n  " + " &&\n  ".join(conditions) + "\n}" if conditions else ""
    return "\n".join(annotations) + "\n" + head + body + ";\n"


def compile_entry(entry: Mapping[str, Any], *, source: str = "config") -> PolicyRecord:
    """A policy entry as written in a config or policy file: `{id, description?, cedar | allow | deny,
    guardrails?}` -> PolicyRecord (sugar compiled to Cedar)."""
    _check_keys(entry, _ENTRY_KEYS, "policy")
    policy_id = entry.get("id")
    if not isinstance(policy_id, str) or not policy_id:
        raise SugarError("policy: 'id' is required")
    description = entry.get("description")
    if description is not None and not isinstance(description, str):
        raise SugarError(f"{policy_id}.description: expected a string")
    if "cedar" in entry:
        if any(key in entry for key in ("allow", "deny", "guardrails")):
            raise SugarError(
                f"{policy_id}: give either 'cedar' or allow/deny sugar (guardrails as annotations)"
            )
        if not isinstance(entry["cedar"], str):
            raise SugarError(f"{policy_id}.cedar: expected Cedar text")
        return PolicyRecord(policy_id, entry["cedar"], description, source)
    sugar = {key: entry[key] for key in ("allow", "deny", "guardrails") if key in entry}
    return PolicyRecord(
        policy_id, compile_sugar(policy_id, sugar, description=description), description, source
    )
