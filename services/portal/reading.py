"""Residents read first: the read a reader commits, its comparison with the AI and with the
attending, and the attending's RADPEER score of it.

A read is ``finding_present``, the largest nodule's ``diameter_mm``, and where it is: ``slice``
(0-based, in the analysed series' volume order, the viewer's order) and ``center_yx`` (pixel
row and column on that slice). Masks for Dice and IoU are the nodules as spheres of their
diameter around their centres in millimetres (the AI's finding centres, the read's
location); a side with a finding but no location has no mask, and two empty sides are "n/a".
"""

from __future__ import annotations

import io
import math
import secrets
from typing import Any, Literal

import pydicom
from pydantic import BaseModel, Field

from radpipe.common import blinding
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.errors import BadRequest, Conflict, NotFound
from radpipe.common.studies import StudyState, now

READABLE = frozenset(
    {StudyState.DEIDENTIFIED, StudyState.ANALYZED, StudyState.ALERTED, StudyState.SIGNED}
)
RADPEER = ("1", "2a", "2b", "3a", "3b")
#: RADPEER scores that need a comment (a discrepancy the attending must explain).
RADPEER_COMMENT = frozenset({"2b", "3a", "3b"})


class ReadIn(BaseModel):
    """``POST /api/studies/{id}/reads`` (DESIGN §4)."""

    finding_present: bool
    diameter_mm: float | None = Field(None, gt=0, le=500)
    slice: int | None = Field(None, ge=0)
    center_yx: tuple[float, float] | None = None


class ScoreIn(BaseModel):
    score: Literal["1", "2a", "2b", "3a", "3b"]
    comment: str | None = Field(None, max_length=2000)


def _reads(ctx: Context) -> Any:
    return ctx.documents.collection(blinding.READS)


def post_read(ctx: Context, caller: Principal, study_id: str, body: ReadIn) -> dict[str, Any]:
    """Commit ``caller``'s read of the study; answers it with its comparison.

    Raises:
        Conflict: the images are not de-identified yet, or the caller has read it already.
        BadRequest: a size or place given for an absent finding.
    """
    study = ctx.studies.get(study_id)
    if study["state"] not in READABLE:
        raise Conflict(f"study {study_id} is {study['state']}: its images are not ready to read")
    if not body.finding_present and (body.diameter_mm is not None or body.center_yx is not None):
        raise BadRequest("a read without a finding has no diameter_mm or center_yx; drop them")
    if _reads(ctx).find_one({"study_id": study_id, "by": caller.name}) is not None:
        raise Conflict(f"{caller.name} has committed a read of study {study_id} already")
    read = {
        "_id": secrets.token_hex(8),
        "study_id": study_id,
        "version": study.get("version", 1),
        "by": caller.name,
        "role": caller.role,
        "at": now(),
        "finding_present": body.finding_present,
        "diameter_mm": body.diameter_mm,
        "slice": body.slice,
        "center_yx": list(body.center_yx) if body.center_yx else None,
        "score": None,
    }
    _reads(ctx).insert_one(read)
    ctx.studies.add_event(study_id, "read", {"by": caller.name, "role": caller.role})
    AuthService(ctx.documents).audit(caller, "study.read", study_id)
    return with_comparison(ctx, ctx.studies.get(study_id), read)


def list_reads(ctx: Context, caller: Principal, study_id: str) -> list[dict[str, Any]]:
    """The study's reads with their comparisons; a resident sees none of the others' until
    committing their own (an attending's read says what the AI found)."""
    study = ctx.studies.get(study_id)
    reads = list(_reads(ctx).find({"study_id": study_id}).sort("at", 1))
    if not blinding.sees_ai(ctx.documents, caller, study_id):
        return []
    return [with_comparison(ctx, study, read) for read in reads]


