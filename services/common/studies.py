"""The study record: a state machine whose every transition is a timestamped event.

TAT analytics are built from ``events``, so every stage writes one. Updates are single
atomic document operations (``find_one_and_update`` conditioned on the current state), which
makes transitions idempotent when a task is delivered twice.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from pymongo import ReturnDocument

from .dicomindex import INDEX, qido_indexes
from .errors import NotFound
from .ports import Document, DocumentStore

DicomUID = Annotated[
    str, StringConstraints(pattern=r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$", max_length=64)
]
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

#: Collection names shared by the services (the document store is their contract).
STUDIES, INSTANCES, ALERTS = "studies", "instances", "alerts"
#: Every sender seen (token name or calling AE title), for the worklist's source filter.
SOURCES = "study_sources"
#: One-off data migrations already run (a marker document each).
MIGRATIONS = "migrations"
_SOURCES_BACKFILLED = "study-source-v1"


class StudyState(StrEnum):
    RECEIVED = "received"
    STABLE = "stable"
    DEIDENTIFIED = "deidentified"
    ANALYZED = "analyzed"
    ALERTED = "alerted"
    SIGNED = "signed"
    FAILED = "failed"


#: Allowed transitions; ``received`` is re-entered when late instances re-open a study.
TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    StudyState.RECEIVED: frozenset({StudyState.STABLE, StudyState.FAILED}),
    StudyState.STABLE: frozenset({StudyState.DEIDENTIFIED, StudyState.FAILED}),
    StudyState.DEIDENTIFIED: frozenset({StudyState.ANALYZED, StudyState.FAILED}),
    StudyState.ANALYZED: frozenset({StudyState.ALERTED, StudyState.SIGNED, StudyState.FAILED}),
    StudyState.ALERTED: frozenset({StudyState.SIGNED}),
    StudyState.SIGNED: frozenset(),
    StudyState.FAILED: frozenset(),
}


#: Set when a study becomes ``analyzed``: the moment the notify sweeper decides its alert
#: itself if the ``notify`` task has not (``radpipe.notify.service.resume_due``). A task
#: stranded in the broker (prefetched by a worker when the broker restarted: it comes back
#: only after the visibility timeout) must not hold a high-risk alert for minutes. Cleared by
#: the alert decision and by any later transition; indexed, so the sweeper reads only these.
NOTIFY_DUE = "notify_due_at"
NOTIFY_BACKSTOP = timedelta(seconds=10)


def sources_of(target: StudyState) -> list[str]:
    return [str(state) for state, targets in TRANSITIONS.items() if target in targets]


class StudyEvent(BaseModel):
    type: str
    at: datetime
    version: int = 1
    detail: dict[str, Any] = {}


class StudyPublic(BaseModel):
    """What the API shows of a study: no identifying value, only pseudonymous ids."""

    id: str
    state: StudyState
    version: int
    modality: str | None = None
    #: Who sent the study first (a modality's token name or calling AE title), and every
    #: sender when it came from several.
    source: str | None = None
    sources: list[str] = []
    instance_count: int
    created_at: datetime
    updated_at: datetime
    deid_study_uid: str | None = None
    risk: dict[str, Any] | None = None
    findings: list[dict[str, Any]] = []
    model: dict[str, Any] | None = None
    timings: dict[str, float] = {}
    # Findings are recorded (and alerted on) before the SEG, SR and key images are stored.
    results_pending: bool = False
    #: The series against the model's validated input (`radpipe.inference.scope`): within,
    #: measured, validated, reasons; None when the model declares none.
    input_scope: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    alert: dict[str, Any] | None = None
    events: list[StudyEvent] = []
    #: Earlier analyses, superseded when late instances re-opened the study.
    superseded: list[dict[str, Any]] = []
    links: dict[str, str] = {}

    @classmethod
    def from_document(cls, doc: Document) -> StudyPublic:
        analysis = doc.get("analysis") or {}
        return cls(
            id=doc["_id"],
            state=doc["state"],
            version=doc.get("version", 1),
            modality=doc.get("modality"),
            source=doc.get("source"),
            sources=doc.get("sources") or [],
            instance_count=doc.get("instance_count", 0),
            created_at=doc["created_at"],
            updated_at=doc["updated_at"],
            deid_study_uid=(doc.get("deid") or {}).get("study_uid"),
            risk=analysis.get("risk"),
            findings=analysis.get("findings", []),
            model=analysis.get("model"),
            timings=analysis.get("timings", {}),
            results_pending=bool(analysis.get("outputs_pending", False)),
            input_scope=analysis.get("input_scope"),
            failure=doc.get("failure"),
            alert=doc.get("alert"),
            events=[StudyEvent(**event) for event in doc.get("events", [])],
            superseded=doc.get("history", []),
        )


def now() -> datetime:
    return datetime.now(UTC)


#: How long past its due time a queued stability check still counts as pending: a later
#: instance arms a new one only once this has passed (the earlier task was lost or is stuck).
STABILITY_GRACE = timedelta(seconds=60)

#: The worklist order: highest AI risk first, then longest waiting (received earliest).
#: Unanalysed studies have no ``risk_score`` and follow the analysed ones, oldest first.
WORKLIST_ORDER = [("risk_score", -1), ("created_at", 1)]


def risk_score_of(analysis: Any) -> float | None:
    score = ((analysis or {}).get("risk") or {}).get("score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return float(score)
    return None


def with_sort_fields(doc: Document) -> Document:
    """``doc`` with ``risk_score``, the top-level copy of the AI risk the worklist index sorts
    on (kept in step with ``analysis`` by every write of it, see ``_with_risk``)."""
    score = risk_score_of(doc.get("analysis"))
    if score is None:
        return doc
    return {**doc, "risk_score": score}


def _with_risk(fields: dict[str, Any]) -> dict[str, Any]:
    if "analysis" not in fields:
        return fields
    return {**fields, "risk_score": risk_score_of(fields["analysis"])}


class StudyRepository:
    def __init__(self, documents: DocumentStore) -> None:
        self.studies = documents.collection(STUDIES)
        self.instances = documents.collection(INSTANCES)
        self.alerts = documents.collection(ALERTS)
        self.dicom_index = documents.collection(INDEX)
        self._documents = documents

    def ensure_indexes(self) -> None:
        """The indexes behind every query of the product (the same on MongoDB and embedded)."""
        self.studies.create_index("state")
        self.studies.create_index("updated_at")
        self.studies.create_index(NOTIFY_DUE)  # the notify sweeper's backstop
        self.studies.create_index(WORKLIST_ORDER)
        self.studies.create_index([("state", 1), *WORKLIST_ORDER])
        # The portal's worklist filters, each in the worklist order (portal/service.py).
        self.studies.create_index([("modality", 1), *WORKLIST_ORDER])
        self.studies.create_index([("analysis.risk.category", 1), *WORKLIST_ORDER])
        self.studies.create_index([("source", 1), *WORKLIST_ORDER])
        self.instances.create_index([("study_id", 1), ("received_at", 1)])
        self.alerts.create_index([("created_at", -1)])  # all alerts, newest first
        # WADO-RS retrieves by study and series UID; QIDO-RS matches and orders in the store
        # (services/ingest/qido.py): its result order, and the keys searched by most.
        self.dicom_index.create_index("attributes.StudyInstanceUID")
        self.dicom_index.create_index("attributes.SeriesInstanceUID")
        for collection, keys in qido_indexes().items():
            for key in keys:
                self._documents.collection(collection).create_index(key)
        # The data migrations (QIDO summaries, senders) run in the migrations runner
        # (common/migrations.py), called at start after the indexes exist.

    def get(self, study_id: str) -> Document:
        doc = self.studies.find_one({"_id": study_id})
        if doc is None:
            raise NotFound(f"study {study_id} does not exist")
        return doc

    def find(self, study_id: str) -> Document | None:
        doc: Document | None = self.studies.find_one({"_id": study_id})
        return doc

    def record_instance(
        self, study_id: str, instance_key: str, instance: Document, modality: str | None
    ) -> tuple[Document, bool]:
        """Register one stored raw instance; returns (study, newly_added)."""
        study, added = self.record_instances(study_id, [(instance_key, instance)], modality)
        return study, added == 1

    def record_instances(
        self, study_id: str, instances: list[tuple[str, Document]], modality: str | None
    ) -> tuple[Document, int]:
        """Register stored raw instances of one study; returns (study, how many were new).

        Re-registering a held instance changes nothing. A new instance for a study past
        ``received`` re-opens it (a new version): the earlier analysis stays in ``history``.
        The instances' ``source`` (the sender) is the study's ``source`` from its first
        receipt on, and joins its ``sources`` list.
        """
        at = now()
        added = 0
        senders = list(dict.fromkeys(str(i["source"]) for _, i in instances if i.get("source")))
        for instance_key, instance in instances:
            before = self.instances.find_one_and_update(
                {"_id": instance_key},
                {"$setOnInsert": {**instance, "study_id": study_id, "received_at": at}},
                upsert=True,
                return_document=ReturnDocument.BEFORE,
            )
            added += before is None
        study = self.studies.find_one_and_update(
            {"_id": study_id},
            {
                "$setOnInsert": {
                    "created_at": at,
                    "state": str(StudyState.RECEIVED),
                    "version": 1,
                    "events": [{"type": "received", "at": at, "version": 1, "detail": {}}],
                    "modality": modality,
                    "source": senders[0] if senders else None,
                },
                "$set": {"updated_at": at, "last_instance_at": at},
                "$inc": {"instance_count": added},
                "$addToSet": {"sources": {"$each": senders}},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        if senders and study.get("source") is None:  # first sent without a known sender
            study = self.studies.find_one_and_update(
                {"_id": study_id, "source": None},
                {"$set": {"source": senders[0]}},
                return_document=ReturnDocument.AFTER,
            ) or self.get(study_id)
        for sender in senders:  # a primary-key read once the sender is known
            self._documents.collection(SOURCES).update_one(
                {"_id": sender}, {"$setOnInsert": {"first_at": at}}, upsert=True
            )
        if added and study["state"] not in (StudyState.RECEIVED, StudyState.FAILED):
            study = self._reopen(study_id, study["version"]) or study
        return study, added

    def known_sources(self) -> list[str]:
        """Every sender a study came from, for the worklist's source filter."""
        return sorted(d["_id"] for d in self._documents.collection(SOURCES).find({}))

    def backfill_sources(self, batch: int = 500) -> int:
        """Studies recorded before studies kept their sender get ``source`` and ``sources``
        from their instances, once (schema version 2: run at start by
        :func:`radpipe.common.migrations.run_migrations`; a marker in ``migrations`` says it
        ran).

        Pages through the studies lacking the field in ``_id`` order; each page in one
        transaction on the embedded engine. Running it twice, or in two processes at once,
        gives the same result. Returns how many studies it updated.
        """
        done = self._documents.collection(MIGRATIONS)
        if done.find_one({"_id": _SOURCES_BACKFILLED}) is not None:
            return 0
        updated, last = 0, None
        while True:
            query: dict[str, Any] = {"source": {"$exists": False}}
            if last is not None:
                query["_id"] = {"$gt": last}
            page = list(self.studies.find(query).sort("_id", 1).limit(batch))
            if not page:
                break
            last = page[-1]["_id"]
            with self._documents.exclusive():
                for study in page:
                    senders = list(
                        dict.fromkeys(
                            str(i["source"])
                            for i in self.instances_of(study["_id"])
                            if i.get("source")
                        )
                    )
                    self.studies.update_one(
                        {"_id": study["_id"], "source": {"$exists": False}},
                        {"$set": {"source": senders[0] if senders else None, "sources": senders}},
                    )
                    for sender in senders:
                        self._documents.collection(SOURCES).update_one(
                            {"_id": sender}, {"$setOnInsert": {"first_at": now()}}, upsert=True
                        )
                    updated += 1
        done.update_one({"_id": _SOURCES_BACKFILLED}, {"$set": {"done": now()}}, upsert=True)
        return updated

    def claim_stability_check(self, study_id: str, due: datetime) -> bool:
        """Whether the caller is to queue the study's stability check, due at ``due``.

        At most one check per study is pending: this atomically sets ``stable_check_until``
        (``due`` plus :data:`STABILITY_GRACE`) where none is set or where it has passed. A later
        instance only moves ``last_instance_at``; the pending check re-arms itself for the
        remaining time (:meth:`rearm_stability_check`). A lost task never leaves the study in
        ``received`` for good: once its time has passed, the next instance claims a new check
        (and the pipeline check pages about a study in ``received`` for hours).
        """
        until = due + STABILITY_GRACE
        for pending in (None, {"$lt": now()}):  # none yet (or cleared), or a lost one
            claimed = self.studies.find_one_and_update(
                {"_id": study_id, "stable_check_until": pending},
                {"$set": {"stable_check_until": until}},
            )
            if claimed is not None:
                return True
        return False

    def still_receiving(self, study_ids: list[str]) -> None:
        """Instances of these studies are still arriving (a STOW-RS request is receiving their
        parts, recorded once it ends): ``last_instance_at`` moves to now, so the pending
        stability check re-arms instead of declaring a study stable mid-upload. Only studies
        in ``received`` are touched; none is created."""
        at = now()
        for study_id in study_ids:
            self.studies.update_one(
                {"_id": study_id, "state": str(StudyState.RECEIVED)},
                {"$set": {"last_instance_at": at}},
            )

    def rearm_stability_check(self, study_id: str, due: datetime) -> None:
        """The pending check, queued again by itself for ``due``, keeps its claim."""
        self.studies.update_one(
            {"_id": study_id}, {"$set": {"stable_check_until": due + STABILITY_GRACE}}
        )

    def _reopen(self, study_id: str, version: int) -> Document | None:
        at = now()
        current = self.get(study_id)
        reopened: Document | None = self.studies.find_one_and_update(
            {"_id": study_id, "version": version, "state": {"$ne": str(StudyState.RECEIVED)}},
            {
                "$set": {"state": str(StudyState.RECEIVED), "updated_at": at},
                "$inc": {"version": 1},
                "$push": {
                    "events": {"type": "received", "at": at, "version": version + 1, "detail": {}},
                    "history": {
                        "version": version,
                        "superseded_at": at,
                        "analysis": current.get("analysis"),
                    },
                },
            },
            return_document=ReturnDocument.AFTER,
        )
        return reopened

    def transition(
        self,
        study_id: str,
        target: StudyState,
        detail: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> Document | None:
        """Move to ``target`` if allowed from the current state; ``None`` if it was not.

        ``fields`` are set in the same atomic update as the state and its event.
        """
        at = now()
        current = self.get(study_id)
        event = {
            "type": str(target),
            "at": at,
            "version": current.get("version", 1),
            "detail": detail or {},
        }
        changes: dict[str, Any] = {
            "$set": {"state": str(target), "updated_at": at, **_with_risk(fields or {})},
            "$push": {"events": event},
        }
        if target == StudyState.ANALYZED:
            changes["$set"][NOTIFY_DUE] = at + NOTIFY_BACKSTOP
        else:
            changes["$unset"] = {NOTIFY_DUE: ""}
        updated: Document | None = self.studies.find_one_and_update(
            {"_id": study_id, "state": {"$in": sources_of(target)}},
            changes,
            return_document=ReturnDocument.AFTER,
        )
        return updated

    def notify_due(self, at: datetime, limit: int) -> list[Document]:
        """Studies whose alert decision is overdue (``NOTIFY_DUE``), oldest first."""
        return list(self.studies.find({NOTIFY_DUE: {"$lte": at}}).sort(NOTIFY_DUE, 1).limit(limit))

    def claim_notify_due(self, study_id: str, due: datetime, at: datetime) -> bool:
        """Move a due study's ``NOTIFY_DUE`` on by ``NOTIFY_BACKSTOP`` if it is still ``due``:
        True for the one sweeper (of several notify workers) that moved it."""
        claimed = self.studies.update_one(
            {"_id": study_id, NOTIFY_DUE: due}, {"$set": {NOTIFY_DUE: at + NOTIFY_BACKSTOP}}
        )
        return bool(claimed.modified_count)

    def clear_notify_due(self, study_id: str) -> None:
        """The study's alert decision is made (or no longer needed)."""
        self.studies.update_one({"_id": study_id}, {"$unset": {NOTIFY_DUE: ""}})

    def fail(self, study_id: str, stage: str, reason: str, attempts: int = 1) -> Document | None:
        """Dead-letter: the study ends ``failed`` with the stage and reason the portal shows."""
        failure = {"stage": stage, "reason": reason[:500], "attempts": attempts, "at": now()}
        return self.transition(
            study_id, StudyState.FAILED, detail={"stage": stage}, fields={"failure": failure}
        )

    def add_event(self, study_id: str, event_type: str, detail: dict[str, Any]) -> None:
        """An event that is not a state change (e.g. ``alert.not-required``)."""
        study = self.get(study_id)
        self.studies.update_one(
            {"_id": study_id},
            {
                "$push": {
                    "events": {
                        "type": event_type,
                        "at": now(),
                        "version": study.get("version", 1),
                        "detail": detail,
                    }
                },
                "$set": {"events_at": now()},  # TAT facts refresh from it (indexed there)
            },
        )

    def set_fields(
        self, study_id: str, fields: dict[str, Any], *, version: int | None = None
    ) -> bool:
        """Set ``fields``; with ``version``, only while the study is still at that version
        (not re-opened by late instances meanwhile). True when the study was updated."""
        query: dict[str, Any] = {"_id": study_id}
        if version is not None:
            query["version"] = version
        result = self.studies.update_one(
            query, {"$set": {**_with_risk(fields), "updated_at": now()}}
        )
        return bool(result.matched_count)

    def instances_of(self, study_id: str) -> list[Document]:
        return list(self.instances.find({"study_id": study_id}).sort("received_at", 1))

    def list(
        self, *, state: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[Document], int]:
        """One worklist page (``WORKLIST_ORDER``) and the total, both answered by an index."""
        query: dict[str, Any] = {"state": state} if state else {}
        total = self.studies.count_documents(query)
        cursor = self.studies.find(query).sort(WORKLIST_ORDER).skip(offset).limit(limit)
        return list(cursor), total
