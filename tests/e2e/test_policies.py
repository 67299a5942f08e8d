"""Per-tool authorization end to end: what tools/list shows is exactly what tools/call allows.

A real gateway with two upstreams and no allow-all policy; clients in different teams; Cedar
and sugar policies (a team grant by server, a glob grant, an argument-aware rule, a forbid).
For every principal and every tool of the catalog, a tool is listed if and only if a call to
it is allowed (argument-aware tools are listed and then judged by their arguments), and a
denied call is answered exactly like an unknown tool. Guardrails chosen by a policy redact and
block; the CLI tests and explains policies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError
from mcp.types import CallToolResult, TextContent

from tests.e2e.test_cli import run_cli
from tests.harness import ADMIN_TOKEN, MODES, Gateway, Mode, running_gateway
from tests.servers import serve
from tests.upstreams import HeaderRecorder, echo_upstream
from tollhouse.gateway.errors import GUARDRAIL_BLOCKED, INVALID_PARAMS

pytestmark = pytest.mark.anyio

POLICIES: list[dict[str, Any]] = [
    # Cedar: the platform team may call everything on `calc`.
    {
        "id": "platform-calc",
        "cedar": 'permit(principal in Team::"platform", action, resource in Server::"calc");',
    },
    # Sugar: support may call calc's echo tools (a glob).
    {"id": "support-echo", "allow": {"team": "support", "tools": ["calc__ec*"]}},
    # Argument-aware: support may read files only under /public (the tool stays listed).
    {
        "id": "support-files-public",
        "allow": {
            "team": "support",
            "tools": ["files__echo", "files__add"],
            "when_arguments": {"text": {"like": "/public/*"}},
        },
    },
    # A forbid beats the grant: nobody in platform may call calc__fail.
    {
        "id": "no-fail",
        "cedar": 'forbid(principal, action == Action::"call_tool", resource == Tool::"calc__fail");',
    },
]
CATALOG_ARGS: dict[str, dict[str, Any]] = {
    "echo": {"text": "/public/readme"},
    "add": {"a": 1, "b": 2},
    "fail": {"message": "x"},
}


@dataclass
class Setup:
    gw: Gateway
    keys: dict[str, str]
    files: HeaderRecorder


@asynccontextmanager
async def governed(tmp_path: Path, policies: list[dict[str, Any]] = POLICIES) -> AsyncIterator[Setup]:
    calc, _ = echo_upstream("calc")
    files, _ = echo_upstream("files")
    recorder = HeaderRecorder(files.streamable_http_app())
    async with (
        serve(calc.streamable_http_app(), path="/mcp") as calc_url,
        serve(recorder, path="/mcp") as files_url,
        running_gateway(tmp_path, allow_all=False) as gw,
    ):
        await gw.add_server("calc", calc_url)
        await gw.add_server("files", files_url)
        for policy in policies:
            response = await gw.admin.put(f"/policies/{policy['id']}", json=policy)
            assert response.status_code == 201, response.text
        keys = {
            team: await gw.create_client(f"agent-{team}", team=team)
            for team in ("platform", "support", "nobody")
        }
        yield Setup(gw, keys, recorder)


async def listed(gw: Gateway, key: str, mode: Mode) -> set[str]:
    async with gw.client(key, mode) as client:
        return {t.name for t in (await client.list_tools()).tools}


async def outcome(gw: Gateway, key: str, mode: Mode, name: str, arguments: dict[str, Any]) -> str:
    """'ok', 'tool-error' (the upstream ran it), or the JSON-RPC error `code: message` of a refusal."""
    async with gw.client(key, mode) as client:
        try:
            result: CallToolResult = await client.call_tool(name, arguments)
        except MCPError as exc:
            return f"{exc.code}: {exc.message}"
    return "tool-error" if result.is_error else "ok"


@pytest.mark.parametrize("mode", MODES)
async def test_the_list_shows_exactly_what_calls_allow_for_every_principal(
    tmp_path: Path, mode: Mode
) -> None:
    async with governed(tmp_path) as s:
        catalog = {t["name"] for t in (await s.gw.admin.get("/tools")).json()["items"]}
        calc_tools = {name for name in catalog if name.startswith("calc__")}
        assert {"calc__echo", "calc__add", "calc__fail", "files__echo"} <= catalog
        expected_lists = {
            "platform": calc_tools - {"calc__fail"},  # calc__fail is forbidden
            "support": {"calc__echo", "files__echo", "files__add"},  # the files tools: argument-aware
            "nobody": set(),
        }
        everything = {f"{server}__{tool}" for server in ("calc", "files") for tool in CATALOG_ARGS}
        for team, key in s.keys.items():
            shown = await listed(s.gw, key, mode)
            assert shown == expected_lists[team], team
            for name in sorted(everything):
                tool = name.partition("__")[2]
                result = await outcome(s.gw, key, mode, name, CATALOG_ARGS[tool])
                if name in shown:
                    # Listed: the call is allowed (files__add carries no `text`, so its
                    # argument-aware grant does not apply: see the next test).
                    assert result in ("ok", "tool-error") or name == "files__add", (team, name, result)
                else:
                    # Not listed: refused exactly like a tool that does not exist.
                    assert result == f"{INVALID_PARAMS}: Unknown tool: {name}", (team, name, result)
        unknown = await outcome(s.gw, s.keys["support"], mode, "calc__nonexistent", {})
        assert unknown == f"{INVALID_PARAMS}: Unknown tool: calc__nonexistent"


@pytest.mark.parametrize("mode", MODES)
async def test_an_argument_aware_rule_allows_and_denies_and_the_tool_stays_listed(
    tmp_path: Path, mode: Mode
) -> None:
    async with governed(tmp_path) as s:
        key = s.keys["support"]
        assert "files__echo" in await listed(s.gw, key, mode)
        assert await outcome(s.gw, key, mode, "files__echo", {"text": "/public/a.txt"}) == "ok"
        denied = await outcome(s.gw, key, mode, "files__echo", {"text": "/etc/passwd"})
        assert denied == f"{INVALID_PARAMS}: Unknown tool: files__echo"
        # files__add has no `text`: the grant reading it does not apply, so the call is denied.
        assert await outcome(s.gw, key, mode, "files__add", {"a": 1, "b": 2}) == (
            f"{INVALID_PARAMS}: Unknown tool: files__add"
        )
        calls = [r for r in s.files.requests if r.rpc_method == "tools/call"]
        assert len(calls) == 1 and b"/public/a.txt" in calls[0].body
        # Every decision is recorded with the policies that made it.
        decisions = (await s.gw.admin.get("/decisions")).json()["items"]
        allowed = [d for d in decisions if d["allowed"] and d["resource"] == 'Tool::"files__echo"']
        assert allowed and allowed[0]["policy_ids"] == ["support-files-public"]
        assert any(not d["allowed"] and d["policy_ids"] == [] for d in decisions)


async def test_a_policy_change_takes_effect_at_once_and_invalid_policies_are_refused(tmp_path: Path) -> None:
    async with governed(tmp_path) as s:
        key = s.keys["nobody"]
        assert await listed(s.gw, key, "2026-07-28") == set()
        grant = {"allow": {"team": "nobody", "tools": ["calc__add"]}}
        assert (await s.gw.admin.put("/policies/nobody-add", json=grant)).status_code == 201
        assert await listed(s.gw, key, "2026-07-28") == {"calc__add"}
        assert await outcome(s.gw, key, "2026-07-28", "calc__add", {"a": 2, "b": 2}) == "ok"
        for bad in (
            {"cedar": 'permit(principal in Tem::"x", action, resource);'},  # unknown entity type
            {"cedar": 'permit(principal, action == Action::"call_tol", resource);'},  # unknown action
            {
                "cedar": "permit(principal, action, resource) when { resource.colour == 1 };"
            },  # unknown attribute
            {"allow": {"team": "x", "toolz": ["a"]}},  # unknown sugar key
            {"cedar": "this is not cedar"},
        ):
            refused = await s.gw.admin.put("/policies/broken", json=bad)
            assert refused.status_code == 400, (bad, refused.text)
            assert "broken" in refused.json()["detail"]
        assert (await s.gw.admin.get("/policies/broken")).status_code == 404
        assert (await s.gw.admin.delete("/policies/nobody-add")).status_code == 204
        assert await listed(s.gw, key, "2026-07-28") == set()


async def test_guardrails_chosen_by_policy_redact_arguments_and_block_results(tmp_path: Path) -> None:
    policies = [
        {
            "id": "guarded-echo",
            "allow": {"team": "support", "tools": ["files__echo"]},
            "guardrails": {"arguments": {"pii": "redact"}, "results": {"secrets": "block"}},
        }
    ]
    async with governed(tmp_path, policies) as s:
        key = s.keys["support"]
        async with s.gw.client(key, "2026-07-28") as client:
            result = await client.call_tool("files__echo", {"text": "write to alice@example.com please"})
            content = result.content[0]
            assert isinstance(content, TextContent)
            assert content.text == "write to [REDACTED:email] please"
            with pytest.raises(MCPError) as blocked:
                await client.call_tool("files__echo", {"text": "key AKIAIOSFODNN7EXAMPLE"})
        assert blocked.value.code == GUARDRAIL_BLOCKED
        assert blocked.value.data == {
            "name": "files__echo",
            "direction": "result",
            "detectors": ["aws_access_key_id"],
        }
        bodies = b"".join(r.body for r in s.files.requests)
        assert b"alice@example.com" not in bodies and b"[REDACTED:email]" in bodies
        findings = (await s.gw.admin.get("/decisions")).json()["guardrails"]
        assert {f["direction"] for f in findings} == {"arguments", "result"}
        assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(findings)


async def test_policy_validate_test_and_explain_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with governed(tmp_path) as s:
        g = ["--url", s.gw.base_url, "--token", ADMIN_TOKEN]
        cases = tmp_path / "cases.yaml"
        cases.write_text(
            """\
