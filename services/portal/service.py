"""Portal queries: study lists and details, and the audited source-UID lookup."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from radpipe.common import alerts, blinding
from radpipe.common.audit import keyed
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.errors import BadRequest, Forbidden, NotFound
from radpipe.common.identity import study_id_for
from radpipe.common.settings import CLINICAL_ROLES
from radpipe.common.studies import WORKLIST_ORDER, StudyPublic, StudyState

from . import reading, review, viewer
from .classification import Classification, classification_of


class StudyView(StudyPublic):
    """A study as one person may see it: ``ai_hidden`` when a resident has not read it yet;
    ``classification``: a classification bundle's result (class, score, threshold, model)."""

    ai_hidden: bool = False
    classification: Classification | None = None


#: Timeline events that tell what the AI found (alerts, decisions on its findings).
_AI_EVENTS = ("alert", "finding.", "read.scored")


def public_study(
    ctx: Context, doc: dict[str, Any], viewer: Principal | None = None, hidden: bool | None = None
) -> StudyView:
    """The study for ``viewer``; before a resident's read, without its AI result: no findings,
    risk, classification, model, alert, superseded analyses, AI events or details, and
    ``alerted`` shown as ``analyzed`` (``radpipe.common.blinding``)."""
    study = StudyView.model_validate(StudyPublic.from_document(doc).model_dump())
    study.classification = classification_of(doc.get("analysis"))
    study.links = {
        "self": ctx.settings.public(f"api/studies/{study.id}"),
        "portal": ctx.settings.public(f"studies/{study.id}"),
    }
    if hidden is None:
        hidden = viewer is not None and not blinding.sees_ai(ctx.documents, viewer, study.id)
    if not hidden:
        return study
    events = [e for e in study.events if not e.type.startswith(_AI_EVENTS)]
    for event in events:
        if event.type in (StudyState.ANALYZED, StudyState.SIGNED):
            event.detail = {}
    state = StudyState.ANALYZED if study.state == StudyState.ALERTED else study.state
    return study.model_copy(
        update={
            "state": state,
            "risk": None,
            "findings": [],
            "classification": None,
            "model": None,
            "timings": {},
            "input_scope": None,
            "alert": None,
            "superseded": [],
            "events": events,
            "ai_hidden": True,
            "links": {**study.links, "read": ctx.settings.public(f"api/studies/{study.id}/reads")},
        }
    )


@dataclass(frozen=True)
class WorklistFilter:
    """The worklist's filters beyond ``state``: modality, sender, AI risk category, received
    between. ``source`` matches the study's first sender (``StudyRepository.record_instances``),
    answered by the ``source, risk_score, created_at`` index."""

    modality: str | None = None
    source: str | None = None
    risk: str | None = None  # "high" | "moderate" | "low" | "none" | "pending"
    since: datetime | None = None
    until: datetime | None = None

    def query(self) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if self.modality:
            query["modality"] = self.modality
        if self.source:
            query["source"] = self.source
        if self.risk == "pending":
            query["risk_score"] = None
        elif self.risk:
            query["analysis.risk.category"] = self.risk
        received: dict[str, datetime] = {}
        if self.since:
            received["$gte"] = self.since
        if self.until:
            received["$lt"] = self.until
        if received:
            query["created_at"] = received
        return query


def list_studies(
    ctx: Context,
    *,
    state: str | None,
    offset: int,
    limit: int,
    viewer: Principal | None = None,
    filters: WorklistFilter | None = None,
) -> tuple[list[StudyView], int]:
    """One worklist page. Residents get theirs in waiting order, not by AI risk (the order would
    tell the risk), and ``alerted`` studies among the ``analyzed`` ones."""
    extra = (filters or WorklistFilter()).query()
    blinded = viewer is not None and blinding.is_blinded(viewer)
    if not blinded and not extra:
        docs, total = ctx.studies.list(state=state, offset=offset, limit=limit)
        return [public_study(ctx, doc) for doc in docs], total
    query: dict[str, Any] = dict(extra)
    if blinded and (filters and filters.risk):
        raise BadRequest("residents cannot filter by AI risk: it is hidden until their read")
    if blinded and state == StudyState.ALERTED:
        raise BadRequest("residents filter analysed studies with state=analyzed")
    if blinded and state == StudyState.ANALYZED:
        query["state"] = {"$in": [str(StudyState.ANALYZED), str(StudyState.ALERTED)]}
    elif state:
        query["state"] = state
    order = blinding.RESIDENT_ORDER if blinded else WORKLIST_ORDER
    total = ctx.studies.studies.count_documents(query)
    docs = list(ctx.studies.studies.find(query).sort(order).skip(offset).limit(limit))
    if not blinded:
        return [public_study(ctx, doc) for doc in docs], total
    assert viewer is not None
    hidden = blinding.hidden_studies(ctx.documents, viewer, [d["_id"] for d in docs])
    return [public_study(ctx, doc, hidden=doc["_id"] in hidden) for doc in docs], total


