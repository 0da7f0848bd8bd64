"""Results back to the PACS: result objects, re-identified at the boundary, sent by STOW-RS
(``RADPIPE_EXPORT_STOW_URL``) and/or C-STORE (``RADPIPE_EXPORT_DIMSE``).

Outside development both go over TLS only (https, DICOM TLS: ``RADPIPE_EXPORT_DIMSE_TLS``;
settings validation refuses anything else, ``radpipe.common.transport``).

Idempotent: what each destination has acknowledged is recorded on the study per object, so a
retried task sends each destination only what it has not stored yet (the instances a STOW-RS
202 lists in FailedSOPSequence, the objects a C-STORE run did not get to). Whatever is left
raises ``TransientError`` and the stage wrapper retries with backoff.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import httpx
import pydicom
from pynetdicom import AE

from radpipe.common.audit import audit_export
from radpipe.common.context import Context
from radpipe.common.dateshift import first_day, shift
from radpipe.common.dicomio import read_part10, write_part10
from radpipe.common.errors import TransientError
from radpipe.common.logging import get_logger
from radpipe.common.mime import encode_multipart
from radpipe.common.transport import scu_context
from radpipe.common.vault import IDENTITY_ATTRIBUTES, applied_date_offset

log = get_logger("radpipe.export")

#: Presentation contexts one association may propose (PS3.8 9.3.2.2: odd IDs 1-255).
MAX_CONTEXTS = 128
#: C-STORE success and warning statuses (PS3.4 Table B.2-1): the object is stored.
STORED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})

Item = tuple[str, pydicom.Dataset]  # (results-bucket key, re-identified dataset)
Outcome = tuple[set[str], list[str]]  # (keys the destination stored, failure reasons)


#: A restored date further than this past the export day was never shifted (see below).
FUTURE_MARGIN = timedelta(days=180)


def _restore_date(vr: str, value: str, offset: timedelta, limit: date) -> str:
    """A DA or DT value moved back by ``offset`` (the de-identifier's shift undone, at the
    value's own precision); unchanged when it does not parse or would land after ``limit``."""
    restored = shift(vr, value, -offset)
    if restored is None:
        return value
    day = first_day(vr, restored)
    return value if day is None or day > limit else restored


def restore_dates(ds: pydicom.Dataset, date_offset: timedelta, today: date) -> None:
    """Undo the de-identifier's keyed date shift: every DA and DT value, at any depth, moves
    back by ``date_offset`` (PS3.15 E.3.6: dates were shifted, times were not, so TM stays).

    The shift is at least a year back, so a date the de-identifier shifted comes back no
    later than ``today`` (the export day). A value that would land more than
    ``FUTURE_MARGIN`` after it was never shifted: it is a date Radpipe itself stamped on the
    result (content, series or instance creation date, "now"), and it stays as it is.
    """
    if not date_offset:
        return
    limit = today + FUTURE_MARGIN
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or []:
                restore_dates(item, date_offset, today)
        elif element.VR in ("DA", "DT") and not element.is_empty:
            vr = str(element.VR)
            if isinstance(element.value, pydicom.multival.MultiValue | list):
                element.value = [
                    _restore_date(vr, str(v), date_offset, limit) for v in element.value
                ]
            else:
                element.value = _restore_date(vr, str(element.value), date_offset, limit)


def restore_uids(ds: pydicom.Dataset, uid_map: dict[str, str]) -> None:
    """Map every de-identified UID the vault knows (study, series, frame of reference,
    instances) back to its original, at any depth. The object's own Series and SOP Instance
    UIDs are new, not in the map, and stay."""
    for element in ds:
        if element.VR == "SQ":
            for item in element.value or []:
                restore_uids(item, uid_map)
        elif element.VR == "UI" and not element.is_empty:
            if isinstance(element.value, pydicom.multival.MultiValue | list):
                element.value = [uid_map.get(str(v), str(v)) for v in element.value]
            else:
                element.value = uid_map.get(str(element.value), element.value)


#: Attributes a result may lack in its de-identified form but the original had, that are
#: Type 3 where they occur: written only when the original had a value.
_OPTIONAL = frozenset({"IssuerOfPatientID"})


def reidentify(
    ds: pydicom.Dataset, identity: dict[str, Any], secret: bytes, today: date | None = None
) -> pydicom.Dataset:
    """Put the original patient, accession and study identifiers, referenced UIDs and dates
    back (PS3.15 E.1: the re-identification the vault exists for). ``today`` is the export
    day (see :func:`restore_dates`); the clock's date when not given."""
    restore_dates(ds, applied_date_offset(identity, secret), today or date.today())
    own = str(ds.get("SOPInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
    restore_uids(ds, {k: v for k, v in identity.get("uid_map", {}).items() if k not in own})
    for field, keyword in IDENTITY_ATTRIBUTES.items():
        if field not in identity:
            continue  # an entry written before the field was recorded: leave the result's
        value = str(identity[field] or "")
        if keyword in ("StudyDate", "StudyTime") and not value:
            continue  # nothing recorded: the result's own (restored) value stands
        if keyword in _OPTIONAL and not value:
            ds.pop(keyword, None)
            continue
        setattr(ds, keyword, value)
    originals = identity.get("uids", {})  # vault entries written before uid_map existed
    for item in ds.get("ReferencedSeriesSequence", []):
        for reference in item.get("ReferencedInstanceSequence", []):
            mapped = originals.get(str(reference.ReferencedSOPInstanceUID))
            if mapped:
                item.SeriesInstanceUID, reference.ReferencedSOPInstanceUID = mapped
    ds.PatientIdentityRemoved = "NO"
    if "LongitudinalTemporalInformationModified" in ds:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    return ds


def _uids(response: dict[str, Any], sequence: str) -> dict[str, str]:
    """SOP Instance UID -> failure reason (hex, or "") of the items of a response sequence."""
    found = {}
    for item in (response.get(sequence) or {}).get("Value") or []:
        uid = ((item.get("00081155") or {}).get("Value") or [None])[0]
        reason = ((item.get("00081197") or {}).get("Value") or [None])[0]
        if isinstance(uid, str):
            found[uid] = f"{reason:04X}" if isinstance(reason, int) else ""
    return found


def _stow(url: str, headers: dict[str, str], items: list[Item]) -> Outcome:
    """One STOW-RS request; a 202 (PS3.18 10.5.3) counts the instances in its
    ReferencedSOPSequence as stored and leaves those in FailedSOPSequence for a retry."""
    body, content_type = encode_multipart([write_part10(ds) for _, ds in items])
    try:
        response = httpx.post(
            url.rstrip("/") + "/studies",
            content=body,
            headers={**headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        return set(), [f"export destination unreachable: {type(exc).__name__}"]
    if response.status_code not in (200, 202):
        return set(), [f"export destination answered HTTP {response.status_code}"]
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        if response.status_code == 200:  # all stored; the response body is only a report
            return {key for key, _ in items}, []
        return set(), ["HTTP 202 without a readable Store Instances Response: all resent"]
    failed = _uids(answer, "00081198")
    if response.status_code == 200:
        referenced = {str(ds.SOPInstanceUID) for _, ds in items}
    else:
        referenced = set(_uids(answer, "00081199"))
    done = {key for key, ds in items if str(ds.SOPInstanceUID) in referenced - set(failed)}
    missing = len(items) - len(done)
    if not missing:
        return done, []
    reasons = sorted({f"failure reason {r}" if r else "no reason" for r in failed.values()})
    why = ", ".join(reasons) or "not listed as stored"
    return done, [f"HTTP {response.status_code}: {missing} of {len(items)} not stored ({why})"]


def _context(ds: pydicom.Dataset) -> tuple[str, str]:
    return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)


def _c_store(
    destination: str, calling_ae: str, items: list[Item], tls: ssl.SSLContext | None = None
) -> Outcome:
    """C-STORE every object over as few associations as possible: one per 128 distinct
    (SOP class, transfer syntax) presentation contexts, re-associating when the peer drops
    the association mid-run. Each object is proposed only in the syntax it is stored in.

    With ``tls`` the associations run over DICOM TLS (PS3.15 B.9): the PACS's certificate is
    verified, its host name included, before any byte of a result leaves."""
    called, _, address = destination.partition("@")
    host, _, port = address.rpartition(":")
    contexts = list(dict.fromkeys(_context(ds) for _, ds in items))
    done: set[str] = set()
    failures: list[str] = []
    for start in range(0, len(contexts), MAX_CONTEXTS):
        batch = set(contexts[start : start + MAX_CONTEXTS])
        ae = AE(ae_title=calling_ae)
        for abstract, syntax in batch:
            ae.add_requested_context(abstract, syntax)
        assoc = None
        lost = 0
        try:
            for key, ds in (item for item in items if _context(item[1]) in batch):
                if assoc is None or not assoc.is_established:
                    tls_args = (tls, host) if tls is not None else None
                    assoc = ae.associate(host, int(port), ae_title=called, tls_args=tls_args)
                    if not assoc.is_established:
                        over = " over TLS (check its certificate and CA)" if tls else ""
                        failures.append(f"DIMSE destination {called} refused or unreachable{over}")
                        return done, failures
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:  # context not accepted, or aborted
                    failures.append(f"C-STORE not sent: {type(exc).__name__}")
                    continue
                code = int(status.Status) if status and "Status" in status else None
                lost = lost + 1 if code is None else 0
                if code in STORED:
                    done.add(key)
                elif code is None:  # aborted or timed out: the next object re-associates
                    failures.append("C-STORE got no response (association aborted or timed out)")
                    if lost >= 2:  # twice in a row: leave the rest for the retry
                        break
                else:
                    failures.append(f"C-STORE status {code:04X}")
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
    return done, failures


def export_study(ctx: Context, study_id: str, today: date | None = None) -> None:
    """The ``export`` stage: send every result object of the study not yet sent; ``today``
    (the clock's date when not given) tells stamped dates from shifted ones."""
    settings = ctx.settings
    senders: dict[str, Callable[[list[Item]], Outcome]] = {}
    if settings.export_stow_url is not None:
        url, headers = str(settings.export_stow_url), settings.export_stow_headers
        senders["stow"] = lambda items: _stow(url, headers, items)
    if settings.export_dimse is not None:
        destination, calling = settings.export_dimse, settings.dimse_ae_title
        tls = scu_context(settings) if settings.export_dimse_tls else None
        senders["dimse"] = lambda items: _c_store(destination, calling, items, tls)
    if not senders:
        return
    study = ctx.studies.get(study_id)
    done = set(study.get("exported", []))
    keys = [
        k
        for k in ctx.objects.list(ctx.buckets["results"], f"{study_id}/")
        if k.endswith(".dcm") and k not in done  # overlay PNGs stay in the portal
    ]
    if not keys:
        return
    identity = ctx.vault.get(study_id)
    datasets = {
        k: reidentify(
            read_part10(io.BytesIO(ctx.objects.get(ctx.buckets["results"], k))),
            identity,
            settings.master_secret,  # only entries from before offsets were recorded
            today,
        )
        for k in keys
    }
    progress = study.get("export_progress") or {}
    stored: dict[str, set[str]] = {}
    failures: list[str] = []
    for name, send in senders.items():
        stored[name] = set(progress.get(name, []))
        pending = [(k, datasets[k]) for k in keys if k not in stored[name]]
        sent, failed = send(pending) if pending else (set(), [])
        failures += [f"{name}: {reason}" for reason in failed]
        if sent:
            ctx.studies.studies.update_one(
                {"_id": study_id},
                {"$addToSet": {f"export_progress.{name}": {"$each": sorted(sent)}}},
            )
        stored[name] |= sent
    complete = [k for k in keys if all(k in stored[name] for name in senders)]
    if complete:
        ctx.studies.studies.update_one(
            {"_id": study_id}, {"$addToSet": {"exported": {"$each": complete}}}
        )
        ctx.studies.add_event(study_id, "exported", {"objects": len(complete)})
        log.info("export.done", study_id=study_id, objects=len(complete))
        audit_export(ctx.documents, study_id, sorted(senders), len(complete))
    if failures:
        raise TransientError(
            f"{len(keys) - len(complete)} of {len(keys)} result objects not exported yet, "
            f"retried later: {'; '.join(dict.fromkeys(failures))}"
        )
