"""Plain values the policy engine decides over: policies, principals, resources, facts, decisions.

They are frozen (and so hashable) on purpose: the engine keys its caches on them, so two requests
that would build the same Cedar entities and context share one cache entry, and nothing a caller
changes later can make a cached decision stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tollhouse.auth.principal import Principal

__all__ = [
    "ACTIONS",
    "AgentRef",
    "Decision",
    "GuardrailSpec",
    "PolicyProblem",
    "PolicyRecord",
    "PrincipalView",
    "PromptRef",
    "RequestFacts",
    "ResourceRef",
    "SkillRef",
    "TargetRef",
    "ToolRef",
    "facts_for",
    "principal_view",
]

# The actions Cedar policies govern (the admin API is governed by roles, not by these).
ACTIONS = ("list_tool", "call_tool", "read_resource", "get_prompt", "call_agent")

GuardrailStage = Literal["arguments", "results"]
GuardrailAction = Literal["redact", "block", "record"]


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One policy as stored: a stable unique id and the Cedar text of exactly one policy.

    The id becomes the Cedar policy id and its `@id` annotation, so decisions, errors and the
    audit trail name policies the way the admin wrote them. `source` says where it came from
    (`config`, `api`, `cli`, a file name); it is informational.
    """

    id: str
    cedar: str
    description: str | None = None
    source: str = "api"


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """Why a policy was rejected at load: the policy's id (or "" for the set) and a readable message."""

    policy_id: str
    message: str

    def __str__(self) -> str:
        return f"policy {self.policy_id!r}: {self.message}" if self.policy_id else self.message


@dataclass(frozen=True, slots=True)
class GuardrailSpec:
    """A guardrail a policy asks for: run `detector` on the call's `stage` and `action` what it finds.

    Carried as Cedar annotations (`@guardrail_arguments("pii:redact")`) on the permits that allowed
    the call; the detectors themselves live elsewhere and are looked up by name.
    """

    stage: GuardrailStage
    detector: str
    action: GuardrailAction


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one evaluation, with what the audit trail needs to explain it.

    `policy_ids` are the policies that decided: the satisfied permits on allow, the satisfied
    forbids on an explicit deny, and none on a default deny. `errors` are Cedar's evaluation
    errors (a policy that read an absent argument, say); an erroring policy does not apply.
    `cached` is True when the decision came from the engine's decision cache.
    """

    allowed: bool
    policy_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    guardrails: tuple[GuardrailSpec, ...] = ()
    cached: bool = False


@dataclass(frozen=True, slots=True)
class PrincipalView:
    """What policy sees of a caller: the Cedar principal and the groups it is a member of.

    A `user` is `User::"<subject>"`; a `client` (acting for itself) is `Client::"<client id>"`.
    Teams and roles become the principal's parents, so `principal in Team::"x"` works.
    """

    subject: str
    kind: Literal["user", "client"] = "user"
    client_id: str | None = None
    teams: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """The request's context, apart from the call's arguments.

    `source_ip` is a textual address (an unparseable or missing one reaches policy as `0.0.0.0`);
    `time` is epoch seconds. Only the fields the applicable policies read go into Cedar's
    context and into the decision-cache key.
    """

    scopes: tuple[str, ...] = ()
    client_id: str | None = None
    source_ip: str | None = None
    protocol_version: str = ""
    time: int = 0
    method: str = ""  # an agent call's A2A 1.0 method (SendMessage, GetTask, …); MCP: the MCP method


@dataclass(frozen=True, slots=True)
class ToolRef:
    """A tool as a Cedar resource: `Tool::"<exposed>"`, in its `Server` and in each `Toolset` holding it.

    `read_only` and `destructive` are the upstream's `readOnlyHint`/`destructiveHint`; they reach
    policy only when `server_trusted` (an admin marked the server trusted), since an untrusted
    upstream could otherwise relax policy by describing itself.
    """

    exposed: str
    server: str
    tool: str
    toolsets: tuple[str, ...] = ()
    read_only: bool | None = None
    destructive: bool | None = None
    server_trusted: bool = False


@dataclass(frozen=True, slots=True)
class PromptRef:
    """A prompt as a Cedar resource: `Prompt::"<exposed>"` in its `Server` (for `get_prompt`)."""

    exposed: str
    server: str
    prompt: str
    server_trusted: bool = False


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """An MCP resource as a Cedar resource: `Resource::"<exposed uri>"` in its `Server` (`read_resource`)."""

    uri: str
    server: str
    name: str = ""
    server_trusted: bool = False


@dataclass(frozen=True, slots=True)
class AgentRef:
    """An A2A agent as a Cedar resource: `Agent::"<agent>"` (for `call_agent`)."""

    agent: str


@dataclass(frozen=True, slots=True)
class SkillRef:
    """One skill of an A2A agent: `Skill::"<agent>/<skill>"`, in `Agent::"<agent>"` (for `call_agent`)."""

    agent: str
    skill: str


TargetRef = ToolRef | PromptRef | ResourceRef | AgentRef | SkillRef


def principal_view(principal: Principal) -> PrincipalView:
    """The policy view of an authenticated principal (teams and roles sorted, so equal callers hash equal)."""
    if principal.kind == "user":
        return PrincipalView(
            subject=principal.subject,
            kind="user",
            client_id=principal.client_id,
            teams=tuple(sorted(set(principal.teams))),
            roles=tuple(sorted(set(principal.roles))),
        )
    return PrincipalView(
        subject=principal.client_id or principal.subject,
        kind="client",
        client_id=principal.client_id or principal.subject,
        teams=tuple(sorted(set(principal.teams))),
        roles=tuple(sorted(set(principal.roles))),
    )


def facts_for(
    principal: Principal, *, source_ip: str | None = None, protocol_version: str = "", time: int = 0
) -> RequestFacts:
    """The request facts for a principal's call: its scopes and client id plus what the transport knows."""
    return RequestFacts(
        scopes=tuple(sorted(set(principal.scopes))),
        client_id=principal.client_id,
        source_ip=source_ip,
        protocol_version=protocol_version,
        time=time,
    )
