"""What the study page's viewer needs: the slices in volume order, the analysed series' voxel
grid, the AI's SEG per finding, and the overlay of one slice as a transparent PNG (the images
themselves come from WADO-RS ``rendered``).

The SEG is decoded once per study version and process (a few MB for a CT series) into one
sparse mask per segment (segment n is finding n, ``inference/seg.py``); its frames are placed
by the source image each one references (PS3.3 C.8.20.3, Derivation Image Sequence), so an
empty slice, which the writer omits, is simply absent. A finding whose mask a radiologist
edited shows the edited mask instead (``review.py``), in the overlay and in the comparisons.
"""

from __future__ import annotations

import io
import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from radpipe.common import blinding, masks
from radpipe.common.auth import Principal
from radpipe.common.context import Context
from radpipe.common.dicomindex import INDEX
from radpipe.common.errors import Conflict, NotFound

#: The overlay colour (RGBA), opaque: the page sets its opacity.
OVERLAY_RGBA = (255, 48, 48, 255)
_CACHED = 16
_cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key: tuple[str, ...], make: Any) -> Any:
    """A small per-process LRU for immutable objects (keys name a version or a content hash)."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    value = make()
    with _cache_lock:
        _cache[key] = value
        while len(_cache) > _CACHED:
            _cache.popitem(last=False)
    return value


def slices(ctx: Context, study: dict[str, Any]) -> list[dict[str, str]]:
    """The viewer's slices: the analysed series in volume order (the order of ``slice`` in
    reads and of the findings' centres), else the first de-identified series by number."""
    analysis = study.get("analysis") or {}
    deid = ctx.buckets["deid"]
    if analysis.get("input_sop_uids") and analysis.get("series_uid"):
        series = analysis["series_uid"]
        uids = dict.fromkeys(u.split("#")[0] for u in analysis["input_sop_uids"])
        return [{"series": series, "sop": uid} for uid in uids]
    study_uid = (study.get("deid") or {}).get("study_uid")
    if not study_uid:
        return []
    entries = [  # the index's study UID key answers this (StudyRepository.ensure_indexes)
        e
        for e in ctx.documents.collection(INDEX).find({"attributes.StudyInstanceUID": study_uid})
        if e.get("bucket") == deid
    ]
    if not entries:
        return []
    entries.sort(
        key=lambda e: (
            str(e["attributes"].get("SeriesNumber", "")),
            int(e["attributes"].get("InstanceNumber") or 0),
        )
    )
    first = entries[0]["attributes"].get("SeriesInstanceUID")
    return [
        {"series": first, "sop": e["_id"]}
        for e in entries
        if e["attributes"].get("SeriesInstanceUID") == first
    ]


