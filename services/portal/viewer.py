"""What the study page's viewer needs: the slices in volume order, and the AI's SEG overlay of
one slice as a transparent PNG (the images themselves come from WADO-RS ``rendered``).

The SEG is decoded once per study version and process (a few MB for a CT series) and its
frames are found by the source image each one references (PS3.3 C.8.20.3, Derivation Image
Sequence), so an empty slice, which the writer omits, is simply absent.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from radpipe.common import blinding
from radpipe.common.auth import Principal
from radpipe.common.context import Context
from radpipe.common.dicomindex import INDEX
from radpipe.common.errors import NotFound

#: The overlay colour (RGBA), opaque: the page sets its opacity.
OVERLAY_RGBA = (255, 48, 48, 255)
_masks: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
_masks_lock = threading.Lock()
_CACHED_STUDIES = 8


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


def _seg_masks(ctx: Context, study: dict[str, Any]) -> dict[str, np.ndarray]:
    """Source SOP Instance UID -> the union of the SEG's segments on that slice."""
    seg = next((o for o in outputs_of(study) if o.get("kind") == "seg"), None)
    if seg is None:
        return {}
    cache_key = (study["_id"], seg["key"])
    with _masks_lock:
        if cache_key in _masks:
            _masks.move_to_end(cache_key)
            return _masks[cache_key]
    ds = pydicom.dcmread(io.BytesIO(ctx.objects.get(ctx.buckets["results"], seg["key"])))
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    masks: dict[str, np.ndarray] = {}
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        uid = str(source.ReferencedSOPInstanceUID)
        frame = frames[index] > 0
        masks[uid] = masks[uid] | frame if uid in masks else frame
    with _masks_lock:
        _masks[cache_key] = masks
        while len(_masks) > _CACHED_STUDIES:
            _masks.popitem(last=False)
    return masks


def overlay_png(ctx: Context, viewer: Principal, study_id: str, sop_uid: str) -> bytes:
    """The AI segmentation on slice ``sop_uid`` as an RGBA PNG (transparent where empty).

    Raises:
        NotFound: no such study, or a resident who has not read it yet (the overlay is the AI).
    """
    study = ctx.studies.get(study_id)
    if not blinding.sees_ai(ctx.documents, viewer, study_id):
        raise NotFound("no overlay: commit your read first (POST /api/studies/{id}/reads)")
    mask = _seg_masks(ctx, study).get(sop_uid)
    if mask is None:
        rows = cols = 1
        for item in slices(ctx, study)[:1]:
            entry = ctx.documents.collection(INDEX).find_one({"_id": item["sop"]}) or {}
            rows = int(entry.get("attributes", {}).get("Rows") or 1)
            cols = int(entry.get("attributes", {}).get("Columns") or 1)
        mask = np.zeros((rows, cols), dtype=bool)
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = OVERLAY_RGBA
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
