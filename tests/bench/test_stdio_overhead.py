"""Smoke test: bench/stdio_overhead.py runs end to end and writes a complete, error-free report.

It checks the shape of the JSON only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    report = run_quick("stdio_overhead.py", tmp_path / "result.json", "--concurrency", "1,8")
    assert report["benchmark"] == "stdio_overhead"
    assert {"timestamp", "machine", "settings", "upstreams", "runs", "summary"} <= report.keys()
    assert {name: u["transport"] for name, u in report["upstreams"].items()} == {
        "studio": "http",
        "kid": "stdio",
    }

    runs = report["runs"]
    expected = {(t, "modern", c) for t in ("http", "stdio") for c in (1, 8)}
    assert {(r["transport"], r["era"], r["concurrency"]) for r in runs} == expected
    for run in runs:
        assert run["errors"] == 0, run
        assert run["calls"] > 0
        for key in ("calls_per_s", "p50_ms", "p90_ms", "p99_ms", "upstream_cpu_ms_per_call"):
            assert isinstance(run[key], float), (key, run)
        assert run["gateway_rss_mb"] > 0

    summary = report["summary"]
    assert summary["errors"] == 0
    assert set(summary["stdio_over_http_throughput"]["modern"]) == {"1", "8"}
    assert set(summary["stdio_minus_http_p50_ms"]["modern"]) == {"1", "8"}
    assert summary["gateway_rss_peak_mb"] > 0
