"""Review and sign-off: a radiologist's decision on each AI finding, then the signed report.

Decisions live on the study (``review.decisions``, keyed by the finding's number from 1, for
the analysis version they were made on); each is also a ``finding.decision`` event on the
timeline carrying the model that made the finding, the feedback a model team monitors. Signing
needs a decision on every finding, moves the study to ``signed`` and writes the final TID 1500
report (``radpipe.common.report``) into the results, indexed for QIDO-RS/WADO-RS and handed to
the exporter like the AI results. The notify stage sends nothing for a signed study and closes
its open alert.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import pydicom
from pydantic import BaseModel, Field

from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.dicomindex import add_to_index, index_document
from radpipe.common.dicomio import write_part10
from radpipe.common.errors import BadRequest, Conflict, NotFound
from radpipe.common.identity import RESULT_UIDS, pseudonymous_uid
from radpipe.common.report import VerifiedFinding, final_report
from radpipe.common.studies import StudyState, now

REVIEWABLE = (str(StudyState.ANALYZED), str(StudyState.ALERTED))


class DecisionIn(BaseModel):
    """``POST /api/studies/{id}/findings/{n}/decision`` (DESIGN §4)."""

    decision: Literal["accept", "reject", "edit"]
    reason: str | None = Field(None, max_length=1000)
    diameter_mm: float | None = Field(None, gt=0, le=500)


def decisions_of(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The decisions made on the study's current analysis (none after a re-open)."""
    review = study.get("review") or {}
    if review.get("version") != study.get("version", 1):
        return {}
    decisions: dict[str, dict[str, Any]] = review.get("decisions") or {}
    return decisions


def _findings(study: dict[str, Any]) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = (study.get("analysis") or {}).get("findings") or []
    return findings


def _reviewable(study: dict[str, Any]) -> None:
    state = study["state"]
    if state == StudyState.SIGNED:
        raise Conflict(f"study {study['_id']} is signed already; its report cannot change")
    if state not in REVIEWABLE:
        raise Conflict(
            f"study {study['_id']} is {state}, not analysed yet: decisions and sign-off wait "
            "for the AI result"
        )


def decide(
    ctx: Context, caller: Principal, study_id: str, number: int, body: DecisionIn
) -> dict[str, Any]:
    """Record the caller's decision on finding ``number`` (from 1); returns the decision.

    Raises:
        NotFound: no such study or finding.
        BadRequest: a rejection without a reason, an edit without a diameter.
        Conflict: the study is not analysed yet, is signed, or changed meanwhile.
    """
    study = ctx.studies.get(study_id)
    _reviewable(study)
    findings = _findings(study)
    if not 1 <= number <= len(findings):
        raise NotFound(
            f"study {study_id} has {len(findings)} finding(s); number them from 1 "
            f"in the order of GET /api/studies/{study_id}"
        )
    reason = (body.reason or "").strip() or None
    if body.decision == "reject" and reason is None:
        raise BadRequest('a rejection needs a reason: send {"decision": "reject", "reason": …}')
    if body.decision == "edit" and body.diameter_mm is None:
        raise BadRequest(
            'an edit needs the corrected size: send {"decision": "edit", "diameter_mm": …}'
        )
    finding = findings[number - 1]
    model = (study.get("analysis") or {}).get("model") or {}
    at = now()
    decision = {
        "finding": number,
        "decision": body.decision,
        "reason": reason,
        "diameter_mm": body.diameter_mm if body.decision == "edit" else None,
        "ai_diameter_mm": finding.get("diameter_mm"),
        "by": caller.name,
        "at": at,
        "model": {k: model.get(k) for k in ("name", "version", "sha256")},
    }
    version = study.get("version", 1)
    event = {"type": "finding.decision", "at": at, "version": version, "detail": decision}
    result = ctx.studies.studies.update_one(
        {"_id": study_id, "version": version, "state": {"$in": list(REVIEWABLE)}},
        {
            "$set": {
                f"review.decisions.{number}": decision,
                "review.version": version,
                "updated_at": at,
            },
            "$push": {"events": event},
        },
    )
    if result.matched_count != 1:
        raise Conflict(f"study {study_id} changed meanwhile (re-opened or signed); reload it")
    AuthService(ctx.documents).audit(
        caller, "finding.decision", study_id, finding=number, decision=body.decision
    )
    return decision


