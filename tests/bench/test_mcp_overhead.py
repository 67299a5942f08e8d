"""Smoke test: bench/mcp_overhead.py runs end to end and writes a complete, error-free report.

It checks the shape of the JSON only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    report = run_quick("mcp_overhead.py", tmp_path / "result.json", "--concurrency", "1,8")
    assert {"benchmark", "machine", "settings", "runs", "summary"} <= report.keys()
    assert {"nproc", "python"} <= report["machine"].keys()

    runs = report["runs"]
    expected = {(t, e, c) for t in ("direct", "gateway") for e in ("modern", "legacy") for c in (1, 8)}
    assert {(r["target"], r["era"], r["concurrency"]) for r in runs} == expected
    for run in runs:
        assert run["errors"] == 0, run
        assert run["calls"] > 0
        for key in ("calls_per_s", "p50_ms", "p90_ms", "p99_ms", "upstream_cpu_ms_per_call"):
            assert isinstance(run[key], float), (key, run)
        if run["target"] == "gateway":
            assert run["gateway_rss_mb"] > 0
            assert run["gateway_cpu_ms_per_call"] >= 0

    summary = report["summary"]
    assert summary["errors"] == 0
    assert set(summary["added_p50_ms_c1"]) == {"modern", "legacy"}
    assert {era: set(r) for era, r in summary["throughput_ratio"].items()} == {
        "modern": {"1", "8"},
        "legacy": {"1", "8"},
    }
    assert summary["gateway_rss_max_mb"] > 0
    targets = summary["targets"]
    assert set(targets) == {"added_p50_ms_c1", "throughput_ratio_c32", "gateway_rss_mb"}
    assert targets["throughput_ratio_c32"]["pass"] is None  # no c=32 run in the smoke test
    assert all({"value", "target", "pass"} <= t.keys() for t in targets.values())