def outputs_of(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The analysis's result objects (``kind``, ``key``, series and SOP Instance UIDs)."""
    outputs = (study.get("analysis") or {}).get("outputs")
    return [o for o in outputs if isinstance(o, dict)] if isinstance(outputs, list) else []


def _header(ctx: Context, sop: str) -> pydicom.Dataset:
    entry = ctx.documents.collection(INDEX).find_one({"_id": sop})
    if entry is None:
        raise NotFound(f"slice {sop} is not in the DICOM index")
    data = ctx.objects.get(entry.get("bucket") or ctx.buckets["deid"], entry["key"])
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def geometry(ctx: Context, study: dict[str, Any]) -> masks.Geometry:
    """The voxel grid of the viewer's series (the analysed one once there is an analysis):
    slices in volume order, rows, columns, and the spacing (between slices from the first two
    Image Position (Patient) values along the slice normal, PS3.3 C.7.6.2.1.1).

    Raises:
        Conflict: the study has no images to draw on yet.
    """
    items = slices(ctx, study)
    if not items:
        raise Conflict(f"study {study['_id']} has no de-identified images to draw a mask on")
    key = (
        "geometry",
        study["_id"],
        str(study.get("version", 1)),
        items[0]["series"],
        str(len(items)),
    )

    def make() -> masks.Geometry:
        first = _header(ctx, items[0]["sop"])
        dy, dx = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        if len(items) > 1 and "ImagePositionPatient" in first:
            second = _header(ctx, items[1]["sop"])
            orientation = [
                float(v) for v in first.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
            ]
            normal = np.cross(orientation[:3], orientation[3:])
            step = np.subtract(
                [float(v) for v in second.get("ImagePositionPatient", first.ImagePositionPatient)],
                [float(v) for v in first.ImagePositionPatient],
            )
            dz = abs(float(np.dot(step, normal))) or dz
        return masks.Geometry(
            series_uid=items[0]["series"],
            slices=len(items),
            rows=int(first.Rows),
            columns=int(first.Columns),
            spacing=(round(dz, 6), round(dy, 6), round(dx, 6)),
        )

    result: masks.Geometry = _cached(key, make)
    return result


def ai_masks(ctx: Context, study: dict[str, Any]) -> dict[int, masks.Mask]:
    """Finding number (= SEG segment number) -> its AI mask in ``geometry`` (empty when the
    study has no SEG)."""
    seg = next((o for o in outputs_of(study) if o.get("kind") == "seg"), None)
    if seg is None:
        return {}
    order = {item["sop"]: k for k, item in enumerate(slices(ctx, study))}

    def make() -> dict[int, masks.Mask]:
        ds = pydicom.dcmread(io.BytesIO(ctx.objects.get(ctx.buckets["results"], seg["key"])))
        frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
        shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
        dense: dict[int, dict[int, np.ndarray]] = {}
        for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
            source = group.DerivationImageSequence[0].SourceImageSequence[0]
            k = order.get(str(source.ReferencedSOPInstanceUID))
            if k is None:
                continue
            # One segment's number may be shared by every frame (PS3.3 C.8.20.3.1).
            where = group if "SegmentIdentificationSequence" in group else shared
            segment = int(where.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            frame = frames[index] > 0
            per = dense.setdefault(segment, {})
            per[k] = per[k] | frame if k in per else frame
        return {segment: masks.from_dense(per) for segment, per in dense.items()}

    result: dict[int, masks.Mask] = _cached(("seg", study["_id"], seg["key"]), make)
    return result


def stored_mask(ctx: Context, key: str, geo: masks.Geometry) -> masks.Mask:
    """A mask the portal stored (wire encoding, in ``results``), decoded again."""

    def make() -> masks.Mask:
        payload = json.loads(ctx.objects.get(ctx.buckets["results"], key))
        return masks.decode(payload, geo)

    result: masks.Mask = _cached(("mask", key), make)
    return result


def finding_masks(
    ctx: Context, study: dict[str, Any], decisions: dict[str, dict[str, Any]]
) -> dict[int, masks.Mask]:
    """Each finding's mask as it stands: the radiologist's edited mask where there is one,
    else the AI's segment."""
    current = dict(ai_masks(ctx, study))
    edited = {int(n): d["mask"]["key"] for n, d in decisions.items() if d.get("mask")}
    if edited:
        geo = geometry(ctx, study)
        for n, key in edited.items():
            current[n] = stored_mask(ctx, key, geo)
    return current


def overlay_png(ctx: Context, viewer: Principal, study_id: str, sop_uid: str) -> bytes:
    """The findings' masks on slice ``sop_uid`` as an RGBA PNG (transparent where empty):
    the AI's segments, a radiologist's edited mask in place of its finding's segment.

    Raises:
        NotFound: no such study, or a resident who has not read it yet (the overlay is the AI).
    """
    from .review import decisions_of  # review imports this module

    study = ctx.studies.get(study_id)
    if not blinding.sees_ai(ctx.documents, viewer, study_id):
        raise NotFound("no overlay: commit your read first (POST /api/studies/{id}/reads)")
    order = {item["sop"]: k for k, item in enumerate(slices(ctx, study))}
    k = order.get(sop_uid)
    if k is None:
        raise NotFound(f"slice {sop_uid} is not one of study {study_id}'s viewer slices")
    geo = geometry(ctx, study)
    frame = np.zeros((geo.rows, geo.columns), dtype=bool)
    for mask in finding_masks(ctx, study, decisions_of(study)).values():
        if k in mask:
            frame |= masks.to_dense_slice(mask, k, geo)
    rgba = np.zeros((*frame.shape, 4), dtype=np.uint8)
    rgba[frame] = OVERLAY_RGBA
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
