"""Residents read first: the read a reader commits, its comparison with the AI and with the
attending, and the attending's RADPEER score of it.

A read is ``finding_present``, the largest nodule's ``diameter_mm``, where it is: ``slice``
(0-based, in the analysed series' volume order, the viewer's order) and ``center_yx`` (pixel
row and column on that slice), and optionally the nodule's drawn ``mask`` (wire encoding
``rle-slices-v1`` of ``radpipe.common.masks``, in that series' grid; stored in ``results`` under
``{study}/reads/{read}/mask.json``; without a diameter, the read's diameter is the mask's
equivalent-sphere diameter).

Dice and IoU are computed on voxel masks in the series' grid: the AI's from its SEG (one segment
per finding), the reader's drawn mask, the attending's verified findings (an edited mask, else
the AI's segment of an accepted finding). Only a side given by a diameter and a place without a
mask (a read, or a finding edited by diameter) stands in as a sphere of that diameter around
that place, and each comparison says which it used (``masks``: "mask", "sphere", "mask+sphere",
"none" for no finding, "unknown" for a finding with neither mask nor place). Two empty sides
are "n/a", as is a side that is "unknown".
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, Literal

from pydantic import BaseModel, Field

from radpipe.common import blinding, masks
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.errors import BadRequest, Conflict, NotFound
from radpipe.common.studies import StudyState, now

from . import viewer

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
    #: The drawn nodule (``radpipe.common.masks``, encoding ``rle-slices-v1``).
    mask: dict[str, Any] | None = None


class ScoreIn(BaseModel):
    score: Literal["1", "2a", "2b", "3a", "3b"]
    comment: str | None = Field(None, max_length=2000)


def _reads(ctx: Context) -> Any:
    return ctx.documents.collection(blinding.READS)


def post_read(ctx: Context, caller: Principal, study_id: str, body: ReadIn) -> dict[str, Any]:
    """Commit ``caller``'s read of the study; answers it with its comparison.

    Raises:
        Conflict: the images are not de-identified yet, or the caller has read it already.
        BadRequest: a size or place given for an absent finding; a mask that does not decode
            or fit the series, a drawn nodule for an absent finding, an empty one for a present
            finding (nothing is stored).
    """
    study = ctx.studies.get(study_id)
    if study["state"] not in READABLE:
        raise Conflict(f"study {study_id} is {study['state']}: its images are not ready to read")
    if not body.finding_present and (body.diameter_mm is not None or body.center_yx is not None):
        raise BadRequest("a read without a finding has no diameter_mm or center_yx; drop them")
    if _reads(ctx).find_one({"study_id": study_id, "by": caller.name}) is not None:
        raise Conflict(f"{caller.name} has committed a read of study {study_id} already")
    read_id = secrets.token_hex(8)
    drawn: dict[str, Any] | None = None
    diameter = body.diameter_mm
    if body.mask is not None:
        geo = viewer.geometry(ctx, study)
        try:
            mask = masks.decode(body.mask, geo)
        except masks.MaskError as exc:
            raise BadRequest(f"mask of the read: {exc}") from None
        if body.finding_present and not mask:
            raise BadRequest("a read with a finding draws it: the mask is empty")
        if not body.finding_present and mask:
            raise BadRequest('a read without a finding has an empty mask: send "empty": true')
        data = json.dumps(masks.encode(mask, geo), separators=(",", ":")).encode()
        volume = masks.voxel_count(mask) * geo.voxel_mm3
        if diameter is None and mask:
            diameter = round(masks.equivalent_diameter(volume), 2)
        key = f"{study_id}/reads/{read_id}/mask.json"
        drawn = {
            "key": key,
            "sha256": hashlib.sha256(data).hexdigest(),
            "series_uid": geo.series_uid,
            "voxels": masks.voxel_count(mask),
            "volume_mm3": round(volume, 1),
            "encoding": masks.ENCODING,
        }
        ctx.objects.put(ctx.buckets["results"], key, data, "application/json")
    read = {
        "_id": read_id,
        "study_id": study_id,
        "version": study.get("version", 1),
        "by": caller.name,
        "role": caller.role,
        "at": now(),
        "finding_present": body.finding_present,
        "diameter_mm": diameter,
        "slice": body.slice,
        "center_yx": list(body.center_yx) if body.center_yx else None,
        "mask": drawn,
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


def _public(read: dict[str, Any]) -> dict[str, Any]:
    return {("id" if k == "_id" else k): v for k, v in read.items()}


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


def overlap_scores(a: masks.Mask | None, b: masks.Mask | None) -> dict[str, Any]:
    """Dice and IoU of two masks; "n/a" when both are empty or a side has no mask."""
    if a is None or b is None:
        return {"dice": "n/a", "iou": "n/a"}
    return masks.overlap(a, b)


def _side(
    present: bool,
    diameter: float | None,
    mask: masks.Mask | None,
    how: str,
    category: str,
) -> dict[str, Any]:
    return {
        "finding_present": present,
        "diameter_mm": diameter,
        "category": category,
        "mask": mask,
        "how": how,
    }


def _how(parts: list[str]) -> str:
    """What a side's mask was made of: "mask", "sphere", "mask+sphere", or "none"."""
    kinds = sorted(set(parts))
    return "+".join(kinds) if kinds else "none"


