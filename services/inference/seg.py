"""DICOM Segmentation (PS3.3 A.51) of the findings, one segment per nodule."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .findings import Finding
from .result_context import (
    AI_LABEL,
    MANUFACTURER,
    ResultContext,
    UnsupportedSources,
    split_reference,
)
from .zoo import finding_codes, finding_label

__all__ = ["segmentation"]


def segmentation(
    ctx: ResultContext,
    findings: Sequence[Finding],
    labels: np.ndarray,
    tracking: Sequence[str],
    series_number: int,
    references: Sequence[str] = (),
) -> pydicom.Dataset:
    """Binary SEG (PS3.3 A.51), one segment per finding so viewers list, colour and track
    each nodule on its own (tracking UID shared with its SR group).

    Frames: one per (source slice, segment) with mask, empty ones omitted; highdicom keeps
    each frame's Source Image reference with its own slice, which the tests check.

    A multi-frame source (an enhanced CT or MR instance; ``references``, the volume's
    ``sop_instance_uids``, name its frames ``uid#n``): the label map is put back in the
    instance's frame order, so each SEG frame's Derivation Image and Source Image items carry
    the source's Referenced SOP Instance UID and Referenced Frame Number (PS3.3 C.7.6.16.2.6,
    C.8.20.2.1).
    """
    segment_map = np.zeros(labels.shape, dtype=np.uint8 if len(findings) < 256 else np.uint16)
    for number, finding in enumerate(findings, start=1):
        segment_map[labels == finding.label] = number
    segment_map = _in_frame_order(ctx, segment_map, references)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ctx.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=ctx.version,
        source=MANUFACTURER,
    )
    descriptions = []
    for number, finding in enumerate(findings, start=1):
        # the demo's nodules; a zoo bundle's labels by their names and the sidecar's codes
        category, property_type, sites = finding_codes(finding)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=finding_label(finding, number),
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=tracking[number - 1],
                tracking_id=finding_label(finding, number),
                anatomic_regions=sites or None,
            )
        )
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


def _in_frame_order(
    ctx: ResultContext, segment_map: np.ndarray, references: Sequence[str]
) -> np.ndarray:
    """``segment_map`` (volume order) for highdicom: unchanged for single-frame sources, the
    source's own frame order for one multi-frame instance (highdicom derives from one)."""
    frames = [split_reference(reference)[1] for reference in references]
    if not any(frames):
        return segment_map
    if len(ctx.sources) != 1 or not all(frames):
        raise UnsupportedSources(
            "a SEG derives from single-frame instances or from one multi-frame instance; "
            "this series mixes them or spreads its frames over several instances"
        )
    count = int(ctx.sources[0].NumberOfFrames)
    ordered = np.zeros((count, *segment_map.shape[1:]), dtype=segment_map.dtype)
    for k, frame in enumerate(frames):
        ordered[int(frame or 0) - 1] = segment_map[k]
    return ordered
