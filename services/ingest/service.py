"""STOW-RS store logic (PS3.18 10.5): validate each part, keep raw bytes, answer per instance.

No FastAPI here: ``api.py`` is the thin HTTP adapter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID_dictionary

from radpipe.common.context import Context
from radpipe.common.dicomio import DEFAULT_MAX_INFLATED, InflateLimitExceeded, read_part10
from radpipe.common.errors import InvalidDicom
from radpipe.common.identity import instance_key_for, study_id_for
from radpipe.common.logging import get_logger
from radpipe.common.metrics import INSTANCES_RECEIVED
from radpipe.common.mime import parse_media_type
from radpipe.common.studies import UID_PATTERN, now
from radpipe.common.tat import ACQUIRED_TO_RECEIVED, acquisition_lag_seconds

from .multipart import Part

log = get_logger("radpipe.ingest")

# PS3.18 Table I.2-2 / PS3.4 Annex B failure reasons.
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

#: Known "SOP Class" UIDs that are not storage classes although their name says "Storage".
_NOT_STORAGE = frozenset({"1.2.840.10008.1.3.10", "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.2"})


def is_storage_sop_class(uid: str) -> bool:
    """A SOP class that can be stored: any storage class of the standard, or a private one."""
    entry = UID_dictionary.get(uid)
    if entry is None:
        return not uid.startswith("1.2.840.10008.")  # private classes are accepted as-is
    name, kind = entry[0], entry[1]
    return kind == "SOP Class" and "Storage" in name and uid not in _NOT_STORAGE


def check_transfer_syntax(ds: pydicom.Dataset, part: Part) -> None:
    """C122 when the file's transfer syntax is not one, or the part's parameter contradicts it."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "").strip()
    entry = UID_dictionary.get(syntax)
    known = entry is not None and entry[1] == "Transfer Syntax"
    private = bool(syntax) and entry is None and not syntax.startswith("1.2.840.10008.")
    if not (known or (private and UID_PATTERN.match(syntax))):
        raise InvalidDicom(
            f"TransferSyntaxUID {syntax or '(missing)'!r} is not a transfer syntax",
            TRANSFER_SYNTAX_NOT_SUPPORTED,
        )
    declared = parse_media_type(part.content_type)[1].get("transfer-syntax", "").strip()
    if declared and declared != syntax:
        raise InvalidDicom(
            f"the part says transfer-syntax={declared} but the file is encoded in {syntax}: "
            "send the part's real transfer syntax, or leave the parameter out",
            TRANSFER_SYNTAX_NOT_SUPPORTED,
        )


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


def _uid_or_none(value: str | None) -> str | None:
    """``value`` when it is a UID (PS3.5 9.1), else ``None`` (never echo a malformed one)."""
    return value if value and len(value) <= 64 and UID_PATTERN.match(value) else None


def read_part(part: Part, max_inflated_bytes: int = DEFAULT_MAX_INFLATED) -> pydicom.Dataset:
    """Parse a part's header (pixels are not decoded) or raise ``InvalidDicom``.

    A deflated data set (PS3.5 A.5) is inflated whole, a step at a time, so that one
    inflating past ``max_inflated_bytes`` is refused here (``InflateLimitExceeded``) rather
    than stored for the next stage to inflate."""
    if part.truncated:
        raise InvalidDicom("the part is cut off before its closing delimiter", CANNOT_UNDERSTAND)
    media, _ = parse_media_type(part.content_type)
    if media not in ("application/dicom", ""):
        raise InvalidDicom(f"part type {media!r} is not application/dicom", CANNOT_UNDERSTAND)
    try:
        part.file.seek(0)
        return read_part10(
            part.file, stop_before_pixels=True, max_inflated_bytes=max_inflated_bytes
        )
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        part.file.seek(0)
        raise InvalidDicom(
            f"not a DICOM Part 10 stream ({type(exc).__name__}): send files with the 128-byte "
            "preamble and 'DICM' prefix, or at least their File Meta Information",
            CANNOT_UNDERSTAND,
        ) from None


