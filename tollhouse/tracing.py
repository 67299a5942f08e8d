"""Traces: an OpenTelemetry TracerProvider of the app's own, and W3C trace context for MCP.

Nothing is global: each `create_app` builds one `Tracing` (its own TracerProvider, sampler and
span processors), so two gateways in one process never share spans. The module functions
(`inject_meta`, `inject_headers`, `current_ids`) read only the OpenTelemetry context API,
so code without a `Tracing` reference (connectors, log formatting) can propagate and report
whatever span is current.

Span shapes follow the MCP semantic conventions (semantic-conventions-genai, docs/gen-ai/mcp.md;
PROTOCOLS.md §4): `{mcp.method.name} {target}` names, SERVER spans for downstream messages and
CLIENT spans for upstream ones. Trace context travels in `params._meta.traceparent` (the 2026
spec reserves the unprefixed `traceparent`/`tracestate` keys, SEP-414) and, over HTTP, in the
W3C headers too. Exception text never goes into a span (it may quote arguments): failures
are described by `error.type` only, and the logs carry the traceback with the trace id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tollhouse.telemetry import otlp_endpoint, otlp_headers

if TYPE_CHECKING:
    from tollhouse.gateway.settings import TelemetrySettings

__all__ = [
    "Tracing",
    "UpstreamSend",
    "current_ids",
    "error_type_of",
    "inject_headers",
    "inject_meta",
    "target_of",
    "traced_request",
]

# W3C trace context only (no baggage): what tollhouse sends upstream is its own context,
# never an agent's, and baggage would forward whatever the agent put in it.
_W3C = TraceContextTextMapPropagator()
_TRACE_KEYS = ("traceparent", "tracestate")
# The body field naming what a method acts on (the same fields as the Mcp-Name header, §1.5).
_TARGET_FIELDS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

UpstreamSend = Callable[[dict[str, Any], Mapping[str, str]], Awaitable[dict[str, Any]]]
"""Sends one upstream request: (params with trace context, trace headers) -> result."""


class Tracing:
    """The app's tracer: its own provider, sampler and exporters."""

    def __init__(
        self,
        settings: TelemetrySettings,
        *,
        node: str,
        version: str,
        exporter: SpanExporter | None = None,
    ) -> None:
        resource = Resource.create(
            {
                "service.name": settings.service_name,
                "service.version": version,
                "service.instance.id": node,
            }
        )
        # With nothing to export to, no span is made at all (spans cost ~20 µs each): the
        # caller's trace context is passed through unchanged to the upstream and named in the
        # audit record, so traces still join up across tollhouse.
        self.recording = exporter is not None or bool(settings.otlp_endpoint)
        # No atexit hook: the app's lifespan shuts the provider down (tests build many apps).
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=resource,
            shutdown_on_exit=False,
        )
        if exporter is not None:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        if settings.otlp_endpoint:
            otlp = OTLPSpanExporter(
                endpoint=otlp_endpoint(settings.otlp_endpoint, "traces"), headers=otlp_headers(settings)
            )
            self.provider.add_span_processor(BatchSpanProcessor(otlp))
        self.tracer = self.provider.get_tracer("tollhouse", version)

    def shutdown(self) -> None:
        """Export what is buffered and stop the provider (blocks up to the exporter's timeout)."""
        self.provider.shutdown()

    @contextmanager
    def server_span(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        *,
        target: str | None = None,
        request_id: Any = None,
        session_id: str | None = None,
        protocol_version: str | None = None,
        client_address: str | None = None,
    ) -> Iterator[Span]:
        """A SERVER span for one downstream MCP message, current inside the block.

        Its parent is the W3C context in `params._meta` (the MCP convention), else the one in
        the HTTP `headers`, else whatever span is current; with a `_meta` parent, the headers'
        context and a current span are linked. An exception leaving the block sets
        `error.type` and status ERROR and propagates.
        """
        parent = _extract(_meta_of(params))
        from_headers = _extract(_lowered(headers))
        if not self.recording:
            with self._passed_through(parent or from_headers):
                yield trace.get_current_span()
            return
        links: list[Link] = []
        if parent is None:
            parent = from_headers
        else:
            # The MCP convention: parent on _meta, link the transport's context (its headers,
            # or an HTTP server span already current).
            for context in (from_headers, None):
                linked = trace.get_current_span(context).get_span_context()
                if linked.is_valid and all(link.context != linked for link in links):
                    links.append(Link(linked))
        attributes: dict[str, Any] = {"mcp.method.name": method, **_target_attributes(method, target)}
        if protocol_version:
            attributes["mcp.protocol.version"] = protocol_version
        if session_id:
            attributes["mcp.session.id"] = session_id
        if request_id is not None:
            attributes["jsonrpc.request.id"] = str(request_id)
        if client_address:
            attributes["client.address"] = client_address
        span = self.tracer.start_span(
            _span_name(method, target),
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        with self._active(span):
            yield span

    @contextmanager
    def client_span(
        self, method: str, *, server: str, target: str | None = None, url: str | None = None
    ) -> Iterator[Span]:
        """A CLIENT child of the current span for one request to upstream `server`.

        Error handling as in `server_span`.
        """
        if not self.recording:
            yield trace.get_current_span()
            return
        attributes: dict[str, Any] = {
            "mcp.method.name": method,
            "tollhouse.upstream": server,
            **_target_attributes(method, target),
        }
        if url is not None:
            parts = urlsplit(url)
            if parts.hostname:
                attributes["server.address"] = parts.hostname
                port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
                if port is not None:
                    attributes["server.port"] = port
        span = self.tracer.start_span(
            _span_name(method, target),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        with self._active(span):
            yield span

    @contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
        """An INTERNAL child of the current span (a pipeline stage); errors as in `server_span`."""
        if not self.recording:
            yield trace.get_current_span()
            return
        span = self.tracer.start_span(
            name,
            kind=SpanKind.INTERNAL,
            attributes=dict(attributes) if attributes else None,
            record_exception=False,
            set_status_on_exception=False,
        )
        with self._active(span):
            yield span

    @contextmanager
    def _passed_through(self, parent: otel_context.Context | None) -> Iterator[None]:
        if parent is None:
            # A request without a trace still gets ids, unsampled, so its audit record, its
            # log lines and the upstream's own spans can be correlated.
            ids = self.provider.id_generator
            own = SpanContext(ids.generate_trace_id(), ids.generate_span_id(), is_remote=False)
            parent = trace.set_span_in_context(NonRecordingSpan(own))
        token = otel_context.attach(parent)
        try:
            yield
        finally:
            otel_context.detach(token)

    def fail(self, span: Span, error_type: str) -> None:
        """Mark `span` failed without an exception: `error.type` and status ERROR."""
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR))

    @contextmanager
    def _active(self, span: Span) -> Iterator[None]:
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                yield
            except BaseException as exc:
                self.fail(span, error_type_of(exc))
                raise


