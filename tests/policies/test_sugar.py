"""YAML sugar compiles to Cedar that validates, scopes to one server when it can, and means what it says."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tollhouse.policies.engine import PolicyEngine
from tollhouse.policies.model import GuardrailSpec, PrincipalView, RequestFacts, ToolRef
from tollhouse.policies.sugar import SugarError, compile_entry, compile_sugar, glob_pattern

FACTS = RequestFacts(scopes=("mcp",), source_ip="10.0.0.5")


def tool(exposed: str, *toolsets: str) -> ToolRef:
    server, _, name = exposed.partition("__")
    return ToolRef(exposed, server, name, toolsets=toolsets)


def engine_of(text: str) -> PolicyEngine:
    return PolicyEngine([compile_entry(entry) for entry in yaml.safe_load(text)])


def test_team_grant_on_a_glob_scopes_to_the_server() -> None:
    cedar = compile_sugar("support-read", {"allow": {"team": "support", "tools": ["files__read_*"]}})
    assert 'principal in Team::"support"' in cedar
    assert 'resource in Server::"files"' in cedar
    assert 'resource.name like "files__read_*"' in cedar
    assert cedar.startswith('@id("support-read")')
    engine = PolicyEngine(
        [compile_entry({"id": "support-read", "allow": {"team": "support", "tools": ["files__read_*"]}})]
    )
    assert engine.policies[0].shape.resource_key == ("uid", "Server", "files")
    support = PrincipalView("sam", teams=("support",))
    assert engine.decide(support, "call_tool", tool("files__read_text"), FACTS).allowed
    assert not engine.decide(support, "call_tool", tool("files__write"), FACTS).allowed
    assert not engine.decide(
        PrincipalView("x", teams=("ops",)), "call_tool", tool("files__read_text"), FACTS
    ).allowed


def test_deny_sugar_beats_allow() -> None:
    engine = engine_of(
        """
        - id: everyone
          allow: {servers: [files]}
        - id: no-deletes
          deny: {tools: ["*__delete_*"]}
        """
    )
    anyone = PrincipalView("u")
    assert engine.decide(anyone, "call_tool", tool("files__read"), FACTS).allowed
    denied = engine.decide(anyone, "call_tool", tool("files__delete_all"), FACTS)
    assert not denied.allowed and denied.policy_ids == ("no-deletes",)


def test_principal_kinds_and_alternatives() -> None:
    engine = engine_of(
        """
        - id: u
          allow: {user: alice, tools: [calc__add]}
        - id: c
          allow: {client: ci-bot, tools: [calc__sub]}
        - id: r
          allow: {role: auditor, tools: [calc__mul]}
        - id: many
          allow: {team: [a, b], user: carol, tools: [calc__div]}
        """
    )
    alice, bot = PrincipalView("alice"), PrincipalView("ci-bot", kind="client", client_id="ci-bot")
    auditor, member, carol = (
        PrincipalView("z", roles=("auditor",)),
        PrincipalView("m", teams=("b",)),
        PrincipalView("carol"),
    )
    table = {
        "calc__add": {alice},
        "calc__sub": {bot},
        "calc__mul": {auditor},
        "calc__div": {member, carol},
    }
    for name, allowed in table.items():
        for who in (alice, bot, auditor, member, carol):
            assert engine.decide(who, "call_tool", tool(name), FACTS).allowed == (who in allowed), (name, who)
    # a user named like a client is not that client
    assert not engine.decide(PrincipalView("ci-bot"), "call_tool", tool("calc__sub"), FACTS).allowed


def test_toolsets_servers_scopes_and_source_addresses() -> None:
    engine = engine_of(
        """
        - id: ops
          allow: {team: ops, toolsets: [maintenance], scopes: [mcp], source_ips: ["10.0.0.0/8"]}
        - id: two-servers
          allow: {team: dev, servers: [a, b], actions: [call_tool, list_tool]}
        """
    )
    ops, dev = PrincipalView("o", teams=("ops",)), PrincipalView("d", teams=("dev",))
    assert engine.decide(ops, "call_tool", tool("db__vacuum", "maintenance"), FACTS).allowed
    assert not engine.decide(ops, "call_tool", tool("db__vacuum"), FACTS).allowed
    assert not engine.decide(
        ops, "call_tool", tool("db__vacuum", "maintenance"), RequestFacts(("mcp",), None, "8.8.8.8")
    ).allowed
    assert not engine.decide(
        ops, "call_tool", tool("db__vacuum", "maintenance"), RequestFacts((), None, "10.0.0.5")
    ).allowed
    assert engine.decide(dev, "call_tool", tool("a__x"), FACTS).allowed
    assert engine.decide(dev, "list_tool", tool("b__y"), FACTS).allowed
    assert not engine.decide(dev, "call_tool", tool("c__z"), FACTS).allowed


def test_until_makes_a_grant_end_at_that_instant() -> None:
    engine = engine_of(
        """
        - id: temporary
          allow: {client: c1, tools: [db__query], until: "2026-12-01T10:00:00+01:00"}
        - id: epoch
          allow: {client: c2, tools: [db__query], until: 1796115600}
        - id: yaml-time
          allow: {client: c3, tools: [db__query], until: 2026-12-01T09:00:00Z}
        """
    )
    end = 1796115600  # 2026-12-01T09:00:00Z
    for client in ("c1", "c2", "c3"):
        who = PrincipalView(client, kind="client", client_id=client)
        before, at = RequestFacts(time=end - 1), RequestFacts(time=end)
        assert engine.decide(who, "call_tool", tool("db__query"), before).allowed, client
        assert not engine.decide(who, "call_tool", tool("db__query"), at).allowed, client
    assert "context.time < 1796115600" in compile_sugar("t", {"allow": {"until": "2026-12-01T09:00:00Z"}})


def test_argument_conditions() -> None:
    engine = engine_of(
        """
        - id: public-reads
          allow:
            tools: [files__read]
            when_arguments:
              path: "/public/*"
              depth: {le: 3, ge: 0}
              mode: {one_of: [ro, fast]}
              force: {present: false}
              owner: {not_equals: root}
              name: {not_like: "*.key"}
        """
    )
    who, read = PrincipalView("u"), tool("files__read")
    good: dict[str, Any] = {"path": "/public/a", "depth": 2, "mode": "ro", "owner": "me", "name": "a.txt"}
    assert engine.decide(who, "call_tool", read, FACTS, good).allowed
    for change in (
        {"path": "/etc/passwd"},
        {"depth": 4},
        {"mode": "rw"},
        {"force": True},
        {"owner": "root"},
        {"name": "id.key"},
    ):
        assert not engine.decide(who, "call_tool", read, FACTS, {**good, **change}).allowed, change
    missing = {k: v for k, v in good.items() if k != "depth"}
    assert not engine.decide(who, "call_tool", read, FACTS, missing).allowed  # absent: does not apply


def test_guardrails_become_annotations_and_reach_decisions() -> None:
    entry = {
        "id": "g",
        "allow": {"servers": ["files"]},
        "guardrails": {"arguments": {"pii": "redact"}, "results": {"secrets": "block", "email": "record"}},
    }
    record = compile_entry(entry)
    assert '@guardrail_arguments("pii:redact")' in record.cedar
    assert '@guardrail_results("secrets:block, email:record")' in record.cedar
    decision = PolicyEngine([record]).decide(PrincipalView("u"), "call_tool", tool("files__read"), FACTS)
    assert set(decision.guardrails) == {
        GuardrailSpec("arguments", "pii", "redact"),
        GuardrailSpec("results", "secrets", "block"),
        GuardrailSpec("results", "email", "record"),
    }


def test_globs_escape_everything_but_the_star() -> None:
    assert glob_pattern('a*b"c\\d') == '"a*b\\"c\\\\d"'
    with pytest.raises(SugarError, match="only '\\*'"):
        glob_pattern("files__read_?")
    engine = engine_of("- id: q\n  allow: {tools: ['weird__a\"b*']}")
    assert engine.decide(PrincipalView("u"), "call_tool", tool('weird__a"bc'), FACTS).allowed


def test_cedar_entries_and_descriptions_pass_through() -> None:
    record = compile_entry(
        {"id": "c", "description": "d", "cedar": "permit(principal, action, resource);"}, source="f"
    )
    assert (record.id, record.cedar, record.description, record.source) == (
        "c",
        "permit(principal, action, resource);",
        "d",
        "f",
    )
    described = compile_entry({"id": "s", "description": 'say "hi"', "allow": {"servers": ["x"]}})
    assert '@description("say \\"hi\\"")' in described.cedar


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "x", "allow": {"teams": "a"}}, "unknown key 'teams'"),
        ({"id": "x", "allow": {"team": "a"}, "extra": 1}, "unknown key 'extra'"),
        ({"id": "x", "allow": {}, "deny": {}}, "exactly one of 'allow' or 'deny'"),
        ({"id": "x"}, "exactly one of 'allow' or 'deny'"),
        ({"allow": {}}, "'id' is required"),
        ({"id": "x", "allow": {"actions": ["call"]}}, "unknown action 'call'"),
        ({"id": "x", "allow": {"team": []}}, "x.allow.team"),
        ({"id": "x", "allow": {"when_arguments": {"p": {"matches": "a"}}}}, "unknown key 'matches'"),
        ({"id": "x", "allow": {"when_arguments": {"p": {"lt": "a"}}}}, "x.allow.when_arguments.p.lt"),
        ({"id": "x", "allow": {"source_ips": ["nope"]}}, "'nope' is not an address"),
        (
            {"id": "x", "allow": {}, "guardrails": {"arguments": {"pii": "shred"}}},
            "x.guardrails.arguments.pii",
        ),
        ({"id": "x", "allow": {}, "guardrails": {"outputs": {}}}, "unknown key 'outputs'"),
        ({"id": "x", "deny": {}, "guardrails": {"results": {"pii": "block"}}}, "belong on allow rules"),
        ({"id": "x", "cedar": "permit(principal, action, resource);", "allow": {}}, "either 'cedar'"),
        ({"id": "x", "allow": {"agents": ["a"], "tools": ["b__c"]}}, "agents cannot be combined"),
        ({"id": "x", "allow": {"until": "tomorrow"}}, "x.allow.until: 'tomorrow' is not an RFC 3339"),
        ({"id": "x", "allow": {"until": "2026-12-01T10:00:00"}}, "give the timestamp's offset"),
        ({"id": "x", "allow": {"until": -5}}, "x.allow.until: expected an RFC 3339 timestamp"),
        ({"id": "x", "allow": {"until": True}}, "x.allow.until: expected"),
    ],
)
def test_bad_sugar_is_refused_naming_the_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(SugarError) as caught:
        compile_entry(entry)
    assert message in str(caught.value)


def test_every_compiled_form_validates() -> None:
    """A broad mix of sugar all loads (the schema accepts what the compiler writes)."""
    engine = engine_of(
        """
        - id: a
          allow: {team: t, tools: ["s1__*", "s2__x*"], actions: [call_tool, list_tool]}
        - id: b
          allow: {agents: [helper, other], role: r}
        - id: c
          allow: {agents: [helper], actions: [call_agent]}
        - id: d
          allow: {servers: [s], actions: [get_prompt, read_resource, call_tool]}
        - id: e
          deny: {user: mallory}
        - id: f
          allow: {toolsets: [x, y], servers: [s], tools: ["s__*"]}
        """
    )
    assert len(engine) == 6