def sign(ctx: Context, caller: Principal, study_id: str) -> dict[str, Any]:
    """Sign the study: every finding decided, the state ``signed``, the final report stored.

    Raises:
        Conflict: a finding is undecided, or the study is not analysed or already signed.
    """
    study = ctx.studies.get(study_id)
    _reviewable(study)
    findings = _findings(study)
    decisions = decisions_of(study)
    undecided = [n for n in range(1, len(findings) + 1) if str(n) not in decisions]
    if undecided:
        raise Conflict(
            f"finding(s) {', '.join(map(str, undecided))} of study {study_id} are undecided: "
            "accept, reject or edit each (POST …/findings/{n}/decision) before signing"
        )
    at = now()
    verified = [
        (n, decisions[str(n)], findings[n - 1])
        for n in range(1, len(findings) + 1)
        if decisions[str(n)]["decision"] != "reject"
    ]
    report = _store_report(ctx, study, caller, verified, at)
    signed = {
        "by": caller.name,
        "at": at,
        "findings": [
            {"finding": n, "decision": d["decision"], "diameter_mm": _diameter(d, f)}
            for n, d, f in verified
        ],
        "rejected": [
            n
            for n, d in sorted((int(k), d) for k, d in decisions.items())
            if d["decision"] == "reject"
        ],
        "report": report,
    }
    updated = ctx.studies.transition(
        study_id,
        StudyState.SIGNED,
        detail={"by": caller.name, "verified": len(verified), "findings": len(findings)},
        fields={"signed": signed},
    )
    if updated is None:
        raise Conflict(f"study {study_id} changed meanwhile (re-opened or signed); reload it")
    AuthService(ctx.documents).audit(caller, "study.sign", study_id, verified=len(verified))
    if report is not None:
        ctx.tasks.send("export", study_id)
    return signed


def _diameter(decision: dict[str, Any], finding: dict[str, Any]) -> float:
    edited = decision.get("diameter_mm")
    return float(edited if edited is not None else finding.get("diameter_mm", 0.0))


def _store_report(
    ctx: Context,
    study: dict[str, Any],
    caller: Principal,
    verified: list[tuple[int, dict[str, Any], dict[str, Any]]],
    at: Any,
) -> dict[str, str] | None:
    """Write the final SR into ``results`` and the DICOM index; ``None`` when the study has
    no analysed series to report on (a study analysed from multi-frame sources, say)."""
    analysis = study.get("analysis") or {}
    series_uid = analysis.get("series_uid")
    series = [
        s for s in (study.get("deid") or {}).get("series", []) if s.get("series_uid") == series_uid
    ]
    if not series:
        return None
    sources = [
        pydicom.dcmread(io.BytesIO(ctx.objects.get(ctx.buckets["deid"], key)))
        for key in series[0]["keys"]
    ]
    study_id, version = study["_id"], study.get("version", 1)
    secret = RESULT_UIDS  # derived from the pseudonymous study id only

    def uid(purpose: str) -> str:
        return pseudonymous_uid(secret, f"report:{study_id}:v{version}:{purpose}")

    findings = [
        VerifiedFinding(
            number=n,
            diameter_mm=_diameter(d, f),
            center_sop_instance_uid=f.get("center_sop_instance_uid"),
            center_yx=(
                float((f.get("center_voxel_zyx") or [0, 0, 0])[1]),
                float((f.get("center_voxel_zyx") or [0, 0, 0])[2]),
            ),
            decision=d["decision"],
        )
        for n, d, f in verified
    ]
    n = len(findings)
    impression = (
        f"{n} lung nodule(s) verified; largest {max(f.diameter_mm for f in findings):.1f} mm."
        if findings
        else "No lung nodule."
    ) + f" Signed by {caller.name}."
    ds = final_report(
        sources, findings, signer=caller.name, impression=impression, uid=uid, when=at
    )
    bucket = ctx.buckets["results"]
    key = f"{study_id}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    ctx.objects.put(bucket, key, write_part10(ds), "application/dicom")
    add_to_index(ctx.documents, index_document(ds, study_id, key, bucket))
    return {
        "kind": "final-sr",
        "key": key,
        "series_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
    }
