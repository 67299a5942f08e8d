"""PolicyEngine: one immutable, versioned set of Cedar policies, and the decisions made with it.

Deny by default; a satisfied `forbid` beats any `permit`; a policy that errors (it read an absent
argument, say) does not apply — all Cedar's own semantics. What the engine adds:

- **Two phases of one policy.** `decide` evaluates a call with its arguments. `visible` answers
  the list phase: a tool is listed unless `call_tool` is *definitely* denied with the arguments
  unknown (Cedar partial evaluation), or a `forbid` on `list_tool` holds. With no applicable policy
  reading `context.arguments` the list phase is the call phase's own (cached) decision, so the two
  cannot disagree.
- **An index.** Each policy is filed under its actions, the resource its scope names (a tool, a
  server, a toolset, an agent, a type, or none) and the principal its scope names (a user, a
  client, a team, a role, a type, or none). A request evaluates only the policies filed under its
  action, its resource or one of the resource's ancestors (server, toolsets, agent), and its
  principal or one of the principal's teams and roles — or under "any". Scopes are conjuncts of
  every policy, so the others cannot apply; a request no policy can apply to is denied without
  calling Cedar at all.
- **Caches.** Per (action, resource): the parsed resource entities and the candidate policies by
  principal key. Per set of applicable policies: the parsed policy-set handle. Per principal: its
  entity JSON and index keys. Per (principal, action, resource, the context fields read,
  version): the decision — only when no applicable policy reads a per-call field (arguments,
  time, source address). All bounded LRUs owned by the engine instance, so a new policy version
  (a new engine) starts with empty caches.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import cedarpy
import orjson
from cedarpy import _internal as _cedar

from tollhouse.policies.analysis import ANY_KEY, UNKNOWN_ARGUMENTS, IndexKey
from tollhouse.policies.compile import (
    GUARDRAIL_ACTIONS,
    CompiledPolicy,
    PolicyError,
    compile_policies,
    policy_set,
)
from tollhouse.policies.entities import (
    EntityUid,
    context_json,
    principal_entities,
    principal_uid,
    resource_entities,
    resource_uid,
    uid_text,
)
from tollhouse.policies.model import (
    ACTIONS,
    AgentRef,
    Decision,
    GuardrailSpec,
    PolicyProblem,
    PolicyRecord,
    PrincipalView,
    PromptRef,
    RequestFacts,
    ResourceRef,
    SkillRef,
    TargetRef,
    ToolRef,
)

__all__ = [
    "Explanation",
    "PolicyEngine",
    "PolicyError",
    "PolicyTrace",
    "check_policies",
]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Context fields whose value changes call by call: a decision reading one is never cached.
PER_CALL_FIELDS = frozenset({"arguments", "time", "source_ip", "*"})
_FACT_FIELDS = ("scopes", "client_id", "protocol_version", "method")

# Which resource types each action applies to (as in the schema), and the action whose
# decision governs listing a resource of each type.
_RESOURCE_TYPES: Mapping[str, tuple[type, ...]] = {
    "list_tool": (ToolRef,),
    "call_tool": (ToolRef,),
    "read_resource": (ResourceRef,),
    "get_prompt": (PromptRef,),
    "call_agent": (AgentRef, SkillRef),
}
_LIST_ACTION: Mapping[type, str] = {
    ToolRef: "call_tool",
    ResourceRef: "read_resource",
    PromptRef: "get_prompt",
    AgentRef: "call_agent",
    SkillRef: "call_agent",
}
_DEFAULT_DENY = Decision(allowed=False)
_UNKNOWN_UID: EntityUid = (str(UNKNOWN_ARGUMENTS.type), UNKNOWN_ARGUMENTS.id)
_STRICTNESS = {action: rank for rank, action in enumerate(GUARDRAIL_ACTIONS)}


class _Lru(Generic[K, V]):
    """A small thread-safe LRU map (the engine may be used from worker threads)."""

    def __init__(self, size: int) -> None:
        self._size = size  # 0: remember nothing
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self._size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True, slots=True)
class _Target:
    """One action on one resource, whatever the caller: entities and candidate policies."""

    resource: dict[str, str]  # the Cedar uid as cedarpy's dict form
    entities: cedarpy.Entities  # the resource and its server/agent, parsed once
    present: frozenset[EntityUid]  # the uids those entities define
    candidates: tuple[int, ...]  # positions of the policies the resource index allows
    by_principal: Mapping[IndexKey, tuple[int, ...]]  # the candidates by their principal key


@dataclass(frozen=True, slots=True)
class _Who:
    """One principal, whatever the request: its uid, entity JSON and principal index keys."""

    uid: EntityUid
    json: str
    keys: tuple[IndexKey, ...]


@dataclass(frozen=True, slots=True)
class _Selection:
    """A set of applicable policies: the parsed handles and what the policies read."""

    policies: tuple[CompiledPolicy, ...]
    handle: cedarpy.PolicySet
    list_handle: cedarpy.PolicySet | None  # the list-phase variants, when a policy reads arguments
    reads: frozenset[str]
    fact_fields: tuple[str, ...]
    cacheable: bool
    list_cacheable: bool
    forbids_listing: bool  # a forbid whose scope names Action::"list_tool"
    literals: frozenset[EntityUid]

    @property
    def reads_arguments(self) -> bool:
        return "arguments" in self.reads or "*" in self.reads


@dataclass(frozen=True, slots=True)
class PolicyTrace:
    """How one applicable policy fared in an explained request."""

    id: str
    effect: str
    status: str  # "satisfied" | "not_satisfied" | "error"
    determining: bool
    errors: tuple[str, ...] = ()
    description: str | None = None
    reads_arguments: bool = False


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a request was allowed or denied: what was evaluated, what held, what decided."""

    decision: Decision
    action: str
    principal: str
    resource: str
    visible: bool | None  # the list-phase answer, for the action that governs listing
    traces: tuple[PolicyTrace, ...]
    skipped: int  # policies the index ruled out (they cannot apply to this resource and action)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI and the admin API."""
        return {
            "allowed": self.decision.allowed,
            "action": self.action,
            "principal": self.principal,
            "resource": self.resource,
            "visible": self.visible,
            "reason": self.reason,
            "policy_ids": list(self.decision.policy_ids),
            "errors": list(self.decision.errors),
            "guardrails": [
                {"stage": g.stage, "detector": g.detector, "action": g.action}
                for g in self.decision.guardrails
            ],
            "evaluated": [
                {
                    "id": t.id,
                    "effect": t.effect,
                    "status": t.status,
                    "determining": t.determining,
                    "errors": list(t.errors),
                    "description": t.description,
                }
                for t in self.traces
            ],
            "skipped": self.skipped,
        }

    def render(self) -> str:
        """A readable multi-line account, for `tollhouse policy explain`."""
        verdict = "ALLOW" if self.decision.allowed else "DENY"
        lines = [f"{verdict} {self.principal} {self.action} {self.resource}", f"  {self.reason}"]
        if self.visible is not None:
            lines.append(f"  listed: {'yes' if self.visible else 'no'}")
        for trace in self.traces:
            mark = "*" if trace.determining else " "
            lines.append(f"  {mark} {trace.effect:<6} {trace.id}: {trace.status.replace('_', ' ')}")
            lines += [f"      {error}" for error in trace.errors]
        lines.append(f"  ({self.skipped} other policies cannot apply to this resource and action)")
        return "\n".join(lines)


