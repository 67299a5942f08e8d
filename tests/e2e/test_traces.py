"""Traces through the whole gateway: the agent's trace continues through tollhouse into the upstream.

The official `mcp` client sends a W3C `traceparent` in `params._meta` (the MCP convention);
the gateway's SERVER span continues that trace, policy and admission are child spans, the
upstream request is a CLIENT span, and the example upstream (notes' `trace_context` tool)
reports the traceparent it received: same trace, parented on the CLIENT span. The call's
audit record carries the same trace id. Spans are read from an in-memory exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import RequestParamsMeta
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from examples.servers import notes
from tests.e2e.test_audit_trail import all_records, store_for
from tests.harness import running_gateway
from tests.servers import serve
from tollhouse.gateway.app import Deps

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_a_tool_call_is_one_trace_from_the_agent_into_the_upstream(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    app = notes.build_server().streamable_http_app(host="127.0.0.1")
    async with (
        serve(app, path="/mcp") as notes_url,
        running_gateway(tmp_path, Deps(span_exporter=exporter)) as gw,
    ):
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            result = await client.call_tool(
                "notes__trace_context",
                {},
                meta=cast(RequestParamsMeta, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}),
            )
            with pytest.raises(MCPError):
                await client.call_tool("notes__no_such_tool", {})
        records = await all_records(store_for(tmp_path))
    reported = json.loads(result.content[0].text)  # type: ignore[union-attr]

    spans = exporter.get_finished_spans()
    server = next(s for s in spans if s.name == "tools/call notes__trace_context")
    assert server.kind == SpanKind.SERVER
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert f"{server.parent.span_id:016x}" == PARENT_ID
    attributes = dict(server.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "notes__trace_context"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["mcp.protocol.version"] == "2026-07-28"
    assert "jsonrpc.request.id" in attributes

    children = {
        s.name: s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id
    }
    assert {"tollhouse.authorize", "tollhouse.admit"} <= set(children)
    client_span = next(s for s in children.values() if s.kind == SpanKind.CLIENT)
    assert client_span.name == "tools/call trace_context"
    assert client_span.context is not None
    # The upstream got the gateway's trace, parented on the CLIENT span (in _meta and the header).
    expected = f"00-{TRACE_ID}-{client_span.context.span_id:016x}-01"
    assert reported["meta_traceparent"] == expected
    assert reported["header_traceparent"] == expected

    unknown = next(s for s in spans if s.name == "tools/call notes__no_such_tool")
    assert unknown.status.status_code == StatusCode.ERROR
    assert dict(unknown.attributes or {})["error.type"]

    call = next(
        r for r in records if r["action"] == "tools/call" and r["what"].get("tool") == "trace_context"
    )
    assert call["correlation"]["trace_id"] == TRACE_ID
    assert call["correlation"]["span_id"] == f"{server.context.span_id:016x}"


async def test_without_an_exporter_the_agents_trace_context_passes_through(tmp_path: Path) -> None:
    app = notes.build_server().streamable_http_app(host="127.0.0.1")
    traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
    async with serve(app, path="/mcp") as notes_url, running_gateway(tmp_path) as gw:
        await gw.add_server("notes", notes_url)
        key = await gw.create_client("agent")
        async with gw.client(key, "2026-07-28") as client:
            result = await client.call_tool(
                "notes__trace_context", {}, meta=cast(RequestParamsMeta, {"traceparent": traceparent})
            )
        records = await all_records(store_for(tmp_path))
    reported = json.loads(result.content[0].text)  # type: ignore[union-attr]

    # Nothing records spans, so nothing new is made: the upstream sees the agent's own context.
    assert reported == {"meta_traceparent": traceparent, "header_traceparent": traceparent}
    call = next(r for r in records if r["action"] == "tools/call")
    assert call["correlation"]["trace_id"] == TRACE_ID
