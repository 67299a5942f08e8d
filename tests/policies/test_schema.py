"""The schema check at load: typos are rejected with a clear, per-policy message; `context.arguments`
is free-form; at evaluation a policy that reads an absent argument does not apply."""

from __future__ import annotations

import cedarpy
import pytest

from tollhouse.policies.compile import PolicyError
from tollhouse.policies.engine import PolicyEngine, check_policies
from tollhouse.policies.model import PolicyRecord, PrincipalView, RequestFacts, ToolRef
from tollhouse.policies.schema import arguments_type, cedar_string, schema_text

READ = ToolRef("files__read", "files", "read")
ALICE = PrincipalView("alice", teams=("support",))
FACTS = RequestFacts(scopes=("mcp",), client_id="cli", source_ip="10.1.2.3", protocol_version="2026-07-28")


def problems(cedar: str, policy_id: str = "p1") -> list[str]:
    return [p.message for p in check_policies([PolicyRecord(policy_id, cedar)])]


def test_the_schema_parses_and_open_records_are_really_unsupported() -> None:
    cedarpy.Schema.from_str(schema_text({"path": "String", "opts": {"deep": "Bool"}}))
    open_record = {
        "": {
            "entityTypes": {"User": {}},
            "actions": {
                "a": {
                    "appliesTo": {
                        "principalTypes": ["User"],
                        "resourceTypes": ["User"],
                        "context": {
                            "type": "Record",
                            "attributes": {
                                "arguments": {
                                    "type": "Record",
                                    "attributes": {},
                                    "additionalAttributes": True,
                                }
                            },
                        },
                    }
                }
            },
        }
    }
    # Why the engine validates each policy against its own Arguments record (schema.py).
    with pytest.raises(ValueError, match="unsupported feature"):
        cedarpy.Schema.from_json_str(__import__("json").dumps(open_record))


