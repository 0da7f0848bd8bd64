"""The index of de-identified and result instances that QIDO-RS and WADO-RS read.

``deid`` (and later the result writers) add one document per stored instance; the document
holds the attributes QIDO-RS matches and returns (PS3.18 Table 10.6.1-5), so searches never
open the objects themselves. Only de-identified values are ever indexed.

Beside the instance entries, one summary document per study (``dicom_studies``) and per series
(``dicom_series``), written in the same call, so a study-level search reads one indexed row per
study and never the study's instances: the first instance's attributes, and per bucket the
modalities, series and instance count (PS3.18 Table 10.6.3-3's computed attributes). Each
document also carries ``folded``: its attributes as upper-case text, which wildcard and
person-name matching (case-insensitive) compare against through an index.
"""

from __future__ import annotations

import re
from typing import Any

import pydicom
from pydicom.tag import Tag

from .ports import DocumentStore

INDEX = "dicom_index"
STUDY_SUMMARIES = "dicom_studies"
SERIES_SUMMARIES = "dicom_series"
_MIGRATIONS = "migrations"
_SUMMARIES_DONE = "dicom_summaries_v1"

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
_TAGS = [(keyword, Tag(keyword)) for keyword in KEYWORDS]


def _value(element: pydicom.DataElement) -> Any:
    value = element.value
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue):
        return [str(v) for v in value]
    if isinstance(value, int | float):
        return value
    return str(value)


def folded(attributes: dict[str, Any]) -> dict[str, str]:
    """The attributes as upper-case text (values of a multi-valued one joined by ``\\``)."""
    out = {}
    for keyword, value in attributes.items():
        if value is None:
            continue
        text = "\\".join(map(str, value)) if isinstance(value, list) else str(value)
        out[keyword] = text.upper()
    return out


def index_document(ds: pydicom.Dataset, study_id: str, key: str, bucket: str) -> dict[str, Any]:
    """The index entry of one stored (de-identified) instance."""
    attributes = {kw: _value(ds[tag]) for kw, tag in _TAGS if tag in ds}
    return {
        "_id": str(ds.SOPInstanceUID),
        "study_id": study_id,
        "bucket": bucket,
        "key": key,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "attributes": attributes,
        "folded": folded(attributes),
    }


