"""``make bench`` runs every benchmark that has figures in docs/benchmarks.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"


def dry_run() -> str:
    """What ``make -n bench`` would run."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        [make, "-n", "bench"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("script", ["bench/store.py", "bench/load.py", "bench/capacity.py"])
def test_make_bench_runs_the_store_load_and_capacity_benchmarks(script: str) -> None:
    """Issues 10 and 16: the document store at scale, four clients against Orthanc, capacity."""
    assert f"python {script}" in dry_run()
    assert (ROOT / script).is_file()
    assert script in DOC.read_text()


def test_every_benchmark_in_the_benchmarks_doc_is_in_make_bench() -> None:
    """A section of docs/benchmarks.md names its script; ``make bench`` runs each one."""
    dry = dry_run()
    scripts = set(re.findall(r"^## .*\(`(bench/\w+\.py)`", DOC.read_text(), re.M))
    assert {"bench/store.py", "bench/tat.py", "bench/froc.py"} <= scripts
    assert not [s for s in sorted(scripts) if f"python {s}" not in dry]