def test_arguments_type_quotes_any_attribute_name() -> None:
    assert arguments_type({}) == "{}"
    assert (
        arguments_type({"file-path": "String", "o": {"x": "Long"}})
        == '{ "file-path": String, "o": { "x": Long } }'
    )
    assert cedar_string('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\u{1}é"'


@pytest.mark.parametrize(
    ("cedar", "expected"),
    [
        (
            'permit(principal in Teem::"x", action == Action::"call_tool", resource);',
            "unrecognized entity type `Teem`",
        ),
        (
            'permit(principal, action == Action::"call_tol", resource);',
            'unrecognized action `Action::"call_tol"`',
        ),
        (
            'permit(principal, action == Action::"call_tool", resource) when { resource.nme == "x" };',
            "attribute `nme` on entity type `Tool` not found",
        ),
        (
            'permit(principal, action == Action::"call_tool", resource) when { context.scope.contains("x") '
            "};",
            "attribute `scope`",
        ),
        (
            'permit(principal, action == Action::"call_tool", resource) when { context.time like "x" };',
            "String",
        ),
        (
            'permit(principal, action == Action::"call_tool", resource) when { resource.read_only };',
            "optional attribute `read_only`",
        ),
        # a typo next to an argument read is still caught
        (
            'permit(principal, action == Action::"call_tool", resource) '
            'when { context.arguments.path like "/p*" && principal.subjekt == "x" };',
            "attribute `subjekt`",
        ),
        # an argument used as two different types can never hold
        (
            'permit(principal, action == Action::"call_tool", resource) '
            'when { context.arguments.n like "a" && context.arguments.n > 3 };',
            "",
        ),
    ],
)
def test_typos_are_rejected_naming_the_policy(cedar: str, expected: str) -> None:
    found = check_policies([PolicyRecord("typo-policy", cedar)])
    assert found, cedar
    assert all(p.policy_id == "typo-policy" for p in found)
    assert any(expected in p.message for p in found), found
    assert all("policy0" not in p.message for p in found)  # Cedar's positional ids never leak


@pytest.mark.parametrize(
    "condition",
    [
        'context.arguments.path like "/public/*"',
        'context.arguments has path && context.arguments.path like "/public/*"',
        'context.arguments["file-path"] == "x"',
        "context.arguments.count > 3 && context.arguments.count <= 10",
        "context.arguments.recursive",
        "!context.arguments.dry_run",
        'context.arguments.tags.contains("prod")',
        'context.arguments.tags.containsAny(["a", "b"])',
        '["ro", "rw"].contains(context.arguments.mode)',
        "context.arguments.opts.deep.flag == true",
        'context.arguments has opts.deep && context.arguments.opts.deep.level == "x"',
        "context.arguments.a == context.arguments.b",
        "context.arguments.n == context.arguments.m + 1",
        "context.scopes.contains(context.arguments.scope)",
        '(if context.arguments.flag then "a" else "b") == "a"',
        "!(context.arguments has force)",
    ],
)
def test_any_argument_access_is_accepted(condition: str) -> None:
    cedar = f'permit(principal, action == Action::"call_tool", resource) when {{ {condition} }};'
    assert problems(cedar) == []


def test_all_problems_are_reported_at_once_in_record_order() -> None:
    records = [
        PolicyRecord("ok", 'permit(principal, action == Action::"call_tool", resource);'),
        PolicyRecord("broken", "permit(principal, action, resource"),
        PolicyRecord("two", "permit(principal, action, resource); forbid(principal, action, resource);"),
        PolicyRecord("bad id!", "permit(principal, action, resource);"),
        PolicyRecord("ok", "permit(principal, action, resource);"),
        PolicyRecord("mismatch", '@id("other") permit(principal, action, resource);'),
        PolicyRecord("slot", "permit(principal == ?principal, action, resource);"),
        PolicyRecord("typo", 'permit(principal in Tem::"x", action, resource);'),
        PolicyRecord("guard", '@guardrail_arguments("pii:shred") permit(principal, action, resource);'),
        PolicyRecord("guard2", '@guardrail_everything("pii:block") permit(principal, action, resource);'),
    ]
    with pytest.raises(PolicyError) as caught:
        PolicyEngine(records)
    text = str(caught.value)
    by_id: dict[str, str] = {}
    for problem in caught.value.problems:
        by_id[problem.policy_id] = by_id.get(problem.policy_id, "") + problem.message + "\n"
    assert "does not parse as Cedar" in by_id["broken"]
    assert "holds 2 policies" in by_id["two"]
    assert "not a valid id" in by_id["bad id!"]
    assert "more than once" in by_id["ok"]
    assert "@id annotation 'other'" in by_id["mismatch"]
    assert "templates" in by_id["slot"]
    assert "`Tem`" in by_id["typo"]
    assert "pii:shred" in by_id["guard"]
    assert "@guardrail_everything" in by_id["guard2"]
    assert text.startswith(f"{len(caught.value.problems)} policy problems:")
    assert "policy 'typo': unrecognized entity type `Tem`" in text
    ids = [p.policy_id for p in caught.value.problems]
    assert ids.index("broken") < ids.index("typo") < ids.index("guard")


def _engine(*cedar: str) -> PolicyEngine:
    return PolicyEngine([PolicyRecord(f"p{i}", text) for i, text in enumerate(cedar)])


def test_a_forbid_reading_an_absent_argument_does_not_deny() -> None:
    engine = _engine(
        'permit(principal, action == Action::"call_tool", resource);',
        'forbid(principal, action == Action::"call_tool", resource) when { context.arguments.path like '
        '"/etc/*" };',
    )
    absent = engine.decide(ALICE, "call_tool", READ, FACTS, {"other": 1})
    assert absent.allowed and absent.policy_ids == ("p0",)
    assert any("p1" in error and "path" in error for error in absent.errors)
    assert not engine.decide(ALICE, "call_tool", READ, FACTS, {"path": "/etc/passwd"}).allowed
    # an argument of the wrong type is an evaluation error too: the policy does not apply
    assert engine.decide(ALICE, "call_tool", READ, FACTS, {"path": 7}).allowed


def test_a_permit_reading_an_absent_argument_does_not_permit() -> None:
    engine = _engine(
        'permit(principal, action == Action::"call_tool", resource) when { context.arguments.path like '
        '"/public/*" };'
    )
    assert engine.decide(ALICE, "call_tool", READ, FACTS, {"path": "/public/a"}).allowed
    denied = engine.decide(ALICE, "call_tool", READ, FACTS, {})
    assert not denied.allowed and denied.policy_ids == ()
    assert denied.errors and "p0" in denied.errors[0]
    assert not engine.decide(ALICE, "call_tool", READ, FACTS, None).allowed


def test_context_fields_have_the_declared_types_at_evaluation() -> None:
    engine = _engine(
        'permit(principal, action == Action::"call_tool", resource) when { '
        'context.source_ip.isInRange(ip("10.0.0.0/8")) && context.scopes.contains("mcp") && '
        'context.client_id == "cli" && context.protocol_version == "2026-07-28" && context.time >= 100 };'
    )
    facts = RequestFacts(("mcp",), "cli", "10.1.2.3", "2026-07-28", 200)
    assert engine.decide(ALICE, "call_tool", READ, facts).allowed
    for changed in (
        RequestFacts(("mcp",), "cli", "192.168.0.1", "2026-07-28", 200),
        RequestFacts((), "cli", "10.1.2.3", "2026-07-28", 200),
        RequestFacts(("mcp",), "other", "10.1.2.3", "2026-07-28", 200),
        RequestFacts(("mcp",), "cli", "10.1.2.3", "2025-11-25", 200),
        RequestFacts(("mcp",), "cli", "10.1.2.3", "2026-07-28", 50),
        RequestFacts(("mcp",), "cli", "not an address", "2026-07-28", 200),  # becomes 0.0.0.0
        RequestFacts(("mcp",), "cli", None, "2026-07-28", 200),
    ):
        assert not engine.decide(ALICE, "call_tool", READ, changed).allowed, changed
    assert engine.decide(
        ALICE, "call_tool", READ, RequestFacts(("mcp",), "cli", "[::ffff:10.0.0.1]", "2026-07-28", 200)
    )


def test_argument_values_cannot_smuggle_entities_or_break_the_context() -> None:
    engine = _engine(
        'permit(principal, action == Action::"call_tool", resource) when { context.arguments.who like '
        '"*__entity*" };',
        'permit(principal, action == Action::"call_tool", resource) when { context.arguments.n == 5 };',
    )
    # an entity reference in the arguments reaches policy as its JSON text, not as an entity
    smuggled = {"who": {"__entity": {"type": "User", "id": "alice"}}}
    assert engine.decide(ALICE, "call_tool", READ, FACTS, smuggled).policy_ids == ("p0",)
    # nulls, floats, huge integers and deep nesting do not make the request fail
    odd = {"n": 5, "x": None, "f": 1.5, "big": 2**80, "deep": {"a": [None, {"b": [1.0]}]}}
    assert engine.decide(ALICE, "call_tool", READ, FACTS, odd).allowed


def test_upstream_hints_feed_policy_only_for_trusted_servers() -> None:
    engine = _engine(
        'permit(principal, action == Action::"call_tool", resource) when { resource has read_only && '
        "resource.read_only };",
        'forbid(principal, action == Action::"call_tool", resource) when { resource has destructive && '
        "resource.destructive };",
    )
    trusted = ToolRef("files__read", "files", "read", read_only=True, server_trusted=True)
    untrusted = ToolRef("files__read", "files", "read", read_only=True, server_trusted=False)
    assert engine.decide(ALICE, "call_tool", trusted, FACTS).allowed
    assert not engine.decide(ALICE, "call_tool", untrusted, FACTS).allowed
    both = ToolRef("files__rm", "files", "rm", read_only=True, destructive=True, server_trusted=True)
    assert not engine.decide(ALICE, "call_tool", both, FACTS).allowed
