"""De-identification (PS3.15 Annex E) of one instance, and of a whole stored study.

:func:`deidentify` is pure (dataset in, dataset out, keyed by the secret); :func:`deidentify_study`
does the I/O for the pipeline stage. Pixel data is never decoded or re-encoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from services.common.context import Context
from services.common.dicomindex import add_to_index, index_document
from services.common.dicomio import read_part10, write_part10
from services.common.errors import InvalidDicom, PipelineError
from services.common.identity import keyed_digest, pseudonym, pseudonymous_uid
from services.common.logging import get_logger
from services.common.studies import StudyState

from .profile import (
    EMPTY_DATES,
    KEEP_TEXT,
    METHOD,
    METHOD_CODES,
    REMOVE,
    STANDARD_UID_ROOT,
    TEXT_VRS,
)

log = get_logger("radpipe.deid")
IMPLEMENTATION_CLASS_UID = "2.25.302276541947036655349212185420826170493"


@dataclass(frozen=True)
class PatientKeys:
    """Keyed replacements for one patient, derived from the original Patient ID."""

    patient_id: str
    patient_name: str
    date_offset: timedelta

    @classmethod
    def derive(cls, secret: bytes, original_patient_id: str) -> PatientKeys:
        token = pseudonym(secret, "patient", original_patient_id, 12)
        # A shift of 1-10 years back, whole days: intervals between dates stay exact.
        draw = int.from_bytes(keyed_digest(secret, "date-shift", original_patient_id)[:4])
        return cls(f"RP{token}", f"ANON^{token}", timedelta(days=-(365 + draw % 3285)))


def _shift_da(value: str, offset: timedelta) -> str:
    try:
        return (datetime.strptime(value.strip(), "%Y%m%d").date() + offset).strftime("%Y%m%d")
    except ValueError:
        return ""  # malformed dates are never passed through


def _shift_dt(value: str, offset: timedelta) -> str:
    text = value.strip()
    if len(text) < 8:
        return ""
    shifted = _shift_da(text[:8], offset)
    return shifted + text[8:] if shifted else ""


def _shift(value: Any, offset: timedelta, fn: Any) -> Any:
    if isinstance(value, list | pydicom.multival.MultiValue):
        return [fn(str(v), offset) for v in value]
    return fn(str(value), offset) if value not in (None, "") else value


def _remap_uid(value: Any, secret: bytes) -> Any:
    def one(uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if not uid or uid.startswith(STANDARD_UID_ROOT):
            return uid
        return pseudonymous_uid(secret, uid)

    if isinstance(value, list | pydicom.multival.MultiValue):
        return [one(str(v)) for v in value]
    return one(str(value)) if value else value


def _clean(ds: Dataset, secret: bytes, keys: PatientKeys) -> None:
    """Apply the profile to ``ds`` and every nested item, in place."""
    for element in list(ds):
        tag, keyword, vr = element.tag, element.keyword, element.VR
        if tag.is_private or keyword in REMOVE or tag.group & 0xFF00 in (0x5000, 0x6000):
            del ds[tag]
        elif vr == "SQ":
            for item in element.value or []:
                _clean(item, secret, keys)
        elif keyword == "PatientID":
            element.value = keys.patient_id
        elif keyword == "PatientName":
            element.value = keys.patient_name
        elif keyword == "AccessionNumber" and element.value:
            element.value = "A" + pseudonym(secret, "accession", str(element.value), 12)
        elif vr == "UI":
            element.value = _remap_uid(element.value, secret)
        elif keyword in EMPTY_DATES or vr == "PN":
            element.value = ""
        elif vr == "DA":
            element.value = _shift(element.value, keys.date_offset, _shift_da)
        elif vr == "DT":
            element.value = _shift(element.value, keys.date_offset, _shift_dt)
        elif vr in TEXT_VRS and keyword not in KEEP_TEXT:
            element.value = ""


def deidentify(ds: Dataset, secret: bytes) -> Dataset:
    """De-identify one dataset (with its file meta) and set the PS3.15 markers."""
    keys = PatientKeys.derive(secret, str(ds.get("PatientID", "") or ""))
    _clean(ds, secret, keys)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "RADPIPE_010"
    for keyword in (
        "SourceApplicationEntityTitle",
        "SendingApplicationEntityTitle",
        "ReceivingApplicationEntityTitle",
        "PrivateInformationCreatorUID",
        "PrivateInformation",
    ):
        if keyword in meta:
            delattr(meta, keyword)
    ds.file_meta = meta
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    ds.DeidentificationMethodCodeSequence = Sequence([_code(v, m) for v, m in METHOD_CODES])
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def read_dataset(data: bytes) -> Dataset:
    try:
        return read_part10(io.BytesIO(data))
    except Exception as exc:  # any parser failure is a permanent, per-file reason
        raise InvalidDicom(f"cannot parse stored instance: {type(exc).__name__}") from None


@dataclass
class DeidStudyResult:
    study_uid: str
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)


def deidentify_study(ctx: Context, study_id: str) -> None:
    """The ``deid`` stage: raw instances -> de-identified store, vault entry, event."""
    study = ctx.studies.get(study_id)
    if study["state"] == StudyState.DEIDENTIFIED:  # redelivered after the hand-off was lost
        ctx.tasks.send("inference", study_id)
        return
    if study["state"] != StudyState.STABLE:
        log.info("deid.skip", study_id=study_id, state=study["state"])
        return
    secret = ctx.settings.secret
    result: DeidStudyResult | None = None
    for instance in ctx.studies.instances_of(study_id):
        raw = ctx.objects.get(ctx.buckets["raw"], instance["raw_key"])
        try:
            ds = read_dataset(raw)
        except InvalidDicom as exc:
            raise PipelineError(exc.message) from None
        identity = {
            "patient_id": str(ds.get("PatientID", "") or ""),
            "patient_name": str(ds.get("PatientName", "") or ""),
            "accession_number": str(ds.get("AccessionNumber", "") or ""),
            "study_instance_uid": str(ds.StudyInstanceUID),
        }
        original_series, original_sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        clean = deidentify(ds, secret)
        if result is None:
            result = DeidStudyResult(str(clean.StudyInstanceUID), identity=identity)
        series_uid, sop_uid = str(clean.SeriesInstanceUID), str(clean.SOPInstanceUID)
        key = f"{result.study_uid}/{series_uid}/{sop_uid}.dcm"
        ctx.objects.put(ctx.buckets["deid"], key, write_part10(clean), "application/dicom")
        add_to_index(ctx.documents, index_document(clean, study_id, key, ctx.buckets["deid"]))
        series = result.series.setdefault(
            series_uid,
            {"series_uid": series_uid, "modality": str(clean.get("Modality", "")), "keys": []},
        )
        series["keys"].append(key)
        result.identity.setdefault("uids", {})[sop_uid] = [original_series, original_sop]
    if result is None:
        raise PipelineError("the study has no stored instances")
    ctx.vault.put(study_id, result.identity)
    ctx.studies.transition(
        study_id,
        StudyState.DEIDENTIFIED,
        detail={"instances": sum(len(s["keys"]) for s in result.series.values())},
        fields={"deid": {"study_uid": result.study_uid, "series": list(result.series.values())}},
    )
    ctx.tasks.send("inference", study_id)
    log.info("deid.done", study_id=study_id, series=len(result.series))
