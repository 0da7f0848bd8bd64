"""The index of de-identified and result instances that QIDO-RS and WADO-RS read.

``deid`` (and later the result writers) add one document per stored instance; the document
holds the attributes QIDO-RS matches and returns (PS3.18 Table 10.6.1-5), so searches never
open the objects themselves. Only de-identified values are ever indexed.
"""

from __future__ import annotations

from typing import Any

import pydicom

from .ports import DocumentStore

INDEX = "dicom_index"

STUDY_KEYWORDS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDescription",
    "StudyInstanceUID",
)
SERIES_KEYWORDS = (
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesInstanceUID",
    "PerformedProcedureStepStartDate",
    "BodyPartExamined",
)
INSTANCE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
KEYWORDS = STUDY_KEYWORDS + SERIES_KEYWORDS + INSTANCE_KEYWORDS


def _value(element: pydicom.DataElement) -> Any:
    value = element.value
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return [str(v) for v in value]
    if isinstance(value, int | float):
        return value
    return str(value)


def index_document(ds: pydicom.Dataset, study_id: str, key: str, bucket: str) -> dict[str, Any]:
    """The index entry of one stored (de-identified) instance."""
    attributes = {kw: _value(ds[kw]) for kw in KEYWORDS if kw in ds}
    return {
        "_id": str(ds.SOPInstanceUID),
        "study_id": study_id,
        "bucket": bucket,
        "key": key,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "attributes": attributes,
    }


def add_to_index(documents: DocumentStore, entry: dict[str, Any]) -> None:
    documents.collection(INDEX).update_one({"_id": entry["_id"]}, {"$set": entry}, upsert=True)
