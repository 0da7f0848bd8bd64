"""Key images: the finding's centre slice in the lung window with its outline and the
not-for-diagnosis label burned in, as PNG and as a Secondary Capture Image (PS3.3 A.8.1);
for a multi-frame source also a Key Object Selection Document (PS3.3 A.35.4) naming the
key frames by Referenced Frame Number."""

from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from .findings import Finding
from .result_context import AI_LABEL, ResultContext
from .volume import Volume

__all__ = [
    "LUNG_WINDOW",
    "OUTLINE_RGB",
    "key_image",
    "key_object_selection",
    "secondary_capture",
]

LUNG_WINDOW = (-600.0, 1500.0)  # level, width (HU)
OUTLINE_RGB = (0, 255, 0)
TEXT_RGB = (255, 255, 0)
KEY_IMAGE_MIN_SIZE = 512  # small matrices are enlarged so the burned-in text stays legible


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


def key_image(
    source: pydicom.Dataset,
    mask: np.ndarray | None,
    finding: Finding,
    volume: Volume,
    tracking_id: str,
    model_name: str,
    hu: np.ndarray | None = None,
) -> np.ndarray:
    """RGB uint8 of the slice in the lung window with the finding's outline and the
    not-for-diagnosis label burned in; matrices under 512 pixels are enlarged (nearest).

    ``hu`` is the slice in HU when ``source`` holds several frames (the volume's slice: the
    frame's rescale is in its functional groups, not in ``source``)."""
    if hu is None:
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


def secondary_capture(
    ctx: ResultContext,
    source: pydicom.Dataset,
    pixels: np.ndarray,
    volume: Volume,
    number: int,
    series_number: int,
    frame: int | None = None,
) -> pydicom.Dataset:
    """SC Image (PS3.3 A.8.1) of the key image, referencing its source slice: with its
    Referenced Frame Number when the slice is ``frame`` (from 1) of a multi-frame source."""
    scale = pixels.shape[0] / int(source.Rows)
    # The volume's axes are the slices' own orientation (a multi-frame source keeps it in
    # its functional groups): (slice normal, column direction, row direction).
    iop = [*volume.axes[2], *volume.axes[1]]
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
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    reference.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    sc.SourceImageSequence = [reference]
    return ctx.finish(sc)


def key_object_selection(
    ctx: ResultContext,
    frames: Sequence[tuple[pydicom.Dataset, int | None]],
    series_number: int,
) -> pydicom.Dataset:
    """Key Object Selection Document (PS3.3 A.35.4, TID 2010 "Of Interest") naming each
    finding's centre slice: an IMAGE item per (instance, frame) whose Referenced SOP Sequence
    carries the Referenced Frame Number (PS3.3 C.18.3.1) for a frame of a multi-frame source,
    so a viewer opens the key frame itself, not frame 1 of the instance."""
    if not frames:
        raise ValueError("a key object selection needs at least one key image")
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=[ds for ds, _ in frames],
        description=f"AI key images ({AI_LABEL})"[:64],
    )
    items = [item for item in content[0].ContentSequence if item.ValueType == "IMAGE"]
    for item, (_, frame) in zip(items, frames, strict=True):
        if frame is not None:
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = frame
    evidence = list({str(ds.SOPInstanceUID): ds for ds, _ in frames}.values())
    equipment = ctx.equipment(f"AI key objects ({AI_LABEL})"[:64])
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=ctx.uid("kos-series"),
        series_number=series_number,
        sop_instance_uid=ctx.uid("kos-instance"),
        instance_number=1,
        manufacturer=equipment["manufacturer"],
    )
    kos.SeriesDescription = equipment["series_description"]
    kos.ContentDate = DA(ctx.when.strftime("%Y%m%d"))
    kos.ContentTime = TM(ctx.when.strftime("%H%M%S"))
    kos.SeriesDate, kos.SeriesTime = kos.ContentDate, kos.ContentTime
    kos.ManufacturerModelName = ctx.name
    kos.SoftwareVersions = ctx.version
    kos.DeviceSerialNumber = ctx.serial
    return ctx.finish(kos)