def score_read(
    ctx: Context, caller: Principal, study_id: str, read_id: str, body: ScoreIn
) -> dict[str, Any]:
    """The attending's RADPEER score of a read (a comment required from 2b)."""
    comment = (body.comment or "").strip() or None
    if body.score in RADPEER_COMMENT and comment is None:
        raise BadRequest(f"RADPEER {body.score} needs a comment saying what was missed")
    read = _reads(ctx).find_one({"_id": read_id, "study_id": study_id})
    if read is None:
        raise NotFound(f"study {study_id} has no read {read_id}")
    if read["by"] == caller.name:
        raise Conflict("a reader does not score their own read")
    score = {"score": body.score, "comment": comment, "by": caller.name, "at": now()}
    _reads(ctx).update_one({"_id": read_id}, {"$set": {"score": score}})
    ctx.studies.add_event(
        study_id, "read.scored", {"read": read_id, "score": body.score, "by": caller.name}
    )
    AuthService(ctx.documents).audit(caller, "read.score", study_id, read=read_id)
    return with_comparison(ctx, ctx.studies.get(study_id), {**read, "score": score})


# -- comparison -------------------------------------------------------------------------------

Sphere = tuple[float, float, float, float]  # centre z, y, x (mm), radius (mm)


def _public(read: dict[str, Any]) -> dict[str, Any]:
    return {("id" if k == "_id" else k): v for k, v in read.items()}


def _spacing(ctx: Context, study: dict[str, Any]) -> tuple[float, float, float]:
    """(slice, row, column) spacing in mm of the analysed series, from one of its slices."""
    analysis = study.get("analysis") or {}
    for series in (study.get("deid") or {}).get("series", []):
        if series.get("series_uid") == analysis.get("series_uid") or not analysis:
            keys = series.get("keys") or []
            if not keys:
                break
            ds = pydicom.dcmread(
                io.BytesIO(ctx.objects.get(ctx.buckets["deid"], keys[0])), stop_before_pixels=True
            )
            dy, dx = (float(v) for v in ds.get("PixelSpacing", [1.0, 1.0]))
            dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
            return dz, dy, dx
    return 1.0, 1.0, 1.0


def _category(diameter: float | None, present: bool, thresholds: dict[str, Any]) -> str:
    """The AI's risk categories (Lung-RADS-like on the largest nodule) for a reader's size."""
    if not present:
        return "none"
    if diameter is None:
        return "unknown"
    if diameter >= float(thresholds.get("high_mm", 8.0)):
        return "high"
    if diameter >= float(thresholds.get("moderate_mm", 6.0)):
        return "moderate"
    return "low"


def _overlap(a: Sphere, b: Sphere) -> float:
    """Intersection volume of two spheres (mm³)."""
    d = math.dist(a[:3], b[:3])
    ra, rb = a[3], b[3]
    if d >= ra + rb:
        return 0.0
    if d <= abs(ra - rb):
        r = min(ra, rb)
        return 4.0 / 3.0 * math.pi * r**3
    return math.pi * (ra + rb - d) ** 2 * (d**2 + 2 * d * (ra + rb) - 3 * (ra - rb) ** 2) / (12 * d)


def overlap_scores(a: list[Sphere] | None, b: list[Sphere] | None) -> dict[str, Any]:
    """Dice and IoU of two sphere masks; "n/a" when both are empty or a side has no mask."""
    if a is None or b is None or (not a and not b):
        return {"dice": "n/a", "iou": "n/a"}
    volume_a = sum(4.0 / 3.0 * math.pi * s[3] ** 3 for s in a)
    volume_b = sum(4.0 / 3.0 * math.pi * s[3] ** 3 for s in b)
    inter = min(sum(_overlap(x, y) for x in a for y in b), volume_a, volume_b)
    union = volume_a + volume_b - inter
    return {
        "dice": round(2 * inter / (volume_a + volume_b), 4),
        "iou": round(inter / union, 4) if union > 0 else "n/a",
    }


