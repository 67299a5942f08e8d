"""The gateway's metric families, read from the services at scrape time (see tollhouse.telemetry).

Prometheus names (docs/operations.md, "Metrics", lists them with their labels):
- tollhouse_calls_total{mcp_method_name, server, outcome}: metered calls (tools/call,
  resources/read, prompts/get); mcp_server_operation_duration_seconds: their duration;
- tollhouse_upstream_up{server}, tollhouse_sessions_active;
- tollhouse_limit_rejections_total{kind}, tollhouse_ratelimit_storage_errors_total,
  tollhouse_ratelimit_fallbacks_total, tollhouse_budget_settlements_pending;
- tollhouse_usage_queue, tollhouse_usage_events_written_total,
  tollhouse_usage_events_dropped_total, tollhouse_usage_outbox_backlog{sink},
  tollhouse_usage_outbox_oldest_age_seconds{sink}, tollhouse_usage_deliveries_total{sink},
  tollhouse_usage_delivery_failures_total{sink};
- tollhouse_audit_queue, tollhouse_audit_lag_seconds, tollhouse_audit_records_written_total,
  tollhouse_audit_records_dropped_total, tollhouse_audit_write_failures_total,
  tollhouse_audit_checkpoints_total.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tollhouse.audit.writer import AuditTrail
from tollhouse.gateway.admission import AdmissionService
from tollhouse.gateway.pool import UpstreamPool
from tollhouse.gateway.sessions import SessionManager
from tollhouse.gateway.usage_service import UsageService
from tollhouse.telemetry import Telemetry, labelled

__all__ = ["register_gateway_metrics"]

Points = list[tuple[float, Mapping[str, str]]]


def register_gateway_metrics(
    telemetry: Telemetry,
    *,
    pool: UpstreamPool,
    sessions: SessionManager,
    admission: AdmissionService,
    usage: UsageService,
    audit: AuditTrail | None = None,
) -> None:
    """Create the observable instruments over the running services."""
    if audit is not None:
        _audit_metrics(telemetry, audit)

    def upstreams() -> Points:
        live = pool.snapshot.live
        return [(1.0 if u.name in live else 0.0, {"server": u.name}) for u in pool.upstreams() if u.enabled]

    telemetry.gauge("tollhouse.upstream.up", "1 when the upstream is live, 0 when it is down", upstreams)
    telemetry.gauge(
        "tollhouse.sessions.active",
        "Open session-era downstream sessions",
        lambda: [(float(len(sessions)), {})],
        unit="{session}",
    )

    def rejections() -> Points:
        counts = {k: v for k, v in admission.log.counts.items() if k != "fallback_decisions"}
        return labelled(counts, "kind")

    telemetry.total(
        "tollhouse.limit.rejections", "Calls refused by limits and kill switches", rejections, unit="{call}"
    )
    stats = admission.counters.stats
    telemetry.total(
        "tollhouse.ratelimit.storage.errors",
        "Rate-limit storage (Redis) failures",
        lambda: [(float(stats["storage_errors"]), {})],
        unit="{error}",
    )
    telemetry.total(
        "tollhouse.ratelimit.fallbacks",
        "Limit decisions taken by the local fallback while Redis was unreachable",
        lambda: [(float(stats["fallbacks"]), {})],
        unit="{decision}",
    )

    metering = usage.metering
    writer = metering.writer
    telemetry.gauge(
        "tollhouse.budget.settlements.pending",
        "Budget settlements queued for the ledger",
        lambda: [(float(metering.settlements_pending), {})],
        unit="{settlement}",
    )
    telemetry.gauge(
        "tollhouse.usage.queue",
        "Usage events not yet committed",
        lambda: [(float(writer.queued), {})],
        unit="{event}",
    )
    telemetry.total(
        "tollhouse.usage.events.written",
        "Usage events committed",
        lambda: [(float(writer.written), {})],
        unit="{event}",
    )
    telemetry.total(
        "tollhouse.usage.events.dropped",
        "Usage events dropped because the queue was full",
        lambda: [(float(writer.dropped), {})],
        unit="{event}",
    )

    backlog: dict[str, dict[str, Any]] = {}

    async def read_backlog() -> None:
        fresh = await usage.shipper.backlog()
        backlog.clear()
        backlog.update(fresh)

    telemetry.on_scrape("usage outbox", read_backlog)
    shipper = usage.shipper

    def pending() -> Points:
        return [(float(backlog.get(s.name, {}).get("pending", 0)), {"sink": s.name}) for s in shipper.sinks]

    def oldest() -> Points:
        now = datetime.now(UTC)
        points: Points = []
        for sink in shipper.sinks:
            at = backlog.get(sink.name, {}).get("oldest")
            points.append((max(0.0, (now - at).total_seconds()) if at else 0.0, {"sink": sink.name}))
        return points

    telemetry.gauge(
        "tollhouse.usage.outbox.backlog", "Outbox rows not yet delivered", pending, unit="{event}"
    )
    telemetry.gauge(
        "tollhouse.usage.outbox.oldest_age", "Age of the oldest undelivered row", oldest, unit="s"
    )
    telemetry.total(
        "tollhouse.usage.deliveries",
        "Usage events delivered",
        lambda: [(float(shipper.states[s.name].delivered), {"sink": s.name}) for s in shipper.sinks],
        unit="{event}",
    )
    telemetry.total(
        "tollhouse.usage.delivery_failures",
        "Failed delivery attempts",
        lambda: [(float(shipper.states[s.name].failures), {"sink": s.name}) for s in shipper.sinks],
        unit="{attempt}",
    )


def _audit_metrics(telemetry: Telemetry, trail: AuditTrail) -> None:
    telemetry.gauge(
        "tollhouse.audit.queue",
        "Audit records accepted but not yet committed",
        lambda: [(float(trail.queued), {})],
        unit="{record}",
    )

    def lag() -> Points:
        # How far the committed trail trails the requests: 0 when nothing waits.
        status = trail.status()
        behind = status["seconds_since_commit"] if trail.queued and status["seconds_since_commit"] else 0.0
        return [(float(behind), {})]

    telemetry.gauge("tollhouse.audit.lag", "Age of the audit backlog (0 when caught up)", lag, unit="s")
    for name, description, attribute in (
        ("tollhouse.audit.records.written", "Audit records committed", "written"),
        ("tollhouse.audit.records.dropped", "Audit records dropped (queue full)", "dropped"),
        ("tollhouse.audit.write.failures", "Audit batches the store refused", "failures"),
        ("tollhouse.audit.checkpoints", "Signed audit checkpoints stored", "checkpoints"),
    ):
        telemetry.total(name, description, functools.partial(_attribute, trail, attribute), unit="{record}")


def _attribute(trail: AuditTrail, name: str) -> Points:
    return [(float(getattr(trail, name)), {})]
