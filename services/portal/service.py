"""Portal queries: study lists and details, and the audited source-UID lookup."""

from __future__ import annotations

from typing import Any

from radpipe.common import alerts
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.errors import Forbidden, NotFound
from radpipe.common.identity import study_id_for
from radpipe.common.settings import CLINICAL_ROLES
from radpipe.common.studies import StudyPublic


def public_study(ctx: Context, doc: dict[str, Any]) -> StudyPublic:
    study = StudyPublic.from_document(doc)
    study.links = {
        "self": ctx.settings.public(f"api/studies/{study.id}"),
        "portal": ctx.settings.public(f"studies/{study.id}"),
    }
    return study


def list_studies(
    ctx: Context, *, state: str | None, offset: int, limit: int
) -> tuple[list[StudyPublic], int]:
    docs, total = ctx.studies.list(state=state, offset=offset, limit=limit)
    return [public_study(ctx, doc) for doc in docs], total


def lookup_source_study(
    ctx: Context, caller: Principal, source_study_uid: str
) -> list[StudyPublic]:
    """Find a study by its original Study Instance UID: clinical roles only, always audited."""
    if caller.role not in CLINICAL_ROLES:
        raise Forbidden(
            "looking a study up by its original UID re-identifies it: only the roles "
            f"{', '.join(sorted(CLINICAL_ROLES))} may do it"
        )
    study_id = study_id_for(ctx.settings.secret, source_study_uid)
    doc = ctx.studies.find(study_id)
    AuthService(ctx.documents).audit(
        caller, "study.lookup-source-uid", study_id, found=doc is not None
    )
    return [public_study(ctx, doc)] if doc else []


def read_identity(ctx: Context, caller: Principal, study_id: str) -> dict[str, Any]:
    """The vault entry behind a study (original patient, accession and UIDs).

    Clinical roles only; every attempt is written to the audit log, refused ones included.
    """
    allowed = caller.role in CLINICAL_ROLES
    found = allowed and ctx.studies.find(study_id) is not None
    AuthService(ctx.documents).audit(
        caller, "vault.read", study_id, allowed=allowed, found=bool(found)
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


def open_alerts(ctx: Context, limit: int = 50) -> list[dict[str, Any]]:
    """Alerts still paging (not acknowledged, closed or retracted), newest first, for the
    worklist banner; answered by the ``open, created_at`` index."""
    return alerts.open_alerts(ctx.documents, limit)
