"""OTLP/HTTP export: spans and metrics reach a collector at `{otlp_endpoint}/v1/{signal}` with the headers.

The collector is a small ASGI app on loopback that keeps what it receives. Exporters run in
their own threads and block, so the providers are shut down (which flushes them) in a worker
thread while the event loop serves the collector.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.servers import serve
from tollhouse.gateway.settings import TelemetrySettings
from tollhouse.telemetry import Telemetry
from tollhouse.tracing import Tracing

pytestmark = pytest.mark.anyio

HEADERS = SecretStr("authorization=Bearer%20collector-key,x-tenant=platform")


@dataclass
class Collector:
    """What the collector received: (path, lowercased headers, body) per request."""

    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def bodies(self, path: str) -> list[bytes]:
        """The bodies posted to `path`, after checking each carried the configured headers."""
        found = [(headers, body) for p, headers, body in self.received if p == path]
        for headers in (h for h, _ in found):
            assert headers["authorization"] == "Bearer collector-key"
            assert headers["x-tenant"] == "platform"
            assert headers["content-type"] == "application/x-protobuf"
        return [body for _, body in found]


@asynccontextmanager
async def collector() -> AsyncIterator[tuple[str, Collector]]:
    """A fake OTLP/HTTP collector; yields its base URL (with a trailing slash) and its record."""
    record = Collector()

    async def receive(request: Request) -> Response:
        record.received.append((request.url.path, dict(request.headers), await request.body()))
        return Response(b"", media_type="application/x-protobuf")

    app = Starlette(routes=[Route("/v1/{signal}", receive, methods=["POST"])])
    async with serve(app) as url:
        yield f"{url}/", record


async def test_spans_are_exported_to_the_collector_with_the_configured_headers() -> None:
    async with collector() as (url, record):
        settings = TelemetrySettings(otlp_endpoint=url, otlp_headers=HEADERS, service_name="gw-test")
        tracing = Tracing(settings, node="node-1", version="9.9", exporter=None)
        with tracing.server_span("tools/call", {}, {}, target="lookup"):
            pass
        await anyio.to_thread.run_sync(tracing.shutdown)

    (body,) = record.bodies("/v1/traces")
    exported = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = exported.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert (resource["service.name"], resource["service.instance.id"]) == ("gw-test", "node-1")
    names = [s.name for scope in resource_spans.scope_spans for s in scope.spans]
    assert names == ["tools/call lookup"]


async def test_metrics_are_exported_to_the_collector_beside_prometheus() -> None:
    async with collector() as (url, record):
        settings = TelemetrySettings(otlp_endpoint=url, otlp_headers=HEADERS)
        telemetry = Telemetry(node="node-1", version="9.9", otlp=settings)
        telemetry.calls.add(1, {"method": "tools/call", "server": "crm", "outcome": "ok"})
        assert b"tollhouse_calls_total" in await telemetry.render()
        await anyio.to_thread.run_sync(telemetry.shutdown)

    bodies = record.bodies("/v1/metrics")
    assert bodies
    names = {
        metric.name
        for body in bodies
        for resource_metrics in ExportMetricsServiceRequest.FromString(body).resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    }
    assert "tollhouse.calls" in names
