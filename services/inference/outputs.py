"""Result objects for one analysis: DICOM SEG, TID 1500 SR and key images (SC + PNG).

Pure functions: datasets and bytes in memory, no storage, no queues. The objects are made in
``seg.py``, ``sr.py`` and ``key_images.py``; what they share (study context, provenance,
codes) is in ``result_context.py``.

Expected time on one CPU core: ~0.3 s for 120 slices of 512x512 with one finding (the SEG
dominates), plus ~0.5 s once per process while highdicom loads its tables of the standard;
peak memory ~150 MB there (a few bytes per voxel of the series).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import pydicom
from PIL import Image

from .key_images import (
    LUNG_WINDOW,
    OUTLINE_RGB,
    key_image,
    key_object_selection,
    secondary_capture,
)
from .result_context import AI_LABEL, ResultContext, center_index
from .seg import segmentation
from .service import Analysis
from .sr import report
from .volume import Volume
from .zoo import finding_label

__all__ = [
    "AI_LABEL",
    "LUNG_WINDOW",
    "OUTLINE_RGB",
    "ResultObject",
    "Results",
    "build_results",
]


@dataclass
class ResultObject:
    """One DICOM result instance, ready for `pydicom.dcmwrite(..., enforce_file_format=True)`."""

    kind: str  # "seg" | "sr" | "key-image" (SC) | "kos" (multi-frame sources)
    dataset: pydicom.Dataset


@dataclass
class Results:
    """Everything `build_results` makes for one analysis."""

    objects: list[ResultObject]
    pngs: list[tuple[str, bytes]]  # ("finding-1.png", PNG bytes), one per finding


def build_results(
    sources: Sequence[pydicom.Dataset],
    volume: Volume,
    analysis: Analysis,
    *,
    uid: Callable[[str], str],
    series_number: int = 9000,
    content_datetime: datetime | None = None,
) -> Results:
    """SEG (when there are findings), SR and one key image (SC + PNG) per finding.

    Series numbers: SEG `series_number`, SR `series_number + 1`, key images
    `series_number + 2`, the key object selection of a multi-frame source
    `series_number + 3`. `uid(purpose)` gives every new UID ("seg-series", "sr-instance",
    "finding-1-tracking", ...), so a re-run with the same `uid` and `content_datetime`
    rebuilds identical objects.

    Raises
    ------
    ValueError: `sources` are not in `volume.sop_instance_uids` order, or the label map is
        missing or does not match the sources' grid.
    """
    _check(sources, volume, analysis)
    model = analysis.model
    ctx = ResultContext(
        sources=sources,
        name=str(model.get("name") or "unknown")[:64],
        version=str(model.get("version") or "0")[:64],
        serial=str(model.get("sha256") or "unknown")[:64],
        when=content_datetime or datetime.now(),
        uid=uid,
    )
    findings = analysis.findings
    labels = analysis.label_map
    tracking = [uid(f"finding-{n}-tracking") for n in range(1, len(findings) + 1)]
    objects: list[ResultObject] = []
    if findings and labels is not None:
        seg = segmentation(ctx, findings, labels, tracking, series_number, volume.sop_instance_uids)
        objects.append(ResultObject("seg", seg))
    objects.append(ResultObject("sr", report(ctx, volume, analysis, tracking, series_number + 1)))
    pngs = []
    key_frames = []
    for n, finding in enumerate(findings, start=1):
        k = center_index(finding, volume)
        source, frame = ctx.slice_source(volume, k)  # frame: of a multi-frame source
        key_frames.append((source, frame))
        mask = labels[k] == finding.label if labels is not None else None
        hu = volume.array[k] if frame is not None else None
        pixels = key_image(source, mask, finding, volume, finding_label(finding, n), ctx.name, hu)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
        pngs.append((f"finding-{n}.png", buffer.getvalue()))
        sc = secondary_capture(ctx, source, pixels, volume, n, series_number + 2, frame)
        objects.append(ResultObject("key-image", sc))
    if any(frame is not None for _, frame in key_frames):  # KOS: key frames, series + 3
        kos = key_object_selection(ctx, key_frames, series_number + 3)
        objects.append(ResultObject("kos", kos))
    return Results(objects=objects, pngs=pngs)


def _check(sources: Sequence[pydicom.Dataset], volume: Volume, analysis: Analysis) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    # a multi-frame source is one instance for its frames (``uid#n`` in the volume's list)
    analyzed = list(dict.fromkeys(r.split("#")[0] for r in volume.sop_instance_uids))
    if uids != analyzed:
        raise ValueError(
            "sources must be the analyzed instances in volume.sop_instance_uids order "
            "(sort them by that list before calling build_results)"
        )
    if analysis.findings:
        labels = analysis.label_map
        if labels is None or labels.shape != volume.array.shape:
            raise ValueError(
                "analysis.label_map must be the input-grid label map (z, y, x) of shape "
                f"{volume.array.shape}; analyze() sets it"
            )
