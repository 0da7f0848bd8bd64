"""The shipped demo bundle on fresh phantoms, through the same stages the worker runs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.inference.bundle import Bundle, default_bundle_path, load_bundle
from radpipe.inference.service import (
    Volume,
    analyze,
    pre_process,
    predict,
    segment_findings,
)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(default_bundle_path(), "cpu")


def test_bundle_is_complete_and_identified(bundle: Bundle) -> None:
    weights = default_bundle_path() / "models" / "model.pt"
    assert bundle.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.stat().st_size < 5 * 1024 * 1024
    assert (bundle.name, bundle.version) == ("lung_nodule_demo", "0.9.6")
    assert bundle.validated_input == {"slice_thickness_mm": (0.6, 3.0)}
    assert bundle.to_dict()["validated_input"] == {"slice_thickness_mm": [0.6, 3.0]}
    assert not bundle.network.training
    # The second stage: the candidate classifier the config declares, its weights identified.
    classifier = default_bundle_path() / "models" / "candidates.pt"
    assert bundle.candidates is not None and not bundle.candidates.network.training
    assert bundle.candidates.sha256 == hashlib.sha256(classifier.read_bytes()).hexdigest()
    assert bundle.to_dict()["candidate_classifier"]["threshold"] == bundle.candidates.threshold
    meta = json.loads((default_bundle_path() / "configs" / "metadata.json").read_text())
    assert "Not for diagnosis." in meta["description"]
    assert meta["training"]["metrics"]["val_dice"] >= 0.8


def test_a_12_mm_nodule_gives_one_high_risk_finding(bundle: Bundle) -> None:
    phantom = make_phantom(101, nodules=[12.0], shape=(80, 320, 320), spacing=(2.0, 0.8, 0.8))
    datasets = phantom_to_datasets(phantom)
    analysis = analyze(datasets, bundle)
    assert len(analysis.findings) == 1
    finding = analysis.findings[0]
    assert abs(finding.diameter_mm - 12.0) <= 2.0
    truth = np.array(phantom.nodules[0].center_mm) / np.array(phantom.spacing)
    assert np.abs(np.array(finding.center_voxel_zyx) - truth).max() <= 2.0
    assert analysis.risk.score >= 0.5 and analysis.risk.category == "high"
    assert analysis.input_sop_uids == [ds.SOPInstanceUID for ds in datasets]


def test_slice_thickness_from_the_images_sets_the_smallest_reported_finding(
    bundle: Bundle,
) -> None:
    """Since 0.5.2: nothing under 1.25 slice thicknesses across is reported, with the
    thickness the images declare (an overlapping reconstruction blurs more than its spacing
    says)."""
    from radpipe.inference.findings import shape_filter

    limits = shape_filter(bundle)
    assert limits.min_diameter_slice_thickness_ratio == 1.25
    # Since 0.5.3: the two exemptions (tests/unit/test_findings_filters.py and
    # test_candidate_classifier.py show what each does).
    assert (limits.air_exempt_contact, limits.contact_exempt_score) == (0.1, 0.8)
    # Since 0.9.0: findings rank by both stages (first-stage probability x classifier score).
    assert limits.rank_with_candidate_score is True
    # Since 0.9.4: the aerated-lung limit spares what the classifier is sure of, and findings
    # ranked below 0.3 are not reported (the training family's 0.1 FP/scan point).
    assert (limits.air_exempt_score, limits.min_score) == (0.8, 0.3)
    # Since 0.9.6: the classifier's score is the mean over the eight flips of each cube.
    assert bundle.candidates is not None and bundle.candidates.test_time_flips is True
    phantom = make_phantom(101, nodules=[12.0], shape=(80, 320, 320), spacing=(2.0, 0.8, 0.8))
    datasets = phantom_to_datasets(phantom)
    assert [f.diameter_mm > 9.0 for f in analyze(datasets, bundle).findings] == [True]
    for ds in datasets:
        ds.SliceThickness = "12"  # 12 mm slabs every 2 mm: 15 mm and up would be reported
    analysis = analyze(datasets, bundle)
    assert analysis.findings == [] and analysis.risk.category == "none"


def test_a_nodule_free_phantom_gives_no_finding(bundle: Bundle) -> None:
    phantom = make_phantom(202, nodules=[], shape=(80, 320, 320), spacing=(2.0, 0.8, 0.8))
    analysis = analyze(phantom_to_datasets(phantom), bundle)
    assert analysis.findings == []
    assert (analysis.risk.score, analysis.risk.category) == (0.0, "none")


@pytest.mark.parametrize(
    ("seed", "diameters"),
    [
        # The segmentation networks of 0.3.0 (kept by 0.4.x), 0.5.0 (kept by 0.5.3) and 0.9.0
        # segment this 5 mm nodule below the 48 mm3 floor (0.2.0 found it): small nodules are
        # their weak spot (held out 0.5.0 finds 9 of 63 under 8 mm; docs/benchmarks.md).
        pytest.param(
            303,
            [5.0, 16.0],
            marks=pytest.mark.xfail(
                strict=True, reason="lung_nodule_demo 0.3.0 to 0.9.0 miss this 5 mm nodule"
            ),
        ),
        (304, [7.0, 24.0]),
        (305, [6.0, 10.0, 30.0]),
    ],
)
def test_nodules_of_5_mm_and_above_are_found_and_measured(
    bundle: Bundle, seed: int, diameters: list[float]
) -> None:
    phantom = make_phantom(seed, nodules=diameters)  # random matrix, spacing and anatomy
    volume = Volume(phantom.volume.astype(np.float32), phantom.spacing, [])
    prob = predict(pre_process(volume, bundle), bundle)
    findings, labels = segment_findings(prob, volume, bundle)
    truth = phantom.nodule_mask_on_grid(labels.shape)  # type: ignore[arg-type]
    pred = labels > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice >= 0.8
    assert len(findings) == len(diameters)  # no false positive on vessels, bone or heart
    for nodule in phantom.nodules:
        center = np.array(nodule.center_mm)
        near = [
            f
            for f in findings
            if np.linalg.norm(np.array(f.center_voxel_zyx) * phantom.spacing - center)
            <= nodule.diameter_mm / 2
        ]
        assert len(near) == 1, f"{nodule.diameter_mm} mm nodule not found exactly once"
        assert abs(near[0].diameter_mm - nodule.diameter_mm) <= 2.0
