"""Post-processing context filters of `radpipe.inference.findings` on hand-built volumes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from radpipe.inference.bundle import Bundle
from radpipe.inference.findings import ShapeFilter, segment_findings
from radpipe.inference.volume import Volume

SPACING = (1.5, 1.5, 1.5)  # input on the bundle grid: components keep their voxels


def _bundle(limits: ShapeFilter) -> Bundle:
    bundle = Bundle(
        name="filters",
        version="0",
        sha256="",
        path=Path("."),
        network=torch.nn.Identity(),
        spacing=SPACING,
        roi_size=(32, 32, 32),
        intensity_range=(-1000.0, 400.0),
        threshold=0.5,
        device=torch.device("cpu"),
        min_volume_mm3=0.0,
    )
    bundle.shape_filter = limits  # type: ignore[attr-defined]
    return bundle


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Left half lung (-850 HU), right half fat (-100 HU); a 12 mm ball of soft tissue in each,
    and a 60 mm one straddling both. The probability map marks all three."""
    shape = (64, 64, 96)
    hu = np.full(shape, -850.0, dtype=np.float32)
    hu[:, :, 48:] = -100.0
    prob = np.zeros(shape, dtype=np.float32)
    for centre, radius in (((16, 32, 20), 4.0), ((16, 32, 76), 4.0), ((44, 32, 48), 20.0)):
        ball = _ball(shape, centre, radius)
        hu[ball] = 40.0
        prob[ball] = 0.9
    return hu, prob


def _found(limits: ShapeFilter) -> list[tuple[int, float, float]]:
    hu, prob = _scene()
    findings, _ = segment_findings(prob, Volume(hu, SPACING, []), _bundle(limits))
    return sorted((round(f.center_voxel_zyx[2]), f.diameter_mm, f.air) for f in findings)


def test_a_finding_with_no_lung_around_it_is_dropped_by_the_air_share() -> None:
    found = _found(ShapeFilter())
    assert [x for x, _, _ in found] == [20, 48, 76]
    air = {x: a for x, _, a in found}
    assert air[20] > 0.95  # ringed by lung
    assert air[76] == 0.0  # in fat
    assert 0.3 < air[48] < 0.7  # half in each
    assert [x for x, _, _ in _found(ShapeFilter(min_air_fraction=0.3))] == [20, 48]


def test_a_component_larger_than_a_nodule_can_be_is_dropped() -> None:
    sizes = {x: d for x, d, _ in _found(ShapeFilter())}
    assert 11.0 < sizes[20] < 13.5 and 58.0 < sizes[48] < 62.0
    assert [x for x, _, _ in _found(ShapeFilter(max_diameter_mm=40.0))] == [20, 76]
    kept = _found(ShapeFilter(min_air_fraction=0.3, max_diameter_mm=40.0))
    assert [x for x, _, _ in kept] == [20]


def test_a_finding_smaller_than_the_slices_can_resolve_is_dropped() -> None:
    shape = (40, 40, 64)
    hu = np.full(shape, -850.0, dtype=np.float32)
    prob = np.zeros(shape, dtype=np.float32)
    for centre, radius in (((20, 20, 16), 2.0), ((20, 20, 44), 4.0)):  # 6 mm and 12 mm
        ball = _ball(shape, centre, radius)
        hu[ball], prob[ball] = 40.0, 0.9
    limits = _bundle(ShapeFilter(min_diameter_slice_thickness_ratio=1.5))

    def found(volume: Volume) -> list[int]:
        return sorted(
            round(f.center_voxel_zyx[2]) for f in segment_findings(prob, volume, limits)[0]
        )

    # 1.5 mm slices: 2.25 mm and up is reported; both stay.
    assert found(Volume(hu, SPACING, [])) == [16, 44]
    # The same grid declared as 5 mm slices (overlapping reconstruction): under 7.5 mm goes.
    assert found(Volume(hu, SPACING, [], slice_thickness=5.0)) == [44]
    # 9 mm slices: the 12 mm ball is under 13.5 mm and goes too.
    assert found(Volume(hu, SPACING, [], slice_thickness=9.0)) == []
    # No limit declared: slice thickness changes nothing.
    plain = _bundle(ShapeFilter())
    assert len(segment_findings(prob, Volume(hu, SPACING, [], slice_thickness=9.0), plain)[0]) == 2