def check_policies(records: Sequence[PolicyRecord]) -> tuple[PolicyProblem, ...]:
    """Every problem with `records` (empty when they would load): `tollhouse policy validate`."""
    return tuple(compile_policies(records)[1])


def _ancestors(resource: TargetRef) -> list[EntityUid]:
    if isinstance(resource, ToolRef):
        return [("Server", resource.server), *(("Toolset", t) for t in resource.toolsets)]
    if isinstance(resource, PromptRef | ResourceRef):
        return [("Server", resource.server)]
    if isinstance(resource, SkillRef):
        return [("Agent", resource.agent)]
    return []


def _resource_keys(resource: TargetRef) -> list[IndexKey]:
    uid = resource_uid(resource)
    keys: list[IndexKey] = [("uid", *uid)]
    keys += [("uid", *ancestor) for ancestor in _ancestors(resource)]
    return [*keys, ("is", uid[0]), ANY_KEY]


def _principal_keys(principal: PrincipalView) -> tuple[IndexKey, ...]:
    uid = principal_uid(principal)
    groups = [("uid", "Team", t) for t in principal.teams] + [("uid", "Role", r) for r in principal.roles]
    return (("uid", *uid), *groups, ("is", uid[0]), ANY_KEY)


def _merge_guardrails(policies: Iterable[CompiledPolicy]) -> tuple[GuardrailSpec, ...]:
    """The union of the policies' guardrails; for one detector on one stage the strictest action wins."""
    chosen: dict[tuple[str, str], GuardrailSpec] = {}
    for policy in policies:
        for spec in policy.guardrails:
            key = (spec.stage, spec.detector)
            current = chosen.get(key)
            if current is None or _STRICTNESS[spec.action] < _STRICTNESS[current.action]:
                chosen[key] = spec
    return tuple(chosen[key] for key in sorted(chosen))


