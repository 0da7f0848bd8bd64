"""The signed final report: a Comprehensive 3D SR, TID 1500 Measurement Report, of the findings
a radiologist verified, and the SR codes it shares with the AI report of ``inference/sr.py``.

The AI report names a device as observer and is not verified (PS3.3 C.17.2,
VerificationFlag UNVERIFIED); the final report names the signing radiologist as the person
observer (TID 1002) and as the Verifying Observer (Verifying Observer Sequence), with
VerificationFlag VERIFIED and CompletionFlag COMPLETE. Rejected findings are left out; edited
ones carry the radiologist's diameter, and a finding whose mask was edited also the Volume
measured on that mask. The verified masks (a DICOM SEG written at sign-off) are listed with the
images as evidence (Current Requested Procedure Evidence Sequence), and each finding's group
shares its Tracking UID with its SEG segment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

__all__ = [
    "CATEGORY",
    "LUNG",
    "NODULE",
    "QUALITATIVE_EVALUATIONS",
    "VerifiedFinding",
    "final_report",
]

#: Finding category "Morphologically Abnormal Structure" (CID 7150), type "Nodule" (CID 7151),
#: site lung: the codes of every Radpipe SR group, AI or signed.
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
NODULE = codes.SCT.Nodule
LUNG = codes.SCT.Lung
# TID 1500 row 12; pydicom's code dictionary does not name this UMLS concept.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
MANUFACTURER = "Radpipe"


@dataclass(frozen=True)
class VerifiedFinding:
    """One finding as signed: its number in the AI list, where it is, its verified size."""

    number: int
    diameter_mm: float
    center_sop_instance_uid: str | None
    center_yx: tuple[float, float]
    decision: str  # "accept" | "edit"
    #: Measured on the radiologist's edited mask (mm³); ``None`` when the mask was not edited.
    volume_mm3: float | None = None
    #: The group's Tracking UID (shared with the finding's segment in the verified SEG).
    tracking_uid: str | None = None


def final_report(
    sources: Sequence[pydicom.Dataset],
    findings: Sequence[VerifiedFinding],
    *,
    signer: str,
    impression: str,
    uid: Callable[[str], str],
    when: datetime,
    series_number: int = 90,
    evidence: Sequence[pydicom.Dataset] = (),
) -> pydicom.Dataset:
    """The verified TID 1500 report over ``sources`` (the analysed series, de-identified).

    Each finding is a TID 1410 group with a CIRCLE Image Region on its centre slice (its
    verified diameter, PS3.3 C.18.6.1.1 pixel coordinates) and a Diameter measurement
    (SCT 81827009, UCUM "mm"). ``uid(purpose)`` gives each new UID, so a retried sign-off
    writes the same object. ``evidence`` adds instances beside ``sources`` (the verified SEG).

    Raises:
        ValueError: ``sources`` is empty (the report needs the study it belongs to).
    """
    if not sources:
        raise ValueError("a final report needs the analysed series as evidence")
    # A user name is one PN component: the trailing caret says it is the family name.
    signer = signer if "^" in signer else f"{signer}^"
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    groups: list[Any] = []
    for finding in findings:
        source = by_uid.get(finding.center_sop_instance_uid or "", sources[len(sources) // 2])
        spacing = float(source.PixelSpacing[0]) if "PixelSpacing" in source else 1.0
        cy, cx = finding.center_yx
        radius = finding.diameter_mm / 2.0 / spacing
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
            graphic_data=np.array([[cx + 0.5, cy + 0.5], [cx + 0.5 + radius, cy + 0.5]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(source),
        )
        values = [
            hd.sr.Measurement(
                name=codes.SCT.Diameter,
                value=round(finding.diameter_mm, 2),
                unit=codes.UCUM.Millimeter,
            )
        ]
        if finding.volume_mm3 is not None:
            values.append(
                hd.sr.Measurement(
                    name=codes.SCT.Volume,
                    value=round(finding.volume_mm3, 1),
                    unit=codes.UCUM.CubicMillimeter,
                )
            )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=finding.tracking_uid or uid(f"finding-{finding.number}"),
                    identifier=f"Nodule {finding.number}",
                ),
                referenced_region=region,
                finding_type=NODULE,
                finding_category=CATEGORY,
                finding_sites=[hd.sr.FindingSite(LUNG)],
                measurements=values,
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=signer),
    )
    measurements = groups or [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            hd.sr.TrackingIdentifier(uid=uid("stand-in"), identifier="none")
        )
    ]
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=measurements,
    )
    root = content[0]
    if not groups:  # the groups are optional in TID 1500; highdicom insists on one
        for item in root.ContentSequence:
            if item.name == codes.DCM.ImagingMeasurements:
                del item.ContentSequence
    root.ContentSequence.append(_impression(impression))
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, *evidence],
        content=content,
        series_instance_uid=uid("series"),
        series_number=series_number,
        sop_instance_uid=uid("instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=True,
        is_verified=True,
        verifying_observer_name=signer,
        verifying_organization=MANUFACTURER,
        series_description="Final report (signed)",
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
    )
    sr.copy_patient_and_study_information(sources[0])
    sr.InstanceCreationDate = DA(when.strftime("%Y%m%d"))
    sr.InstanceCreationTime = TM(when.strftime("%H%M%S"))
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:  # highdicom stamps its own "now"
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    return sr


def _impression(text: str) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Impression,
                value=text,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    return container
