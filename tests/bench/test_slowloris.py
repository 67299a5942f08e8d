"""Smoke test: bench/slowloris.py runs end to end and writes a complete, error-free report.

It checks the shape of the JSON and that the slow connections were dropped with 408; latencies
depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    report = run_quick("slowloris.py", tmp_path / "result.json")
    assert report["benchmark"] == "slowloris"
    assert {"timestamp", "machine", "settings", "rounds", "summary"} <= report.keys()
    assert report["settings"]["slow"] == 50 and report["settings"]["header_timeout_seconds"] == 1.0
    assert len(report["rounds"]) == 1
    for phase in ("baseline", "slow"):
        run = report["rounds"][0][phase]
        assert run["errors"] == 0 and run["calls"] > 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"], run
    slow_clients = report["rounds"][0]["slow_clients"]
    assert slow_clients["opened"] >= 50 and slow_clients["dropped"] > 0, slow_clients
    assert set(slow_clients["answers"]) == {"408"}, slow_clients
    summary = report["summary"]
    assert summary["errors"] == 0
    assert {"p99_ratio", "slow_lifetime_max_s"} == summary["targets"].keys()
    assert all({"value", "target", "pass"} <= t.keys() for t in summary["targets"].values())
