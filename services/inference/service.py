"""Lung nodule inference as named stages, and the pipeline that runs them on one series.

The stages live in their own modules: ``volume`` (series to HU volume), ``model``
(pre-process, predict), ``findings`` (post-process) and ``risk``; this module runs them in
order, times each, and returns an :class:`Analysis`. Each stage takes and returns plain typed
values so it can be tested on a small array and called from a Celery task without knowing
about queues or HTTP. The stage names are re-exported here, the inference API's one door.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
import torch

from .bundle import Bundle
from .findings import (
    Finding,
    label_components,
    label_map_on_input,
    post_process,
    segment_findings,
)
from .model import bundle_grid, pre_process, predict
from .risk import Risk, assess_risk
from .volume import MAX_FRAME_BYTES, MAX_PIXEL_BYTES, Volume, VolumeError, series_to_volume
from .zoo import Evaluation, ZooBundle, run_zoo

__all__ = [
    "Analysis",
    "Finding",
    "Risk",
    "Volume",
    "VolumeError",
    "analyze",
    "assess_risk",
    "bundle_grid",
    "label_components",
    "label_map_on_input",
    "post_process",
    "pre_process",
    "predict",
    "segment_findings",
    "series_to_volume",
]


@dataclass
class Analysis:
    """Everything one run produces; `label_map` (input grid, 0 = background, finding i has
    label i) is for SEG/overlay writers and is left out of `to_dict`."""

    findings: list[Finding]
    risk: Risk
    timings: dict[str, float]
    input_sop_uids: list[str]
    model: dict[str, Any] = field(default_factory=dict)
    label_map: np.ndarray | None = field(default=None, repr=False)
    volume: Volume | None = field(default=None, repr=False)
    #: ``segmentation`` (the demo's nodules, a zoo bundle's labels), ``detection`` or
    #: ``classification`` (then ``evaluations`` holds the class scores and there are no findings).
    kind: str = "segmentation"
    evaluations: list[Evaluation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "findings": [f.to_dict() for f in self.findings],
            "risk": self.risk.to_dict(),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "input_sop_uids": list(self.input_sop_uids),
            "model": dict(self.model),
            "kind": self.kind,
        }
        if self.evaluations:
            out["classification"] = [e.to_dict() for e in self.evaluations]
        return out


def analyze(
    datasets: Sequence[pydicom.Dataset],
    bundle: Bundle | ZooBundle,
    *,
    threads: int | None = None,
    max_pixel_bytes: int = MAX_PIXEL_BYTES,
    max_frame_bytes: int = MAX_FRAME_BYTES,
) -> Analysis:
    """Run every stage on one series and time each.

    Expected time for 512x512x100 at 0.7x0.7x2.5 mm with the demo bundle on 2 CPU cores:
    a few seconds in total (see the timings it returns); peak memory ~1.5 GB.

    Raises
    ------
    VolumeError: the instances do not form one regular volume.
    """
    if threads:
        torch.set_num_threads(threads)
    timings: dict[str, float] = {}
    start = t0 = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[stage] = now - t0
        t0 = now

    volume = series_to_volume(
        datasets, max_pixel_bytes=max_pixel_bytes, max_frame_bytes=max_frame_bytes
    )
    lap("series_to_volume")
    if isinstance(bundle, ZooBundle):  # the bundle's own pre-, post-processing and inferer
        result = run_zoo(volume, bundle, threads=threads)
        lap("predict")
        timings["total"] = time.perf_counter() - start
        return Analysis(
            findings=result.findings,
            risk=result.risk,
            timings=timings,
            input_sop_uids=list(volume.sop_instance_uids),
            model=bundle.to_dict() | {"kind": result.kind},
            label_map=result.label_map,
            volume=volume,
            kind=result.kind,
            evaluations=result.evaluations,
        )
    tensor = pre_process(volume, bundle)
    lap("pre_process")
    prob = predict(tensor, bundle, threads=threads)
    lap("predict")
    findings, labels = segment_findings(prob, volume, bundle, tensor)
    label_map = label_map_on_input(labels, volume.array.shape)
    lap("post_process")
    risk = assess_risk(findings)
    lap("assess_risk")
    timings["total"] = time.perf_counter() - start
    return Analysis(
        findings=findings,
        risk=risk,
        timings=timings,
        input_sop_uids=list(volume.sop_instance_uids),
        model=bundle.to_dict(),
        label_map=label_map,
        volume=volume,
    )