cases:
  - name: platform calls calc
    principal: {client: c1, teams: [platform]}
    resource: {tool: calc__add}
    expect: allow
  - name: support reads public files
    principal: {client: c2, teams: [support]}
    resource: {tool: files__echo}
    context: {arguments: {text: /public/x}}
    expect: allow
  - name: support may not read /etc
    principal: {client: c2, teams: [support]}
    resource: {tool: files__echo}
    context: {arguments: {text: /etc/passwd}}
    expect: deny
  - name: but sees the tool
    principal: {client: c2, teams: [support]}
    resource: {tool: files__echo}
    expect: visible
"""
        )
        code, out, err = await run_cli(capsys, *g, "policy", "test", str(cases))
        assert code == 0, out + err
        assert out.count("PASS") == 4 and "4 passed, 0 failed" in out
        wrong = tmp_path / "wrong.yaml"
        wrong.write_text(
            "- {name: nobody calls calc, principal: {client: c3, teams: [nobody]}, "
            "resource: {tool: calc__add}, expect: allow}\n"
        )
        code, out, _ = await run_cli(capsys, *g, "policy", "test", str(wrong))
        assert code == 1 and "FAIL" in out and "1 failed" in out
        code, out, _ = await run_cli(
            capsys, *g, "policy", "explain", "--client", "c1", "--team", "platform", "--tool", "calc__fail"
        )
        assert code == 3 and "DENY" in out and "no-fail" in out
        code, out, _ = await run_cli(
            capsys,
            *g,
            "policy",
            "explain",
            "--client",
            "c1",
            "--team",
            "platform",
            "--tool",
            "calc__add",
            "--json",
        )
        assert code == 0 and json.loads(out)["allowed"] is True
        # validate and test --policies work without a gateway.
        policies = tmp_path / "policies.yaml"
        policies.write_text(
            "policies:\n  - id: ok\n    allow: {team: nobody, tools: ['calc__add']}\n"
            "  - id: typo\n    cedar: 'permit(principal, action == Action::\"call_tol\", resource);'\n"
        )
        code, out, _ = await run_cli(capsys, "policy", "validate", str(policies))
        assert code == 1 and "typo" in out
        policies.write_text("policies:\n  - id: ok\n    allow: {team: nobody, tools: ['calc__add']}\n")
        code, out, _ = await run_cli(capsys, "policy", "validate", str(policies))
        assert code == 0 and "1 policies are valid" in out
        code, out, _ = await run_cli(capsys, "policy", "test", str(wrong), "--policies", str(policies))
        assert code == 0 and "1 passed" in out
