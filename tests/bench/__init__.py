"""Smoke tests of bench/: each script runs end to end and writes a complete, error-free report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, out: Path, *args: str) -> dict[str, Any]:
    """Run `bench/<script> --quick ... --out out`; returns its report (stdout and file agree)."""
    argv = [sys.executable, str(ROOT / "bench" / script), "--quick", *args, "--out", str(out)]
    completed = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    report: dict[str, Any] = json.loads(out.read_text())
    assert json.loads(completed.stdout) == report
    return report
