"""Policy test files: YAML cases (principal, action, resource, context → expected decision).

    cases:                                   # or a bare list
      - name: support reads public files
        principal: {user: alice, teams: [support], roles: [], scopes: [mcp]}   # or client: ci-bot
        action: call_tool                    # default call_tool
        resource: {tool: files__read}        # server from the name; toolsets, read_only,
                                             # destructive, trusted optional; or prompt: /
                                             # resource: {uri, server} / agent: / skill: a/s
        context: {arguments: {path: /public/a}, source_ip: 10.1.2.3, time: 1767225600}
        expect: allow                        # allow | deny | visible | hidden

`visible`/`hidden` check the list phase (the arguments are ignored there). `tollhouse policy test
FILE` runs a file with `run_cases`; each result carries the decision and, on a mismatch, the
engine's explanation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tollhouse.policies.engine import Explanation, PolicyEngine
from tollhouse.policies.model import (
    AgentRef,
    Decision,
    PrincipalView,
    PromptRef,
    RequestFacts,
    ResourceRef,
    SkillRef,
    TargetRef,
    ToolRef,
)
from tollhouse.registry.models import SEPARATOR

__all__ = ["CaseError", "CaseResult", "parse_cases", "run_cases"]

_CASE_KEYS = ("name", "principal", "action", "resource", "context", "expect")
_PRINCIPAL_KEYS = ("user", "client", "teams", "roles", "scopes")
_RESOURCE_KEYS = (
    "tool",
    "prompt",
    "resource",
    "agent",
    "skill",
    "server",
    "toolsets",
    "read_only",
    "destructive",
    "trusted",
    "uri",
)
_CONTEXT_KEYS = ("arguments", "source_ip", "time", "protocol_version", "client_id")
_EXPECTATIONS = ("allow", "deny", "visible", "hidden")


class CaseError(ValueError):
    """A malformed test file; the message names the case and key."""


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    principal: PrincipalView
    action: str
    resource: TargetRef
    facts: RequestFacts
    arguments: Mapping[str, Any]
    expect: str


@dataclass(frozen=True, slots=True)
class CaseResult:
    """One case's outcome: `passed`, what was expected and got, and an explanation on failure."""

    name: str
    passed: bool
    expected: str
    actual: str
    decision: Decision | None
    explanation: Explanation | None = None


