"""PolicyEngine: decisions, the two phases, the index, the caches, explain and policy test files."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tollhouse.auth.principal import Principal
from tollhouse.policies.cases import CaseError, run_cases
from tollhouse.policies.engine import PolicyEngine
from tollhouse.policies.model import (
    AgentRef,
    GuardrailSpec,
    PolicyRecord,
    PrincipalView,
    PromptRef,
    RequestFacts,
    ResourceRef,
    SkillRef,
    ToolRef,
    facts_for,
    principal_view,
)

FACTS = RequestFacts(
    scopes=("mcp",), client_id="cli", source_ip="10.0.0.9", protocol_version="2026-07-28", time=1000
)
READ = ToolRef("files__read", "files", "read", toolsets=("readers",))
WRITE = ToolRef("files__write", "files", "write")
ADD = ToolRef("calc__add", "calc", "add", toolsets=("math", "readers"))
ALICE = PrincipalView("alice", teams=("support",))
BOB = PrincipalView("bob", teams=("platform",), roles=("admin",))
BOT = PrincipalView("ci-bot", kind="client", client_id="ci-bot", teams=("platform",))
NOBODY = PrincipalView("nobody")


def engine(*cedar: str, **kwargs: Any) -> PolicyEngine:
    return PolicyEngine([PolicyRecord(f"p{i}", text) for i, text in enumerate(cedar)], **kwargs)


def test_deny_by_default() -> None:
    assert not engine().decide(ALICE, "call_tool", READ, FACTS).allowed
    assert not engine().visible(ALICE, READ, FACTS)
    unrelated = engine('permit(principal, action == Action::"call_tool", resource in Server::"calc");')
    decision = unrelated.decide(ALICE, "call_tool", READ, FACTS)
    assert not decision.allowed and decision.policy_ids == () and decision.errors == ()


def test_grants_by_team_role_user_and_client() -> None:
    e = engine(
        'permit(principal in Team::"platform", action == Action::"call_tool", resource in Server::"calc");',
        'permit(principal in Role::"admin", action == Action::"call_tool", resource == '
        'Tool::"files__write");',
        'permit(principal == User::"alice", action == Action::"call_tool", resource == Tool::"files__read");',
        'permit(principal == Client::"ci-bot", action == Action::"call_tool", resource == '
        'Tool::"files__read");',
    )
    expected = {
        (ALICE, READ): True,
        (ALICE, WRITE): False,
        (ALICE, ADD): False,
        (BOB, READ): False,
        (BOB, WRITE): True,
        (BOB, ADD): True,
        (BOT, READ): True,
        (BOT, WRITE): False,
        (BOT, ADD): True,
        (NOBODY, READ): False,
    }
    for (who, what), allowed in expected.items():
        assert e.decide(who, "call_tool", what, FACTS).allowed is allowed, (who.subject, what.exposed)
    assert e.decide(BOB, "call_tool", ADD, FACTS).policy_ids == ("p0",)


def test_tools_are_in_their_server_and_their_toolsets() -> None:
    e = engine('permit(principal, action == Action::"call_tool", resource in Toolset::"readers");')
    assert e.decide(NOBODY, "call_tool", READ, FACTS).allowed
    assert e.decide(NOBODY, "call_tool", ADD, FACTS).allowed
    assert not e.decide(NOBODY, "call_tool", WRITE, FACTS).allowed
    typed = engine('permit(principal, action == Action::"call_tool", resource is Tool in Server::"files");')
    assert typed.decide(NOBODY, "call_tool", WRITE, FACTS).allowed
    assert not typed.decide(NOBODY, "call_tool", ADD, FACTS).allowed


def test_globs_on_the_exposed_name() -> None:
    e = engine(
        'permit(principal, action == Action::"call_tool", resource) when { resource.name like "*__read*" };'
    )
    assert e.decide(NOBODY, "call_tool", READ, FACTS).allowed
    assert not e.decide(NOBODY, "call_tool", WRITE, FACTS).allowed


def test_forbid_beats_permit() -> None:
    e = engine(
        'permit(principal in Team::"platform", action == Action::"call_tool", resource in Server::"calc");',
        'forbid(principal == Client::"ci-bot", action == Action::"call_tool", resource == '
        'Tool::"calc__add");',
    )
    assert e.decide(BOB, "call_tool", ADD, FACTS).allowed
    denied = e.decide(BOT, "call_tool", ADD, FACTS)
    assert not denied.allowed and denied.policy_ids == ("p1",)
    assert not e.visible(BOT, ADD, FACTS)


PUBLIC_ONLY = (
    'permit(principal in Team::"support", action == Action::"call_tool", resource == Tool::"files__read") '
    'when { context.arguments.path like "/public/*" };'
)


def test_argument_aware_rule_allows_denies_and_stays_listed() -> None:
    e = engine(PUBLIC_ONLY)
    assert e.decide(ALICE, "call_tool", READ, FACTS, {"path": "/public/a"}).allowed
    assert not e.decide(ALICE, "call_tool", READ, FACTS, {"path": "/etc/passwd"}).allowed
    assert e.visible(ALICE, READ, FACTS)
    # for someone the rule can never allow, the tool is not listed
    assert not e.visible(BOB, READ, FACTS)
    assert not e.visible(ALICE, WRITE, FACTS)


def test_list_phase_keeps_context_reads_concrete_next_to_argument_reads() -> None:
    """A scope or address rule that definitely denies hides the tool even when an argument rule applies."""
    e = engine(
        PUBLIC_ONLY,
        'forbid(principal, action == Action::"call_tool", resource) unless { '
        'context.scopes.contains("files") };',
    )
    assert not e.visible(ALICE, READ, FACTS)
    with_scope = RequestFacts(scopes=("files", "mcp"))
    assert e.visible(ALICE, READ, with_scope)
    assert e.decide(ALICE, "call_tool", READ, with_scope, {"path": "/public/x"}).allowed
    # an argument-reading forbid never hides on its own
    guarded = engine(
        'permit(principal, action == Action::"call_tool", resource in Server::"files");',
        'forbid(principal, action == Action::"call_tool", resource) when { context.arguments.path like '
        '"/etc/*" };',
    )
    assert guarded.visible(ALICE, READ, FACTS)


def test_a_forbid_on_list_tool_hides_a_callable_tool() -> None:
    e = engine(
        'permit(principal, action == Action::"call_tool", resource in Server::"files");',
        'forbid(principal in Team::"support", action == Action::"list_tool", resource == '
        'Tool::"files__write");',
    )
    assert e.decide(ALICE, "call_tool", WRITE, FACTS).allowed
    assert not e.visible(ALICE, WRITE, FACTS)
    assert e.visible(BOB, WRITE, FACTS)
    assert e.visible(ALICE, READ, FACTS)


def test_list_phase_equals_call_phase_for_argument_independent_policies() -> None:
    """The list/call leak other gateways shipped: a table over principals, tools and policies."""
    e = engine(
        'permit(principal in Team::"platform", action == Action::"call_tool", resource in Server::"calc");',
        'permit(principal in Team::"support", action == Action::"call_tool", resource in '
        'Toolset::"readers");',
        'forbid(principal == Client::"ci-bot", action == Action::"call_tool", resource == '
        'Tool::"files__read");',
        'permit(principal, action == Action::"call_tool", resource == Tool::"files__write") '
        'when { context.scopes.contains("write") };',
        'forbid(principal in Role::"admin", action == Action::"call_tool", resource) '
        'unless { context.source_ip.isInRange(ip("10.0.0.0/8")) };',
        'permit(principal, action == Action::"call_tool", resource) '
        "when { resource has read_only && resource.read_only && context.time > 500 };",
    )
    tools = [
        READ,
        WRITE,
        ADD,
        ToolRef("calc__div", "calc", "div"),
        ToolRef("docs__get", "docs", "get", read_only=True, server_trusted=True),
        ToolRef("docs__put", "docs", "put", read_only=True, server_trusted=False),
    ]
    principals = [ALICE, BOB, BOT, NOBODY, PrincipalView("sue", teams=("support", "platform"))]
    facts = [FACTS, RequestFacts(scopes=("write",), source_ip="8.8.8.8", time=100)]
    seen = set()
    for who in principals:
        for what in tools:
            for fact in facts:
                allowed = e.decide(who, "call_tool", what, fact).allowed
                assert e.visible(who, what, fact) is allowed, (who, what.exposed, fact)
                seen.add(allowed)
    assert seen == {True, False}


def test_guardrail_annotations_are_carried_strictest_first() -> None:
    e = engine(
        '@guardrail_arguments("pii:redact") @guardrail_results("secrets:record") '
        'permit(principal, action == Action::"call_tool", resource in Server::"files");',
        '@guardrail_results("secrets:block, email:redact") '
        'permit(principal in Team::"support", action == Action::"call_tool", resource == '
        'Tool::"files__read");',
    )
    decision = e.decide(ALICE, "call_tool", READ, FACTS)
    assert decision.policy_ids == ("p0", "p1")
    assert decision.guardrails == (
        GuardrailSpec("arguments", "pii", "redact"),
        GuardrailSpec("results", "email", "redact"),
        GuardrailSpec("results", "secrets", "block"),
    )
    only_first = e.decide(BOB, "call_tool", READ, FACTS)
    assert only_first.guardrails == (
        GuardrailSpec("arguments", "pii", "redact"),
        GuardrailSpec("results", "secrets", "record"),
    )
    assert e.policy("p1") is not None and e.policy("p1").annotations["id"] == "p1"  # type: ignore[union-attr]
    assert e.decide(NOBODY, "call_tool", ADD, FACTS).guardrails == ()


def test_prompts_resources_agents_and_skills() -> None:
    e = engine(
        'permit(principal, action == Action::"get_prompt", resource in Server::"docs");',
        'permit(principal in Team::"support", action == Action::"read_resource", resource in '
        'Server::"docs");',
        'permit(principal, action == Action::"call_agent", resource in Agent::"helper");',
        'forbid(principal, action == Action::"call_agent", resource == Skill::"helper/delete");',
    )
    prompt = PromptRef("docs__summary", "docs", "summary")
    resource = ResourceRef("docs+file:///a", "docs", "a")
    assert e.decide(NOBODY, "get_prompt", prompt, FACTS).allowed and e.visible(NOBODY, prompt, FACTS)
    assert not e.decide(NOBODY, "read_resource", resource, FACTS).allowed
    assert e.decide(ALICE, "read_resource", resource, FACTS).allowed and e.visible(ALICE, resource, FACTS)
    assert not e.visible(NOBODY, resource, FACTS)
    assert e.decide(NOBODY, "call_agent", AgentRef("helper"), FACTS).allowed
    assert e.decide(NOBODY, "call_agent", SkillRef("helper", "search"), FACTS).allowed
    assert not e.decide(NOBODY, "call_agent", SkillRef("helper", "delete"), FACTS).allowed
    assert not e.decide(NOBODY, "call_agent", AgentRef("other"), FACTS).allowed
    with pytest.raises(ValueError, match="does not apply"):
        e.decide(NOBODY, "call_tool", prompt, FACTS)
    with pytest.raises(ValueError, match="unknown action"):
        e.decide(NOBODY, "delete_tool", READ, FACTS)


def test_principal_view_from_an_authenticated_principal() -> None:
    user = Principal(
        subject="alice", client_id="cli", teams=("b", "a", "a"), kind="user", roles=("admin",), scopes=("x",)
    )
    assert principal_view(user) == PrincipalView("alice", "user", "cli", ("a", "b"), ("admin",))
    client = Principal(subject="svc", client_id="ci-bot", teams=("platform",))
    assert principal_view(client) == PrincipalView("ci-bot", "client", "ci-bot", ("platform",), ())
    assert facts_for(user, source_ip="1.2.3.4", time=5) == RequestFacts(("x",), "cli", "1.2.3.4", "", 5)


# -- the index -------------------------------------------------------------------------------


def test_a_policy_on_one_server_is_never_evaluated_for_another() -> None:
    e = engine(
        'permit(principal, action == Action::"call_tool", resource in Server::"a");',
        'forbid(principal, action == Action::"call_tool", resource == Tool::"a__x");',
        'permit(principal, action == Action::"call_tool", resource in Toolset::"t");',
        "permit(principal, action, resource);",
        'permit(principal, action == Action::"get_prompt", resource is Prompt);',
        'permit(principal, action in [Action::"call_tool", Action::"list_tool"], resource is Tool);',
    )
    in_a, in_b = ToolRef("a__x", "a", "x"), ToolRef("b__y", "b", "y", toolsets=("t",))
    assert e.applicable("call_tool", in_a) == ("p0", "p1", "p3", "p5")
    assert e.applicable("call_tool", in_b) == ("p2", "p3", "p5")
    assert e.applicable("list_tool", in_b) == ("p3", "p5")
    assert e.applicable("get_prompt", PromptRef("b__p", "b", "p")) == ("p3", "p4")
    assert e.explain(NOBODY, "call_tool", in_b, FACTS).skipped == 3


def _random_policy(rng: random.Random, servers: list[str], tools: list[ToolRef]) -> str:
    principal = rng.choice(
        ["principal", 'principal in Team::"t{0}"', 'principal == User::"u{0}"', 'principal in Role::"r{0}"']
    ).format(rng.randrange(3))
    action = rng.choice(
        [
            "action",
            'action == Action::"call_tool"',
            'action == Action::"list_tool"',
            'action in [Action::"call_tool"]',
        ]
    )
    tool = rng.choice(tools)
    resource = rng.choice(
        [
            "resource",
            f'resource in Server::"{rng.choice(servers)}"',
            f'resource == Tool::"{tool.exposed}"',
            f'resource in Toolset::"ts{rng.randrange(3)}"',
            "resource is Tool",
            f'resource is Tool in Server::"{rng.choice(servers)}"',
        ]
    )
    condition = rng.choice(
        [
            "",
            " when { context.arguments.n > 5 }",
            ' when { context.scopes.contains("s1") }',
            f' when {{ resource.name like "{tool.server}__*" }}',
            " unless { context.arguments has flag }",
        ]
    )
    effect = "forbid" if rng.random() < 0.25 else "permit"
    return f"{effect}({principal}, {action}, {resource}){condition};"


def test_index_gives_the_same_answers_as_evaluating_everything() -> None:
    rng = random.Random(20260728)
    servers = [f"s{i}" for i in range(6)]
    tools = [
        ToolRef(f"{s}__t{j}", s, f"t{j}", toolsets=tuple(f"ts{k}" for k in range(3) if rng.random() < 0.3))
        for s in servers
        for j in range(3)
    ]
    texts = [_random_policy(rng, servers, tools) for _ in range(120)]
    indexed, flat = engine(*texts), engine(*texts, index=False)
    principals = [
        PrincipalView(f"u{i}", teams=(f"t{rng.randrange(3)}",), roles=(f"r{rng.randrange(3)}",))
        for i in range(4)
    ]
    facts = [RequestFacts(scopes=("s1",)), RequestFacts()]
    argument_sets: list[dict[str, Any]] = [{}, {"n": 9}, {"n": 1, "flag": True}]
    checked = 0
    for _ in range(400):
        who, what, fact = rng.choice(principals), rng.choice(tools), rng.choice(facts)
        action = rng.choice(["call_tool", "list_tool"])
        args = rng.choice(argument_sets)
        a, b = indexed.decide(who, action, what, fact, args), flat.decide(who, action, what, fact, args)
        assert (a.allowed, a.policy_ids) == (b.allowed, b.policy_ids), (who, action, what, args)
        assert indexed.visible(who, what, fact) == flat.visible(who, what, fact)
        checked += a.allowed
    assert 0 < checked < 400
    assert len(indexed.applicable("call_tool", tools[0])) < len(texts)


# -- caches ----------------------------------------------------------------------------------


def test_decisions_are_cached_per_principal_and_version() -> None:
    text = 'permit(principal in Team::"platform", action == Action::"call_tool", resource in Server::"calc");'
    e1 = engine(text, version=1)
    first = e1.decide(BOB, "call_tool", ADD, FACTS)
    again = e1.decide(BOB, "call_tool", ADD, FACTS)
    assert first.allowed and not first.cached and again.cached and again.allowed
    # same subject, other teams: a different principal, not a cache hit
    moved = PrincipalView("bob", teams=("support",), roles=("admin",))
    other = e1.decide(moved, "call_tool", ADD, FACTS)
    assert not other.allowed and not other.cached
    # a new version is a new engine with an empty cache and its own answers
    e2 = engine("forbid(principal, action, resource);", text, version=2)
    assert not e2.decide(BOB, "call_tool", ADD, FACTS).allowed
    assert e1.decide(BOB, "call_tool", ADD, FACTS).allowed


def test_the_cache_keys_on_the_context_fields_policies_read() -> None:
    e = engine(
        'permit(principal, action == Action::"call_tool", resource) when { context.scopes.contains("w") };'
    )
    assert e.decide(BOB, "call_tool", ADD, RequestFacts(scopes=("w",))).allowed
    assert not e.decide(BOB, "call_tool", ADD, RequestFacts(scopes=())).allowed
    assert e.decide(BOB, "call_tool", ADD, RequestFacts(scopes=("w",), time=5)).cached  # time not read


@pytest.mark.parametrize(
    "condition",
    ["context.arguments.n == 1", "context.time > 100", 'context.source_ip.isInRange(ip("10.0.0.0/8"))'],
)
def test_no_caching_when_a_per_call_field_is_read(condition: str) -> None:
    e = engine(f'permit(principal, action == Action::"call_tool", resource) when {{ {condition} }};')
    first = e.decide(BOB, "call_tool", ADD, FACTS, {"n": 1})
    second = e.decide(BOB, "call_tool", ADD, FACTS, {"n": 1})
    assert first.allowed and second.allowed and not second.cached


def test_cache_stays_bounded() -> None:
    e = engine('permit(principal, action == Action::"call_tool", resource);', cache_size=8)
    for i in range(50):
        e.decide(PrincipalView(f"u{i}"), "call_tool", ADD, FACTS)
    assert len(e._decisions) <= 8


# -- explain and test files ------------------------------------------------------------------


def test_explain_names_what_was_evaluated_and_what_decided() -> None:
    e = PolicyEngine(
        [
            PolicyRecord("support-public", PUBLIC_ONLY, description="support reads /public"),
            PolicyRecord(
                "no-etc",
                'forbid(principal, action == Action::"call_tool", resource in Server::"files") '
                'when { context.arguments.path like "/etc/*" };',
            ),
            PolicyRecord(
                "calc", 'permit(principal, action == Action::"call_tool", resource in Server::"calc");'
            ),
        ]
    )
    allowed = e.explain(ALICE, "call_tool", READ, FACTS, {"path": "/public/x"})
    assert allowed.decision.allowed and allowed.visible is True
    assert allowed.reason == "allowed: permitted by 'support-public' and no forbid holds"
    statuses = {t.id: (t.status, t.determining) for t in allowed.traces}
    assert statuses == {"support-public": ("satisfied", True), "no-etc": ("not_satisfied", False)}
    assert allowed.skipped == 1

    forbidden = e.explain(ALICE, "call_tool", READ, FACTS, {"path": "/etc/passwd"})
    assert forbidden.reason.startswith("denied: forbidden by 'no-etc'")

    absent = e.explain(ALICE, "call_tool", READ, FACTS, {})
    assert (
        absent.reason
        == "denied by default: none of the 2 applicable policies permits it; 2 erred and so did not apply"
    )
    assert all(t.status == "error" and t.errors for t in absent.traces)
    text = absent.render()
    assert text.startswith('DENY User::"alice" call_tool Tool::"files__read"')
    assert "permit support-public: error" in text

    nothing = e.explain(NOBODY, "call_tool", ToolRef("x__y", "x", "y"), FACTS)
    assert nothing.reason == "denied by default: no policy names this resource and action"
    assert nothing.to_dict()["allowed"] is False and nothing.to_dict()["skipped"] == 3


CASES = """
cases:
  - name: support reads public files
    principal: {user: alice, teams: [support]}
    resource: {tool: files__read}
    context: {arguments: {path: /public/a}}
    expect: allow
  - name: support may not read /etc
    principal: {user: alice, teams: [support]}
    action: call_tool
    resource: {tool: files__read}
    context: {arguments: {path: /etc/passwd}}
    expect: deny
  - name: the tool stays listed
    principal: {user: alice, teams: [support]}
    resource: {tool: files__read}
    expect: visible
  - name: others do not see it
    principal: {client: ci-bot, teams: [platform], scopes: [mcp]}
    resource: {tool: files__read, toolsets: [readers]}
    expect: hidden
  - name: a wrong expectation
    principal: {user: bob}
    resource: {tool: files__read}
    context: {arguments: {path: /public/a}, source_ip: 10.0.0.1, time: 5}
    expect: allow
"""


def test_run_cases() -> None:
    results = run_cases(engine(PUBLIC_ONLY), CASES)
    assert [r.passed for r in results] == [True, True, True, True, False]
    failed = results[-1]
    assert (failed.expected, failed.actual) == ("allow", "deny")
    assert failed.explanation is not None and "denied by default" in failed.explanation.reason
    assert results[0].decision is not None and results[0].decision.policy_ids == ("p0",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {principal: {user: a}, resource: {tool: x__y}, expect: maybe}", "expect"),
        ("- {principal: {user: a}, resource: {tool: x__y}, expect: allow, extra: 1}", "unknown key 'extra'"),
        ("- {principal: {team: a}, resource: {tool: x__y}, expect: allow}", "unknown key 'team'"),
        ("- {principal: {user: a}, resource: {tool: xy}, expect: allow}", "give `server`"),
        (
            "- {principal: {user: a}, resource: {tool: x__y, color: red}, expect: allow}",
            "unknown key 'color'",
        ),
        ("{tests: []}", "unknown key 'tests'"),
        ("[unclosed", "not YAML"),
    ],
)
def test_bad_case_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(CaseError, match=message):
        run_cases(engine(), text)