def test_a_solid_core_in_its_own_ground_glass_is_exempt_from_the_air_share() -> None:
    """A part-solid nodule segmented as its solid core: the core's shell is the nodule's own
    ground glass (-550 HU), neither aerated lung nor tissue. The aerated-lung limit drops it
    unless it hardly touches tissue; a ball in fat (all tissue around) stays dropped."""
    shape = (40, 40, 96)
    hu = np.full(shape, -850.0, dtype=np.float32)
    hu[:, :, 64:] = -100.0
    prob = np.zeros(shape, dtype=np.float32)
    hu[_ball(shape, (20, 20, 24), 7.0)] = -550.0  # 21 mm of ground glass
    for centre in ((20, 20, 24), (20, 20, 80)):
        core = _ball(shape, centre, 3.0)
        hu[core], prob[core] = 40.0, 0.9

    def found(limits: ShapeFilter) -> list[tuple[int, float, float]]:
        findings, _ = segment_findings(prob, Volume(hu, SPACING, []), _bundle(limits))
        return sorted((round(f.center_voxel_zyx[2]), f.air, f.contact) for f in findings)

    shells = {x: (air, contact) for x, air, contact in found(ShapeFilter())}
    assert shells[24] == (0.0, 0.0) and shells[80] == (0.0, 1.0)
    assert found(ShapeFilter(min_air_fraction=0.3)) == []
    kept = found(ShapeFilter(min_air_fraction=0.3, air_exempt_contact=0.1))
    assert [x for x, _, _ in kept] == [24]
    # The exemption alone is no limit.
    assert len(found(ShapeFilter(air_exempt_contact=0.1))) == 2


def test_the_bundle_config_declares_the_filters(tmp_path: Path) -> None:
    from radpipe.inference.findings import shape_filter

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text(
        '{"min_air_fraction": 0.25, "max_diameter_mm": 45, "max_elongation": 2.5, '
        '"min_diameter_slice_thickness_ratio": 1.5, "air_exempt_contact": 0.1, '
        '"contact_exempt_score": 0.8, "air_exempt_score": 0.9, "rank_with_candidate_score": true}'
    )
    bundle = _bundle(ShapeFilter())
    del bundle.shape_filter  # type: ignore[attr-defined]
    bundle.path = tmp_path
    assert shape_filter(bundle) == ShapeFilter(
        max_elongation=2.5,
        min_air_fraction=0.25,
        max_diameter_mm=45.0,
        min_diameter_slice_thickness_ratio=1.5,
        air_exempt_contact=0.1,
        contact_exempt_score=0.8,
        air_exempt_score=0.9,
        rank_with_candidate_score=True,
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('"rank_with_candidate_score": "yes"', "rank_with_candidate_score must be true or false"),
        ('"rank_with_candidate_score": 1', "rank_with_candidate_score must be true or false"),
        ('"rank_with_candidate_score": 0', "rank_with_candidate_score must be true or false"),
        ('"max_contact_fraction": "a lot"', "max_contact_fraction must be a number, got 'a lot'"),
        ('"contact_exempt_score": true', "contact_exempt_score must be a number, got True"),
        ('"wall_ratio": [0.6]', "wall_ratio must be a number"),
        ('"min_score": "high"', "min_score must be a number, got 'high'"),
        ('"air_exempt_score": "sure"', "air_exempt_score must be a number, got 'sure'"),
    ],
)
def test_a_post_processing_key_of_the_wrong_type_is_refused_by_name(
    tmp_path: Path, entry: str, message: str
) -> None:
    from radpipe.inference.findings import shape_filter

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text("{" + entry + "}")
    bundle = _bundle(ShapeFilter())
    del bundle.shape_filter  # type: ignore[attr-defined]
    bundle.path = tmp_path
    with pytest.raises(ValueError, match=re.escape(message)):
        shape_filter(bundle)
