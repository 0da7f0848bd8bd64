"""STOW-RS store logic (PS3.18 10.5): validate each part, keep raw bytes, answer per instance.

No FastAPI here: ``api.py`` is the thin HTTP adapter.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from services.common.context import Context
from services.common.errors import InvalidDicom
from services.common.identity import instance_key_for, study_id_for
from services.common.logging import get_logger
from services.common.metrics import INSTANCES_RECEIVED
from services.common.studies import UID_PATTERN

from .multipart import Part, parse_media_type

log = get_logger("radpipe.ingest")

# PS3.18 Table I.2-2 / PS3.4 Annex B failure reasons.
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122


@dataclass
class StoreOutcome:
    """One part's result; identifiers are kept only to build this response."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_id: str | None = None
    failure_reason: int | None = None
    message: str = ""


@dataclass
class StowResult:
    outcomes: list[StoreOutcome] = field(default_factory=list)

    @property
    def stored(self) -> list[StoreOutcome]:
        return [o for o in self.outcomes if o.failure_reason is None]

    @property
    def failed(self) -> list[StoreOutcome]:
        return [o for o in self.outcomes if o.failure_reason is not None]

    @property
    def status(self) -> int:
        """PS3.18 Table 10.5.3-1: 200 all stored, 202 some, 409 none (400 if none parseable)."""
        if not self.failed:
            return 200
        if self.stored:
            return 202
        if all(o.failure_reason == CANNOT_UNDERSTAND for o in self.failed):
            return 400
        return 409


def _uid(ds: pydicom.Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip()
    if not value:
        raise InvalidDicom(f"{keyword} is missing", DOES_NOT_MATCH_SOP_CLASS)
    if len(value) > 64 or not UID_PATTERN.match(value):
        raise InvalidDicom(f"{keyword} is not a valid UID", DOES_NOT_MATCH_SOP_CLASS)
    return value


def read_part(part: Part) -> pydicom.Dataset:
    """Parse a part's header (pixels are not decoded) or raise ``InvalidDicom``."""
    if part.truncated:
        raise InvalidDicom("the part is cut off before its closing delimiter", CANNOT_UNDERSTAND)
    media, _ = parse_media_type(part.content_type)
    if media not in ("application/dicom", ""):
        raise InvalidDicom(f"part type {media!r} is not application/dicom", CANNOT_UNDERSTAND)
    try:
        return pydicom.dcmread(io.BytesIO(part.data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise InvalidDicom(
            f"not a DICOM Part 10 file ({type(exc).__name__}); send files with the 128-byte "
            "preamble and 'DICM' prefix",
            CANNOT_UNDERSTAND,
        ) from None


def store_part(ctx: Context, part: Part, expected_study_uid: str | None) -> StoreOutcome:
    """Validate and store one part; nothing of a failed part is kept."""
    try:
        ds = read_part(part)
        sop_class = _uid(ds, "SOPClassUID")
        sop_instance = _uid(ds, "SOPInstanceUID")
    except InvalidDicom as exc:
        INSTANCES_RECEIVED.labels("failed").inc()
        return StoreOutcome(None, None, failure_reason=exc.failure_reason, message=exc.message)
    outcome = StoreOutcome(sop_class, sop_instance)
    try:
        study_uid = _uid(ds, "StudyInstanceUID")
        series_uid = _uid(ds, "SeriesInstanceUID")
        if expected_study_uid is not None and study_uid != expected_study_uid:
            raise InvalidDicom(
                "the instance belongs to another study than the one in the request URL",
                DOES_NOT_MATCH_SOP_CLASS,
            )
    except InvalidDicom as exc:
        INSTANCES_RECEIVED.labels("failed").inc()
        outcome.failure_reason, outcome.message = exc.failure_reason, exc.message
        return outcome

    secret = ctx.settings.secret
    study_id = study_id_for(secret, study_uid)
    instance_key = instance_key_for(secret, sop_instance)
    raw_key = f"{study_id}/{instance_key}.dcm"
    # Bytes first, record second: a record never points at a missing object.
    ctx.objects.put(ctx.buckets["raw"], raw_key, part.data, "application/dicom")
    ctx.studies.record_instance(
        study_id,
        instance_key,
        {
            "raw_key": raw_key,
            "sop_class_uid": sop_class,
            "series_key": instance_key_for(secret, "series:" + series_uid),
            "size": len(part.data),
        },
        modality=str(ds.get("Modality", "") or "") or None,
    )
    INSTANCES_RECEIVED.labels("stored").inc()
    outcome.study_instance_uid, outcome.series_instance_uid = study_uid, series_uid
    outcome.study_id = study_id
    return outcome


def store_parts(ctx: Context, parts: list[Part], expected_study_uid: str | None) -> StowResult:
    result = StowResult([store_part(ctx, part, expected_study_uid) for part in parts])
    # One stability check per touched study; it re-arms itself while instances keep arriving.
    for study_id in {o.study_id for o in result.stored if o.study_id}:
        ctx.tasks.send("stable", study_id, countdown=ctx.settings.study_stable_seconds)
    log.info(
        "stow.done",
        stored=len(result.stored),
        failed=len(result.failed),
        reasons=sorted({f"{o.failure_reason:04X}" for o in result.failed if o.failure_reason}),
    )
    return result


def _seq_item(ctx: Context, outcome: StoreOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
    if outcome.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
    if outcome.failure_reason is None:
        url = ctx.settings.public(
            f"dicom-web/studies/{outcome.study_instance_uid}/series/"
            f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
        )
        item["00081190"] = {"vr": "UR", "Value": [url]}
    else:
        item["00081197"] = {"vr": "US", "Value": [outcome.failure_reason]}
    return item


def stow_response(ctx: Context, result: StowResult, study_uid: str | None) -> dict[str, Any]:
    """The PS3.18 Store Instances Response Module as DICOM JSON."""
    body: dict[str, Any] = {}
    studies = {o.study_instance_uid for o in result.stored}
    target = study_uid or (studies.pop() if len(studies) == 1 else None)
    if target:
        body["00081190"] = {
            "vr": "UR",
            "Value": [ctx.settings.public(f"dicom-web/studies/{target}")],
        }
    if result.stored:
        body["00081199"] = {"vr": "SQ", "Value": [_seq_item(ctx, o) for o in result.stored]}
    if result.failed:
        body["00081198"] = {"vr": "SQ", "Value": [_seq_item(ctx, o) for o in result.failed]}
    return body


def warning_headers(result: StowResult) -> list[str]:
    """PS3.18 8.7.3 ``Warning: 299 <agent> "<text>"`` lines explaining each failure."""
    return [
        f'299 radpipe "part {index + 1}: {o.message} (failure reason {o.failure_reason:04X}H)"'
        for index, o in enumerate(result.outcomes)
        if o.failure_reason is not None
    ]
