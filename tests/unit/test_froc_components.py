"""`scripts/froc_components.py look`: limits applied offline to a dump of candidates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool() -> Any:
    spec = importlib.util.spec_from_file_location(
        "froc_components", ROOT / "scripts" / "froc_components.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["froc_components"] = module
    spec.loader.exec_module(module)
    return module


def _component(z: float, diameter: float, score: float, contact: float, far: float) -> dict:
    return {
        "label": 1,
        "diameter_mm": diameter,
        "volume_mm3": 3.14159 / 6 * diameter**3,
        "center_voxel_zyx": [z, 50.0, 50.0],
        "center_patient_xyz": [50.0, 50.0, z * 4.0],
        "probability": 0.9 - z / 1000,
        "center_sop_instance_uid": "",
        "mean_hu": -100.0,
        "contact": contact,
        "contact_far": far,
        "elongation": 1.2,
        "air": 0.8,
        "candidate_score": score,
    }


DUMP = {
    "bundle": {"name": "demo", "version": "0"},
    "declared": {"classifier": 0.05, "max_contact_fraction": 0.4, "wall_ratio": 0.6, "ratio": 1.25},
    "studies": [
        {
            "seed": 1,
            "spacing": [4.0, 1.0, 1.0],
            "thickness_mm": 4.0,
            "nodules": [
                {
                    "center_mm": [40.0, 50.0, 50.0],
                    "diameter_mm": 10.0,
                    "kind": "solid",
                    "site": "free",
                }
            ],
            "components": [
                _component(10.0, 9.5, 0.9, 0.1, 0.1),  # the nodule
                _component(20.0, 4.8, 0.5, 0.1, 0.1),  # under 1.25 x 4 mm
                _component(30.0, 7.0, 0.5, 0.6, 0.1),  # dense shell, no wall beyond
                _component(40.0, 7.0, 0.5, 0.6, 0.5),  # dense shell with a wall: kept
                _component(50.0, 7.0, 0.01, 0.1, 0.1),  # the classifier drops it
            ],
        },
        {
            "seed": 2,
            "spacing": [1.0, 1.0, 1.0],
            "thickness_mm": 1.0,
            "nodules": [],
            "components": [],
        },
    ],
}


def _fp(tool: Any, **limits: Any) -> float:
    base = {"classifier": 0.05, "max_contact_fraction": 0.4, "wall_ratio": 0.6, "ratio": 1.25}
    return float(tool.evaluate(DUMP, tool.Limits(**(base | limits))).fp_per_scan)


def test_each_limit_drops_what_it_names(tool: Any) -> None:
    assert _fp(tool) == 0.5  # only the component against a wall: 1 false positive, 2 scans
    assert _fp(tool, ratio=None) == 1.0
    assert _fp(tool, max_contact_fraction=None) == 1.0
    assert _fp(tool, classifier=None) == 1.0
    assert _fp(tool, classifier=None, max_contact_fraction=None, ratio=None) == 2.0
    s = tool.evaluate(DUMP, tool.Limits(0.05, 0.4, 0.6, 1.25))
    assert s.sensitivity_8mm == 1.0 and s.nodules == 1


def test_the_ratio_never_drops_the_nodule_below_its_measured_size(tool: Any) -> None:
    # 9.5 mm on 4 mm slices is 2.4 slice thicknesses: kept up to a ratio of 2.375.
    keep = tool.evaluate(DUMP, tool.Limits(None, None, None, 2.3))
    drop = tool.evaluate(DUMP, tool.Limits(None, None, None, 2.4))
    assert (keep.sensitivity_8mm, drop.sensitivity_8mm) == (1.0, 0.0)


def test_look_prints_one_row_per_ratio(tool: Any) -> None:
    lines = tool.look(DUMP, [None, 1.25], 0.05, True)
    assert lines[1].startswith("| slice-thickness ratio")
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| none", "| 1.25"]
    assert lines[3].split(" | ")[2] == "1.00" and lines[4].split(" | ")[2] == "0.50"


def test_min_score_drops_findings_ranked_below_it(tool: Any) -> None:
    # Ranked by probability alone (0.89 for the nodule, 0.86 for the wall component).
    assert _fp(tool, min_score=0.87) == 0.0
    assert _fp(tool, min_score=0.85) == 0.5
    # Ranked by both stages: the nodule 0.89 x 0.9 = 0.80, the wall component 0.86 x 0.5 = 0.43.
    both = tool.evaluate(DUMP, tool.Limits(0.05, 0.4, 0.6, 1.25, None, None, None, True, 0.5))
    assert (both.fp_per_scan, both.sensitivity_8mm) == (0.0, 1.0)
    lines = tool.look(DUMP, [1.25], 0.05, True, None, [None, 0.87])
    assert [line.split(" | ")[1] for line in lines[3:]] == ["none", "0.87"]


def test_air_exempt_score_spares_a_sure_candidate_from_the_aerated_lung_limit(tool: Any) -> None:
    # The nodule's shell made airless: the aerated-lung limit (0.3) drops it unless the
    # classifier's 0.9 is at least the exemption's score.
    dump = {**DUMP, "studies": [dict(DUMP["studies"][0]), DUMP["studies"][1]]}
    study = dump["studies"][0]
    study["components"] = [{**study["components"][0], "air": 0.1}]
    base = {"classifier": 0.05, "max_contact_fraction": 0.4, "wall_ratio": 0.6, "ratio": 1.25}
    found = [
        tool.evaluate(
            dump, tool.Limits(**base, min_air_fraction=0.3, air_exempt_score=e)
        ).sensitivity_8mm
        for e in (None, 0.95, 0.8)
    ]
    assert found == [0.0, 0.0, 1.0]
