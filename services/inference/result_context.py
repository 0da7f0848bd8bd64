"""What every result object shares: the study it joins, the model that made it, the codes.

Every object joins the study of the de-identified sources (Patient, General Study and Patient
Study modules copied, de-identification markers included) in a new series of its own, and
names the model that made it (``radpipe.common.derived``, shared with the portal's verified
SEG): Manufacturer "Radpipe", Manufacturer's Model Name = bundle name,
Software Versions = bundle version, Device Serial Number = the weights' SHA-256.

Codes (PS3.16): segments and SR groups are findings of category "Morphologically Abnormal
Structure" (SCT 49755003, CID 7150) and type "Nodule" (SCT 27925004, in CID 7151 and in CID
7159 "Lesion Segmentation Types") in the lung (SCT 39607008); the algorithm family is
"Artificial Intelligence" (DCM 123110, CID 7162).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom

from radpipe.common.derived import (
    AI_LABEL,
    MANUFACTURER,
    DerivedContext,
    UnsupportedSources,
    split_reference,
)
from radpipe.common.report import CATEGORY, LUNG, NODULE

from .findings import Finding
from .volume import Volume

__all__ = [
    "AI_LABEL",
    "CATEGORY",
    "LUNG",
    "MANUFACTURER",
    "NODULE",
    "ResultContext",
    "UnsupportedSources",
    "center_index",
    "split_reference",
]


@dataclass(frozen=True)
class ResultContext(DerivedContext):
    """What every object shares (:class:`radpipe.common.derived.DerivedContext`), and where
    a volume's slice lives among the sources."""

    def slice_source(self, volume: Volume, k: int) -> tuple[pydicom.Dataset, int | None]:
        """The instance holding slice ``k`` (volume order) and its frame number (from 1), or
        ``None`` for a single-frame instance: what a reference to that slice names."""
        uid, frame = split_reference(volume.sop_instance_uids[k])
        for ds in self.sources:
            if str(ds.SOPInstanceUID) == uid:
                return ds, frame
        raise ValueError(f"slice {k} ({uid}) is not among the result context's sources")


def center_index(finding: Finding, volume: Volume) -> int:
    """The index (in volume order) of the source slice through the finding's centre."""
    if finding.center_sop_instance_uid in volume.sop_instance_uids:
        return volume.sop_instance_uids.index(finding.center_sop_instance_uid)
    z = round(finding.center_voxel_zyx[0])
    return int(np.clip(z, 0, len(volume.sop_instance_uids) - 1))
