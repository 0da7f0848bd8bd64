"""DICOM Segmentation (PS3.3 A.51) writer: a label map over the sources as a binary SEG.

Shared by the inference stage (the AI's segments, ``radpipe.inference.seg``) and the portal's
sign-off (the radiologist's verified masks); it knows segments, not models or findings.

Frames: one per (source slice, segment) with mask, empty ones omitted; highdicom keeps each
frame's Source Image reference with its own slice. A multi-frame source (an enhanced CT or MR
instance; ``references`` name its frames ``uid#n``): the label map is put back in the
instance's frame order, so each SEG frame's Derivation Image and Source Image items carry the
source's Referenced SOP Instance UID and Referenced Frame Number (PS3.3 C.7.6.16.2.6,
C.8.20.2.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .derived import AI_LABEL, MANUFACTURER, DerivedContext, UnsupportedSources, split_reference

__all__ = ["Segment", "binary_segmentation"]


@dataclass(frozen=True)
class Segment:
    """One segment (PS3.3 C.8.20.2 Segment Sequence item): its label (also its Tracking ID),
    category and type (CID 7150 / 7151 or a bundle's codes), anatomic sites, Tracking UID
    (shared with the finding's SR group)."""

    label: str
    category: Code
    property_type: Code
    tracking_uid: str
    sites: Sequence[Code] = ()


def binary_segmentation(
    ctx: DerivedContext,
    segment_map: np.ndarray,
    segments: Sequence[Segment],
    series_number: int,
    references: Sequence[str] = (),
    *,
    algorithm_type: hd.seg.SegmentAlgorithmTypeValues = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    content_label: str = "AI_NODULES",
    content_description: str = AI_LABEL,
    series_description: str = f"AI nodule segmentation ({AI_LABEL})",
) -> pydicom.Dataset:
    """Binary SEG of ``segment_map`` (volume order; 0 none, n segment n of ``segments``), one
    segment each so viewers list, colour and track them on their own.

    ``references``: the volume's ``sop_instance_uids`` (``uid#n`` for frames of a multi-frame
    source); ``ctx.name``/``ctx.version`` name the algorithm (CID 7162 Artificial
    Intelligence). Raises :class:`UnsupportedSources` when the frames spread over several
    multi-frame instances (a SEG derives from one)."""
    segment_map = _in_frame_order(ctx, segment_map, references)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ctx.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=ctx.version,
        source=MANUFACTURER,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.label[:64],
            segmented_property_category=segment.category,
            segmented_property_type=segment.property_type,
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm,
            tracking_uid=segment.tracking_uid,
            tracking_id=segment.label[:64],
            anatomic_regions=list(segment.sites) or None,
        )
        for number, segment in enumerate(segments, start=1)
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
        content_label=content_label,
        content_description=content_description,
        omit_empty_frames=True,
        **ctx.equipment(series_description[:64]),
    )
    # highdicom draws the Dimension Organization UID at random; derive it like the others.
    random_uid = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    fixed_uid = ctx.uid("seg-dimension-organization")
    for item in [*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence]:
        if item.DimensionOrganizationUID == random_uid:
            item.DimensionOrganizationUID = fixed_uid
    return ctx.finish(seg)


def _in_frame_order(
    ctx: DerivedContext, segment_map: np.ndarray, references: Sequence[str]
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
