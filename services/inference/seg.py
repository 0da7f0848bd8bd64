"""DICOM Segmentation (PS3.3 A.51) of the findings, one segment per nodule."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .findings import Finding
from .result_context import AI_LABEL, CATEGORY, LUNG, MANUFACTURER, NODULE, ResultContext

__all__ = ["segmentation"]


def segmentation(
    ctx: ResultContext,
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
