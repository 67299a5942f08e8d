"""Smoke test: bench/disclosure.py runs the demo and reports both listings (sizes are never asserted
beyond what disclosure means: four meta-tools, and fewer bytes than the full list once the catalog grows).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_quick


@pytest.mark.slow
def test_quick_run_reports_full_and_disclosure_listings(tmp_path: Path) -> None:
    report = run_quick("disclosure.py", tmp_path / "result.json")
    assert report["synthetic"] == {"servers": 2, "tools_each": 10}
    demo, grown = report["demo"], report["demo_plus_synthetic"]
    for figures in (demo, grown):
        assert figures["disclosure"]["tools"] == 4
        assert figures["full"]["tools"] > 4
        assert figures["full"]["estimated_tokens"] == round(figures["full"]["bytes"] / 4)
        assert figures["bytes_saved"] == figures["full"]["bytes"] - figures["disclosure"]["bytes"]
    assert grown["full"]["tools"] == demo["full"]["tools"] + 20
    assert grown["disclosure"] == demo["disclosure"]  # the meta-tools cost the same whatever the catalog
    assert grown["bytes_saved"] > 0
