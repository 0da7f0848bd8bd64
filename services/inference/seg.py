"""DICOM Segmentation (PS3.3 A.51) of the findings, one segment per nodule.

The DICOM building is ``radpipe.common.seg`` (shared with the portal's verified SEG); this
module turns a bundle's findings and label map into its segments and segment map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from radpipe.common.seg import Segment, binary_segmentation

from .findings import Finding
from .result_context import ResultContext
from .zoo import finding_codes, finding_label

__all__ = ["Segment", "binary_segmentation", "segmentation"]


def segmentation(
    ctx: ResultContext,
    findings: Sequence[Finding],
    labels: np.ndarray,
    tracking: Sequence[str],
    series_number: int,
    references: Sequence[str] = (),
) -> pydicom.Dataset:
    """Binary SEG (PS3.3 A.51), one segment per finding so viewers list, colour and track
    each nodule on its own (tracking UID shared with its SR group); frames and multi-frame
    sources as :func:`radpipe.common.seg.binary_segmentation` writes them.

    ``references``: the volume's ``sop_instance_uids`` (``uid#n`` names frame n of a
    multi-frame source), so each SEG frame names its source frame (PS3.3 C.7.6.16.2.6,
    C.8.20.2.1)."""
    segment_map = np.zeros(labels.shape, dtype=np.uint8 if len(findings) < 256 else np.uint16)
    segments = []
    for number, finding in enumerate(findings, start=1):
        segment_map[labels == finding.label] = number
        # the demo's nodules; a zoo bundle's labels by their names and the sidecar's codes
        category, property_type, sites = finding_codes(finding)
        segments.append(
            Segment(
                label=finding_label(finding, number),
                category=category,
                property_type=property_type,
                tracking_uid=tracking[number - 1],
                sites=tuple(sites),
            )
        )
    return binary_segmentation(ctx, segment_map, segments, series_number, references)
