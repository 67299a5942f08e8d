"""Smoke test: bench/console_audit.py loads a trail, renders filtered console pages, and reports.

It checks the shape of the JSON only; timings depend on the machine and are never asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_writes_a_complete_report(tmp_path: Path) -> None:
    report = run_quick("console_audit.py", tmp_path / "result.json")
    assert report["benchmark"] == "console_audit"
    assert {"timestamp", "machine", "settings", "backends", "summary"} <= report.keys()
    assert report["settings"]["records"] == 5_000
    assert report["backends"] and report["backends"][0]["backend"] == "sqlite"
