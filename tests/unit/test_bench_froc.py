"""`bench/froc.py`: the ship rule's check, nodules >= 8 mm the anchor finds and the candidate
bundle misses, named one per line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from radpipe.inference.findings import Finding
from radpipe.inference.froc import Case, scores

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


def test_a_finding_on_a_nodule_cut_by_the_field_of_view_is_ignored_and_the_scan_not_clean() -> None:
    cut = _Truth((40.0, 120.0, 2.0), 16.0)  # centre outside the image, its inner part inside
    elsewhere = _Truth((80.0, 60.0, 60.0), 9.0)
    on_cut = Case([], [_finding_at(cut), _finding_at(elsewhere)], SPACING, cut=[cut])
    assert on_cut.hits == {0: -1}  # ignored, as a second finding on a found nodule is
    assert not on_cut.clean
    assert [f.diameter_mm for f in on_cut.false_positives()] == [9.0]
    # Without the cut nodule the same scan is clean and both findings are false positives.
    plain = Case([], [_finding_at(cut), _finding_at(elsewhere)], SPACING)
    assert plain.clean and len(plain.false_positives(8.0)) == 2
    s = scores([on_cut, plain])
    assert (s.scans, s.clean_scans, s.fp_per_clean_scan_8mm) == (2, 1, 2.0)
    assert s.fp_per_scan == 1.5
