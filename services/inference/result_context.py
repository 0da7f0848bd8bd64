"""What every result object shares: the study it joins, the model that made it, the codes.

Every object joins the study of the de-identified sources (Patient, General Study and Patient
Study modules copied, de-identification markers included) in a new series of its own, and
names the model that made it: Manufacturer "Radpipe", Manufacturer's Model Name = bundle name,
Software Versions = bundle version, Device Serial Number = the weights' SHA-256.

Codes (PS3.16): segments and SR groups are findings of category "Morphologically Abnormal
Structure" (SCT 49755003, CID 7150) and type "Nodule" (SCT 27925004, in CID 7151 and in CID
7159 "Lesion Segmentation Types") in the lung (SCT 39607008); the algorithm family is
"Artificial Intelligence" (DCM 123110, CID 7162).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.valuerep import DA, TM

from radpipe.common.report import CATEGORY, LUNG, MANUFACTURER, NODULE

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

AI_LABEL = "AI result, not for diagnosis"


class UnsupportedSources(ValueError):
    """The analyzed frames cannot be referenced by a result object (e.g. a SEG over frames
    spread across several multi-frame instances): the findings stand without those objects."""


@dataclass(frozen=True)
class ResultContext:
    """What every object shares: sources, provenance, one timestamp, the UID source."""

    sources: Sequence[pydicom.Dataset]
    name: str
    version: str
    serial: str
    when: datetime
    uid: Callable[[str], str]

    def slice_source(self, volume: Volume, k: int) -> tuple[pydicom.Dataset, int | None]:
        """The instance holding slice ``k`` (volume order) and its frame number (from 1), or
        ``None`` for a single-frame instance: what a reference to that slice names."""
        uid, frame = split_reference(volume.sop_instance_uids[k])
        for ds in self.sources:
            if str(ds.SOPInstanceUID) == uid:
                return ds, frame
        raise ValueError(f"slice {k} ({uid}) is not among the result context's sources")

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


def split_reference(reference: str) -> tuple[str, int | None]:
    """A volume slice reference (``volume.sop_instance_uids``) as (SOP Instance UID, frame
    number from 1); the frame is ``None`` for a single-frame instance (``uid#n`` names frame n
    of a multi-frame one, PS3.3 C.7.6.16 order)."""
    uid, _, frame = reference.partition("#")
    return uid, int(frame) if frame else None


def center_index(finding: Finding, volume: Volume) -> int:
    """The index (in volume order) of the source slice through the finding's centre."""
    if finding.center_sop_instance_uid in volume.sop_instance_uids:
        return volume.sop_instance_uids.index(finding.center_sop_instance_uid)
    z = round(finding.center_voxel_zyx[0])
    return int(np.clip(z, 0, len(volume.sop_instance_uids) - 1))
