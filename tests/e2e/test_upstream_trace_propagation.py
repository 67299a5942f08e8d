"""The connectors carry tollhouse's own trace context upstream, to a real notes.py upstream.

Inside a SERVER span, a tools/call through a connector built with a `Tracing` opens a
CLIENT span and sends its W3C `traceparent` in `params._meta` (every transport) and as an
HTTP header (HTTP transports). notes' `trace_context` tool reports what it received.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from examples.servers import notes
from tests.harness import ROOT
from tests.servers import serve
from tests.upstreams import HeaderRecorder
from tollhouse.gateway.settings import TelemetrySettings
from tollhouse.gateway.sse_upstream import SseUpstream
from tollhouse.gateway.stdio import StdioUpstream
from tollhouse.gateway.streamable_http import HttpUpstream
from tollhouse.gateway.upstream import UpstreamConnector
from tollhouse.registry.models import JSONObject, Upstream
from tollhouse.tracing import Tracing

pytestmark = pytest.mark.anyio

# notes' MCPServer over stdio: its CLI serves HTTP only, the SDK serves any transport.
NOTES_OVER_STDIO = "from examples.servers.notes import build_server; build_server().run('stdio')"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Collects the spans of the test's `Tracing`."""
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    """A `Tracing` that keeps every span in `exporter`."""
    tracing = Tracing(TelemetrySettings(), node="test", version="0", exporter=exporter)
    yield tracing
    tracing.shutdown()


Connector = TypeVar("Connector", bound=UpstreamConnector)


@asynccontextmanager
async def started(connector: Connector) -> AsyncIterator[Connector]:
    """`connector`, started, and closed on the way out."""
    try:
        await connector.start()
        yield connector
    finally:
        await connector.aclose()


async def traced_call(tracing: Tracing, connector: UpstreamConnector) -> tuple[ReadableSpan, dict[str, Any]]:
    """Call notes' trace_context inside a SERVER span; returns that span and what notes reported."""
    params: JSONObject = {"name": "trace_context", "arguments": {}}
    with tracing.server_span("tools/call", params, {}, target="notes__trace_context") as span:
        result = await connector.request("tools/call", params)
    assert isinstance(span, ReadableSpan)
    assert result.get("isError") is not True, result
    reported: dict[str, Any] = json.loads(result["content"][0]["text"])
    return span, reported


def client_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one CLIENT span recorded."""
    (span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    return span


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C traceparent naming `span` as the parent."""
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def assert_client_span_under(server: ReadableSpan, client: ReadableSpan, upstream: str) -> None:
    """`client` is the child of `server`, for tools/call trace_context on `upstream`."""
    assert client.parent is not None and server.context is not None
    assert client.parent.span_id == server.context.span_id
    assert client.context is not None and client.context.trace_id == server.context.trace_id
    assert client.name == "tools/call trace_context"
    assert client.attributes is not None
    assert client.attributes["gen_ai.tool.name"] == "trace_context"
    assert client.attributes["tollhouse.upstream"] == upstream


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_streamable_http_upstream_gets_the_client_span_in_meta_and_header(
    era: str, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    # notes refuses 2026-07-28 by design; its bare SDK app is dual-era, so it also serves modern.
    app = notes.build_app() if era == "legacy" else notes.build_server().streamable_http_app(host="127.0.0.1")
    async with serve(app, path="/mcp") as url:
        upstream = Upstream(name="notes", url=url, call_timeout_seconds=10)
        async with started(HttpUpstream(upstream, environ={}, tracing=tracing)) as connector:
            assert connector.era == era
            server, reported = await traced_call(tracing, connector)

    client = client_span(exporter)
    assert_client_span_under(server, client, "notes")
    assert reported == {
        "meta_traceparent": traceparent_of(client),
        "header_traceparent": traceparent_of(client),
    }
    assert client.attributes is not None and client.attributes["server.address"] == "127.0.0.1"


async def test_sse_upstream_gets_the_client_span_in_meta_and_header(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with serve(notes.build_server().sse_app(), path="/sse") as url:
        upstream = Upstream(name="old-notes", transport="sse", url=url, call_timeout_seconds=10)
        async with started(SseUpstream(upstream, environ={}, tracing=tracing)) as connector:
            server, reported = await traced_call(tracing, connector)

    client = client_span(exporter)
    assert_client_span_under(server, client, "old-notes")
    assert reported == {
        "meta_traceparent": traceparent_of(client),
        "header_traceparent": traceparent_of(client),
    }


@pytest.mark.parametrize("era", ["legacy", "auto"])
async def test_stdio_upstream_gets_the_client_span_in_meta(
    era: Any, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    upstream = Upstream(
        name="local-notes",
        transport="stdio",
        command=(sys.executable, "-c", NOTES_OVER_STDIO),
        env={"PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        call_timeout_seconds=10,
    )
    async with started(StdioUpstream(upstream, era=era, tracing=tracing)) as connector:
        server, reported = await traced_call(tracing, connector)

    client = client_span(exporter)
    assert_client_span_under(server, client, "local-notes")
    assert reported == {"meta_traceparent": traceparent_of(client), "header_traceparent": None}


async def test_list_sync_is_background_traffic_without_span_or_trace_context(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    # Even when it runs in a task that inherited a request's context (anyio copies contextvars).
    recorder = HeaderRecorder(notes.build_app())
    async with serve(recorder, path="/mcp") as url:
        upstream = Upstream(name="notes", url=url, call_timeout_seconds=10)
        async with started(HttpUpstream(upstream, environ={}, tracing=tracing)) as connector:
            with tracing.server_span("tools/list", {}, {}):
                tools = await connector.list_all("tools/list", "tools")

    assert "trace_context" in {tool["name"] for tool in tools}
    assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.SERVER]
    (listed,) = [r for r in recorder.requests if r.rpc_method == "tools/list"]
    assert "traceparent" not in listed.headers
    assert b"traceparent" not in listed.body


async def test_without_tracing_the_current_context_is_still_propagated(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    async with serve(notes.build_app(), path="/mcp") as url:
        upstream = Upstream(name="notes", url=url, call_timeout_seconds=10)
        async with started(HttpUpstream(upstream, environ={})) as connector:
            server, reported = await traced_call(tracing, connector)

    assert [s.kind for s in exporter.get_finished_spans()] == [SpanKind.SERVER]
    assert reported == {
        "meta_traceparent": traceparent_of(server),
        "header_traceparent": traceparent_of(server),
    }
