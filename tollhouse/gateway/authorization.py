"""Authorization in the gateway: the compiled policy set, its two phases, and the record of decisions.

`PolicyService` owns the live `PolicyEngine` (compiled from the stored policies, swapped whole
when they change) and answers the request path's questions with no I/O: may this caller see
this tool in a list (partial evaluation, arguments unknown), and may it call it with these
arguments. `AuthorizeStage` puts the call-phase question in the tools/call pipeline: a denied
call raises exactly what an unknown tool raises. Every decision is recorded (policy ids and
version included) for the audit trail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import orjson

from tollhouse.auth.principal import Principal
from tollhouse.gateway.errors import UnknownTool
from tollhouse.gateway.pipeline import CallContext, Next
from tollhouse.gateway.snapshot import ExposedItem, Snapshot, expose_uri
from tollhouse.gateway.views import toolset_members
from tollhouse.policies.cases import CaseError, parse_cases, run_cases
from tollhouse.policies.compile import PolicyError
from tollhouse.policies.engine import PolicyEngine
from tollhouse.policies.guardrails import GuardrailPolicy
from tollhouse.policies.model import (
    AgentRef,
    Decision,
    GuardrailSpec,
    PolicyRecord,
    PromptRef,
    RequestFacts,
    ResourceRef,
    SkillRef,
    TargetRef,
    ToolRef,
    principal_view,
)
from tollhouse.policies.sugar import SugarError, compile_sugar
from tollhouse.records import RecentRecords
from tollhouse.registry.models import JSONObject, PolicyEntry, Upstream
from tollhouse.registry.policy_store import SqlPolicyStore

__all__ = [
    "AuthorizeStage",
    "DecisionLog",
    "DecisionRecord",
    "PolicyProblem",
    "PolicyService",
    "local_test",
    "validate_entries",
]

logger = logging.getLogger(__name__)


class PolicyProblem(Exception):
    """A policy set that cannot be used; `errors` name each policy and what is wrong."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class DecisionRecord:
    """One call-phase decision, for the audit trail: who, what, the outcome and the policies behind it."""

    at: float
    principal: str
    action: str
    resource: str
    allowed: bool
    policy_ids: tuple[str, ...]
    policy_version: int
    errors: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """As a JSON object."""
        return asdict(self)


