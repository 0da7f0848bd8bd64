"""De-identification of a whole stored study: the ``deid`` pipeline stage.

Each raw instance goes through :class:`~radpipe.deid.engine.Deidentifier` with the profile of
its source. An instance that cannot be read is *failed*, one whose pixels may show identity is
*quarantined*; both stay only in the raw store with their reason on the instance record, and
the rest of the study goes on. A study with no clean instance fails with the reasons.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from radpipe.common.context import Context
from radpipe.common.dicomindex import add_all_to_index, index_document
from radpipe.common.dicomio import read_part10, write_part10
from radpipe.common.errors import InvalidDicom, PipelineError
from radpipe.common.identity import PatientKeys, study_id_for
from radpipe.common.keys import Purpose
from radpipe.common.logging import get_logger
from radpipe.common.routing import instance_frames
from radpipe.common.studies import StudyState
from radpipe.common.vault import IDENTITY_ATTRIBUTES

from .engine import Deidentifier, Quarantined
from .profile import Profile, ProfileSet, load_profiles

__all__ = ["PatientKeys", "deidentify", "deidentify_study", "read_dataset"]

log = get_logger("radpipe.deid")
#: De-identified objects being stored at once (each put mostly waits on I/O).
STORE_THREADS = 8


def deidentify(
    ds: Dataset, secret: bytes, profile: Profile | None = None, dates: bytes | None = None
) -> Dataset:
    """De-identify one dataset in place with ``profile`` (the default one if ``None``);
    ``secret`` keys UIDs and pseudonyms, ``dates`` the date offsets (see ``Deidentifier``)."""
    return _deidentifier(secret, dates, profile or Profile()).deidentify(ds)


@cache
def _deidentifier(secret: bytes, dates: bytes | None, profile: Profile) -> Deidentifier:
    return Deidentifier(secret, profile, dates)


def study_keys(ctx: Context, study_id: str, ds: Dataset) -> tuple[bytes, bytes | None]:
    """The (pseudonym, date offset) keys of a study: ``Purpose.PSEUDONYMS`` and
    ``Purpose.DATES``; the master secret for both when the study id was derived from it
    (a study first stored before keys per purpose keeps its UIDs and pseudonyms when it is
    re-opened)."""
    settings = ctx.settings
    legacy = settings.master_secret
    if study_id_for(legacy, str(ds.get("StudyInstanceUID", "") or "")) == study_id:
        return legacy, None
    return settings.key(Purpose.PSEUDONYMS), settings.key(Purpose.DATES)


@cache
def _profiles(path: Path | None) -> ProfileSet:
    return load_profiles(path)


def read_dataset(data: bytes, max_inflated_bytes: int) -> Dataset:
    """Parse stored Part 10 bytes, or raise ``InvalidDicom`` naming the parser's complaint;
    a deflated data set inflates to at most ``max_inflated_bytes`` (the STOW instance limit)."""
    try:
        ds = read_part10(io.BytesIO(data), max_inflated_bytes=max_inflated_bytes)
        ds.SOPInstanceUID  # noqa: B018 - the walk needs the dataset to be readable to its end
    except Exception as exc:  # any parser failure is a permanent, per-file reason
        raise InvalidDicom(f"cannot parse stored instance: {type(exc).__name__}") from None
    return ds


def original_identity(ds: Dataset) -> dict[str, str]:
    """The identifying attributes of the original, as the vault keeps them."""
    return {field: str(ds.get(keyword, "") or "") for field, keyword in IDENTITY_ATTRIBUTES.items()}


@dataclass
class DeidStudyResult:
    study_uid: str | None = None
    series: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    excluded: Counter[str] = field(default_factory=Counter)
    #: Object-store writes in flight, each with what to record once it is stored.
    stores: list[tuple[Future[None], dict[str, Any], str, str]] = field(default_factory=list)


def deidentify_study(ctx: Context, study_id: str) -> None:
    """The ``deid`` stage: raw instances -> de-identified store, index, vault entry, event
    (its detail holds the stage's own ``seconds``: bench/pipeline.py tells work from queue)."""
    started = time.perf_counter()
    study = ctx.studies.get(study_id)
    if study["state"] == StudyState.DEIDENTIFIED:  # redelivered after the hand-off was lost
        ctx.tasks.send("inference", study_id)
        return
    if study["state"] != StudyState.STABLE:
        log.info("deid.skip", study_id=study_id, state=study["state"])
        return
    profiles = _profiles(ctx.settings.deid_profile)
    result = DeidStudyResult()
    keys: tuple[bytes, bytes | None] | None = None
    # The de-identified objects are stored while the next ones are de-identified: each put
    # waits for its own fsync (or S3 round trip), ~20 ms that one after the other added up to
    # seconds a study. Each is indexed and marked done once stored (``_record_stored``).
    with ThreadPoolExecutor(STORE_THREADS) as pool:
        for instance in ctx.studies.instances_of(study_id):
            profile = profiles.for_source(instance.get("source"))
            try:
                raw = ctx.objects.get(ctx.buckets["raw"], instance["raw_key"])
                ds = read_dataset(raw, ctx.settings.max_instance_bytes)
                keys = keys or study_keys(ctx, study_id, ds)
                deidentifier = _deidentifier(keys[0], keys[1], profile)
                _one(ctx, study_id, instance, ds, deidentifier, result, pool)
            except (InvalidDicom, Quarantined) as exc:
                status = "quarantined" if isinstance(exc, Quarantined) else "failed"
                result.excluded[f"{status}: {exc.message}"] += 1
                ctx.studies.instances.update_one(
                    {"_id": instance["_id"]},
                    {"$set": {"deid": {"status": status, "reason": exc.message}}},
                )
                log.warning("deid.excluded", study_id=study_id, status=status, reason=exc.message)
    _record_stored(ctx, result)
    excluded = sum(result.excluded.values())
    if result.study_uid is None:
        reasons = "; ".join(f"{n} x {why}" for why, n in sorted(result.excluded.items()))
        raise PipelineError(f"no instance could be de-identified ({reasons or 'none stored'})")
    ctx.vault.put(study_id, result.identity)
    ctx.studies.transition(
        study_id,
        StudyState.DEIDENTIFIED,
        detail={
            "instances": sum(len(s["keys"]) for s in result.series.values()),
            "excluded": excluded,
            "reasons": dict(result.excluded),
            "seconds": round(time.perf_counter() - started, 3),
        },
        fields={"deid": {"study_uid": result.study_uid, "series": list(result.series.values())}},
    )
    ctx.tasks.send("inference", study_id)
    log.info("deid.done", study_id=study_id, series=len(result.series), excluded=excluded)


def _one(
    ctx: Context,
    study_id: str,
    instance: dict[str, Any],
    ds: Dataset,
    deidentifier: Deidentifier,
    result: DeidStudyResult,
    pool: ThreadPoolExecutor,
) -> None:
    known = result.identity
    # The vault keeps the identity of the study's first clean instance: read before the walk.
    identity = None if known else original_identity(ds)
    keys = None if known else deidentifier.patient_keys(ds)
    original_series, original_sop = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    originals = [
        str(ds.get(keyword, "") or "")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
    ]
    clean = deidentifier.deidentify(
        ds,
        extra_names=[known["patient_name"]] if known else [],
        extra_values=[known["patient_id"], known["accession_number"]] if known else [],
    )
    if identity is not None and keys is not None:
        result.identity = {
            **identity,
            # What was applied, so the exporter moves dates back by exactly that: none when
            # the profile keeps dates (Full Dates) or removes them (Basic).
            "date_offset_days": deidentifier.applied_date_offset(keys).days,
            "dates": deidentifier.profile.temporal_marker(),
            "keyed_on": "issuer+patient_id",
            "uids": {},
            "uid_map": {},
        }
    if result.study_uid is None:
        result.study_uid = str(clean.StudyInstanceUID)
    series_uid, sop_uid = str(clean.SeriesInstanceUID), str(clean.SOPInstanceUID)
    key = f"{result.study_uid}/{series_uid}/{sop_uid}.dcm"
    bucket = ctx.buckets["deid"]
    stored = pool.submit(ctx.objects.put, bucket, key, write_part10(clean), "application/dicom")
    result.stores.append(
        (stored, index_document(clean, study_id, key, bucket), instance["_id"], key)
    )
    if len(result.stores) > 2 * STORE_THREADS:  # at most that many objects wait in memory
        result.stores[-2 * STORE_THREADS - 1][0].result()
    series = result.series.setdefault(
        series_uid,
        {
            "series_uid": series_uid,
            "modality": str(clean.get("Modality", "")),
            # What inference routing looks at (all de-identified values).
            "body_part": str(clean.get("BodyPartExamined", "") or ""),
            "sop_class_uid": str(clean.SOPClassUID),
            "description": str(clean.get("SeriesDescription", "") or ""),
            "keys": [],
            # Images for routing's min_instances: NumberOfFrames summed (1 per single frame).
            "frames": 0,
        },
    )
    series["keys"].append(key)
    series["frames"] += instance_frames(clean.get("NumberOfFrames"))
    result.identity["uids"][sop_uid] = [original_series, original_sop]
    # Every de-identified UID a result object can reference -> its original (for the exporter).
    uid_map = result.identity["uid_map"]
    uid_map[sop_uid] = original_sop
    for original in originals:
        if original:
            uid_map.setdefault(deidentifier.uid(original), original)


def _record_stored(ctx: Context, result: DeidStudyResult) -> None:
    """Index the stored objects and mark their instances done, in one transaction once all
    are stored (a failed put raises here, and the stage is retried as when it was stored in
    line): one commit, and each summary of the study and series written once."""
    for stored, *_ in result.stores:
        stored.result()
    with ctx.documents.exclusive():
        add_all_to_index(ctx.documents, [document for _, document, _, _ in result.stores])
        for _, _, instance_id, key in result.stores:
            ctx.studies.instances.update_one(
                {"_id": instance_id}, {"$set": {"deid": {"status": "done", "key": key}}}
            )
