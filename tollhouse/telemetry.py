"""Metrics: an OpenTelemetry MeterProvider of the app's own, read as Prometheus text at /metrics.

Nothing is global: each `create_app` builds one `Telemetry` (its own MeterProvider and its own
Prometheus CollectorRegistry), so several gateways in one process — tests, replicas — never
share a counter. Instruments come in two kinds:

- counters and histograms the request path updates (calls by outcome, operation duration);
- observables read at scrape time from state the services already keep (queue sizes, limiter
  refusals, upstream health, the outbox backlog). Values that need a database read are
  refreshed by `on_scrape` hooks just before the registry is rendered, so the synchronous
  callbacks only read memory.

Labels stay low-cardinality and carry no identities: method, server, outcome, sink, kind —
never subjects, clients, tools or arguments. With an OTLP endpoint configured the same
instruments are also pushed to the collector every `metrics_export_seconds`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.util.re import parse_env_headers
from prometheus_client import CollectorRegistry, generate_latest

if TYPE_CHECKING:
    from tollhouse.gateway.settings import TelemetrySettings

__all__ = ["CONTENT_TYPE", "Reading", "Telemetry", "labelled", "otlp_endpoint", "otlp_headers"]

logger = logging.getLogger("tollhouse.telemetry")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# MCP semantic conventions: buckets of mcp.*.operation.duration, in seconds.
DURATION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

Reading = Callable[[], Iterable[tuple[float, Mapping[str, str]]]]
Refresh = Callable[[], Awaitable[None]]


class Telemetry:
    """The app's meter and its Prometheus view, pushed over OTLP too when `otlp` names a collector."""

    def __init__(self, *, node: str, version: str = "", otlp: TelemetrySettings | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [
            PrometheusMetricReader(registry=self.registry, disable_target_info=True, scope_info_enabled=False)
        ]
        if otlp is not None and otlp.otlp_endpoint:
            exporter = OTLPMetricExporter(
                endpoint=otlp_endpoint(otlp.otlp_endpoint, "metrics"), headers=otlp_headers(otlp)
            )
            readers.append(
                PeriodicExportingMetricReader(
                    exporter, export_interval_millis=otlp.metrics_export_seconds * 1000
                )
            )
        service = otlp.service_name if otlp is not None else "tollhouse"
        resource = Resource.create(
            {"service.name": service, "service.instance.id": node, "service.version": version}
        )
        # No atexit hook: the app's lifespan shuts the provider down (tests build many apps).
        self.provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        self.meter = self.provider.get_meter("tollhouse")
        self._refreshers: list[tuple[str, Refresh]] = []
        self.calls = self.meter.create_counter(
            "tollhouse.calls", unit="{call}", description="Metered MCP calls by method, server and outcome"
        )
        self.operation_duration = self.meter.create_histogram(
            "mcp.server.operation.duration",
            unit="s",
            description="Duration of MCP requests as the gateway served them",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def gauge(self, name: str, description: str, read: Reading, *, unit: str = "1") -> None:
        """An observable gauge whose points `read()` gives at each scrape."""
        self.meter.create_observable_gauge(
            name, callbacks=[_callback(read)], unit=unit, description=description
        )

    def total(self, name: str, description: str, read: Reading, *, unit: str = "1") -> None:
        """An observable monotonic counter (a running total kept elsewhere)."""
        self.meter.create_observable_counter(
            name, callbacks=[_callback(read)], unit=unit, description=description
        )

    def on_scrape(self, name: str, refresh: Refresh) -> None:
        """Run `refresh` before each scrape (a failing one is logged; its gauges keep their last values)."""
        self._refreshers.append((name, refresh))

    async def render(self) -> bytes:
        """The Prometheus text exposition of every instrument."""
        for name, refresh in self._refreshers:
            try:
                await refresh()
            except Exception:
                logger.warning("metrics: refreshing %s failed", name, exc_info=True)
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Stop the provider: the OTLP reader exports once more, then every reader stops answering."""
        self.provider.shutdown()


def _callback(read: Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(attributes)) for value, attributes in read()]

    return observe


def labelled(counts: Mapping[str, Any], label: str) -> list[tuple[float, Mapping[str, str]]]:
    """Points of a count mapping, one per key, labelled `label=key`."""
    return [(float(v), {label: k}) for k, v in sorted(counts.items())]


def otlp_endpoint(base: str, signal: str) -> str:
    """The OTLP/HTTP URL of one signal ("traces", "metrics") under a collector's base URL."""
    return f"{base.rstrip('/')}/v1/{signal}"


def otlp_headers(settings: TelemetrySettings) -> dict[str, str]:
    """The collector headers of `settings.otlp_headers` ("k=v,k=v", values URL-decoded)."""
    if settings.otlp_headers is None:
        return {}
    return dict(parse_env_headers(settings.otlp_headers.get_secret_value(), liberal=True))
