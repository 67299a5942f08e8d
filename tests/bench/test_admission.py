"""Smoke test: bench/admission.py runs end to end and writes a complete report.

It checks the shape of the JSON only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    report = run_quick("admission.py", tmp_path / "result.json")
    assert report["benchmark"] == "admission"
    assert {"timestamp", "machine", "settings", "baseline", "runs", "summary"} <= report.keys()
    paths = {r["path"] for r in report["runs"]}
    assert "rate_memory" in paths
    if report["settings"]["redis"]:
        assert {"rate_redis", "rate_redis_sliding"} <= paths
    for run in report["runs"]:
        assert run["samples"] > 0
        assert 0 < run["p50_us"] <= run["p90_us"] <= run["p99_us"], run
    target = report["summary"]["targets"]["added_p50_us_redis"]
    assert {"value", "target", "pass"} <= target.keys() and target["target"] == 300.0
