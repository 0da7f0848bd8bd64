"""Comprehensive 3D SR, TID 1500 Measurement Report, of the findings and the study risk.

Measurements are Diameter (SCT 81827009, UCUM "mm") and Volume (SCT 118565006, UCUM "mm3").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from radpipe.common.report import QUALITATIVE_EVALUATIONS

from .findings import Finding
from .result_context import (
    AI_LABEL,
    MANUFACTURER,
    ResultContext,
    center_index,
)
from .service import Analysis
from .volume import Volume
from .zoo import finding_codes, finding_label, private_code

__all__ = ["QUALITATIVE_EVALUATIONS", "report"]


def report(
    ctx: ResultContext,
    volume: Volume,
    analysis: Analysis,
    tracking: Sequence[str],
    series_number: int,
) -> pydicom.Dataset:
    """Comprehensive 3D SR, TID 1500: one TID 1410 group per finding, plus a Qualitative
    Evaluations container (TID 1500 row 12) with the study risk and the not-for-diagnosis
    statement.

    Each group holds its tracking identifier ("Nodule n") and UID, finding type Nodule, the
    diameter and volume, and a closed POLYLINE Image Region: the finding's in-plane outline
    on its center slice in pixel coordinates, which OHIF's SR viewport draws with the
    measurement labels. With no findings the Imaging Measurements container stays empty
    (its groups are optional in TID 1500; highdicom insists on one, so a stand-in is removed).
    """
    algorithm = hd.sr.AlgorithmIdentification(name=ctx.name, version=ctx.version)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    labels = analysis.label_map
    for number, finding in enumerate(analysis.findings, start=1):
        k = center_index(finding, volume)
        source, frame = ctx.slice_source(volume, k)
        mask = labels[k] == finding.label if labels is not None else None
        outline = _outline(mask, finding, volume)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            # a frame of a multi-frame source is named by its Referenced Frame Number
            source_image=hd.sr.SourceImageForRegion.from_source_image(
                source, referenced_frame_numbers=[frame] if frame else None
            ),
        )
        category, finding_type, sites = finding_codes(finding)
        sized = [
            hd.sr.Measurement(
                name=codes.SCT.Diameter,
                value=round(finding.diameter_mm, 2),
                unit=codes.UCUM.Millimeter,
            )
        ]
        if getattr(finding, "kind", "") == "segmentation":  # a zoo label: a volume, no diameter
            sized = []
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking[number - 1], identifier=finding_label(finding, number)
                ),
                referenced_region=region,
                finding_type=finding_type,
                finding_category=category,
                finding_sites=[hd.sr.FindingSite(site) for site in sites] or None,
                algorithm_id=algorithm,
                measurements=[
                    *sized,
                    hd.sr.Measurement(
                        name=codes.SCT.Volume,
                        value=round(finding.volume_mm3, 1),
                        unit=codes.UCUM.CubicMillimeter,
                    ),
                ],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=ctx.uid("sr-device-observer"),
            name=ctx.name,
            manufacturer_name=MANUFACTURER,
            model_name=ctx.name,
        ),
    )
    measurements: list[Any] = list(groups)
    if analysis.evaluations:  # a classification bundle: TID 1501, its class scores
        measurements.append(_classification(ctx, analysis, algorithm))
    if not measurements:
        stand_in = hd.sr.TrackingIdentifier(uid=ctx.uid("sr-stand-in"), identifier="none")
        measurements = [hd.sr.MeasurementsAndQualitativeEvaluations(stand_in)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=measurements,
        referenced_images=(library := _library(ctx, volume, analysis.findings)),
    )
    root = report[0]
    _name_library_frames(root, library)
    if not groups and not analysis.evaluations:
        for item in root.ContentSequence:
            if item.name == codes.DCM.ImagingMeasurements:
                del item.ContentSequence
    root.ContentSequence.append(_evaluations(analysis))
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(ctx.sources),
        content=report,
        series_instance_uid=ctx.uid("sr-series"),
        series_number=series_number,
        sop_instance_uid=ctx.uid("sr-instance"),
        instance_number=1,
        is_complete=True,
        is_final=False,
        **ctx.equipment(f"AI nodule report ({AI_LABEL})"),
    )
    return ctx.finish(sr)


def _library(
    ctx: ResultContext, volume: Volume, findings: Sequence[Finding]
) -> list[pydicom.Dataset]:
    """Image Library (TID 1600) entries: the slices the groups point at, or the middle slice
    to name the series when there are none. OHIF's SR viewer needs a library to load the
    report; listing every slice would cost ~10 ms and ~4 kB each. A frame of a multi-frame
    source is an entry of its own, with that frame's geometry and number (TID 1601)."""
    slices = len(volume.sop_instance_uids)
    picked = sorted({center_index(f, volume) for f in findings}) or [slices // 2]
    entries = [ctx.slice_source(volume, k) for k in picked]
    return [ds if frame is None else _frame_entry(ds, frame) for ds, frame in entries]


#: What highdicom's TID 1604 descriptors read from an image (Rows ... Modality at the top).
_ENTRY_KEYWORDS = (
    *("SOPClassUID", "SOPInstanceUID", "Modality", "FrameOfReferenceUID"),
    *("Rows", "Columns", "StudyInstanceUID", "SeriesInstanceUID"),
)


def _frame_entry(ds: pydicom.Dataset, frame: int) -> pydicom.Dataset:
    """Frame ``frame`` (from 1) of a multi-frame instance as an Image Library entry: its
    geometry (TID 1604: pixel spacing, slice thickness, position, orientation) from its
    per-frame or the shared functional groups (PS3.3 C.7.6.16), and ``ReferencedFrameNumber``,
    which :func:`_name_library_frames` moves into the entry's Referenced SOP Sequence."""
    groups = [ds.PerFrameFunctionalGroupsSequence[frame - 1]]
    groups += list(ds.get("SharedFunctionalGroupsSequence", []))

    def macro(keyword: str) -> pydicom.Dataset:
        for group in groups:
            if group.get(keyword):
                item: pydicom.Dataset = group[keyword].value[0]
                return item
        raise ValueError(f"frame {frame} of {ds.SOPInstanceUID} lacks its {keyword}")

    entry = pydicom.Dataset()
    for keyword in _ENTRY_KEYWORDS:
        if keyword in ds:
            setattr(entry, keyword, ds[keyword].value)
    measures = macro("PixelMeasuresSequence")
    entry.PixelSpacing = measures.PixelSpacing
    entry.SliceThickness = measures.get("SliceThickness")
    entry.ImagePositionPatient = macro("PlanePositionSequence").ImagePositionPatient
    entry.ImageOrientationPatient = macro("PlaneOrientationSequence").ImageOrientationPatient
    entry.ReferencedFrameNumber = frame
    return entry


def _name_library_frames(root: pydicom.Dataset, library: Sequence[pydicom.Dataset]) -> None:
    """TID 1601: an Image Library entry of a frame names it by Referenced Frame Number."""
    frames = {
        (str(entry.SOPInstanceUID), i): int(entry.ReferencedFrameNumber)
        for i, entry in enumerate(library)
        if "ReferencedFrameNumber" in entry
    }
    if not frames:
        return
    images = [
        image
        for item in root.ContentSequence
        if item.name == codes.DCM.ImageLibrary
        for group in item.get("ContentSequence", [])
        for image in group.get("ContentSequence", [])
        if image.ValueType == "IMAGE"
    ]
    for i, image in enumerate(images):
        reference = image.ReferencedSOPSequence[0]
        frame = frames.get((str(reference.ReferencedSOPInstanceUID), i))
        if frame is not None:
            reference.ReferencedFrameNumber = frame


def _classification(
    ctx: ResultContext, analysis: Analysis, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group of a classification bundle: each class's probability (TID 300, UCUM
    "1") and the chosen class as its Finding (TID 1501 row 3)."""
    scores = [
        hd.sr.Measurement(
            name=private_code(f"{e.name} probability"),
            value=round(e.probability, 4),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
        )
        for e in analysis.evaluations
    ]
    chosen = next((e.name for e in analysis.evaluations if e.selected), "unclassified")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=ctx.uid("classification-tracking"), identifier="Classification"
        ),
        finding_type=private_code(chosen),
        algorithm_id=algorithm,
        measurements=scores,
    )


def _evaluations(analysis: Analysis) -> hd.sr.ContainerContentItem:
    risk = analysis.risk
    n = len(analysis.findings)
    found = f"{n} lung nodule(s) detected" if n else "No lung nodule detected"
    if analysis.model.get("format") == "monai-zoo":
        chosen = [e.name for e in analysis.evaluations if e.selected]
        found = f"Class: {chosen[0]}" if chosen else f"{n} finding(s)"
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Impression,
                value=f"{found}. Study risk: {risk.category} (score {risk.score:.3f}); "
                f"{risk.rule}.",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=f"{AI_LABEL}: produced automatically by {analysis.model.get('name', '?')} "
                f"{analysis.model.get('version', '?')} and not reviewed by a physician.",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
        ]
    )
    return container


def _outline(mask: np.ndarray | None, finding: Finding, volume: Volume) -> np.ndarray:
    """Closed polygon (column, row) around the finding's cross-section, PS3.3 C.18.6.1.1
    pixel coordinates (0, 0 is the top left corner of the top left pixel).

    Each of 32 rays from the cross-section's centroid ends at its farthest pixel, which traces
    any star-shaped region (nodules are); without a cross-section it is the diameter's circle.
    """
    angles = np.linspace(0.0, 2.0 * math.pi, 33)[:-1]
    if mask is not None and mask.any():
        rows, cols = np.nonzero(mask)
        cy, cx = float(rows.mean()), float(cols.mean())
        reach = float(np.hypot(rows - cy, cols - cx).max()) + 1.0
        steps = np.arange(0.0, reach + 0.25, 0.25)
        ry = np.rint(cy + np.sin(angles)[:, None] * steps).astype(int)
        rx = np.rint(cx + np.cos(angles)[:, None] * steps).astype(int)
        inside = (ry >= 0) & (ry < mask.shape[0]) & (rx >= 0) & (rx < mask.shape[1])
        inside[inside] = mask[ry[inside], rx[inside]]
        last = np.where(inside, np.arange(steps.size), -1).max(axis=1)
        radius = np.where(last >= 0, steps[np.maximum(last, 0)] + 0.5, 0.5)
    else:
        cy, cx = finding.center_voxel_zyx[1], finding.center_voxel_zyx[2]
        spacing = float(volume.spacing[1])  # a frame's own, or the shared Pixel Measures
        radius = np.full(angles.shape, finding.diameter_mm / 2.0 / spacing)
    points = np.stack(
        [cx + 0.5 + radius * np.cos(angles), cy + 0.5 + radius * np.sin(angles)], axis=1
    )
    return np.vstack([points, points[:1]]).astype(np.float32)
