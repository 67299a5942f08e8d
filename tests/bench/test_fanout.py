"""Smoke test: bench/fanout.py runs end to end and writes a complete, error-free report.

It checks the shape of the JSON only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    args = ("--upstreams", "4", "--tools", "30", "--page-sizes", "50,1000")
    report = run_quick("fanout.py", tmp_path / "result.json", *args)
    assert report["benchmark"] == "fanout"
    assert {"timestamp", "machine", "settings", "cold", "runs", "summary"} <= report.keys()
    assert report["settings"]["upstreams"] == 4 and report["settings"]["tools"] == 30

    cold = {c["page_size"]: c for c in report["cold"]}
    assert set(cold) == {50, 1000}
    for size, c in cold.items():
        assert len(c["registration_ms"]["each"]) == 4
        assert c["pages"] == (3 if size == 50 else 1)  # 120 tools
        for key in ("total_ms", "first_list_ms", "gateway_rss_peak_mb"):
            assert isinstance(c[key], float), (key, c)
        assert c["restart"]["full_list_ms"] >= c["restart"]["healthy_ms"] > 0

    runs = report["runs"]
    expected = {(p, m, c) for p in (50, 1000) for m in ("full", "first_page") for c in (1, 8)}
    assert {(r["page_size"], r["mode"], r["concurrency"]) for r in runs} == expected
    for run in runs:
        assert run["errors"] == 0, run
        assert run["calls"] > 0
        pages = 3 if run["page_size"] == 50 and run["mode"] == "full" else 1
        assert run["pages_per_call"] == pages, run
        for key in ("calls_per_s", "p50_ms", "p90_ms", "p99_ms", "wire_p50_ms", "gateway_cpu_ms_per_call"):
            assert isinstance(run[key], float), (key, run)
        assert run["gateway_rss_mb"] > 0

    summary = report["summary"]
    assert summary["errors"] == 0
    assert set(summary["warm_p50_ms"]) == {"50", "1000"}
    targets = summary["targets"]["warm_full_list_p50_ms_c1"]
    assert set(targets) == {"50", "1000"}
    assert all({"value", "wire_value", "target", "pass"} <= t.keys() for t in targets.values())
