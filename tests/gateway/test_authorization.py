"""PolicyService on the request path: what policy sees of a tool, and the guardrails a decision carries."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tollhouse.auth.principal import Principal
from tollhouse.gateway.authorization import AuthorizeStage, PolicyService
from tollhouse.gateway.pipeline import CallContext
from tollhouse.gateway.snapshot import build_snapshot
from tollhouse.registry.migrate import create_engine_for, database_url_for, upgrade
from tollhouse.registry.models import PolicyEntry, Toolset, Upstream, UpstreamCatalog
from tollhouse.registry.policy_store import SqlPolicyStore

pytestmark = pytest.mark.anyio

DESTRUCTIVE = {
    "name": "wipe",
    "inputSchema": {"type": "object"},
    "annotations": {"readOnlyHint": True, "destructiveHint": False},  # what the upstream *claims*
}
READ_ONLY_ONLY = PolicyEntry(
    id="read-only-tools",
    cedar='permit(principal, action == Action::"call_tool", resource) '
    "when { resource has read_only && resource.read_only };",
)


async def service(tmp_path: Path, upstreams: dict[str, Upstream]) -> PolicyService:
    url = database_url_for(None, str(tmp_path / "data"))
    await anyio.to_thread.run_sync(upgrade, url)
    policies = PolicyService(SqlPolicyStore(create_engine_for(url)), upstream=upstreams.get)
    await policies.put([READ_ONLY_ONLY], by="test")
    return policies


async def test_annotations_reach_policy_only_for_servers_an_admin_trusts(tmp_path: Path) -> None:
    upstreams = {
        "trusted": Upstream(name="trusted", url="http://127.0.0.1:1/mcp", trusted=True),
        "untrusted": Upstream(name="untrusted", url="http://127.0.0.1:2/mcp"),
    }
    policies = await service(tmp_path, upstreams)
    catalogs = {name: UpstreamCatalog(server=name, tools=(DESTRUCTIVE,)) for name in upstreams}
    snapshot = build_snapshot(1, catalogs, upstreams, [Toolset(name="danger", tools=("*__wipe",))])
    alice = Principal(subject="alice", kind="user", scopes=("mcp",))
    facts = policies.facts(alice, source_ip="10.0.0.1", protocol_version="2026-07-28")
    trusted, untrusted = (snapshot.tool(f"{name}__wipe") for name in ("trusted", "untrusted"))
    assert trusted is not None and untrusted is not None
    trusted_ref = policies.tool_ref(snapshot, trusted)
    assert (trusted_ref.read_only, trusted_ref.destructive, trusted_ref.toolsets) == (
        True,
        False,
        ("danger",),
    )
    untrusted_ref = policies.tool_ref(snapshot, untrusted)
    assert (untrusted_ref.read_only, untrusted_ref.destructive, untrusted_ref.server_trusted) == (
        None,
        None,
        False,
    )
    # The untrusted server's claim to be read-only does not relax policy.
    assert policies.visible_tool(alice, snapshot, trusted, facts)
    assert not policies.visible_tool(alice, snapshot, untrusted, facts)
    assert policies.decide(alice, "call_tool", trusted_ref, facts).allowed
    assert not policies.decide(alice, "call_tool", untrusted_ref, facts).allowed
    recorded = policies.decisions.recent(2)
    assert [r.allowed for r in recorded] == [False, True]
    assert recorded[1].policy_ids == ("read-only-tools",) and recorded[1].policy_version == policies.version


async def test_the_stage_hands_the_permitting_policys_guardrails_on(tmp_path: Path) -> None:
    upstreams = {"files": Upstream(name="files", url="http://127.0.0.1:1/mcp")}
    policies = await service(tmp_path, upstreams)
    guarded = PolicyEntry(
        id="guarded",
        cedar='@guardrail_results("secrets:block")\n@guardrail_arguments("pii:redact")\n'
        'permit(principal, action == Action::"call_tool", resource in Server::"files");',
    )
    await policies.put([guarded], by="test")
    snapshot = build_snapshot(1, {"files": UpstreamCatalog(server="files", tools=(DESTRUCTIVE,))}, upstreams)
    stage = AuthorizeStage(policies, lambda: snapshot)
    tool = snapshot.tool("files__wipe")
    ctx = CallContext(
        principal=Principal(subject="bot", client_id="bot", scopes=("mcp",)),
        name="files__wipe",
        arguments={},
        protocol_version="2026-07-28",
        tool=tool,
    )
    seen: list[CallContext] = []

    async def record(next_ctx: CallContext) -> dict[str, object]:
        seen.append(next_ctx)
        return {}

    await stage(ctx, record)
    (passed,) = seen
    assert passed.decision.policy_ids == ("guarded",)
    assert str(passed.guardrails.arguments) == "pii:redact"
    assert str(passed.guardrails.results) == "secrets:block"