def error_type_of(exc: BaseException) -> str:
    """The `error.type` of an exception: its JSON-RPC code when it has one, else its class name."""
    try:
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return "cancelled"
    except anyio.NoEventLoopError:
        pass  # synchronous code: nothing to cancel it
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return str(code)
    return type(exc).__name__


def target_of(method: str, params: Mapping[str, Any]) -> str | None:
    """What a request acts on: the tool or prompt name, or the resource URI; else None."""
    field = _TARGET_FIELDS.get(method)
    value = params.get(field) if field is not None else None
    return value if isinstance(value, str) else None


def inject_meta(params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `params` whose `_meta` carries the current span's W3C trace context.

    `_meta` is copied, its other keys kept; an incoming `tracestate` is dropped with the
    incoming `traceparent` it belonged to. Without a valid current span: an unchanged copy.
    """
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    if "traceparent" not in carrier:
        return dict(params)
    meta = params.get("_meta")
    own = {k: v for k, v in meta.items() if k not in _TRACE_KEYS} if isinstance(meta, Mapping) else {}
    return {**params, "_meta": {**own, **carrier}}


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Set `traceparent` (and `tracestate`) headers of the current span; nothing without one."""
    _W3C.inject(headers)


def current_ids() -> tuple[str | None, str | None]:
    """The current span's (trace id, span id) as lowercase hex; (None, None) without a valid span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


async def traced_request(
    tracing: Tracing | None,
    method: str,
    params: Mapping[str, Any],
    send: UpstreamSend,
    *,
    server: str,
    url: str | None = None,
) -> dict[str, Any]:
    """Send one upstream request under a CLIENT span (when `tracing`), carrying the trace context.

    `send` gets `params` with `_meta.traceparent` injected and the W3C headers to add on
    HTTP transports. A tools/call result with `isError` marks the span `tool_error`.

    Raises:
        Whatever `send` raises.
    """
    if tracing is None or not tracing.recording:
        return await send(inject_meta(params), _trace_headers())
    with tracing.client_span(method, server=server, target=target_of(method, params), url=url) as span:
        result = await send(inject_meta(params), _trace_headers())
        if method == "tools/call" and result.get("isError") is True:
            tracing.fail(span, "tool_error")
        return result


def _trace_headers() -> dict[str, str]:
    headers: dict[str, str] = {}
    _W3C.inject(headers)
    return headers


def _span_name(method: str, target: str | None) -> str:
    # A resource URI is unbounded: it goes in mcp.resource.uri, never in the span name.
    if target is None or method == "resources/read":
        return method
    return f"{method} {target}"


def _target_attributes(method: str, target: str | None) -> dict[str, str]:
    if target is None:
        return {}
    if method == "tools/call":
        return {"gen_ai.tool.name": target, "gen_ai.operation.name": "execute_tool"}
    if method == "prompts/get":
        return {"gen_ai.prompt.name": target}
    if method == "resources/read":
        return {"mcp.resource.uri": target}
    return {}


def _meta_of(params: Mapping[str, Any] | None) -> dict[str, str]:
    meta = params.get("_meta") if params is not None else None
    if not isinstance(meta, Mapping):
        return {}
    return {k: meta[k] for k in _TRACE_KEYS if isinstance(meta.get(k), str)}


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower() in _TRACE_KEYS}


def _extract(carrier: Mapping[str, str]) -> otel_context.Context | None:
    """The context of a valid `traceparent` in `carrier`, else None."""
    if "traceparent" not in carrier:
        return None
    context = _W3C.extract(carrier, context=otel_context.Context())
    return context if trace.get_current_span(context).get_span_context().is_valid else None
