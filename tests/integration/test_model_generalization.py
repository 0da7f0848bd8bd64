"""The shipped demo bundle on phantoms from settings held out of its training (issue 15).

`radpipe.phantoms.HELD_OUT` draws 4 mm slices, a sharp kernel, 25-40 HU of noise, boxy and
off-centre bodies, truncated fields of view and contrast: none of which the bundle's training
data (`radpipe.demo` and the `TRAIN` family) contain, nor the validation studies its threshold
and filters were chosen on. A small seeded sample, the worker's own stages; the full FROC is
`bench/froc.py` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from radpipe.inference.bundle import Bundle, default_bundle_path, load_bundle
from radpipe.inference.findings import segment_findings, shape_filter
from radpipe.inference.froc import Case, run_case
from radpipe.inference.model import pre_process, predict
from radpipe.inference.volume import Volume
from radpipe.phantoms import HELD_OUT, make_study

SHAPE = (32, 256, 256)  # 128 mm of chest at 4 mm slices, 256 mm field of view
SPACING = (4.0, 1.0, 1.0)
CLEAN_SEEDS = (1501, 1502, 1503)
NODULES = [  # (seed, diameter mm, kind, site): every one >= 8 mm, every kind and site
    (1511, 12.0, "solid", "free"),
    # 0.5.0 to 0.5.3 missed this one (4 mm sharp-kernel slices, beside a vessel); 0.9.x finds it.
    (1512, 10.0, "solid", "juxtavascular"),
    (1513, 16.0, "part-solid", "free"),
    pytest.param(
        1514,
        9.0,
        "solid",
        "free",
        # 0.9.0's weights (0.9.0 to 0.9.6; docs/benchmarks.md) find 175 of 185 held-out
        # nodules >= 8 mm on 144 fresh studies (0.5.3: 163), losing none that 0.5.3 finds
        # there, but not this one: on 4 mm slices they segment it 7.4 mm with 45 % of its
        # shell dense and the classifier scores it 0.03. Strict: a bundle that finds it again
        # makes this XPASS.
        marks=pytest.mark.xfail(strict=True, reason="lung_nodule_demo 0.9.0-0.9.6 miss it"),
    ),
    (1515, 14.0, "ground-glass", "free"),
    (1516, 11.0, "solid", "juxtapleural"),
]


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    torch.set_num_threads(2)
    return load_bundle(default_bundle_path(), "cpu")


@pytest.fixture(scope="module")
def unfiltered(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The same weights and threshold without the shape and context filters and without the
    candidate classifier."""
    root = tmp_path_factory.mktemp("unfiltered")
    shutil.copytree(default_bundle_path() / "configs", root / "configs")
    config = json.loads((root / "configs" / "inference.json").read_text())
    for key in (
        "max_contact_fraction",
        "wall_ratio",
        "max_elongation",
        "min_air_fraction",
        "max_diameter_mm",
        "min_diameter_slice_thickness_ratio",
        "air_exempt_contact",
        "contact_exempt_score",
        "air_exempt_score",
        "min_score",
    ):
        config.pop(key)
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    plain = replace(bundle, path=root, candidates=None)
    assert shape_filter(plain).max_contact_fraction is None
    return plain


def _study(seed: int, **kwargs: object) -> object:
    return make_study(seed, HELD_OUT, shape=SHAPE, spacing=SPACING, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clean_cases(bundle: Bundle, unfiltered: Bundle) -> tuple[list[Case], list[Case]]:
    """The clean thick-slice (4 mm), sharp-kernel studies, post-processed by the bundle and
    by the same weights without filters or classifier (one probability map each)."""
    assert shape_filter(bundle).max_contact_fraction is not None
    filtered: list[Case] = []
    plain: list[Case] = []
    for seed in CLEAN_SEEDS:
        study = _study(seed, nodules=[])
        volume = Volume(study.volume.astype(np.float32), study.spacing, [])  # type: ignore[attr-defined]
        image = pre_process(volume, bundle)
        prob = predict(image, bundle)  # one map, two post-processings
        for out, which in ((filtered, bundle), (plain, unfiltered)):
            found = segment_findings(prob, volume, which, image)[0]
            out.append(Case([], found, volume.spacing))
    return filtered, plain


def test_clean_held_out_studies_raise_no_finding_of_8_mm(
    clean_cases: tuple[list[Case], list[Case]],
) -> None:
    """Issue 15's bound on clean studies: no finding of 8 mm or more, so nobody is paged
    (0.3.0: [2, 0, 1] here; 0.4.0: [1, 0, 1]; a strict xfail from 0.3.0 to 0.5.3; 0.9.x: none)."""
    filtered, plain = clean_cases
    assert [len(c.false_positives(8.0)) for c in filtered] == [0] * len(CLEAN_SEEDS)
    # The sample does discriminate: without the filters these clean studies would page.
    assert sum(len(c.false_positives(8.0)) for c in plain) >= 1


def test_clean_held_out_studies_raise_at_most_one_small_finding(
    clean_cases: tuple[list[Case], list[Case]],
) -> None:
    """Smaller false positives on these studies (vessel and airway pieces of about the slice
    thickness): at most one in the sample (a strict xfail until 0.9.6; 0.9.0 raised 6 under
    8 mm on the three, 0.9.6 with its minimum score and flips at most one)."""
    filtered, _ = clean_cases
    assert sum(len(c.false_positives(0.0)) for c in filtered) <= 1


@pytest.mark.parametrize(("seed", "diameter", "kind", "site"), NODULES)
def test_nodules_of_8_mm_and_up_are_found_on_held_out_studies(
    bundle: Bundle, seed: int, diameter: float, kind: str, site: str
) -> None:
    study = _study(seed, nodules=[diameter], kinds=[kind], sites=[site])
    assert [n.diameter_mm for n in study.nodules] == [diameter]  # type: ignore[attr-defined]
    case = run_case(study, bundle)  # type: ignore[arg-type]
    hits = [k for k, j in case.hits.items() if j == 0]
    assert hits, f"{diameter} mm {kind} {site} nodule missed; findings {case.findings}"
    finding = case.findings[hits[0]]
    # >= 8 mm measured: the study pages (risk.py) for the nodule it carries. (False positives
    # on these thick-slice studies are the open part: the clean-study test above.)
    assert finding.diameter_mm >= 8.0
    assert abs(finding.diameter_mm - diameter) <= 0.25 * diameter
    centre = np.array(finding.center_voxel_zyx) * np.array(SPACING)
    assert np.linalg.norm(centre - np.array(case.nodules[0].center_mm)) <= diameter / 2


def test_the_model_card_states_the_held_out_figures_and_the_limits() -> None:
    card = (default_bundle_path() / "docs" / "README.md").read_text()
    for needed in ("Not for diagnosis", "synthetic", "held out", "CPM", "FP per clean scan"):
        assert needed.lower() in card.lower(), needed
    assert Path(default_bundle_path() / "configs" / "inference.json").is_file()