def _side(
    present: bool, diameter: float | None, spheres: list[Sphere] | None, category: str
) -> dict[str, Any]:
    return {
        "finding_present": present,
        "diameter_mm": diameter,
        "category": category,
        "spheres": spheres,
    }


def _compare(read: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    diff = None
    if read["diameter_mm"] is not None and other["diameter_mm"] is not None:
        diff = round(read["diameter_mm"] - other["diameter_mm"], 2)
    return {
        "finding_present_agree": read["finding_present"] == other["finding_present"],
        "diameter_difference_mm": diff,
        "risk_category": {"read": read["category"], "other": other["category"]},
        "risk_category_agree": read["category"] == other["category"],
        **overlap_scores(read["spheres"], other["spheres"]),
    }


def with_comparison(ctx: Context, study: dict[str, Any], read: dict[str, Any]) -> dict[str, Any]:
    """The read, and how it compares with the AI and with the attending (the signed report,
    or else the latest radiologist's read by someone else)."""
    analysis = study.get("analysis") or {}
    thresholds = (analysis.get("risk") or {}).get("thresholds") or {}
    dz, dy, dx = _spacing(ctx, study)
    ai_findings = analysis.get("findings") or []

    def ai_sphere(finding: dict[str, Any], diameter: float) -> Sphere:
        z, y, x = (finding.get("center_voxel_zyx") or [0.0, 0.0, 0.0])[:3]
        return (z * dz, y * dy, x * dx, diameter / 2.0)

    def reader(r: dict[str, Any]) -> dict[str, Any]:
        spheres: list[Sphere] | None = []
        if r["finding_present"]:
            where = r.get("center_yx")
            if r.get("slice") is None or where is None or r.get("diameter_mm") is None:
                spheres = None
            else:
                y, x = where
                spheres = [(r["slice"] * dz, y * dy, x * dx, r["diameter_mm"] / 2.0)]
        cat = _category(r.get("diameter_mm"), r["finding_present"], thresholds)
        return _side(r["finding_present"], r.get("diameter_mm"), spheres, cat)

    this = reader(read)
    comparison: dict[str, Any] = {}
    if analysis:
        largest = max((f.get("diameter_mm", 0.0) for f in ai_findings), default=None)
        risk = analysis.get("risk") or {}
        ai = _side(
            bool(ai_findings),
            largest,
            [ai_sphere(f, f.get("diameter_mm", 0.0)) for f in ai_findings],
            str(risk.get("category", _category(largest, bool(ai_findings), thresholds))),
        )
        comparison["ai"] = _compare(this, ai)
    attending = _attending(ctx, study, read, ai_findings, ai_sphere, thresholds, reader)
    if attending is not None:
        comparison["attending"] = {"by": attending.pop("by"), **_compare(this, attending)}
    return {**_public(read), "comparison": comparison}


def _attending(
    ctx: Context,
    study: dict[str, Any],
    read: dict[str, Any],
    ai_findings: list[dict[str, Any]],
    ai_sphere: Any,
    thresholds: dict[str, Any],
    reader: Any,
) -> dict[str, Any] | None:
    signed = study.get("signed")
    if study["state"] == StudyState.SIGNED and signed and signed.get("by") != read["by"]:
        verified = signed.get("findings") or []
        spheres = [
            ai_sphere(ai_findings[v["finding"] - 1], v["diameter_mm"])
            for v in verified
            if 0 < v["finding"] <= len(ai_findings)
        ]
        largest = max((v["diameter_mm"] for v in verified), default=None)
        side = _side(
            bool(verified), largest, spheres, _category(largest, bool(verified), thresholds)
        )
        return {"by": signed["by"], **side}
    others = [
        r
        for r in _reads(ctx).find({"study_id": study["_id"], "role": "radiologist"}).sort("at", 1)
        if r["by"] != read["by"]
    ]
    if not others:
        return None
    return {"by": others[-1]["by"], **reader(others[-1])}
