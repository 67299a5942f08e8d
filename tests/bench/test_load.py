"""Smoke test: bench/load.py runs three replicas under load through both kills and writes its report.

It checks the shape of the JSON and the hard invariants (no failed call to a healthy upstream, the
dead upstream answered with errors, a replica's clients re-issued their calls); never timings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_loses_no_call_to_a_healthy_upstream(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    report = run_quick(
        "load.py", tmp_path / "result.json", "--postgres-url", postgres_url, "--redis-url", redis_url
    )
    assert {
        "benchmark",
        "machine",
        "settings",
        "setup",
        "phases",
        "overall",
        "rss_mb",
        "summary",
    } <= report.keys()
    settings = report["settings"]
    assert (settings["duration"], settings["clients"], settings["replicas"], settings["upstreams"]) == (
        15,
        24,
        3,
        3,
    )
    assert settings["kill_upstream"]["at_s"] == 5 and settings["kill_replica"]["at_s"] == 10
    assert set(report["setup"]["visible_ms"]) == {"replica-0", "replica-1", "replica-2"}

    assert report["failed_healthy"] == 0, report["failures"]
    assert report["failures"] == []
    assert report["summary"]["targets"]["failed_healthy_calls"] == {"value": 0, "target": 0, "pass": True}
    assert [p["phase"] for p in report["phases"]] == ["steady", "upstream_down", "replica_down"]
    for figures in [*report["phases"], report["overall"]]:
        assert figures["failed_healthy"] == 0, figures
        assert figures["calls"] > 0
        for key in ("calls_per_s", "answers_per_s", "p50_ms", "p99_ms"):
            assert isinstance(figures[key], float), (key, figures)
    steady, upstream_down, replica_down = report["phases"]
    # Before the kill only the calls in flight at that moment (one per client at most) fail.
    assert steady["dead_upstream_answers"] <= settings["clients"]
    assert (
        sum(p["dead_upstream_answers"] for p in report["phases"])
        == report["overall"]["dead_upstream_answers"]
    )
    assert upstream_down["dead_upstream_answers"] > 0 and replica_down["dead_upstream_answers"] > 0

    dead = report["dead_upstream"]
    assert dead["answers"] == report["overall"]["dead_upstream_answers"]
    assert sum(dead["codes"].values()) == dead["answers"]
    assert "transport" not in dead["codes"] and "timeout" not in dead["codes"]
    assert isinstance(dead["p99_ms"], float)
    # Every client of the killed replica met it gone at least once and carried on elsewhere.
    assert report["reissued"] >= 1
    assert report["events"]["upstream_killed_at_s"] < report["events"]["replica_killed_at_s"]

    rss = report["rss_mb"]
    assert set(rss) == {"start", "upstream_killed", "replica_killed", "end"}
    for moment, figures in rss.items():
        assert set(figures) == {"replica-0", "replica-1", "replica-2"}, moment
        alive = [name for name, mb in figures.items() if mb is not None]
        assert all(figures[name] > 0 for name in alive)
    assert rss["end"]["replica-2"] is None and rss["replica_killed"]["replica-2"] is not None
