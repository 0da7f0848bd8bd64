"""Review and sign-off: a radiologist's decision on each AI finding, then the signed report.

Decisions live on the study (``review.decisions``, keyed by the finding's number from 1, for
the analysis version they were made on); each is also a ``finding.decision`` event on the
timeline carrying the model that made the finding, the feedback a model team monitors. Signing
needs a decision on every finding, moves the study to ``signed`` and writes the final TID 1500
report (``radpipe.common.report``) into the results, indexed for QIDO-RS/WADO-RS and handed to
the exporter like the AI results. The notify stage sends nothing for a signed study and closes
its open alert.

An edit corrects the size (``diameter_mm``) or the mask (``mask``, wire encoding
``rle-slices-v1`` of ``radpipe.common.masks`` in the analysed series' grid, validated strictly):
the mask is stored in ``results`` (``{study}/v{version}/masks/finding-{n}-{sha256}.json``), and
the finding's volume and equivalent-sphere diameter are measured on it. At sign-off the edited
masks and the AI segments of the accepted findings are written as one verified DICOM SEG (the
inference SEG writer), referenced from the final report as evidence.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any, Literal

import highdicom as hd
import numpy as np
import pydicom
from pydantic import BaseModel, Field

from radpipe.common import masks
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.derived import DerivedContext
from radpipe.common.dicomindex import add_to_index, index_document
from radpipe.common.dicomio import write_part10
from radpipe.common.errors import BadRequest, Conflict, NotFound
from radpipe.common.identity import RESULT_UIDS, pseudonymous_uid
from radpipe.common.monitoring import record_decision, record_signed
from radpipe.common.report import CATEGORY, LUNG, NODULE, VerifiedFinding, final_report
from radpipe.common.seg import Segment, binary_segmentation
from radpipe.common.studies import StudyState, now

from . import viewer

REVIEWABLE = (str(StudyState.ANALYZED), str(StudyState.ALERTED))


class DecisionIn(BaseModel):
    """``POST /api/studies/{id}/findings/{n}/decision`` (DESIGN §4)."""

    decision: Literal["accept", "reject", "edit"]
    reason: str | None = Field(None, max_length=1000)
    diameter_mm: float | None = Field(None, gt=0, le=500)
    #: The corrected mask of an edit (``radpipe.common.masks``, encoding ``rle-slices-v1``).
    mask: dict[str, Any] | None = None


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
    if body.decision == "edit" and (body.diameter_mm is None) == (body.mask is None):
        raise BadRequest(
            'an edit needs the corrected size or mask, one of them: send {"decision": "edit", '
            '"diameter_mm": …} or {"decision": "edit", "mask": {"encoding": "rle-slices-v1", …}}'
        )
    if body.decision != "edit" and (body.diameter_mm is not None or body.mask is not None):
        raise BadRequest(f"a decision {body.decision!r} carries no diameter_mm or mask")
    finding = findings[number - 1]
    model = (study.get("analysis") or {}).get("model") or {}
    version = study.get("version", 1)
    at = now()
    decision = {
        "finding": number,
        "decision": body.decision,
        "reason": reason,
        "diameter_mm": body.diameter_mm if body.decision == "edit" else None,
        "ai_diameter_mm": finding.get("diameter_mm"),
        "ai_volume_mm3": finding.get("volume_mm3"),
        "by": caller.name,
        "at": at,
        "model": {k: model.get(k) for k in ("name", "version", "sha256")},
    }
    stored = None
    if body.mask is not None:
        stored, measured = _store_mask(ctx, study, number, body.mask)
        decision.update(measured)
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
        if stored is not None and not _referenced(ctx, study_id, stored):
            ctx.objects.delete(ctx.buckets["results"], stored)
        raise Conflict(f"study {study_id} changed meanwhile (re-opened or signed); reload it")
    AuthService(ctx.documents).audit(
        caller,
        "finding.decision",
        study_id,
        finding=number,
        decision=body.decision,
        mask=stored is not None,
    )
    record_decision(ctx.documents, study_id, version, decision)  # model monitoring
    return decision


def _store_mask(
    ctx: Context, study: dict[str, Any], number: int, payload: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Validate an edited mask, store it, and measure it: (key, the decision's fields).

    Raises:
        BadRequest: the mask does not decode or fit the analysed series, or is empty (an
            empty mask removes the finding: that is a rejection, with its reason).
    """
    geo = viewer.geometry(ctx, study)
    try:
        mask = masks.decode(payload, geo)
    except masks.MaskError as exc:
        raise BadRequest(f"mask of finding {number}: {exc}") from None
    if not mask:
        raise BadRequest(
            f"the edited mask of finding {number} is empty: a finding without a nodule is "
            'rejected, with a reason ({"decision": "reject", "reason": …})'
        )
    data = json.dumps(masks.encode(mask, geo), separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    key = f"{study['_id']}/v{study.get('version', 1)}/masks/finding-{number}-{digest[:24]}.json"
    ctx.objects.put(ctx.buckets["results"], key, data, "application/json")
    voxels = masks.voxel_count(mask)
    volume = voxels * geo.voxel_mm3
    return key, {
        "diameter_mm": round(masks.equivalent_diameter(volume), 2),
        "volume_mm3": round(volume, 1),
        "mask": {"key": key, "sha256": digest, "voxels": voxels, "encoding": masks.ENCODING},
    }


def _referenced(ctx: Context, study_id: str, key: str) -> bool:
    """Whether a decision of the study names the mask ``key`` (the same mask sent twice)."""
    study = ctx.studies.find(study_id) or {}
    return any(
        (d.get("mask") or {}).get("key") == key
        for d in ((study.get("review") or {}).get("decisions") or {}).values()
    )


def current_mask(ctx: Context, caller: Principal, study_id: str, number: int) -> dict[str, Any]:
    """Finding ``number``'s mask as it stands (the edited one, else the AI's segment) in the
    wire encoding, with the grid's spacing and where it comes from.

    Raises:
        NotFound: no such study or finding, or a resident who has not read it yet.
    """
    from radpipe.common import blinding

    study = ctx.studies.get(study_id)
    if not blinding.sees_ai(ctx.documents, caller, study_id):
        raise NotFound("no AI mask: commit your read first (POST /api/studies/{id}/reads)")
    findings = _findings(study)
    if not 1 <= number <= len(findings):
        raise NotFound(f"study {study_id} has {len(findings)} finding(s); number them from 1")
    decision = decisions_of(study).get(str(number)) or {}
    geo = viewer.geometry(ctx, study)
    mask = viewer.finding_masks(ctx, study, decisions_of(study)).get(number, {})
    return {
        **masks.encode(mask, geo),
        "spacing_mm": list(geo.spacing),
        "finding": number,
        "source": "edited" if decision.get("mask") else "ai",
    }


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
            {
                "finding": n,
                "decision": d["decision"],
                "diameter_mm": _diameter(d, f),
                **(
                    {"volume_mm3": d.get("volume_mm3"), "mask": d["mask"]["key"]}
                    if d.get("mask")
                    else {}
                ),
            }
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
    model = (study.get("analysis") or {}).get("model") or {}
    rejected = len(findings) - len(verified)  # model monitoring: false positives per study
    record_signed(ctx.documents, study_id, study.get("version", 1), model, len(findings), rejected)
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
) -> dict[str, Any] | None:
    """Write the final SR (and the verified SEG, its ``seg``) into ``results`` and the DICOM
    index; ``None`` when the study has no analysed series to report on (a study analysed from
    multi-frame sources, say)."""
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
            volume_mm3=d.get("volume_mm3") if d.get("mask") else None,
            tracking_uid=uid(f"finding-{n}"),
        )
        for n, d, f in verified
    ]
    seg = _verified_seg(ctx, study, sources, findings, uid, at)
    n = len(findings)
    impression = (
        f"{n} lung nodule(s) verified; largest {max(f.diameter_mm for f in findings):.1f} mm."
        if findings
        else "No lung nodule."
    ) + f" Signed by {caller.name}."
    ds = final_report(
        sources,
        findings,
        signer=caller.name,
        impression=impression,
        uid=uid,
        when=at,
        evidence=[seg] if seg is not None else [],
    )
    stored: dict[str, dict[str, str]] = {}
    for kind, obj in (("final-seg", seg), ("final-sr", ds)):
        if obj is not None:
            stored[kind] = _put_result(ctx, study_id, obj)
    return {"kind": "final-sr", **stored["final-sr"], "seg": stored.get("final-seg")}


