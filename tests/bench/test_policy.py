"""Smoke test: bench/policy.py runs end to end and writes a complete report.

It checks the shape of the JSON only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    report = run_quick("policy.py", tmp_path / "result.json", "--sizes", "10,1000", "--servers", "10")
    assert report["benchmark"] == "policy"
    assert {"timestamp", "machine", "settings", "engines", "runs", "summary"} <= report.keys()
    assert report["settings"]["sizes"] == [10, 1000] and report["settings"]["quick"] is True
    paths = {(r["policies"], r["path"]) for r in report["runs"]}
    for size in (10, 1000):
        for path in ("decide_uncached", "decide_cached", "list_uncached", "decide_unindexed"):
            assert (size, path) in paths
    assert (1000, "decide_arguments") in paths
    for run in report["runs"]:
        assert run["samples"] > 0
        assert 0 < run["p50_us"] <= run["p90_us"] <= run["p99_us"], run
    engines = {e["policies"]: e for e in report["engines"]}
    assert engines[1000]["applicable_per_tool"]["mean"] < 1000
    assert (
        engines[1000]["allowed_fraction"] == engines[1000]["listed_fraction"]
        or engines[1000]["argument_aware_tools"]
    )
    target = report["summary"]["targets"]["decide_uncached_p99_us_at_1000"]
    assert {"value", "target", "pass"} <= target.keys() and target["target"] == 100.0
