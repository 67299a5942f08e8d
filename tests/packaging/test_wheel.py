"""The built wheel installs one top-level package and nothing that runs at interpreter start."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_holds_only_the_tollhouse_package_and_its_metadata(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tollhouse-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".pth")]
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"tollhouse", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    # Migrations ship inside the package; `tollhouse db upgrade` needs them.
    assert "tollhouse/registry/migrations/versions/0001_initial.py" in names