@dataclass
class _Pending:
    """A stored raw object waiting for its record (written once the whole request is in)."""

    study_id: str
    instance_key: str
    record: dict[str, Any]
    modality: str | None


@dataclass
class StowSession:
    """One STOW-RS request: parts are stored as they arrive, recorded when the body is complete.

    The record is the commit point: an object without a record belongs to no study, so an
    aborted request (413, truncation, disconnect) leaves nothing half-stored after
    :meth:`abort` removes the objects it uploaded.
    """

    ctx: Context
    expected_study_uid: str | None
    #: Who sent it (token name or calling AE title): picks the de-identification profile.
    source: str | None = None
    result: StowResult = field(default_factory=StowResult)
    pending: list[_Pending] = field(default_factory=list)
    #: Studies this request has parts of, and those whose ``last_instance_at`` it has moved
    #: (with when it last did: see :meth:`still_receiving`).
    _studies: dict[str, None] = field(default_factory=dict, init=False)
    _kept_open: set[str] = field(default_factory=set, init=False)
    _kept_open_at: float = field(default=0.0, init=False)

    def add(self, part: Part) -> StoreOutcome:
        try:
            outcome = self._store(part)
        except Exception as exc:  # one part's unexpected failure never fails the others
            log.error("stow.part_failed", error=type(exc).__name__)
            outcome = StoreOutcome(
                None,
                None,
                failure_reason=PROCESSING_FAILURE,
                message=f"processing failure ({type(exc).__name__}); the part was not stored",
            )
        finally:
            part.close()
        INSTANCES_RECEIVED.labels("failed" if outcome.failure_reason else "stored").inc()
        self.result.outcomes.append(outcome)
        return outcome

    def _store(self, part: Part) -> StoreOutcome:
        try:
            ds = read_part(part, self.ctx.settings.max_instance_bytes)
            sop_class = _uid(ds, "SOPClassUID")
            sop_instance = _uid(ds, "SOPInstanceUID")
        except InvalidDicom as exc:
            return StoreOutcome(None, None, failure_reason=exc.failure_reason, message=exc.message)
        except InflateLimitExceeded as exc:
            # PS3.4 B.2.3 / PS3.18 Table I.2-2: A7xx Refused, Out of Resources; not stored.
            return StoreOutcome(
                _uid_or_none(exc.sop_class_uid),
                _uid_or_none(exc.sop_instance_uid),
                failure_reason=OUT_OF_RESOURCES,
                message=exc.message,
            )
        outcome = StoreOutcome(sop_class, sop_instance)
        try:
            if not is_storage_sop_class(sop_class):
                raise InvalidDicom(
                    f"SOP class {sop_class} is not a storage SOP class", SOP_CLASS_NOT_SUPPORTED
                )
            check_transfer_syntax(ds, part)
            study_uid = _uid(ds, "StudyInstanceUID")
            series_uid = _uid(ds, "SeriesInstanceUID")
            if self.expected_study_uid is not None and study_uid != self.expected_study_uid:
                raise InvalidDicom(
                    "the instance belongs to another study than the one in the request URL",
                    DOES_NOT_MATCH_SOP_CLASS,
                )
        except InvalidDicom as exc:
            outcome.failure_reason, outcome.message = exc.failure_reason, exc.message
            return outcome

        secret = self.ctx.study_key(study_uid)  # Purpose.PSEUDONYMS; a 0.1 study: its key
        study_id = study_id_for(secret, study_uid)
        instance_key = instance_key_for(secret, sop_instance)
        raw_key = f"{study_id}/{instance_key}.dcm"
        outcome.study_instance_uid, outcome.series_instance_uid = study_uid, series_uid
        outcome.study_id = study_id
        if self.ctx.objects.exists(self.ctx.buckets["raw"], raw_key) and (
            self.ctx.studies.instances.find_one({"_id": instance_key}) is not None
        ):
            # Already held: success without touching the first copy (a SOP Instance UID names
            # one object; Orthanc's push job and modality re-sends expect 200).
            return outcome
        part.file.seek(0)
        # The bytes are kept exactly as received, whatever their transfer syntax.
        try:
            self.ctx.objects.put_file(
                self.ctx.buckets["raw"], raw_key, part.file, part.size, "application/dicom"
            )
        except Exception as exc:
            log.error("stow.store_failed", error=type(exc).__name__)
            outcome.failure_reason = OUT_OF_RESOURCES
            outcome.message = (
                f"the object store refused the instance ({type(exc).__name__}): check its "
                "free space and that it is reachable, then send again"
            )
            return outcome
        record = {
            "raw_key": raw_key,
            "sop_class_uid": sop_class,
            "series_key": instance_key_for(secret, "series:" + series_uid),
            "size": part.size,
            "source": self.source,
            # TAT: acquisition -> receipt, measured before deid shifts the dates (a number only).
            ACQUIRED_TO_RECEIVED: acquisition_lag_seconds(
                ds, now(), self.ctx.settings.site_timezone
            ),
        }
        modality = str(ds.get("Modality", "") or "") or None
        self.pending.append(_Pending(study_id, instance_key, record, modality))
        self._studies[study_id] = None
        return outcome

    def receiving_due(self) -> bool:
        """Whether :meth:`still_receiving` is due: a study is new to this request, or a
        quarter of the quiet time (at most 5 s) passed since it last ran."""
        if not self._studies:
            return False
        if len(self._kept_open) < len(self._studies):
            return True
        every = min(self.ctx.settings.study_stable_seconds / 4, 5.0)
        return time.monotonic() - self._kept_open_at >= every

    def still_receiving(self) -> None:
        """The request is still receiving: move ``last_instance_at`` of the studies it has
        parts of to now. Their parts are recorded only once the whole body is in
        (:meth:`commit`), so without this a request outlasting the quiet time would let a
        study an earlier request armed be declared stable, and de-identified, mid-upload."""
        studies = list(self._studies)
        self.ctx.studies.still_receiving(studies)
        self._kept_open.update(studies)
        self._kept_open_at = time.monotonic()

    def commit(self) -> StowResult:
        """Record every stored instance and arm the stability check of each touched study."""
        by_study: dict[str, list[_Pending]] = {}
        for item in self.pending:
            by_study.setdefault(item.study_id, []).append(item)
        with self.ctx.documents.exclusive():
            for study_id, items in by_study.items():
                self.ctx.studies.record_instances(
                    study_id,
                    [(item.instance_key, item.record) for item in items],
                    next((item.modality for item in items if item.modality), None),
                )
        # At most one pending check per study: it re-arms itself while instances keep arriving.
        quiet = self.ctx.settings.study_stable_seconds
        for study_id in dict.fromkeys(item.study_id for item in self.pending):
            if self.ctx.studies.claim_stability_check(study_id, now() + timedelta(seconds=quiet)):
                self.ctx.tasks.send("stable", study_id, countdown=quiet)
        log.info(
            "stow.done",
            stored=len(self.result.stored),
            failed=len(self.result.failed),
            reasons=sorted(
                {f"{o.failure_reason:04X}" for o in self.result.failed if o.failure_reason}
            ),
        )
        return self.result

    def abort(self) -> None:
        """Remove the objects this request uploaded that no earlier request had recorded."""
        for item in self.pending:
            if self.ctx.studies.instances.find_one({"_id": item.instance_key}) is None:
                self.ctx.objects.delete(self.ctx.buckets["raw"], item.record["raw_key"])
        log.warning("stow.aborted", uploaded=len(self.pending))
        self.pending.clear()


def store_parts(
    ctx: Context, parts: list[Part], expected_study_uid: str | None, source: str | None = None
) -> StowResult:
    """Store parts that are already complete, in one session."""
    session = StowSession(ctx, expected_study_uid, source)
    for part in parts:
        session.add(part)
    return session.commit()


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
