"""The installed distribution: a `radpipe` package, nothing named `services` (STYLE.md 11)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (built,) = out.glob("radpipe-*.whl")
    return built


def test_wheel_installs_radpipe_and_no_services_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.startswith("radpipe-")}
    assert top == {"radpipe"}
    assert "radpipe/__main__.py" in names
    assert "radpipe/cli.py" in names
    # Package data travels with the code: the demo bundle, its model card and the portal pages.
    assert "radpipe/inference/bundles/lung_nodule_demo/models/model.pt" in names
    assert "radpipe/inference/bundles/lung_nodule_demo/models/candidates.pt" in names
    assert "radpipe/inference/bundles/lung_nodule_demo/configs/metadata.json" in names
    assert "radpipe/portal/templates/worklist.html" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "radpipe = radpipe.cli:run" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_python_dash_m_radpipe_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "radpipe", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage: python -m radpipe" in done.stdout
    assert "token" in done.stdout
