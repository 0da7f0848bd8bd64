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

from .key_images import LUNG_WINDOW, OUTLINE_RGB, key_image, secondary_capture
from .result_context import AI_LABEL, ResultContext, center_index
from .seg import segmentation
from .service import Analysis
from .sr import report
from .volume import Volume

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

    kind: str  # "seg" | "sr" | "key-image" (SC)
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
    `series_number + 2`. `uid(purpose)` gives every new UID ("seg-series", "sr-instance",
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
        seg = segmentation(ctx, findings, labels, tracking, series_number)
        objects.append(ResultObject("seg", seg))
    objects.append(ResultObject("sr", report(ctx, volume, analysis, tracking, series_number + 1)))
    pngs = []
    for n, finding in enumerate(findings, start=1):
        k = center_index(finding, volume)
        mask = labels[k] == finding.label if labels is not None else None
        pixels = key_image(sources[k], mask, finding, volume, f"Nodule {n}", ctx.name)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
        pngs.append((f"finding-{n}.png", buffer.getvalue()))
        sc = secondary_capture(ctx, sources[k], pixels, volume, n, series_number + 2)
        objects.append(ResultObject("key-image", sc))
    return Results(objects=objects, pngs=pngs)


def _check(sources: Sequence[pydicom.Dataset], volume: Volume, analysis: Analysis) -> None:
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    if uids != list(volume.sop_instance_uids):
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
