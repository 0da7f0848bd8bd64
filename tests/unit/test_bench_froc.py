"""`bench/froc.py`: the ship rule's check, nodules >= 8 mm the anchor finds and the candidate
bundle misses, named one per line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from radpipe.inference.findings import Finding
from radpipe.inference.froc import Case

from .test_candidate_classifier import _Truth

ROOT = Path(__file__).resolve().parents[2]
SPACING = (4.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_froc", ROOT / "bench" / "froc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_froc"] = module
    spec.loader.exec_module(module)
    return module


def _finding_at(n: _Truth) -> Finding:
    z, y, x = (c / s for c, s in zip(n.center_mm, SPACING, strict=True))
    return Finding(1, n.diameter_mm, 0.0, (z, y, x), (x, y, z), 0.9)


def test_names_each_large_nodule_only_the_anchor_finds(bench: Any) -> None:
    big = _Truth((40.0, 50.0, 50.0), 12.0, "ground-glass", "juxtapleural")
    small = _Truth((80.0, 20.0, 20.0), 6.0)
    both = _Truth((40.0, 90.0, 90.0), 9.0)
    truth = [big, small, both]
    anchor = Case(truth, [_finding_at(n) for n in truth], SPACING)
    current = Case(truth, [_finding_at(both)], SPACING)

    lines = bench.lost_large([anchor], [current], [42005])
    assert lines == ["seed 42005: 12.0 mm ground-glass juxtapleural (slices 4.00 mm)"]
    # Found by both, or missed by both: nothing to name.
    assert bench.lost_large([anchor], [anchor], [42005]) == []
    assert bench.lost_large([current], [current], [42005]) == []
