"""Cedar entities and context for one request, as the small JSON documents cedarpy parses.

No schema is passed at evaluation (the arguments are free-form), so every value is written in
Cedar's typed JSON: an address as the `ip` extension, sets as lists. The call's arguments come
from the caller and are made safe here: Cedar reads `{"__entity": …}` and `{"__extn": …}` as an
entity reference or an extension value, so a record holding such a key reaches policy as its JSON
text instead; Cedar has no null and no floating point, so nulls are dropped (an absent argument)
and non-integer numbers (and integers beyond 64 bits) become strings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from tollhouse.policies.model import (
    AgentRef,
    PrincipalView,
    PromptRef,
    RequestFacts,
    ResourceRef,
    SkillRef,
    TargetRef,
    ToolRef,
)

__all__ = [
    "EntityUid",
    "context_json",
    "principal_entities",
    "principal_uid",
    "resource_entities",
    "resource_uid",
    "safe_arguments",
    "safe_ip",
    "uid_text",
]

EntityUid = tuple[str, str]  # (type, id)

_I64 = (-(2**63), 2**63 - 1)
_ESCAPE_KEYS = frozenset({"__entity", "__extn", "__expr"})
_MAX_DEPTH = 16
UNSPECIFIED_IP = "0.0.0.0"  # noqa: S104 - a value for policy, not a bind address


def principal_uid(principal: PrincipalView) -> EntityUid:
    return ("User", principal.subject) if principal.kind == "user" else ("Client", principal.subject)


def resource_uid(resource: TargetRef) -> EntityUid:
    if isinstance(resource, ToolRef):
        return ("Tool", resource.exposed)
    if isinstance(resource, PromptRef):
        return ("Prompt", resource.exposed)
    if isinstance(resource, ResourceRef):
        return ("Resource", resource.uri)
    if isinstance(resource, AgentRef):
        return ("Agent", resource.agent)
    return ("Skill", f"{resource.agent}/{resource.skill}")


def uid_text(uid: EntityUid) -> str:
    """`Type::"id"` for the requests that need the textual form (partial evaluation)."""
    escaped = uid[1].replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    escaped = escaped.replace("\r", "\\r").replace("\t", "\\t").replace("\0", "\\0")
    return f'{uid[0]}::"{escaped}"'


def _ref(uid: EntityUid) -> dict[str, str]:
    return {"type": uid[0], "id": uid[1]}


def _entity(uid: EntityUid, attrs: Mapping[str, Any], parents: Iterable[EntityUid] = ()) -> dict[str, Any]:
    return {"uid": _ref(uid), "attrs": dict(attrs), "parents": [_ref(p) for p in parents]}


def principal_entities(principal: PrincipalView) -> list[dict[str, Any]]:
    """The principal's entity, a member of its teams and roles."""
    uid = principal_uid(principal)
    parents = [("Team", t) for t in principal.teams] + [("Role", r) for r in principal.roles]
    attrs = {"subject": principal.subject} if principal.kind == "user" else {"client_id": principal.subject}
    return [_entity(uid, attrs, parents)]


def resource_entities(resource: TargetRef) -> list[dict[str, Any]]:
    """The resource's entity and its server or agent (so `resource in Server::"s"` and
    `Server::"s".trusted` both work). Upstream hints are attributes only for trusted servers."""
    uid = resource_uid(resource)
    if isinstance(resource, ToolRef):
        attrs: dict[str, Any] = {"name": resource.exposed, "server": resource.server, "tool": resource.tool}
        if resource.server_trusted:
            if resource.read_only is not None:
                attrs["read_only"] = resource.read_only
            if resource.destructive is not None:
                attrs["destructive"] = resource.destructive
        parents = [("Server", resource.server)] + [("Toolset", t) for t in resource.toolsets]
        return [_entity(uid, attrs, parents), _server(resource.server, resource.server_trusted)]
    if isinstance(resource, PromptRef):
        attrs = {"name": resource.exposed, "server": resource.server, "prompt": resource.prompt}
        return [
            _entity(uid, attrs, [("Server", resource.server)]),
            _server(resource.server, resource.server_trusted),
        ]
    if isinstance(resource, ResourceRef):
        attrs = {"name": resource.name or resource.uri, "server": resource.server, "uri": resource.uri}
        return [
            _entity(uid, attrs, [("Server", resource.server)]),
            _server(resource.server, resource.server_trusted),
        ]
    if isinstance(resource, AgentRef):
        return [_entity(uid, {"name": resource.agent})]
    assert isinstance(resource, SkillRef)
    attrs = {"name": uid[1], "agent": resource.agent, "skill": resource.skill}
    return [
        _entity(uid, attrs, [("Agent", resource.agent)]),
        _entity(("Agent", resource.agent), {"name": resource.agent}),
    ]


def _server(name: str, trusted: bool) -> dict[str, Any]:
    return _entity(("Server", name), {"name": name, "trusted": trusted})


def safe_ip(address: str | None) -> str:
    """A textual address Cedar's `ip()` accepts: the address itself, or 0.0.0.0 if there is none."""
    if not address:
        return UNSPECIFIED_IP
    try:
        return str(ipaddress.ip_address(address.split("%", 1)[0].strip("[]")))
    except ValueError:
        return UNSPECIFIED_IP


def _safe_value(value: Any, depth: int) -> Any:
    if value is None:
        return None
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if _I64[0] <= value <= _I64[1] else str(value)
    if isinstance(value, float):
        return repr(value)
    if depth >= _MAX_DEPTH:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(value, Mapping):
        if any(key in _ESCAPE_KEYS for key in value):
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
        return safe_arguments(value, depth + 1)
    if isinstance(value, list | tuple):
        items = (_safe_value(item, depth + 1) for item in value)
        return [item for item in items if item is not None]
    return str(value)


def safe_arguments(arguments: Mapping[Any, Any], depth: int = 0) -> dict[str, Any]:
    """The call's arguments as a Cedar record value (see the module docstring for what changes)."""
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        safe = _safe_value(value, depth)
        if safe is not None:
            out[str(key)] = safe
    return out


def context_json(fields: frozenset[str], facts: RequestFacts, arguments: Mapping[str, Any] | None) -> str:
    """The Cedar context holding only `fields` (the ones the applicable policies read; "*" = all).

    Arguments are not included when `arguments` is None (the list phase's concrete evaluations).
    """
    every = "*" in fields
    context: dict[str, Any] = {}
    if arguments is not None and (every or "arguments" in fields):
        context["arguments"] = safe_arguments(arguments)
    if every or "scopes" in fields:
        context["scopes"] = list(facts.scopes)
    if every or "client_id" in fields:
        context["client_id"] = facts.client_id or ""
    if every or "source_ip" in fields:
        context["source_ip"] = {"__extn": {"fn": "ip", "arg": safe_ip(facts.source_ip)}}
    if every or "protocol_version" in fields:
        context["protocol_version"] = facts.protocol_version
    if every or "time" in fields:
        context["time"] = int(facts.time)
    if every or "method" in fields:
        context["method"] = facts.method
    return orjson.dumps(context).decode()
