"""Tracing: span shapes per the MCP semantic conventions, W3C parenting, and propagation helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tollhouse.gateway.errors import UPSTREAM_TIMEOUT, UpstreamRpcError, UpstreamTimeout
from tollhouse.gateway.settings import TelemetrySettings
from tollhouse.tracing import Tracing, current_ids, error_type_of, inject_headers, inject_meta, target_of

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
OTHER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_PARENT_ID = "00f067aa0ba902b7"
OTHER_TRACEPARENT = f"00-{OTHER_TRACE_ID}-{OTHER_PARENT_ID}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """Collects the spans of the test's `Tracing`."""
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    """A `Tracing` that keeps every span in `exporter`."""
    tracing = Tracing(TelemetrySettings(), node="node-1", version="1.2.3", exporter=exporter)
    yield tracing
    tracing.shutdown()


def finished(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    """The one finished span called `name`."""
    (span,) = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of a span, as hex."""
    assert span.context is not None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def parent_ids(span: ReadableSpan) -> tuple[str, str] | None:
    """(trace id, span id) of a span's parent, as hex; None for a root."""
    if span.parent is None:
        return None
    return f"{span.parent.trace_id:032x}", f"{span.parent.span_id:016x}"


def test_server_span_is_parented_on_meta_traceparent_over_headers(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    params = {"name": "get_weather", "_meta": {"traceparent": TRACEPARENT, "progressToken": 1}}
    with tracing.server_span(
        "tools/call",
        params,
        {"traceparent": OTHER_TRACEPARENT},
        target="get_weather",
        request_id=7,
        session_id="s-1",
        protocol_version="2025-11-25",
        client_address="10.0.0.9",
    ):
        pass

    span = finished(exporter, "tools/call get_weather")
    assert span.kind is SpanKind.SERVER
    assert parent_ids(span) == (TRACE_ID, PARENT_ID)
    assert span.parent is not None and span.parent.is_remote
    # The transport's context is linked, not lost.
    (link,) = span.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (
        OTHER_TRACE_ID,
        OTHER_PARENT_ID,
    )
    assert dict(span.attributes or {}) == {
        "mcp.method.name": "tools/call",
        "mcp.protocol.version": "2025-11-25",
        "mcp.session.id": "s-1",
        "jsonrpc.request.id": "7",
        "client.address": "10.0.0.9",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.operation.name": "execute_tool",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.resource.attributes)["service.instance.id"] == "node-1"
    assert dict(span.resource.attributes)["service.version"] == "1.2.3"


def test_a_meta_parent_links_the_span_already_current(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with (
        tracing.span("http"),  # stands in for an HTTP server span of the transport
        tracing.server_span("tools/list", {"_meta": {"traceparent": TRACEPARENT}}, {}),
    ):
        pass

    http, span = finished(exporter, "http"), finished(exporter, "tools/list")
    assert parent_ids(span) == (TRACE_ID, PARENT_ID)
    (link,) = span.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == ids(http)


def test_server_span_falls_back_to_http_headers_whatever_their_case(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    headers = {"Traceparent": OTHER_TRACEPARENT, "TraceState": "vendor=abc"}
    with tracing.server_span("tools/list", {"_meta": {"progressToken": 1}}, headers):
        pass

    span = finished(exporter, "tools/list")
    assert parent_ids(span) == (OTHER_TRACE_ID, OTHER_PARENT_ID)
    assert span.links == ()
    assert span.context is not None and span.context.trace_state.get("vendor") == "abc"
    assert "mcp.session.id" not in (span.attributes or {})
    assert "gen_ai.tool.name" not in (span.attributes or {})


def test_an_invalid_meta_traceparent_falls_back_to_the_headers(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.server_span(
        "ping", {"_meta": {"traceparent": "garbage"}}, {"traceparent": OTHER_TRACEPARENT}
    ):
        pass

    assert parent_ids(finished(exporter, "ping")) == (OTHER_TRACE_ID, OTHER_PARENT_ID)


def test_server_span_without_trace_context_starts_a_new_trace(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.server_span("initialize", None, {}, request_id="abc"):
        pass

    span = finished(exporter, "initialize")
    assert span.parent is None
    assert (span.attributes or {})["jsonrpc.request.id"] == "abc"


def test_prompt_and_resource_targets_follow_the_conventions(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.server_span("prompts/get", {}, {}, target="summarize"):
        pass
    with tracing.server_span("resources/read", {}, {}, target="notes://count"):
        pass

    assert (finished(exporter, "prompts/get summarize").attributes or {})["gen_ai.prompt.name"] == "summarize"
    # A URI is unbounded: it is an attribute, not part of the span name.
    assert (finished(exporter, "resources/read").attributes or {})["mcp.resource.uri"] == "notes://count"


def test_a_failure_with_a_code_sets_that_code_as_error_type_and_propagates(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with (
        pytest.raises(UpstreamTimeout),
        tracing.server_span("tools/call", {}, {}, target="slow"),
    ):
        raise UpstreamTimeout("up", 1.0)

    span = finished(exporter, "tools/call slow")
    assert (span.attributes or {})["error.type"] == str(UPSTREAM_TIMEOUT)
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()  # exception text never goes into a span


def test_a_failure_without_a_code_is_named_by_its_class(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(KeyError), tracing.server_span("tools/call", {}, {}, target="t"):
        raise KeyError("secret argument")

    span = finished(exporter, "tools/call t")
    assert (span.attributes or {})["error.type"] == "KeyError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None


@pytest.mark.anyio
async def test_cancellation_is_recorded_as_cancelled(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with anyio.CancelScope() as scope, tracing.server_span("tools/call", {}, {}, target="t"):
        scope.cancel()
        await anyio.lowlevel.checkpoint()

    span = finished(exporter, "tools/call t")
    assert (span.attributes or {})["error.type"] == "cancelled"
    assert span.status.status_code is StatusCode.ERROR


def test_fail_marks_a_span_without_an_exception(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    with tracing.server_span("tools/call", {}, {}, target="t") as span:
        tracing.fail(span, "-32602")

    recorded = finished(exporter, "tools/call t")
    assert (recorded.attributes or {})["error.type"] == "-32602"
    assert recorded.status.status_code is StatusCode.ERROR


def test_error_type_of_prefers_an_integer_code() -> None:
    assert error_type_of(UpstreamRpcError(-32602, "bad")) == "-32602"
    assert error_type_of(ValueError("x")) == "ValueError"


def test_internal_and_client_spans_are_children_of_the_current_span(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with (
        tracing.server_span("tools/call", {"_meta": {"traceparent": TRACEPARENT}}, {}, target="crm__lookup"),
        tracing.span("upstream", {"tollhouse.stage": "upstream"}),
        tracing.client_span("tools/call", server="crm", target="lookup", url="https://crm.example/mcp"),
    ):
        pass

    server = finished(exporter, "tools/call crm__lookup")
    stage = finished(exporter, "upstream")
    client = finished(exporter, "tools/call lookup")
    assert stage.kind is SpanKind.INTERNAL and client.kind is SpanKind.CLIENT
    assert parent_ids(stage) == ids(server)
    assert parent_ids(client) == ids(stage)
    assert ids(client)[0] == TRACE_ID
    assert (stage.attributes or {})["tollhouse.stage"] == "upstream"
    assert dict(client.attributes or {}) == {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "lookup",
        "gen_ai.operation.name": "execute_tool",
        "tollhouse.upstream": "crm",
        "server.address": "crm.example",
        "server.port": 443,
    }


def test_client_span_failure_records_the_upstream_code(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with (
        pytest.raises(UpstreamRpcError),
        tracing.client_span("tools/call", server="crm", target="lookup", url="http://127.0.0.1:9/mcp"),
    ):
        raise UpstreamRpcError(-32601, "no such method")

    client = finished(exporter, "tools/call lookup")
    assert (client.attributes or {})["error.type"] == "-32601"
    assert (client.attributes or {})["server.port"] == 9


def test_inject_meta_carries_the_current_span_and_keeps_other_keys(tracing: Tracing) -> None:
    params: dict[str, Any] = {
        "name": "lookup",
        "_meta": {"progressToken": 3, "traceparent": OTHER_TRACEPARENT, "tracestate": "agent=1"},
    }
    with tracing.client_span("tools/call", server="crm", target="lookup"):
        trace_id, span_id = current_ids()
        injected = inject_meta(params)

    assert injected["name"] == "lookup"
    meta = injected["_meta"]
    assert meta["progressToken"] == 3
    assert meta["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert "tracestate" not in meta  # the agent's, which belonged to the agent's traceparent
    assert params["_meta"]["traceparent"] == OTHER_TRACEPARENT  # the input is not changed


def test_inject_meta_without_a_span_returns_an_unchanged_copy() -> None:
    params = {"name": "lookup", "_meta": {"progressToken": 3}}
    injected = inject_meta(params)
    assert injected == params and injected is not params


def test_inject_headers_and_current_ids_follow_the_current_span(tracing: Tracing) -> None:
    assert current_ids() == (None, None)
    outside: dict[str, str] = {}
    inject_headers(outside)
    assert outside == {}

    headers = {"traceparent": OTHER_TRACEPARENT, "tracestate": "vendor=abc"}
    with tracing.server_span("tools/list", {}, headers):
        trace_id, span_id = current_ids()
        inside: dict[str, str] = {}
        inject_headers(inside)

    assert trace_id == OTHER_TRACE_ID and span_id is not None and len(span_id) == 16
    assert inside["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert inside["tracestate"] == "vendor=abc"
    assert current_ids() == (None, None)


def test_target_of_names_tools_prompts_and_resources() -> None:
    assert target_of("tools/call", {"name": "t"}) == "t"
    assert target_of("prompts/get", {"name": "p"}) == "p"
    assert target_of("resources/read", {"uri": "x://y"}) == "x://y"
    assert target_of("tools/list", {"name": "t"}) is None
    assert target_of("tools/call", {"name": 5}) is None


def test_a_zero_sample_ratio_records_no_new_trace_but_honours_a_sampled_parent(
    exporter: InMemorySpanExporter,
) -> None:
    tracing = Tracing(TelemetrySettings(sample_ratio=0), node="n", version="0", exporter=exporter)
    try:
        with tracing.server_span("tools/list", {}, {}):
            pass
        with tracing.server_span("tools/call", {"_meta": {"traceparent": TRACEPARENT}}, {}, target="t"):
            pass
    finally:
        tracing.shutdown()

    assert [s.name for s in exporter.get_finished_spans()] == ["tools/call t"]


def test_two_tracings_share_no_spans() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    one = Tracing(TelemetrySettings(), node="a", version="0", exporter=first)
    two = Tracing(TelemetrySettings(), node="b", version="0", exporter=second)
    try:
        with one.server_span("ping", None, {}):
            pass
    finally:
        one.shutdown()
        two.shutdown()

    assert [s.name for s in first.get_finished_spans()] == ["ping"]
    assert second.get_finished_spans() == ()