class PolicyEngine:
    """An immutable policy set at one `version`, with its index and caches.

    Raises PolicyError at construction if any policy is invalid (every problem, each naming its
    policy). `index=False` evaluates every policy for every request (for tests and benchmarks).
    `cache_size` bounds each cache; `decision_cache_size` (default: `cache_size`; 0 turns it off)
    bounds the decision and listing caches alone.
    """

    def __init__(
        self,
        records: Sequence[PolicyRecord],
        *,
        version: int | str = 0,
        index: bool = True,
        cache_size: int = 65_536,
        decision_cache_size: int | None = None,
    ) -> None:
        compiled, problems = compile_policies(records)
        if problems:
            raise PolicyError(problems)
        self.version = version
        self._policies: tuple[CompiledPolicy, ...] = tuple(compiled)
        self._by_id: dict[str, CompiledPolicy] = {p.id: p for p in compiled}
        self._indexed = index
        self._buckets: dict[tuple[str | None, IndexKey], list[int]] = {}
        for position, policy in enumerate(compiled):
            actions: Iterable[str | None] = policy.shape.actions or (None,)
            for action in actions:
                self._buckets.setdefault((action, policy.shape.resource_key), []).append(position)
        self._targets: _Lru[tuple[str, TargetRef], _Target] = _Lru(cache_size)
        self._selections: _Lru[tuple[int, ...], _Selection] = _Lru(cache_size)
        self._resources: _Lru[TargetRef, cedarpy.Entities] = _Lru(cache_size)
        self._who: _Lru[PrincipalView, _Who] = _Lru(cache_size)
        decisions = cache_size if decision_cache_size is None else decision_cache_size
        self._decisions: _Lru[Hashable, Decision] = _Lru(decisions)
        self._listing: _Lru[Hashable, bool] = _Lru(decisions)

    # -- what the engine holds -------------------------------------------------------------

    @property
    def policies(self) -> tuple[CompiledPolicy, ...]:
        return self._policies

    def policy(self, policy_id: str) -> CompiledPolicy | None:
        return self._by_id.get(policy_id)

    def __len__(self) -> int:
        return len(self._policies)

    def applicable(
        self, action: str, resource: TargetRef, principal: PrincipalView | None = None
    ) -> tuple[str, ...]:
        """The ids of the policies the index keeps for `action` on `resource` (and `principal`)."""
        target = self._target(action, resource)
        if principal is None:
            return tuple(self._policies[i].id for i in target.candidates)
        selection = self._select(target, self._principal(principal))
        return tuple(p.id for p in selection.policies) if selection else ()

    # -- decisions -------------------------------------------------------------------------

    def decide(
        self,
        principal: PrincipalView,
        action: str,
        resource: TargetRef,
        facts: RequestFacts,
        arguments: Mapping[str, Any] | None = None,
    ) -> Decision:
        """The call phase: may `principal` do `action` on `resource` with these `arguments`?"""
        target = self._target(action, resource)
        who = self._principal(principal)
        selection = self._select(target, who)
        if selection is None:
            return _DEFAULT_DENY
        key: Hashable = None
        if selection.cacheable:
            facts_key = tuple(getattr(facts, f) for f in selection.fact_fields)
            key = (self.version, action, resource, principal, facts_key)
            hit = self._decisions.get(key)
            if hit is not None:
                return hit
        decision = self._evaluate(target, who, selection, selection.handle, action, facts, arguments or {})
        if key is not None:
            self._decisions.put(key, replace(decision, cached=True))
        return decision

    def visible(
        self, principal: PrincipalView, resource: TargetRef, facts: RequestFacts, *, action: str | None = None
    ) -> bool:
        """The list phase: shown unless the governing action is definitely denied with the arguments
        unknown, or (for tools) a `forbid` on `list_tool` holds."""
        action = action or _LIST_ACTION[type(resource)]
        if isinstance(resource, ToolRef) and self._forbidden_to_list(principal, resource, facts):
            return False
        target = self._target(action, resource)
        who = self._principal(principal)
        selection = self._select(target, who)
        if selection is None:
            return False
        if not selection.reads_arguments:
            return self.decide(principal, action, resource, facts, {}).allowed
        key: Hashable = None
        if selection.list_cacheable:
            facts_key = tuple(getattr(facts, f) for f in selection.fact_fields)
            key = (self.version, action, resource, principal, facts_key)
            hit = self._listing.get(key)
            if hit is not None:
                return hit
        shown = self._partially_allowed(target, who, selection, action, facts)
        if key is not None:
            self._listing.put(key, shown)
        return shown

    def explain(
        self,
        principal: PrincipalView,
        action: str,
        resource: TargetRef,
        facts: RequestFacts,
        arguments: Mapping[str, Any] | None = None,
    ) -> Explanation:
        """Which policies were evaluated, which held or erred, which decided, and why."""
        target = self._target(action, resource)
        who = self._principal(principal)
        selection = self._select(target, who)
        args = arguments or {}
        traces: list[PolicyTrace] = []
        decision = _DEFAULT_DENY
        if selection is not None:
            decision = self._evaluate(target, who, selection, selection.handle, action, facts, args)
            for policy in selection.policies:
                handle = policy_set([policy.template])
                single = self._evaluate(target, who, selection, handle, action, facts, args)
                satisfied = policy.id in single.policy_ids
                traces.append(
                    PolicyTrace(
                        id=policy.id,
                        effect=policy.effect,
                        status="satisfied" if satisfied else ("error" if single.errors else "not_satisfied"),
                        determining=policy.id in decision.policy_ids,
                        errors=single.errors,
                        description=policy.record.description,
                        reads_arguments=policy.shape.reads_arguments,
                    )
                )
        shown = self.visible(principal, resource, facts) if action == _LIST_ACTION[type(resource)] else None
        return Explanation(
            decision=decision,
            action=action,
            principal=uid_text(who.uid),
            resource=uid_text(resource_uid(resource)),
            visible=shown,
            traces=tuple(traces),
            skipped=len(self._policies) - len(traces),
            reason=_reason(decision, traces),
        )

    # -- internals -------------------------------------------------------------------------

    def _forbidden_to_list(self, principal: PrincipalView, resource: ToolRef, facts: RequestFacts) -> bool:
        selection = self._select(self._target("list_tool", resource), self._principal(principal))
        if selection is None or not selection.forbids_listing:
            return False
        decision = self.decide(principal, "list_tool", resource, facts, {})
        return not decision.allowed and bool(decision.policy_ids)

    def _evaluate(
        self,
        target: _Target,
        who: _Who,
        selection: _Selection,
        handle: cedarpy.PolicySet,
        action: str,
        facts: RequestFacts,
        arguments: Mapping[str, Any],
    ) -> Decision:
        request = {
            "principal": {"type": who.uid[0], "id": who.uid[1]},
            "action": {"type": "Action", "id": action},
            "resource": target.resource,
            "context": context_json(selection.reads, facts, arguments),
        }
        entities = target.entities.with_added_json_str(who.json)
        # cedarpy's own extension entry point: its public wrapper copies the request and parses
        # the answer with the stdlib json module, about 6 µs of a 40 µs decision here.
        (answer,) = _cedar.is_authorized_batch([request], handle, entities._inner, None, False)
        result = orjson.loads(answer)
        diagnostics = result.get("diagnostics") or {}
        reasons = tuple(sorted(diagnostics.get("reason") or ()))
        errors = tuple(str(e) for e in diagnostics.get("errors") or ())
        if result.get("decision") != "Allow":
            return Decision(allowed=False, policy_ids=reasons, errors=errors)
        guardrails = _merge_guardrails(self._by_id[r] for r in reasons if r in self._by_id)
        return Decision(allowed=True, policy_ids=reasons, errors=errors, guardrails=guardrails)

    def _partially_allowed(
        self, target: _Target, who: _Who, selection: _Selection, action: str, facts: RequestFacts
    ) -> bool:
        """Partial evaluation with the arguments unknown: anything but a definite Deny lists."""
        # Entities a policy names but the request does not supply would be *unknown* to partial
        # evaluation (and so keep a policy residual) while the call phase finds them absent (and
        # the policy errors): supply attribute-less stand-ins so both phases agree.
        missing = selection.literals - target.present - {who.uid}
        delta = who.json
        if missing:
            stubs = [{"uid": {"type": t, "id": i}, "attrs": {}, "parents": []} for t, i in sorted(missing)]
            delta = orjson.dumps([*orjson.loads(who.json), *stubs]).decode()
        request = {
            "principal": uid_text(who.uid),
            "action": f'Action::"{action}"',
            "resource": uid_text((target.resource["type"], target.resource["id"])),
            "context": context_json(selection.reads - {"arguments"}, facts, None),
        }
        entities = target.entities.with_added_json_str(delta)
        assert selection.list_handle is not None  # built whenever an applicable policy reads arguments
        result = cedarpy.is_authorized_partial(request, selection.list_handle, entities)
        return bool(result.decision != cedarpy.Decision.Deny)

    def _principal(self, principal: PrincipalView) -> _Who:
        who = self._who.get(principal)
        if who is None:
            who = _Who(
                uid=principal_uid(principal),
                json=orjson.dumps(principal_entities(principal)).decode(),
                keys=_principal_keys(principal),
            )
            self._who.put(principal, who)
        return who

    def _target(self, action: str, resource: TargetRef) -> _Target:
        key = (action, resource)
        target = self._targets.get(key)
        if target is None:
            target = self._build_target(action, resource)
            self._targets.put(key, target)
        return target

    def _build_target(self, action: str, resource: TargetRef) -> _Target:
        kinds = _RESOURCE_TYPES.get(action)
        if kinds is None:
            raise ValueError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        if not isinstance(resource, kinds):
            raise ValueError(f"action {action!r} does not apply to a {type(resource).__name__}")
        if self._indexed:
            positions: set[int] = set()
            for key in _resource_keys(resource):
                positions.update(self._buckets.get((action, key), ()))
                positions.update(self._buckets.get((None, key), ()))
            candidates = tuple(sorted(positions))
        else:
            candidates = tuple(range(len(self._policies)))
        by_principal: dict[IndexKey, list[int]] = {}
        for position in candidates:
            key = self._policies[position].shape.principal_key if self._indexed else ANY_KEY
            by_principal.setdefault(key, []).append(position)
        documents = resource_entities(resource)
        entities = self._resources.get(resource)
        if entities is None:
            entities = cedarpy.Entities.from_json_str(orjson.dumps(documents).decode())
            self._resources.put(resource, entities)
        uid = resource_uid(resource)
        return _Target(
            resource={"type": uid[0], "id": uid[1]},
            entities=entities,
            present=frozenset((d["uid"]["type"], d["uid"]["id"]) for d in documents),
            candidates=candidates,
            by_principal={key: tuple(found) for key, found in by_principal.items()},
        )

    def _select(self, target: _Target, who: _Who) -> _Selection | None:
        """The policies that can apply to this principal on this target (None: none can)."""
        found = [target.by_principal[key] for key in who.keys if key in target.by_principal]
        if not found:
            return None
        positions = found[0] if len(found) == 1 else tuple(sorted({p for group in found for p in group}))
        selection = self._selections.get(positions)
        if selection is None:
            selection = self._build_selection(positions)
            self._selections.put(positions, selection)
        return selection

    def _build_selection(self, positions: tuple[int, ...]) -> _Selection:
        policies = tuple(self._policies[i] for i in positions)
        reads: frozenset[str] = frozenset().union(*(p.shape.context_reads for p in policies))
        literals: frozenset[tuple[str, str]] = frozenset().union(*(p.shape.literals for p in policies))
        reads_arguments = any(p.shape.reads_arguments for p in policies)
        return _Selection(
            policies=policies,
            handle=policy_set(p.template for p in policies),
            list_handle=policy_set(p.list_template for p in policies) if reads_arguments else None,
            reads=reads,
            fact_fields=tuple(f for f in _FACT_FIELDS if f in reads or "*" in reads),
            cacheable=not reads & PER_CALL_FIELDS,
            list_cacheable=not reads & (PER_CALL_FIELDS - {"arguments"}),
            forbids_listing=any(
                p.effect == "forbid" and p.shape.actions is not None and "list_tool" in p.shape.actions
                for p in policies
            ),
            literals=frozenset(uid for uid in literals if uid[0] != "Action" and uid != _UNKNOWN_UID),
        )


def _reason(decision: Decision, traces: Sequence[PolicyTrace]) -> str:
    ids = ", ".join(repr(i) for i in decision.policy_ids)
    if decision.allowed:
        return f"allowed: permitted by {ids} and no forbid holds"
    if decision.policy_ids:
        return f"denied: forbidden by {ids} (a forbid beats any permit)"
    erroring = sum(1 for t in traces if t.status == "error")
    if not traces:
        return "denied by default: no policy names this resource and action"
    note = f"; {erroring} erred and so did not apply" if erroring else ""
    return f"denied by default: none of the {len(traces)} applicable policies permits it{note}"