def _mapping(value: Any, keys: Sequence[str], where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CaseError(f"{where}: expected a mapping")
    for key in value:
        if key not in keys:
            raise CaseError(f"{where}: unknown key {key!r} (known: {', '.join(keys)})")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CaseError(f"{where}: expected a list of names")
    return tuple(sorted(set(value)))


def _principal(value: Any, where: str) -> tuple[PrincipalView, tuple[str, ...], str | None]:
    data = _mapping(value, _PRINCIPAL_KEYS, where)
    user, client = data.get("user"), data.get("client")
    if not isinstance(user, str | None) or not isinstance(client, str | None) or not (user or client):
        raise CaseError(f"{where}: give `user` and/or `client` (names)")
    teams, roles = _names(data.get("teams"), f"{where}.teams"), _names(data.get("roles"), f"{where}.roles")
    scopes = _names(data.get("scopes"), f"{where}.scopes")
    if user:
        return PrincipalView(user, "user", client, teams, roles), scopes, client
    assert client is not None
    return PrincipalView(client, "client", client, teams, roles), scopes, client


def _server_of(exposed: str, data: Mapping[str, Any], where: str) -> tuple[str, str]:
    server, sep, name = exposed.partition(SEPARATOR)
    server = data.get("server") or server
    if not sep and "server" not in data:
        raise CaseError(f"{where}: {exposed!r} is not 'server{SEPARATOR}name'; give `server`")
    return str(server), name or exposed


def _resource(value: Any, where: str) -> TargetRef:
    data = _mapping(value, _RESOURCE_KEYS, where)
    trusted = bool(data.get("trusted", False))
    if "tool" in data:
        server, tool = _server_of(str(data["tool"]), data, where)
        return ToolRef(
            exposed=str(data["tool"]),
            server=server,
            tool=tool,
            toolsets=_names(data.get("toolsets"), f"{where}.toolsets"),
            read_only=data.get("read_only"),
            destructive=data.get("destructive"),
            server_trusted=trusted,
        )
    if "prompt" in data:
        server, prompt = _server_of(str(data["prompt"]), data, where)
        return PromptRef(str(data["prompt"]), server, prompt, trusted)
    if "resource" in data or "uri" in data:
        uri = str(data.get("resource") or data.get("uri"))
        if "server" not in data:
            raise CaseError(f"{where}: a resource needs its `server`")
        return ResourceRef(uri, str(data["server"]), server_trusted=trusted)
    if "agent" in data:
        return AgentRef(str(data["agent"]))
    if "skill" in data:
        agent, sep, skill = str(data["skill"]).partition("/")
        if not sep:
            raise CaseError(f"{where}.skill: write 'agent/skill'")
        return SkillRef(agent, skill)
    raise CaseError(f"{where}: give one of tool, prompt, resource, agent, skill")


def parse_cases(text: str) -> list[Case]:
    """The cases of a test file. Raises CaseError naming the case and key at fault."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CaseError(f"not YAML: {error}") from None
    if isinstance(data, Mapping):
        data = _mapping(data, ("cases",), "file").get("cases")
    if not isinstance(data, list):
        raise CaseError("file: expected a list of cases (or `cases:` holding one)")
    cases = []
    for i, item in enumerate(data):
        where = f"cases[{i}]"
        raw = _mapping(item, _CASE_KEYS, where)
        name = str(raw.get("name") or where)
        where = f"case {name!r}"
        principal, scopes, client = _principal(raw.get("principal"), f"{where}.principal")
        context = _mapping(raw.get("context") or {}, _CONTEXT_KEYS, f"{where}.context")
        arguments = context.get("arguments") or {}
        if not isinstance(arguments, Mapping):
            raise CaseError(f"{where}.context.arguments: expected a mapping")
        expect = raw.get("expect")
        if expect not in _EXPECTATIONS:
            raise CaseError(f"{where}.expect: one of {', '.join(_EXPECTATIONS)}")
        facts = RequestFacts(
            scopes=scopes,
            client_id=context.get("client_id", client),
            source_ip=context.get("source_ip"),
            protocol_version=str(context.get("protocol_version", "")),
            time=int(context.get("time", 0)),
        )
        cases.append(
            Case(
                name=name,
                principal=principal,
                action=str(raw.get("action", "call_tool")),
                resource=_resource(raw.get("resource"), f"{where}.resource"),
                facts=facts,
                arguments=arguments,
                expect=str(expect),
            )
        )
    return cases


def run_cases(engine: PolicyEngine, cases_yaml_text: str) -> list[CaseResult]:
    """Run a test file against `engine`; one result per case, in order."""
    results = []
    for case in parse_cases(cases_yaml_text):
        try:
            if case.expect in ("visible", "hidden"):
                shown = engine.visible(case.principal, case.resource, case.facts, action=case.action)
                actual, decision = ("visible" if shown else "hidden"), None
            else:
                decision = engine.decide(
                    case.principal, case.action, case.resource, case.facts, case.arguments
                )
                actual = "allow" if decision.allowed else "deny"
        except ValueError as error:
            results.append(CaseResult(case.name, False, case.expect, f"error: {error}", None))
            continue
        passed = actual == case.expect
        explanation = None
        if not passed:
            explanation = engine.explain(
                case.principal, case.action, case.resource, case.facts, case.arguments
            )
        results.append(CaseResult(case.name, passed, case.expect, actual, decision, explanation))
    return results
