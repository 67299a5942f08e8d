"""No secret anywhere (SECURITY_GOALS A5): canary credentials leave no trace outside where they belong.

Canaries: an upstream's stored bearer token, the agent's API key (used for every call), a
foreign token presented at the front door, a token sent in an extra request header, the admin
token, and an argument a guardrail marks secret (redacted) while the audit trail keeps
arguments. After calls, refusals and admin actions, none of them appears in the logs
(everything, at DEBUG), the audit trail and its export, the usage events, the spans,
`/metrics` or the database file (the stored upstream token is encrypted at rest).
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from examples.servers import studio
from tests.e2e.test_audit_trail import all_records, store_for
from tests.harness import ADMIN_TOKEN, running_gateway
from tests.servers import serve
from tollhouse.gateway.app import Deps
from tollhouse.gateway.settings import AuditSettings, UsageSettings, UsageSinkSettings
from tollhouse.registry.migrate import create_engine_for, database_url_for

pytestmark = pytest.mark.anyio

REDACT_SECRETS = """
@guardrail_arguments("secrets:redact")
permit(principal, action, resource);
"""


async def test_canary_credentials_appear_in_no_log_record_span_event_or_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream_token = "canary-upstream-" + secrets.token_hex(8)
    foreign_token = "canary-foreign-" + secrets.token_hex(8)
    header_token = "canary-header-" + secrets.token_hex(8)
    argument_secret = "ghp_" + secrets.token_hex(18)  # a GitHub token shape: the secrets detector's
    exporter = InMemorySpanExporter()
    usage = UsageSettings(
        sinks=(UsageSinkSettings(name="file", type="jsonl", path=str(tmp_path / "u.jsonl")),)
    )
    async with (
        serve(studio.build_app(), path="/mcp") as studio_url,
        running_gateway(
            tmp_path,
            Deps(span_exporter=exporter),
            allow_all=False,
            usage=usage,
            audit=AuditSettings(record_arguments=True),
        ) as gw,
    ):
        response = await gw.admin.put("/policies/allow-redacted", json={"cedar": REDACT_SECRETS})
        assert response.status_code == 201, response.text
        await gw.add_server("studio", studio_url, auth={"type": "bearer", "token": upstream_token})
        key = await gw.create_client("agent")
        headers = {"Authorization": f"Bearer {key}", "X-Api-Key": header_token}
        async with (
            create_mcp_http_client(headers=headers) as http_client,
            Client(streamable_http_client(gw.mcp_url, http_client=http_client), mode="2026-07-28") as client,
        ):
            result = await client.call_tool("studio__echo", {"text": "hello"})
            assert not result.is_error
            redacted = await client.call_tool("studio__echo", {"text": f"token {argument_secret}"})
            assert "[REDACTED:github_token]" in redacted.content[0].text  # type: ignore[union-attr]
        await gw.admin.get("/usage/report")  # commits this replica's queued usage events
        async with httpx2.AsyncClient(trust_env=False) as http:
            refused = await http.post(
                f"{gw.base_url}/mcp", json={}, headers={"Authorization": f"Bearer {foreign_token}"}
            )
            assert refused.status_code == 401
            metrics = (await http.get(f"{gw.base_url}/metrics")).text
        exported = await gw.admin.get("/audit/export")
        assert exported.status_code == 200, exported.text
        assert (await gw.admin.delete("/servers/studio")).status_code == 204
    records = await all_records(store_for(tmp_path))
    engine = create_engine_for(database_url_for(None, str(tmp_path / "data")))
    with engine.connect() as connection:
        usage_rows = list(connection.execute(sa.text("SELECT * FROM usage_events")))

    assert any("[REDACTED:github_token]" in str(r["what"].get("args")) for r in records)
    assert any(r["action"] == "auth.refused" for r in records)
    places = {
        # The gateway's log records (not the test's own client, which logs what it sends).
        "logs": "\n".join(
            f"{r.getMessage()} {r.exc_text or ''}"
            for r in caplog.records
            if not r.name.startswith("mcp.client")
        ),
        "audit": repr(records),
        "export": exported.text,
        "usage": "\n".join(str(row) for row in usage_rows),
        "spans": "\n".join(span.to_json() for span in exporter.get_finished_spans()),
        "metrics": metrics,
        "database": "".join(
            path.read_bytes().decode("latin-1") for path in (tmp_path / "data").glob("tollhouse.db*")
        ),
    }
    assert places["spans"] and places["usage"]
    for canary in (upstream_token, key, foreign_token, header_token, ADMIN_TOKEN, argument_secret):
        found = [where for where, text in places.items() if canary in text]
        assert not found, f"{canary[:14]}… found in {found}"
