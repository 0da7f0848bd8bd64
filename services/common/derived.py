"""What every derived DICOM object Radpipe writes shares, the AI's and the signed ones alike.

Each object joins the study of the de-identified sources (Patient, General Study and Patient
Study modules copied, de-identification markers included, PS3.3 C.7.1.1, C.7.2.1, C.7.2.2) in a
new series of its own, and names what made it in its General Equipment module (PS3.3 C.7.5.1):
Manufacturer "Radpipe", Manufacturer's Model Name = bundle name, Software Versions = bundle
version, Device Serial Number = the weights' SHA-256. One timestamp and a derived UID source
make a re-run write the same object.

The inference result writers (``radpipe.inference.result_context``) and the portal's sign-off
(the verified SEG) both build on :class:`DerivedContext`; nothing here knows a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import pydicom
from pydicom.valuerep import DA, TM

from .report import MANUFACTURER

__all__ = [
    "AI_LABEL",
    "MANUFACTURER",
    "DerivedContext",
    "UnsupportedSources",
    "split_reference",
]

AI_LABEL = "AI result, not for diagnosis"


class UnsupportedSources(ValueError):
    """The analyzed frames cannot be referenced by a result object (e.g. a SEG over frames
    spread across several multi-frame instances): the findings stand without those objects."""


@dataclass(frozen=True)
class DerivedContext:
    """What every object shares: sources, provenance, one timestamp, the UID source."""

    sources: Sequence[pydicom.Dataset]
    name: str
    version: str
    serial: str
    when: datetime
    uid: Callable[[str], str]

    def equipment(self, series_description: str) -> dict[str, Any]:
        """highdicom's keyword arguments for the General Equipment module and the dates."""
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