class DecisionLog:
    """Recent decisions and guardrail findings (bounded), with counts; listeners get every decision."""

    def __init__(self, capacity: int = 1000) -> None:
        self._decisions: RecentRecords[DecisionRecord] = RecentRecords(capacity)
        self.counts = self._decisions.counts
        self._findings: RecentRecords[dict[str, Any]] = RecentRecords(capacity, counts=self.counts)

    def subscribe(self, listener: Callable[[DecisionRecord], None]) -> None:
        """Call `listener` with every decision."""
        self._decisions.subscribe(listener)

    def record(self, record: DecisionRecord) -> None:
        """Keep one decision."""
        self._decisions.add(record, "allow" if record.allowed else "deny")

    def note_findings(self, found: Any) -> None:
        """Keep what a guardrail found in one call (detectors and paths, never the text)."""
        self._findings.add(
            {
                "at": time.time(),
                "tool": found.tool,
                "principal": found.principal,
                "direction": found.direction,
                "blocked": found.blocked,
                "findings": [
                    {"detector": f.detector, "kind": f.kind, "path": f.path, "action": f.action}
                    for f in found.findings
                ],
            },
            "guardrail_blocked" if found.blocked else "guardrail_findings",
        )

    def recent(self, limit: int = 100) -> list[DecisionRecord]:
        """The newest decisions, newest first."""
        return self._decisions.recent(limit)

    def recent_findings(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest guardrail findings, newest first."""
        return self._findings.recent(limit)


def _guardrail_policy(specs: Sequence[GuardrailSpec]) -> GuardrailPolicy | None:
    if not specs:
        return None
    by_stage: dict[str, list[str]] = {"arguments": [], "results": []}
    for spec in specs:
        by_stage[spec.stage].append(f"{spec.detector}:{spec.action}")
    return GuardrailPolicy.parse(
        ",".join(by_stage["arguments"]) or None, ",".join(by_stage["results"]) or None
    )


class PolicyService:
    """The live policy set: stored policies compiled into one engine, swapped whole on change."""

    def __init__(
        self,
        store: SqlPolicyStore,
        *,
        upstream: Callable[[str], Upstream | None],
        decisions: DecisionLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self.decisions = decisions or DecisionLog()
        self._clock = clock
        self._entries: dict[str, PolicyEntry] = {}
        self.version = 0
        self.engine = PolicyEngine([], version=0)
        self._lock = anyio.Lock()
        self._toolsets_for: tuple[int, Mapping[str, tuple[str, ...]]] = (-1, {})

    # -- the stored set -----------------------------------------------------------------------

    def entries(self) -> list[PolicyEntry]:
        """Every policy, by id."""
        return [self._entries[k] for k in sorted(self._entries)]

    def entry(self, policy_id: str) -> PolicyEntry | None:
        """One policy, or None."""
        return self._entries.get(policy_id)

    async def load(self) -> None:
        """Read and compile the stored policies (at start, and when another replica changed them).

        A stored set that no longer compiles (a schema change between versions) is not used:
        the gateway keeps denying everything and says so, rather than guessing.
        """
        version, entries = await self._store.load()
        try:
            engine = _engine(entries, version)
        except PolicyProblem as exc:
            logger.error("stored policies do not compile; every call is denied until fixed: %s", exc)
            engine = PolicyEngine([], version=version)
        self._entries = {e.id: e for e in entries}
        self.version, self.engine = version, engine

    async def refresh_if_changed(self) -> bool:
        """Reload when the stored version moved (a change made on another replica); True if it did."""
        if await self._store.version() != self.version:
            async with self._lock:
                await self.load()
            return True
        return False

    async def put(self, entries: Sequence[PolicyEntry], *, by: str | None) -> list[PolicyEntry]:
        """Add or replace policies; the whole resulting set must compile or nothing changes.

        Raises:
            PolicyProblem: a policy is invalid (sugar, Cedar syntax, or the schema).
        """
        compiled = [_with_cedar(e, by) for e in entries]
        async with self._lock:
            proposed = {**self._entries, **{e.id: e for e in compiled}}
            _engine(list(proposed.values()), self.version + 1)  # refuse before storing anything
            await self._store.put(compiled)
            await self.load()
        return [self._entries[e.id] for e in compiled]

    async def delete(self, policy_id: str) -> bool:
        """Remove one policy; False if unknown."""
        async with self._lock:
            if policy_id not in self._entries:
                return False
            await self._store.put([], delete=[policy_id])
            await self.load()
        return True

    async def replace_all(self, entries: Sequence[PolicyEntry], *, by: str | None, prune: bool) -> list[str]:
        """Upsert `entries` (and with `prune` delete the rest) in one step; the ids that changed.

        Raises:
            PolicyProblem: the resulting set does not compile.
        """
        compiled = [_with_cedar(e, by) for e in entries]
        async with self._lock:
            changed = [e.id for e in compiled if not _same(self._entries.get(e.id), e)]
            doomed = sorted(set(self._entries) - {e.id for e in compiled}) if prune else []
            proposed = {k: v for k, v in self._entries.items() if k not in doomed}
            proposed.update({e.id: e for e in compiled})
            _engine(list(proposed.values()), self.version + 1)
            if changed or doomed:
                await self._store.put([e for e in compiled if e.id in changed], delete=doomed)
                await self.load()
        return changed + [f"-{d}" for d in doomed]

    # -- tooling ------------------------------------------------------------------------------

    def validate(self, entries: Sequence[PolicyEntry]) -> list[str]:
        """The problems of a proposed set of policies (empty when it compiles)."""
        return validate_entries(entries)

    def test(self, cases: list[Any], proposed: Sequence[PolicyEntry] | None) -> list[dict[str, Any]]:
        """Run test cases against the live set, or against `proposed` policies instead.

        Raises:
            PolicyProblem: `proposed` does not compile.
            ValueError: a malformed case.
        """
        engine = self.engine if proposed is None else _engine([_with_cedar(e, None) for e in proposed], 0)
        return _run_cases(engine, cases)

    def explain(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Which policies matched a hypothetical request, and why (a test case without `expect`).

        Raises:
            ValueError: a malformed request.
        """
        try:
            (case,) = parse_cases(orjson.dumps([{**request, "expect": "allow"}]).decode())
        except CaseError as exc:
            raise ValueError(str(exc).replace("expect", "request")) from None
        explanation = self.engine.explain(
            case.principal, case.action, case.resource, case.facts, case.arguments
        )
        return {**explanation.to_dict(), "text": explanation.render(), "policy_version": self.version}

    # -- the request path ---------------------------------------------------------------------

    def facts(
        self, principal: Principal, *, source_ip: str | None, protocol_version: str, method: str = ""
    ) -> RequestFacts:
        """The request's context as policy sees it."""
        return RequestFacts(
            scopes=tuple(sorted(set(principal.scopes))),
            client_id=principal.client_id,
            source_ip=source_ip,
            protocol_version=protocol_version,
            time=int(self._clock()),
            method=method,
        )

    def tool_ref(self, snapshot: Snapshot, tool: ExposedItem) -> ToolRef:
        """A tool as policy sees it; its annotations count only for a server an admin trusts."""
        upstream = self._upstream(tool.server)
        trusted = upstream is not None and upstream.trusted
        annotations = tool.upstream_definition.get("annotations") if trusted else None
        hints = annotations if isinstance(annotations, dict) else {}
        return ToolRef(
            exposed=tool.exposed,
            server=tool.server,
            tool=tool.name,
            toolsets=self._toolsets(snapshot).get(tool.exposed, ()),
            read_only=_bool_or_none(hints.get("readOnlyHint")),
            destructive=_bool_or_none(hints.get("destructiveHint")),
            server_trusted=trusted,
        )

    def _toolsets(self, snapshot: Snapshot) -> Mapping[str, tuple[str, ...]]:
        cached_version, mapping = self._toolsets_for
        if cached_version != snapshot.version:
            members: dict[str, list[str]] = {}
            for name, toolset in snapshot.toolsets.items():
                for _, tool in toolset_members(toolset, snapshot):
                    members.setdefault(tool.exposed, []).append(name)
            mapping = {k: tuple(sorted(v)) for k, v in members.items()}
            self._toolsets_for = (snapshot.version, mapping)
        return mapping

    def tool_target(self, snapshot: Snapshot, tool: ExposedItem) -> tuple[str, TargetRef]:
        """The action and resource a tools/call decides: an agent's skill is `call_agent` on its Skill."""
        upstream = self._upstream(tool.server)
        if upstream is not None and upstream.is_agent:
            return "call_agent", SkillRef(tool.server, tool.name)
        return "call_tool", self.tool_ref(snapshot, tool)

    def visible_tool(
        self, principal: Principal, snapshot: Snapshot, tool: ExposedItem, facts: RequestFacts
    ) -> bool:
        """The list phase for a tool: shown unless calling it is definitely denied."""
        _, target = self.tool_target(snapshot, tool)
        return self.engine.visible(principal_view(principal), target, facts)

    def visible_prompt(self, principal: Principal, prompt: ExposedItem, facts: RequestFacts) -> bool:
        """The list phase for a prompt."""
        return self.engine.visible(principal_view(principal), self._prompt_ref(prompt), facts)

    def visible_resource(self, principal: Principal, server: str, uri: str, facts: RequestFacts) -> bool:
        """The list phase for a resource (or template) of `server`, by its upstream URI."""
        return self.engine.visible(principal_view(principal), self._resource_ref(server, uri), facts)

    def decide(
        self,
        principal: Principal,
        action: str,
        resource: TargetRef,
        facts: RequestFacts,
        arguments: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The call phase, recorded."""
        decision = self.engine.decide(principal_view(principal), action, resource, facts, arguments)
        self.decisions.record(
            DecisionRecord(
                at=self._clock(),
                principal=principal.key,
                action=action,
                resource=_resource_id(resource),
                allowed=decision.allowed,
                policy_ids=decision.policy_ids,
                policy_version=self.version,
                errors=decision.errors,
            )
        )
        return decision

    def may_get_prompt(self, principal: Principal, prompt: ExposedItem, facts: RequestFacts) -> bool:
        """prompts/get (and completion of a prompt argument)."""
        return self.decide(principal, "get_prompt", self._prompt_ref(prompt), facts).allowed

    def may_read(self, principal: Principal, server: str, uri: str, facts: RequestFacts) -> bool:
        """resources/read, subscriptions and completion of a resource."""
        return self.decide(principal, "read_resource", self._resource_ref(server, uri), facts).allowed

    def _prompt_ref(self, prompt: ExposedItem) -> PromptRef:
        upstream = self._upstream(prompt.server)
        return PromptRef(
            prompt.exposed, prompt.server, prompt.name, upstream is not None and upstream.trusted
        )

    def _resource_ref(self, server: str, uri: str) -> ResourceRef:
        upstream = self._upstream(server)
        return ResourceRef(expose_uri(server, uri), server, uri, upstream is not None and upstream.trusted)


class AuthorizeStage:
    """tools/call, call phase: a denied call is answered exactly like an unknown tool."""

    def __init__(self, policies: PolicyService, snapshot: Callable[[], Snapshot]) -> None:
        self._policies = policies
        self._snapshot = snapshot

    async def __call__(self, ctx: CallContext, call_next: Next) -> JSONObject:
        tool = ctx.tool
        assert tool is not None, "ResolveStage runs first"
        policies = self._policies
        action, resource = policies.tool_target(self._snapshot(), tool)
        facts = policies.facts(
            ctx.principal,
            source_ip=ctx.source_ip,
            protocol_version=ctx.protocol_version,
            method="SendMessage" if action == "call_agent" else "tools/call",
        )
        decision = policies.decide(ctx.principal, action, resource, facts, ctx.arguments)
        if ctx.audit is not None:
            ctx.audit.policies = decision.policy_ids
            ctx.audit.policy_version = policies.version
        if not decision.allowed:
            raise UnknownTool(ctx.name)
        return await call_next(
            ctx.replace(decision=decision, guardrails=_guardrail_policy(decision.guardrails))
        )


def local_test(cases: list[Any], entries: Sequence[PolicyEntry]) -> list[dict[str, Any]]:
    """Run test cases against `entries` alone (no gateway): `tollhouse policy test --policies FILE`.

    Raises:
        PolicyProblem: the policies do not compile.
        ValueError: a malformed case.
    """
    return _run_cases(_engine([_with_cedar(e, None) for e in entries], 0), cases)


def _run_cases(engine: PolicyEngine, cases: list[Any]) -> list[dict[str, Any]]:
    try:
        results = run_cases(engine, orjson.dumps(cases).decode())
    except CaseError as exc:
        raise ValueError(str(exc)) from None
    return [
        {
            "name": r.name,
            "passed": r.passed,
            "expected": r.expected,
            "actual": r.actual,
            "policy_ids": list(r.decision.policy_ids) if r.decision is not None else [],
            **({"explanation": r.explanation.render()} if r.explanation is not None else {}),
        }
        for r in results
    ]


def validate_entries(entries: Sequence[PolicyEntry]) -> list[str]:
    """The problems of a set of policies (sugar and Cedar against the schema); empty when it compiles."""
    try:
        _engine([_with_cedar(e, None) for e in entries], 0)
    except PolicyProblem as exc:
        return exc.errors
    return []


def _engine(entries: Sequence[PolicyEntry], version: int) -> PolicyEngine:
    records = [PolicyRecord(e.id, e.cedar, e.description, "store") for e in entries]
    try:
        return PolicyEngine(records, version=version)
    except PolicyError as exc:
        raise PolicyProblem([str(p) for p in exc.problems]) from None


def _with_cedar(entry: PolicyEntry, by: str | None) -> PolicyEntry:
    """The entry with its sugar compiled to Cedar (sugar kept, for export)."""
    cedar = entry.cedar
    if entry.sugar:
        try:
            cedar = compile_sugar(entry.id, entry.sugar, description=entry.description)
        except SugarError as exc:
            raise PolicyProblem([f"policy {entry.id!r}: {exc}"]) from None
    elif not cedar.strip():
        raise PolicyProblem([f"policy {entry.id!r}: empty Cedar text"])
    return PolicyEntry(
        id=entry.id, cedar=cedar, sugar=entry.sugar, description=entry.description, updated_by=by
    )


def _same(old: PolicyEntry | None, new: PolicyEntry) -> bool:
    return old is not None and (old.cedar, old.sugar, old.description) == (
        new.cedar,
        new.sugar,
        new.description,
    )


def _bool_or_none(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _resource_id(resource: TargetRef) -> str:
    if isinstance(resource, ToolRef):
        return f'Tool::"{resource.exposed}"'
    if isinstance(resource, PromptRef):
        return f'Prompt::"{resource.exposed}"'
    if isinstance(resource, ResourceRef):
        return f'Resource::"{resource.uri}"'
    if isinstance(resource, SkillRef):
        return f'Skill::"{resource.agent}/{resource.skill}"'
    if isinstance(resource, AgentRef):
        return f'Agent::"{resource.agent}"'
    return repr(resource)
