"""Results back to the PACS: result objects, re-identified at the boundary, sent by STOW-RS
(``RADPIPE_EXPORT_STOW_URL``) and/or C-STORE (``RADPIPE_EXPORT_DIMSE``).

Idempotent: each exported object key is recorded on the study, so a retried task sends only
what is missing; a failed send raises ``TransientError`` and the stage wrapper retries with
backoff.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pydicom
from pynetdicom import AE

from services.client import encode_multipart
from services.common.context import Context
from services.common.dicomio import read_part10, write_part10
from services.common.errors import TransientError
from services.common.logging import get_logger

log = get_logger("radpipe.export")


def reidentify(ds: pydicom.Dataset, identity: dict[str, Any]) -> pydicom.Dataset:
    """Put the original patient, accession and study identifiers back (PS3.15 E.1: the
    re-identification the vault exists for). The object's own UIDs stay new."""
    ds.PatientID = identity.get("patient_id", "")
    ds.PatientName = identity.get("patient_name", "")
    ds.AccessionNumber = identity.get("accession_number", "")
    ds.StudyInstanceUID = identity["study_instance_uid"]
    originals = identity.get("uids", {})
    for item in ds.get("ReferencedSeriesSequence", []):
        for reference in item.get("ReferencedInstanceSequence", []):
            mapped = originals.get(str(reference.ReferencedSOPInstanceUID))
            if mapped:
                item.SeriesInstanceUID, reference.ReferencedSOPInstanceUID = mapped
    ds.PatientIdentityRemoved = "NO"
    return ds


def _stow(url: str, headers: dict[str, str], payloads: list[bytes]) -> None:
    body, content_type = encode_multipart(payloads)
    try:
        response = httpx.post(
            url.rstrip("/") + "/studies",
            content=body,
            headers={**headers, "Content-Type": content_type, "Accept": "application/dicom+json"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        raise TransientError(f"export destination unreachable: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise TransientError(f"export destination answered HTTP {response.status_code}")


def _c_store(destination: str, calling_ae: str, datasets: list[pydicom.Dataset]) -> None:
    called, _, address = destination.partition("@")
    host, _, port = address.rpartition(":")
    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, int(port), ae_title=called)
    if not assoc.is_established:
        raise TransientError(f"DIMSE destination {called} refused or unreachable")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise TransientError(f"C-STORE to {called} failed with status {status!r}")
    finally:
        assoc.release()


def export_study(ctx: Context, study_id: str) -> None:
    """The ``export`` stage: send every result object of the study not yet sent."""
    settings = ctx.settings
    if settings.export_stow_url is None and settings.export_dimse is None:
        return
    study = ctx.studies.get(study_id)
    done = set(study.get("exported", []))
    keys = [k for k in ctx.objects.list(ctx.buckets["results"], f"{study_id}/") if k not in done]
    if not keys:
        return
    identity = ctx.vault.get(study_id)
    datasets = [
        reidentify(read_part10(io.BytesIO(ctx.objects.get(ctx.buckets["results"], k))), identity)
        for k in keys
    ]
    if settings.export_stow_url is not None:
        _stow(
            str(settings.export_stow_url),
            settings.export_stow_headers,
            [write_part10(ds) for ds in datasets],
        )
    if settings.export_dimse is not None:
        _c_store(settings.export_dimse, settings.dimse_ae_title, datasets)
    ctx.studies.studies.update_one({"_id": study_id}, {"$addToSet": {"exported": {"$each": keys}}})
    ctx.studies.add_event(study_id, "exported", {"objects": len(keys)})
    log.info("export.done", study_id=study_id, objects=len(keys))
