"""The second stage of a nodule bundle (`radpipe.inference.candidates`): cubes around each
candidate, scored by a classifier the bundle declares; low scores dropped."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from radpipe.cli import main
from radpipe.inference.bundle import Bundle, default_bundle_path, load_bundle
from radpipe.inference.candidates import CandidateClassifier, crop, score
from radpipe.inference.findings import ShapeFilter, segment_findings
from radpipe.inference.froc import Case, scores
from radpipe.inference.volume import Volume

from .test_findings_filters import SPACING
from .test_findings_filters import _bundle as filter_bundle


class CentreBrightness(torch.nn.Module):
    """Logit = 20 x (window value at the cube's centre - 0.5): bright centres score ~1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1] // 2
        return 20.0 * (x[:, :, c, c, c] - 0.5)


def _bundle(classifier: CandidateClassifier | None) -> Bundle:
    """The filter tests' bundle (no shape limits) with `classifier` as its second stage."""
    return replace(filter_bundle(ShapeFilter()), name="cascade", candidates=classifier)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Lung (-850 HU) with two 12 mm balls that the probability map marks alike (0.9): one
    of soft tissue (40 HU, window 0.74), one of ground glass (-700 HU, window 0.21)."""
    shape = (48, 48, 96)
    hu = np.full(shape, -850.0, dtype=np.float32)
    prob = np.zeros(shape, dtype=np.float32)
    z, y, x = np.ogrid[:48, :48, :96]
    for cx, density in ((24, 40.0), (72, -700.0)):
        ball = (z - 24) ** 2 + (y - 24) ** 2 + (x - cx) ** 2 <= 16.0
        hu[ball] = density
        prob[ball] = 0.9
    return hu, prob


def test_a_cube_is_cut_around_the_centre_and_zero_outside_the_image() -> None:
    image = np.arange(6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    inside = crop(image, np.array([3.0, 3.0, 3.0]), 4)
    assert inside.shape == (4, 4, 4)
    assert np.array_equal(inside, image[1:5, 1:5, 1:5])
    corner = crop(image, np.array([0.4, 0.0, 5.6]), 4)  # rounds to (0, 0, 6)
    assert np.array_equal(corner[2:, 2:, :2], image[0:2, 0:2, 4:6])
    assert corner[:2].sum() == 0 and corner[:, :, 2:].sum() == 0
    assert not crop(image, np.array([40.0, 40.0, 40.0]), 4).any()


def test_the_classifier_drops_candidates_it_scores_low_and_records_its_score() -> None:
    hu, prob = _scene()
    volume = Volume(hu, SPACING, [])
    plain, _ = segment_findings(prob, volume, _bundle(None))
    assert sorted(round(f.center_voxel_zyx[2]) for f in plain) == [24, 72]
    assert all(f.candidate_score is None and f.probability == pytest.approx(0.9) for f in plain)

    classifier = CandidateClassifier(CentreBrightness(), 8, 0.5, Path("candidates.pt"))
    kept, labels = segment_findings(prob, volume, _bundle(classifier))
    assert [round(f.center_voxel_zyx[2]) for f in kept] == [24]  # the ground-glass ball went
    score = 1 / (1 + math.exp(-20.0 * ((40.0 + 1000.0) / 1400.0 - 0.5)))
    assert kept[0].candidate_score == pytest.approx(score, abs=1e-4)
    assert kept[0].probability == pytest.approx(0.9)  # the ranking stays the first stage's
    assert kept[0].to_dict()["candidate_score"] == round(score, 4)
    assert set(np.unique(labels)) == {0, 1} and not labels[:, :, 60:].any()

    classifier.threshold = 0.0  # nothing dropped, both scored
    both, _ = segment_findings(prob, volume, _bundle(classifier))
    assert len(both) == 2 and min(f.candidate_score or 1.0 for f in both) < 0.01


def test_a_bundle_may_rank_findings_by_both_stages() -> None:
    """The first stage gives the ground-glass ball 0.99 and the solid one 0.9, so by it alone
    the ground-glass ball comes first; ranked by both stages (`rank_with_candidate_score`)
    the solid ball the classifier is sure of does, and the FROC follows: with the solid ball
    as the true nodule, its operating point at no false positive finds it only then."""
    hu, prob = _scene()
    prob[:, :, 60:] *= 0.99 / 0.9  # the first stage now prefers the ground-glass ball
    volume = Volume(hu, SPACING, [])
    classifier = CandidateClassifier(CentreBrightness(), 8, 0.0, Path("candidates.pt"))
    rules = ShapeFilter(rank_with_candidate_score=True)
    bundle = replace(filter_bundle(rules), name="cascade", candidates=classifier)
    bundle.shape_filter = rules  # type: ignore[attr-defined]  # not a field: replace drops it

    plain = {
        round(f.center_voxel_zyx[2]): f
        for f in segment_findings(prob, volume, _bundle(classifier))[0]
    }
    assert all(f.score is None and f.rank_score == f.probability for f in plain.values())
    assert plain[72].rank_score > plain[24].rank_score  # the first stage alone

    ranked = {round(f.center_voxel_zyx[2]): f for f in segment_findings(prob, volume, bundle)[0]}
    for f in ranked.values():
        assert f.score == pytest.approx(f.probability * (f.candidate_score or 0.0))
        assert f.to_dict()["score"] == round(f.score or 0.0, 4)
    assert ranked[24].probability == pytest.approx(0.9)  # the first stage's, kept
    assert ranked[24].rank_score > 0.85 > 0.01 > ranked[72].rank_score

    truth = [_Truth((24 * SPACING[0], 24 * SPACING[1], 24 * SPACING[2]), 6.0 * SPACING[2])]
    assert scores([Case(truth, list(plain.values()), SPACING)]).froc[0.125] == 0.0
    assert scores([Case(truth, list(ranked.values()), SPACING)]).froc[0.125] == 1.0
    assert segment_findings(prob, volume, replace(bundle, candidates=None))[0][0].score is None


def test_a_bundle_may_report_only_findings_ranked_above_a_minimum() -> None:
    """`min_score` is the operating point of what is reported (and so of what pages): ranked
    by both stages, the ground-glass ball (0.99 x ~0.003) goes and the solid one (0.9 x ~1)
    stays; ranked by the first stage alone both clear 0.5 and both stay."""
    hu, prob = _scene()
    prob[:, :, 60:] *= 0.99 / 0.9
    volume = Volume(hu, SPACING, [])
    classifier = CandidateClassifier(CentreBrightness(), 8, 0.0, Path("candidates.pt"))
    found = {}
    for rank in (True, False):
        rules = ShapeFilter(rank_with_candidate_score=rank, min_score=0.5)
        bundle = replace(filter_bundle(rules), name="cascade", candidates=classifier)
        bundle.shape_filter = rules  # type: ignore[attr-defined]  # not a field: replace drops it
        findings, labels = segment_findings(prob, volume, bundle)
        found[rank] = sorted(round(f.center_voxel_zyx[2]) for f in findings)
        assert set(np.unique(labels)) == set(range(len(findings) + 1))
    assert found == {True: [24], False: [24, 72]}


@dataclass(frozen=True)
class _Truth:
    center_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str = "solid"
    site: str = "free"


def _two_balls(background: float, wall: bool, faint: float) -> tuple[Volume, np.ndarray]:
    """Two 12 mm balls that the probability map marks alike (0.9) in tissue of `background`
    HU, half sunk in a soft-tissue wall along y if `wall`: a solid one (40 HU) the classifier
    below scores ~1 and a `faint` one it scores low."""
    shape = (48, 48, 96)
    hu = np.full(shape, background, dtype=np.float32)
    prob = np.zeros(shape, dtype=np.float32)
    if wall:
        hu[:, 30:, :] = 40.0
    z, y, x = np.ogrid[:48, :48, :96]
    for cx, density in ((24, 40.0), (72, faint)):
        ball = (z - 24) ** 2 + (y - (28 if wall else 24)) ** 2 + (x - cx) ** 2 <= 16.0
        hu[ball] = density
        prob[ball] = 0.9
    return Volume(hu, SPACING, []), prob


@pytest.mark.parametrize(
    ("scene", "limits", "exempt", "other"),
    [
        # Half sunk in a wall (contact over the limit), the faint one ground glass (~0).
        (
            (-850.0, True, -700.0),
            ShapeFilter(max_contact_fraction=0.2),
            "contact_exempt_score",
            "air_exempt_score",
        ),
        # In tissue of -500 HU (a shell neither aerated lung nor denser than -400 HU: under the
        # aerated-lung limit, no contact to exempt them by), the faint one -450 HU (~0.1).
        (
            (-500.0, False, -450.0),
            ShapeFilter(min_air_fraction=0.3),
            "air_exempt_score",
            "contact_exempt_score",
        ),
    ],
    ids=["contact limit", "aerated-lung limit"],
)
def test_a_candidate_the_classifier_is_sure_of_is_exempt_from_a_context_limit(
    scene: tuple[float, bool, float], limits: ShapeFilter, exempt: str, other: str
) -> None:
    """With the limit's exemption the solid ball is kept; the faint one never is; without a
    classifier, nobody is; the other limit's exemption is not this one's."""
    volume, prob = _two_balls(*scene)
    classifier = CandidateClassifier(CentreBrightness(), 8, 0.0, Path("candidates.pt"))

    def found(rules: ShapeFilter, second: CandidateClassifier | None) -> list[int]:
        bundle = replace(filter_bundle(rules), name="cascade", candidates=second)
        bundle.shape_filter = rules  # type: ignore[attr-defined]  # not a field: replace drops it
        return sorted(
            round(f.center_voxel_zyx[2]) for f in segment_findings(prob, volume, bundle)[0]
        )

    assert found(ShapeFilter(), None) == [24, 72]
    assert found(limits, classifier) == []
    assert found(replace(limits, **{exempt: 0.8}), classifier) == [24]
    assert found(replace(limits, **{exempt: 0.8}), None) == []
    assert found(replace(limits, **{other: 0.8}), classifier) == []


def _bundle_copy(tmp_path: Path, section: dict[str, object] | None) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), root)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config.pop("candidate_classifier", None)
    if section is not None:
        config["candidate_classifier"] = section
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    return root


def test_a_bundle_with_a_malformed_post_processing_key_is_refused_when_loaded(
    tmp_path: Path,
) -> None:
    """Refused by `load_bundle` (when the inference worker loads it) and by `radpipe models
    add` (nothing installed), not in the first study's post-processing; the error names the
    key."""
    root = _bundle_copy(tmp_path, None)
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["rank_with_candidate_score"] = "yes"
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rank_with_candidate_score must be true or false"):
        load_bundle(root, "cpu")
    env = {"RADPIPE_MODELS_DIR": str(tmp_path / "models"), "RADPIPE_DATA_DIR": str(tmp_path)}
    added = CliRunner(env=env).invoke(main, ["models", "add", str(root)])
    assert added.exit_code == 1
    assert "rank_with_candidate_score must be true or false, got 'yes'" in added.output
    assert not (tmp_path / "models" / "lung_nodule_demo").exists()  # nothing installed
    config["rank_with_candidate_score"] = True
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    assert load_bundle(root, "cpu").candidates is None  # accepted; no classifier, no ranking


NETWORK = {
    "_target_": "monai.networks.nets.Classifier",
    "in_shape": [1, 16, 16, 16],
    "classes": 1,
    "channels": [4, 8],
    "strides": [2, 2],
}


def test_a_bundle_declares_its_classifier_in_inference_json(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    net = ConfigParser({"n": NETWORK}).get_parsed_content("n")
    section = {"network_def": NETWORK, "weights": "models/c.pt", "patch_size": 16, "threshold": 0.3}
    root = _bundle_copy(tmp_path, section)
    torch.save(net.state_dict(), root / "models" / "c.pt")
    bundle = load_bundle(root, "cpu")
    assert bundle.candidates is not None
    assert (bundle.candidates.patch_size, bundle.candidates.threshold) == (16, 0.3)
    assert not bundle.candidates.network.training
    provenance = bundle.to_dict()["candidate_classifier"]
    assert provenance["threshold"] == 0.3 and len(provenance["sha256"]) == 64
    assert provenance["test_time_flips"] is False

    assert load_bundle(_bundle_copy(tmp_path / "none", None), "cpu").candidates is None


def test_a_classifier_section_without_its_weights_or_keys_is_refused(tmp_path: Path) -> None:
    section = {"network_def": NETWORK, "weights": "models/c.pt", "patch_size": 16, "threshold": 0.3}
    with pytest.raises(ValueError, match=r"weights models/c.pt are missing"):
        load_bundle(_bundle_copy(tmp_path / "a", section), "cpu")
    del section["threshold"]
    with pytest.raises(ValueError, match=r"candidate_classifier lacks threshold"):
        load_bundle(_bundle_copy(tmp_path / "b", section), "cpu")


class CornerBrightness(torch.nn.Module):
    """Logit = 20 x (window value at the cube's first corner - 0.5): sees one orientation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, :, 0, 0, 0] - 0.5)


def test_test_time_flips_average_the_score_over_the_eight_flips_of_each_cube() -> None:
    """A network that looks at one corner scores a cube bright only there ~1 as it is and ~1/8
    averaged over the flips (each corner is the first once)."""
    image = np.zeros((16, 16, 16), dtype=np.float32)
    image[4, 4, 4] = 1.0  # the first corner of the 8^3 cube centred on (8, 8, 8)
    centre = [np.array([8.0, 8.0, 8.0])]
    plain = CandidateClassifier(CornerBrightness(), 8, 0.0, Path("c.pt"))
    flipped = replace(plain, test_time_flips=True)
    cpu = torch.device("cpu")
    assert score(plain, image, centre, cpu)[0] > 0.99
    on, off = 1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))
    assert score(flipped, image, centre, cpu)[0] == pytest.approx((on + 7 * off) / 8, rel=1e-5)


def test_a_malformed_test_time_flips_is_refused_by_name(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    net = ConfigParser({"n": NETWORK}).get_parsed_content("n")
    section = {
        "network_def": NETWORK,
        "weights": "models/c.pt",
        "patch_size": 16,
        "threshold": 0.3,
        "test_time_flips": "yes",
    }
    root = _bundle_copy(tmp_path, section)
    torch.save(net.state_dict(), root / "models" / "c.pt")
    with pytest.raises(ValueError, match="test_time_flips must be true or false, got 'yes'"):
        load_bundle(root, "cpu")
    section["test_time_flips"] = True
    root = _bundle_copy(tmp_path / "ok", section)
    torch.save(net.state_dict(), root / "models" / "c.pt")
    loaded = load_bundle(root, "cpu")
    assert loaded.candidates is not None and loaded.candidates.test_time_flips is True
    assert loaded.to_dict()["candidate_classifier"]["test_time_flips"] is True