def lookup_source_study(ctx: Context, caller: Principal, source_study_uid: str) -> list[StudyView]:
    """Find a study by its original Study Instance UID: clinical roles only, always audited."""
    if caller.role not in CLINICAL_ROLES:
        raise Forbidden(
            "looking a study up by its original UID re-identifies it: only the roles "
            f"{', '.join(sorted(CLINICAL_ROLES))} may do it"
        )
    study_id = study_id_for(ctx.study_key(source_study_uid), source_study_uid)
    doc = ctx.studies.find(study_id)
    uid = keyed(ctx.settings.secret, source_study_uid)  # never the original UID in clear
    AuthService(ctx.documents).audit(
        caller, "identity.lookup", study_id, via="source_study_uid", uid=uid, found=bool(doc)
    )
    return [public_study(ctx, doc, caller)] if doc else []


def read_identity(ctx: Context, caller: Principal, study_id: str) -> dict[str, Any]:
    """The vault entry behind a study (original patient, accession and UIDs).

    Clinical roles only; every attempt is written to the audit log, refused ones included.
    """
    allowed = caller.role in CLINICAL_ROLES
    found = allowed and ctx.studies.find(study_id) is not None
    AuthService(ctx.documents).audit(
        caller, "identity.lookup", study_id, via="vault", allowed=allowed, found=bool(found)
    )
    if not allowed:
        raise Forbidden(
            "the identity behind a study is re-identified data: only the roles "
            f"{', '.join(sorted(CLINICAL_ROLES))} may read it"
        )
    if not found:
        raise NotFound(f"no study {study_id}")
    identity = ctx.vault.get(study_id)
    return {
        "study_id": study_id,
        "patient_id": identity.get("patient_id", ""),
        "patient_name": identity.get("patient_name", ""),
        "accession_number": identity.get("accession_number", ""),
        "study_instance_uid": identity.get("study_instance_uid", ""),
        "instances": [
            {"sop_instance_uid": original[1], "series_instance_uid": original[0], "deid_uid": uid}
            for uid, original in sorted(identity.get("uids", {}).items())
        ],
    }


def open_alerts(
    ctx: Context, limit: int = 50, viewer: Principal | None = None
) -> list[dict[str, Any]]:
    """Alerts still paging (not acknowledged, closed or retracted), newest first, for the
    worklist banner; answered by the ``open, created_at`` index. A resident sees none of a
    study not read yet."""
    found = alerts.open_alerts(ctx.documents, limit)
    if viewer is None:
        return found
    hidden = blinding.hidden_studies(
        ctx.documents, viewer, {a.get("study_id") or "" for a in found}
    )
    return [a for a in found if (a.get("study_id") or "") not in hidden]


def study_page(
    ctx: Context, doc: dict[str, Any], study: StudyView, caller: Principal
) -> dict[str, Any]:
    """What the study page shows beside ``study``: the viewer's data, the decisions, the key
    images and the reads, each only where ``caller`` may see the AI."""
    ai = not study.ai_hidden
    outputs = viewer.outputs_of(doc) if ai else []
    return {
        "study": study,
        "data": {
            "id": study.id,
            "study_uid": study.deid_study_uid,
            "slices": viewer.slices(ctx, doc),
            "overlay": any(o.get("kind") == "seg" for o in outputs),
        },
        # Findings are recorded (and alerted on) before the result objects are stored.
        "results_pending": ai and bool((doc.get("analysis") or {}).get("outputs_pending")),
        "decisions": review.decisions_of(doc) if ai else {},
        "can_review": caller.role == "radiologist" and doc["state"] in review.REVIEWABLE,
        "signed": doc.get("signed") if doc["state"] == StudyState.SIGNED else None,
        "key_images": [o for o in outputs if o.get("kind") == "key-image"],
        "reads": reading.list_reads(ctx, caller, study.id) if ai else [],
        "ohif": f"/ohif/viewer?StudyInstanceUIDs={study.deid_study_uid}"
        if ctx.settings.ohif_dir and study.deid_study_uid
        else None,
    }