def _put_result(ctx: Context, study_id: str, ds: pydicom.Dataset) -> dict[str, str]:
    """Store one signed object in ``results`` and the DICOM index (like the AI results)."""
    bucket = ctx.buckets["results"]
    key = f"{study_id}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    ctx.objects.put(bucket, key, write_part10(ds), "application/dicom")
    add_to_index(ctx.documents, index_document(ds, study_id, key, bucket))
    return {
        "key": key,
        "series_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
    }


def _verified_seg(
    ctx: Context,
    study: dict[str, Any],
    sources: Sequence[pydicom.Dataset],
    findings: list[VerifiedFinding],
    uid: Any,
    at: Any,
) -> pydicom.Dataset | None:
    """The verified findings' masks (edited, else the AI's segment) as one binary DICOM SEG,
    written by the shared SEG writer (``radpipe.common.seg``, as the AI's); ``None`` when no
    verified finding has a mask or the sources are not the viewer's grid (a multi-frame
    source). Segment n is "Nodule n" of the AI list, semi-automatic (the AI's mask as the
    radiologist accepted or edited it), its Tracking UID the signed report's group's."""
    geo = viewer.geometry(ctx, study)
    current = viewer.finding_masks(ctx, study, decisions_of(study))
    kept = [f for f in findings if current.get(f.number)]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    order = [by_uid.get(item["sop"]) for item in viewer.slices(ctx, study)]
    if not kept or len(order) != geo.slices or any(ds is None for ds in order):
        return None
    ordered = [ds for ds in order if ds is not None]  # the grid's (volume) order
    labels = np.zeros(geo.shape, dtype=np.uint8 if len(kept) < 256 else np.uint16)
    for label, finding in enumerate(kept, start=1):
        for k, flat in current[finding.number].items():
            labels[k].reshape(-1)[flat] = label
    model = (study.get("analysis") or {}).get("model") or {}
    context = DerivedContext(
        sources=ordered,
        name=str(model.get("name") or "radpipe"),
        version=str(model.get("version") or "unknown"),
        serial=str(model.get("sha256") or "unknown")[:64],
        when=at,
        uid=uid,
    )
    segments = [
        Segment(
            label=f"Nodule {f.number}",
            category=CATEGORY,
            property_type=NODULE,
            tracking_uid=f.tracking_uid or uid(f"finding-{f.number}"),
            sites=(LUNG,),
        )
        for f in kept
    ]
    return binary_segmentation(
        context,
        labels,
        segments,
        91,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        content_label="VERIFIED_NODULES",
        content_description="Verified nodule masks (signed report)",
        series_description="Verified nodule segmentation (signed)",
    )
