"""``make bench`` runs every benchmark that has figures in docs/benchmarks.md."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_make_bench_runs_the_document_store_benchmark() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        [make, "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "bench/store.py" in dry
    assert "bench/store.py" in (ROOT / "docs" / "benchmarks.md").read_text()


@pytest.mark.parametrize("script", ["bench/load.py", "bench/capacity.py"])
def test_make_bench_runs_the_load_and_capacity_benchmarks(script: str) -> None:
    """Issue 16: the four-client load against Orthanc and the per-stage capacity figures."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        [make, "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert f"python {script}" in dry
    assert (ROOT / script).is_file()
    assert script in (ROOT / "docs" / "benchmarks.md").read_text()


def test_every_benchmark_in_the_benchmarks_doc_is_in_make_bench() -> None:
    """A section of docs/benchmarks.md names its script; ``make bench`` runs each one."""
    import re

    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        [make, "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    scripts = set(re.findall(r"^## .*\(`(bench/\w+\.py)`", doc, re.M))
    assert {"bench/store.py", "bench/tat.py", "bench/froc.py"} <= scripts
    assert not [s for s in sorted(scripts) if f"python {s}" not in dry]