def bucket_field(bucket: str) -> str:
    """A bucket name as a document field name (letters, digits, ``_`` and ``-``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", bucket)


#: A modality as a field name of ``has_modality`` (CS values: upper case, digits, _ and space).
MODALITY_FIELD = re.compile(r"^[A-Za-z0-9_-]+$")


def add_to_index(documents: DocumentStore, entry: dict[str, Any]) -> None:
    """Index one instance and count it in its study's and series' summaries (once), in one
    transaction on the embedded engine (one commit, and never an entry without its count)."""
    entry = {**entry, "folded": folded(entry["attributes"])}
    with documents.exclusive():
        before = documents.collection(INDEX).find_one_and_update(
            {"_id": entry["_id"]}, {"$set": entry}, upsert=True
        )
        _summarise(documents, entry, new=before is None)


def add_all_to_index(documents: DocumentStore, entries: list[dict[str, Any]]) -> None:
    """:func:`add_to_index` for many instances in one transaction: each study's and series'
    summary is written once with the totals (the same documents as one call per instance,
    with the first entry's attributes as the summary's)."""
    with documents.exclusive():
        groups: dict[tuple[Any, ...], tuple[dict[str, Any], int]] = {}
        for entry in entries:
            entry = {**entry, "folded": folded(entry["attributes"])}
            before = documents.collection(INDEX).find_one_and_update(
                {"_id": entry["_id"]}, {"$set": entry}, upsert=True
            )
            attributes = entry["attributes"]
            group = (
                attributes.get("StudyInstanceUID"),
                attributes.get("SeriesInstanceUID"),
                entry["bucket"],
                attributes.get("Modality"),
            )
            first, new = groups.get(group, (entry, 0))
            groups[group] = (first, new + (before is None))
        for first, new in groups.values():
            _summarise(documents, first, new=new)


def _summarise(documents: DocumentStore, entry: dict[str, Any], *, new: int | bool) -> None:
    attributes = entry["attributes"]
    study, series = attributes.get("StudyInstanceUID"), attributes.get("SeriesInstanceUID")
    if not study or not series:
        return
    part = "by_bucket." + bucket_field(entry["bucket"])
    modality = attributes.get("Modality")
    first = {
        "study_id": entry["study_id"],
        "attributes": attributes,
        "folded": entry["folded"],
    }
    add: dict[str, Any] = {f"{part}.series": series}
    flags: dict[str, Any] = {f"{part}.bucket": entry["bucket"]}
    if modality:
        add[f"{part}.modalities"] = modality
        if MODALITY_FIELD.match(modality):
            flags[f"has_modality.{modality}"] = True
    documents.collection(STUDY_SUMMARIES).update_one(
        {"_id": study},
        {
            "$setOnInsert": first,
            "$set": flags,
            "$addToSet": add,
            "$inc": {f"{part}.instances": int(new)},
        },
        upsert=True,
    )
    documents.collection(SERIES_SUMMARIES).update_one(
        {"_id": series},
        {
            "$setOnInsert": {**first, "bucket": entry["bucket"]},
            "$inc": {"instances": int(new)},
        },
        upsert=True,
    )


def qido_indexes() -> dict[str, list[Any]]:
    """The indexes QIDO-RS searches use: each level's result order (StudyDate, then series and
    instance number), the study UID scope, and the study keys searched by most (patient id,
    name and accession number: exact, and upper-case for wildcards and names)."""
    date = ("attributes.StudyDate", 1)
    return {
        STUDY_SUMMARIES: [
            [date, ("_id", 1)],
            "attributes.PatientID",
            "attributes.AccessionNumber",
            "folded.PatientID",
            "folded.PatientName",
            "folded.AccessionNumber",
        ],
        SERIES_SUMMARIES: [
            [date, ("attributes.SeriesNumber", 1), ("_id", 1)],
            [("attributes.StudyInstanceUID", 1), ("attributes.SeriesNumber", 1)],
            # Few values, many series each: the order follows the modality in the index.
            [("attributes.Modality", 1), date, ("attributes.SeriesNumber", 1), ("_id", 1)],
        ],
        INDEX: [
            [date, ("attributes.SeriesNumber", 1), ("attributes.InstanceNumber", 1), ("_id", 1)],
        ],
    }


def ensure_summaries(documents: DocumentStore, batch: int = 1000) -> None:
    """Index entries written before the summaries existed get them, once (at start).

    Reads the index a page at a time in ``_id`` order, adds ``folded`` to each entry and
    totals each study and series in memory (a few hundred bytes per study), then writes the
    summaries with absolute values: running it twice, or in two processes at once, gives the
    same summaries.
    """
    done = documents.collection(_MIGRATIONS)
    if done.find_one({"_id": _SUMMARIES_DONE}) is not None:
        return
    index = documents.collection(INDEX)
    studies: dict[str, dict[str, Any]] = {}
    series: dict[str, dict[str, Any]] = {}
    last: str | None = None
    while True:
        page = list(
            index.find({"_id": {"$gt": last}} if last is not None else {})
            .sort("_id", 1)
            .limit(batch)
        )
        if not page:
            break
        last = page[-1]["_id"]
        with documents.exclusive():  # one transaction per page on the embedded engine
            for entry in page:
                entry["folded"] = folded(entry.get("attributes") or {})
                index.update_one({"_id": entry["_id"]}, {"$set": {"folded": entry["folded"]}})
                _total(studies, series, entry)
    with documents.exclusive():
        for uid, fields in studies.items():
            documents.collection(STUDY_SUMMARIES).update_one(
                {"_id": uid}, {"$set": fields}, upsert=True
            )
        for uid, fields in series.items():
            documents.collection(SERIES_SUMMARIES).update_one(
                {"_id": uid}, {"$set": fields}, upsert=True
            )
        done.update_one({"_id": _SUMMARIES_DONE}, {"$set": {"done": True}}, upsert=True)


def _total(
    studies: dict[str, dict[str, Any]], series: dict[str, dict[str, Any]], entry: dict[str, Any]
) -> None:
    """Count one entry in the in-memory totals :func:`ensure_summaries` writes."""
    attributes = entry.get("attributes") or {}
    study_uid, series_uid = attributes.get("StudyInstanceUID"), attributes.get("SeriesInstanceUID")
    if not study_uid or not series_uid:
        return
    first = {"study_id": entry["study_id"], "attributes": attributes, "folded": entry["folded"]}
    study = studies.setdefault(study_uid, {**first, "by_bucket": {}, "has_modality": {}})
    part = study["by_bucket"].setdefault(
        bucket_field(entry["bucket"]),
        {"bucket": entry["bucket"], "modalities": [], "series": [], "instances": 0},
    )
    modality = attributes.get("Modality")
    if modality and modality not in part["modalities"]:
        part["modalities"].append(modality)
        if MODALITY_FIELD.match(modality):
            study["has_modality"][modality] = True
    if series_uid not in part["series"]:
        part["series"].append(series_uid)
    part["instances"] += 1
    one = series.setdefault(series_uid, {**first, "bucket": entry["bucket"], "instances": 0})
    one["instances"] += 1
