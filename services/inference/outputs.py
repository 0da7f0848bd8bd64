"""Result objects for one analysis: DICOM SEG, TID 1500 SR and key images (SC + PNG).

Pure functions: datasets and bytes in memory, no storage, no queues. Every object joins the
study of the de-identified sources (Patient, General Study and Patient Study modules copied,
de-identification markers included) in a new series of its own, and names the model that made
it: Manufacturer "Radpipe", Manufacturer's Model Name = bundle name, Software Versions = bundle
version, Device Serial Number = the weights' SHA-256.

Codes (PS3.16): segments and SR groups are findings of category "Morphologically Abnormal
Structure" (SCT 49755003, CID 7150) and type "Nodule" (SCT 27925004, in CID 7151 and in CID
7159 "Lesion Segmentation Types") in the lung (SCT 39607008); the algorithm family is
"Artificial Intelligence" (DCM 123110, CID 7162). Measurements are Diameter (SCT 81827009,
UCUM "mm") and Volume (SCT 118565006, UCUM "mm3").

Expected time on one CPU core: ~0.3 s for 120 slices of 512x512 with one finding (the SEG
dominates), plus ~0.5 s once per process while highdicom loads its tables of the standard;
peak memory ~150 MB there (a few bytes per voxel of the series).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from radpipe.inference.service import Analysis, Finding, Volume

__all__ = [
    "AI_LABEL",
    "LUNG_WINDOW",
    "OUTLINE_RGB",
    "ResultObject",
    "Results",
    "build_results",
]

MANUFACTURER = "Radpipe"
AI_LABEL = "AI result, not for diagnosis"
LUNG_WINDOW = (-600.0, 1500.0)  # level, width (HU)
OUTLINE_RGB = (0, 255, 0)
TEXT_RGB = (255, 255, 0)
KEY_IMAGE_MIN_SIZE = 512  # small matrices are enlarged so the burned-in text stays legible

CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
NODULE = codes.SCT.Nodule
LUNG = codes.SCT.Lung
# TID 1500 row 12; pydicom's code dictionary does not name this UMLS concept.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


@dataclass
class ResultObject:
    """One DICOM result instance, ready for `pydicom.dcmwrite(..., enforce_file_format=True)`."""

    kind: str  # "seg" | "sr" | "key-image" (SC)
    dataset: pydicom.Dataset


@dataclass
class Results:
    """Everything `build_results` makes for one analysis."""

    objects: list[ResultObject]
    pngs: list[tuple[str, bytes]]  # ("finding-1.png", PNG bytes), one per finding


@dataclass(frozen=True)
class _Context:
    """What every object shares: sources, provenance, one timestamp, the UID source."""

    sources: Sequence[pydicom.Dataset]
    name: str
    version: str
    serial: str
    when: datetime
    uid: Callable[[str], str]

    def equipment(self, series_description: str) -> dict[str, Any]:
        return {
            "manufacturer": MANUFACTURER,
            "manufacturer_model_name": self.name,
            "software_versions": self.version,
            "device_serial_number": self.serial,
            "series_description": series_description,
            "content_date": self.when.date(),
            "content_time": self.when.time(),
            "series_date": self.when.date(),
            "series_time": self.when.time(),
        }

    def finish(self, ds: hd.SOPClass) -> pydicom.Dataset:
        """Study context from the sources and one timestamp, so a re-run differs in nothing."""
        ds.copy_patient_and_study_information(self.sources[0])
        for keyword in ("SpecificCharacterSet", "LongitudinalTemporalInformationModified"):
            if keyword in self.sources[0]:
                setattr(ds, keyword, self.sources[0][keyword].value)
        ds.InstanceCreationDate = DA(self.when.strftime("%Y%m%d"))
        ds.InstanceCreationTime = TM(self.when.strftime("%H%M%S"))
        for item in ds.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:  # highdicom stamps its own contribution "now"
                item.ContributionDateTime = self.when.strftime("%Y%m%d%H%M%S")
        return ds


def build_results(
    sources: Sequence[pydicom.Dataset],
    volume: Volume,
    analysis: Analysis,
    *,
    uid: Callable[[str], str],
    series_number: int = 9000,
    content_datetime: datetime | None = None,
) -> Results:
    """SEG (when there are findings), SR and one key image (SC + PNG) per finding.

    Series numbers: SEG `series_number`, SR `series_number + 1`, key images
    `series_number + 2`. `uid(purpose)` gives every new UID ("seg-series", "sr-instance",
    "finding-1-tracking", ...), so a re-run with the same `uid` and `content_datetime`
    rebuilds identical objects.

    Raises
    ------
    ValueError: `sources` are not in `volume.sop_instance_uids` order, or the label map is
        missing or does not match the sources' grid.
    """
    _check(sources, volume, analysis)
    model = analysis.model
    ctx = _Context(
        sources=sources,
        name=str(model.get("name") or "unknown")[:64],
        version=str(model.get("version") or "0")[:64],
        serial=str(model.get("sha256") or "unknown")[:64],
        when=content_datetime or datetime.now(),
        uid=uid,
    )
    findings = analysis.findings
    labels = analysis.label_map
    tracking = [uid(f"finding-{n}-tracking") for n in range(1, len(findings) + 1)]
    objects: list[ResultObject] = []
    if findings and labels is not None:
        seg = _segmentation(ctx, findings, labels, tracking, series_number)
        objects.append(ResultObject("seg", seg))
    objects.append(ResultObject("sr", _report(ctx, volume, analysis, tracking, series_number + 1)))
    pngs = []
    for n, finding in enumerate(findings, start=1):
        k = _center_index(finding, volume)
        mask = labels[k] == finding.label if labels is not None else None
        pixels = _key_image(sources[k], mask, finding, volume, f"Nodule {n}", ctx.name)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
        pngs.append((f"finding-{n}.png", buffer.getvalue()))
        sc = _secondary_capture(ctx, sources[k], pixels, volume, n, series_number + 2)
        objects.append(ResultObject("key-image", sc))
    return Results(objects=objects, pngs=pngs)


def _check(sources: Sequence[pydicom.Dataset], volume: Volume, analysis: Analysis) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    if uids != list(volume.sop_instance_uids):
        raise ValueError(
            "sources must be the analyzed instances in volume.sop_instance_uids order "
            "(sort them by that list before calling build_results)"
        )
    if analysis.findings:
        labels = analysis.label_map
        if labels is None or labels.shape != volume.array.shape:
            raise ValueError(
                "analysis.label_map must be the input-grid label map (z, y, x) of shape "
                f"{volume.array.shape}; analyze() sets it"
            )


def _center_index(finding: Finding, volume: Volume) -> int:
    if finding.center_sop_instance_uid in volume.sop_instance_uids:
        return volume.sop_instance_uids.index(finding.center_sop_instance_uid)
    z = round(finding.center_voxel_zyx[0])
    return int(np.clip(z, 0, len(volume.sop_instance_uids) - 1))


# --------------------------------------------------------------------------- SEG


def _segmentation(
    ctx: _Context,
    findings: Sequence[Finding],
    labels: np.ndarray,
    tracking: Sequence[str],
    series_number: int,
) -> pydicom.Dataset:
    """Binary SEG (PS3.3 A.51), one segment per finding so viewers list, colour and track
    each nodule on its own (tracking UID shared with its SR group).

    Frames: one per (source slice, segment) with mask, empty ones omitted; highdicom keeps
    each frame's Source Image reference with its own slice, which the tests check.
    """
    segment_map = np.zeros(labels.shape, dtype=np.uint8 if len(findings) < 256 else np.uint16)
    for number, finding in enumerate(findings, start=1):
        segment_map[labels == finding.label] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ctx.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=ctx.version,
        source=MANUFACTURER,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"Nodule {number}",
            segmented_property_category=CATEGORY,
            segmented_property_type=NODULE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking[number - 1],
            tracking_id=f"Nodule {number}",
            anatomic_regions=[LUNG],
        )
        for number in range(1, len(findings) + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(ctx.sources),
        pixel_array=segment_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=ctx.uid("seg-series"),
        series_number=series_number,
        sop_instance_uid=ctx.uid("seg-instance"),
        instance_number=1,
        content_label="AI_NODULES",
        content_description=AI_LABEL,
        omit_empty_frames=True,
        **ctx.equipment(f"AI nodule segmentation ({AI_LABEL})"[:64]),
    )
    # highdicom draws the Dimension Organization UID at random; derive it like the others.
    random_uid = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    fixed_uid = ctx.uid("seg-dimension-organization")
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        if item.DimensionOrganizationUID == random_uid:
            item.DimensionOrganizationUID = fixed_uid
    return ctx.finish(seg)


# --------------------------------------------------------------------------- SR


def _report(
    ctx: _Context,
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
        k = _center_index(finding, volume)
        source = ctx.sources[k]
        mask = labels[k] == finding.label if labels is not None else None
        outline = _outline(mask, finding, source)
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=outline,
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking[number - 1], identifier=f"Nodule {number}"
                ),
                referenced_region=region,
                finding_type=NODULE,
                finding_category=CATEGORY,
                finding_sites=[hd.sr.FindingSite(LUNG)],
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=codes.SCT.Diameter,
                        value=round(finding.diameter_mm, 2),
                        unit=codes.UCUM.Millimeter,
                    ),
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
    if not measurements:
        stand_in = hd.sr.TrackingIdentifier(uid=ctx.uid("sr-stand-in"), identifier="none")
        measurements = [hd.sr.MeasurementsAndQualitativeEvaluations(stand_in)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=measurements,
        referenced_images=_library(ctx.sources, volume, analysis.findings),
    )
    root = report[0]
    if not groups:
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
    sources: Sequence[pydicom.Dataset], volume: Volume, findings: Sequence[Finding]
) -> list[pydicom.Dataset]:
    """Image Library (TID 1600) entries: the slices the groups point at, or the middle slice
    to name the series when there are none. OHIF's SR viewer needs a library to load the
    report; listing every slice would cost ~10 ms and ~4 kB each."""
    picked = sorted({_center_index(f, volume) for f in findings}) or [len(sources) // 2]
    return [sources[k] for k in picked]


def _evaluations(analysis: Analysis) -> hd.sr.ContainerContentItem:
    risk = analysis.risk
    n = len(analysis.findings)
    found = f"{n} lung nodule(s) detected" if n else "No lung nodule detected"
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


def _outline(mask: np.ndarray | None, finding: Finding, source: pydicom.Dataset) -> np.ndarray:
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
        spacing = float(source.PixelSpacing[0])
        radius = np.full(angles.shape, finding.diameter_mm / 2.0 / spacing)
    points = np.stack(
        [cx + 0.5 + radius * np.cos(angles), cy + 0.5 + radius * np.sin(angles)], axis=1
    )
    return np.vstack([points, points[:1]]).astype(np.float32)


# --------------------------------------------------------------------------- key images


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(iterations):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _key_image(
    source: pydicom.Dataset,
    mask: np.ndarray | None,
    finding: Finding,
    volume: Volume,
    tracking_id: str,
    model_name: str,
) -> np.ndarray:
    """RGB uint8 of the slice in the lung window with the finding's outline and the
    not-for-diagnosis label burned in; matrices under 512 pixels are enlarged (nearest)."""
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    hu = source.pixel_array.astype(np.float32) * slope + intercept
    level, width = LUNG_WINDOW
    gray = np.clip((hu - (level - width / 2.0)) / width, 0.0, 1.0) * 255.0
    scale = max(1, math.ceil(KEY_IMAGE_MIN_SIZE / max(gray.shape)))
    gray = np.kron(np.rint(gray).astype(np.uint8), np.ones((scale, scale), dtype=np.uint8))
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    thickness = max(2, scale // 2, max(gray.shape) // 256)
    if mask is not None and mask.any():
        big = np.kron(mask, np.ones((scale, scale), dtype=bool))
        rgb[_dilate(big, thickness) & ~big] = OUTLINE_RGB
    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    if mask is None or not mask.any():
        cy, cx = (c * scale + scale / 2 for c in finding.center_voxel_zyx[1:])
        r = finding.diameter_mm / 2.0 / volume.spacing[1] * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=OUTLINE_RGB, width=thickness)
    font = ImageFont.load_default(size=max(12, image.width // 36))
    lines = [AI_LABEL, f"{tracking_id}: {finding.diameter_mm:.1f} mm ({model_name})"]
    y = 4.0
    for line in lines:
        box = draw.textbbox((6, y), line, font=font)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((6, y), line, fill=TEXT_RGB, font=font)
        y = box[3] + 6
    return np.asarray(image, dtype=np.uint8)


_ORIENTATION = (("L", "R"), ("P", "A"), ("H", "F"))  # + and - along patient x, y, z (LPS)


def _orientation(direction: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return _ORIENTATION[axis][0 if direction[axis] > 0 else 1]


def _secondary_capture(
    ctx: _Context,
    source: pydicom.Dataset,
    pixels: np.ndarray,
    volume: Volume,
    number: int,
    series_number: int,
) -> pydicom.Dataset:
    """SC Image (PS3.3 A.8.1) of the key image, referencing its source slice."""
    scale = pixels.shape[0] / int(source.Rows)
    iop = [float(v) for v in source.ImageOrientationPatient]
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=str(source.StudyInstanceUID),
        series_instance_uid=ctx.uid("key-image-series"),
        series_number=series_number,
        sop_instance_uid=ctx.uid(f"key-image-{number}"),
        instance_number=number,
        patient_orientation=(_orientation(iop[:3]), _orientation(iop[3:])),
        pixel_spacing=(volume.spacing[1] / scale, volume.spacing[2] / scale),
        **ctx.equipment(f"AI key images ({AI_LABEL})"),
    )
    # Chest is no paired structure: naming it settles General Series' Laterality condition.
    if source.get("BodyPartExamined"):
        sc.BodyPartExamined = source.BodyPartExamined
    else:
        sc.Laterality = ""
    sc.BurnedInAnnotation = "YES"
    sc.DateOfSecondaryCapture = DA(ctx.when.strftime("%Y%m%d"))
    sc.TimeOfSecondaryCapture = TM(ctx.when.strftime("%H%M%S"))
    sc.DerivationDescription = (
        f"Lung window W{LUNG_WINDOW[1]:g} L{LUNG_WINDOW[0]:g}; AI outline and label burned in"
    )
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [reference]
    return ctx.finish(sc)