def _compare(read: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    diff = None
    if read["diameter_mm"] is not None and other["diameter_mm"] is not None:
        diff = round(read["diameter_mm"] - other["diameter_mm"], 2)
    return {
        "finding_present_agree": read["finding_present"] == other["finding_present"],
        "diameter_difference_mm": diff,
        "risk_category": {"read": read["category"], "other": other["category"]},
        "risk_category_agree": read["category"] == other["category"],
        **overlap_scores(read["mask"], other["mask"]),
        "masks": {"read": read["how"], "other": other["how"]},
    }


class _Grid:
    """The study's voxel grid and the masks on it, loaded once per comparison."""

    def __init__(self, ctx: Context, study: dict[str, Any]) -> None:
        self.ctx, self.study = ctx, study
        try:
            self.geo: masks.Geometry | None = viewer.geometry(ctx, study)
        except (Conflict, NotFound):
            self.geo = None
        self.ai = viewer.ai_masks(ctx, study) if self.geo is not None else {}

    def sphere(self, zyx: list[float] | tuple[float, ...], diameter: float) -> masks.Mask | None:
        if self.geo is None:
            return None
        z, y, x = (float(v) for v in zyx[:3])
        return masks.sphere(self.geo, (z, y, x), diameter)

    def drawn(self, stored: dict[str, Any]) -> masks.Mask | None:
        if self.geo is None or stored.get("series_uid") != self.geo.series_uid:
            return None  # drawn on another series than the one analysed since
        return viewer.stored_mask(self.ctx, stored["key"], self.geo)

    def reader(self, r: dict[str, Any], thresholds: dict[str, Any]) -> dict[str, Any]:
        present, diameter = r["finding_present"], r.get("diameter_mm")
        cat = _category(diameter, present, thresholds)
        if r.get("mask"):
            return _side(present, diameter, self.drawn(r["mask"]), "mask", cat)
        if not present:
            return _side(present, diameter, {}, "none", cat)
        where = r.get("center_yx")
        if r.get("slice") is None or where is None or diameter is None:
            return _side(present, diameter, None, "unknown", cat)
        return _side(present, diameter, self.sphere([r["slice"], *where], diameter), "sphere", cat)

    def finding(self, number: int, finding: dict[str, Any], diameter: float) -> tuple[Any, str]:
        """The AI's finding ``number`` as a mask: its SEG segment, else a sphere."""
        if number in self.ai:
            return self.ai[number], "mask"
        centre = finding.get("center_voxel_zyx") or [0.0, 0.0, 0.0]
        return self.sphere(centre, diameter), "sphere"


def _union(parts: list[masks.Mask | None]) -> masks.Mask | None:
    if any(p is None for p in parts):
        return None
    return masks.union(p for p in parts if p is not None)


def with_comparison(ctx: Context, study: dict[str, Any], read: dict[str, Any]) -> dict[str, Any]:
    """The read, and how it compares with the AI and with the attending (the signed report,
    or else the latest radiologist's read by someone else)."""
    analysis = study.get("analysis") or {}
    thresholds = (analysis.get("risk") or {}).get("thresholds") or {}
    grid = _Grid(ctx, study)
    ai_findings = analysis.get("findings") or []
    this = grid.reader(read, thresholds)
    comparison: dict[str, Any] = {}
    if analysis:
        largest = max((f.get("diameter_mm", 0.0) for f in ai_findings), default=None)
        risk = analysis.get("risk") or {}
        parts = [
            grid.finding(n, f, f.get("diameter_mm", 0.0)) for n, f in enumerate(ai_findings, 1)
        ]
        ai = _side(
            bool(ai_findings),
            largest,
            _union([m for m, _ in parts]),
            _how([how for _, how in parts]),
            str(risk.get("category", _category(largest, bool(ai_findings), thresholds))),
        )
        comparison["ai"] = _compare(this, ai)
    attending = _attending(ctx, study, read, grid, thresholds)
    if attending is not None:
        comparison["attending"] = {"by": attending.pop("by"), **_compare(this, attending)}
    return {**_public(read), "comparison": comparison}


def _attending(
    ctx: Context,
    study: dict[str, Any],
    read: dict[str, Any],
    grid: _Grid,
    thresholds: dict[str, Any],
) -> dict[str, Any] | None:
    """The attending's side: the signed findings (edited masks, else the AI's segments of the
    accepted ones; a finding edited by diameter only, a sphere), else another radiologist's
    latest read."""
    signed = study.get("signed")
    ai_findings = (study.get("analysis") or {}).get("findings") or []
    if study["state"] == StudyState.SIGNED and signed and signed.get("by") != read["by"]:
        verified = [v for v in signed.get("findings") or [] if 0 < v["finding"] <= len(ai_findings)]
        decisions = ((study.get("review") or {}).get("decisions")) or {}
        parts: list[tuple[masks.Mask | None, str]] = []
        for v in verified:
            n, finding = v["finding"], ai_findings[v["finding"] - 1]
            decision = decisions.get(str(n)) or {}
            if v.get("mask") and grid.geo is not None:
                parts.append((viewer.stored_mask(ctx, v["mask"], grid.geo), "mask"))
            elif decision.get("decision") == "edit" and decision.get("diameter_mm") is not None:
                centre = finding.get("center_voxel_zyx") or [0.0, 0.0, 0.0]
                parts.append((grid.sphere(centre, v["diameter_mm"]), "sphere"))
            else:
                parts.append(grid.finding(n, finding, v["diameter_mm"]))
        largest = max((v["diameter_mm"] for v in verified), default=None)
        side = _side(
            bool(verified),
            largest,
            _union([m for m, _ in parts]),
            _how([how for _, how in parts]),
            _category(largest, bool(verified), thresholds),
        )
        return {"by": signed["by"], **side}
    others = [
        r
        for r in _reads(ctx).find({"study_id": study["_id"], "role": "radiologist"}).sort("at", 1)
        if r["by"] != read["by"]
    ]
    if not others:
        return None
    return {"by": others[-1]["by"], **grid.reader(others[-1], thresholds)}
