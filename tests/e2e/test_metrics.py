"""/metrics: Prometheus text over the gateway's own OpenTelemetry meter, consistent with what happened.

A real gateway with a real upstream and two usage sinks (a JSONL file and a webhook that fails
every delivery, so its backlog stays visible); the scrape is parsed with prometheus_client's
parser and every value is checked against the calls the test made.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_usage import CALLS, Receiver, call, metered
from tollhouse.gateway.errors import RATE_LIMITED

pytestmark = pytest.mark.anyio


async def scrape(base_url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Family-sample name -> (sorted labels -> value)."""
    async with httpx2.AsyncClient() as http:
        response = await http.get(f"{base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_a_scrape_counts_calls_refusals_upstreams_and_the_outbox_backlog(tmp_path: Path) -> None:
    receiver = Receiver(fail_rate=1.0)  # the webhook never accepts: its backlog is every event
    async with metered(tmp_path, receiver) as (gw, keys, _):
        for name, (arguments, _) in CALLS.items():
            await call(gw, keys["platform"], name, arguments)
        limit = {"match": {"team": "finance"}, "rate": "1/minute"}
        assert (await gw.admin.put("/limits/one", json=limit)).status_code in (200, 201)
        refused = await call(gw, keys["finance"], "calc__echo", {"text": "x"}, 2, vary=True)
        await gw.admin.get("/usage/report")  # the report commits this replica's queued events first
        flushed = await gw.admin.get("/usage/outbox")
        samples = await scrape(gw.base_url)

    assert refused == ["ok", str(RATE_LIMITED)]
    calls = samples["tollhouse_calls_total"]
    by_outcome: dict[str, float] = {}
    for labels, value in calls.items():
        label = dict(labels)
        assert label["mcp_method_name"] == "tools/call" and label["server"] == "calc"
        by_outcome[label["outcome"]] = by_outcome.get(label["outcome"], 0) + value
    expected: dict[str, float] = {}
    for _, outcome in CALLS.values():
        expected[outcome] = expected.get(outcome, 0) + 1
    expected["ok"] += 1
    expected["rate_limited"] = 1
    assert by_outcome == expected

    durations = samples["mcp_server_operation_duration_seconds_count"]
    assert sum(durations.values()) == sum(expected.values())
    assert samples["tollhouse_limit_rejections_total"] == {(("kind", "rate_limited"),): 1.0}
    assert samples["tollhouse_upstream_up"] == {(("server", "calc"),): 1.0}

    total = sum(expected.values())
    assert samples["tollhouse_usage_events_written_total"] == {(): total}
    backlog = samples["tollhouse_usage_outbox_backlog"]
    outbox = {s["name"]: s["pending"] for s in flushed.json()["sinks"]}
    assert backlog[(("sink", "meter"),)] == total == outbox["meter"]
    assert samples["tollhouse_usage_delivery_failures_total"][(("sink", "meter"),)] >= 1
    assert samples["tollhouse_usage_outbox_oldest_age_seconds"][(("sink", "meter"),)] >= 0

    # The audit trail: every answered tools/call was committed before its answer.
    assert samples["tollhouse_audit_records_written_total"][()] >= total
    assert samples["tollhouse_audit_write_failures_total"] == {(): 0.0}
    assert samples["tollhouse_audit_records_dropped_total"] == {(): 0.0}
    assert () in samples["tollhouse_audit_queue"] and () in samples["tollhouse_audit_lag_seconds"]
    assert () in samples["tollhouse_audit_checkpoints_total"]


async def test_the_scrape_names_no_subject_client_or_tool(tmp_path: Path) -> None:
    async with metered(tmp_path, Receiver()) as (gw, keys, _):
        await call(gw, keys["platform"], "calc__echo", {"text": "secret-argument"})
        async with httpx2.AsyncClient() as http:
            text = (await http.get(f"{gw.base_url}/metrics")).text
    for private in ("bot-platform", "calc__echo", "secret-argument", keys["platform"]):
        assert private not in text
