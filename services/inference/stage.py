"""The ``inference`` stage: de-identified series -> MONAI bundle -> findings in the study record.

The model logic lives in ``service.py`` (pure stages); this module does the I/O around it.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pydicom

from services.common.context import Context
from services.common.errors import PipelineError
from services.common.logging import get_logger
from services.common.metrics import STAGE_SECONDS
from services.common.studies import StudyState

from .bundle import Bundle, default_bundle_path, load_bundle, select_device
from .service import VolumeError, analyze

log = get_logger("radpipe.inference")
_bundles: dict[Path, Bundle] = {}
_bundles_lock = threading.Lock()


def bundle_for(ctx: Context) -> Bundle:
    """The routed bundle, loaded once per worker process."""
    # Routing rules over several bundles come with the inference issue; one bundle for now.
    path = default_bundle_path()
    if ctx.settings.models_dir is not None:
        path = ctx.settings.models_dir / path.name
    with _bundles_lock:
        if path not in _bundles:
            _bundles[path] = load_bundle(path, select_device(ctx.settings.inference_device))
        return _bundles[path]


def _choose_series(study: dict[str, Any]) -> dict[str, Any]:
    candidates = [s for s in (study.get("deid") or {}).get("series", []) if s["modality"] == "CT"]
    if not candidates:
        raise PipelineError(
            "no CT series in the study: the installed bundle analyses chest CT only"
        )
    return max(candidates, key=lambda s: len(s["keys"]))


def analyze_study(ctx: Context, study_id: str) -> None:
    study = ctx.studies.get(study_id)
    if study["state"] == StudyState.ANALYZED:  # redelivered after the hand-offs were lost
        ctx.tasks.send("notify", study_id)
        ctx.tasks.send("export", study_id)
        return
    if study["state"] != StudyState.DEIDENTIFIED:
        log.info("inference.skip", study_id=study_id, state=study["state"])
        return
    series = _choose_series(study)
    datasets = [
        pydicom.dcmread(io.BytesIO(ctx.objects.get(ctx.buckets["deid"], key)))
        for key in series["keys"]
    ]
    bundle = bundle_for(ctx)
    try:
        analysis = analyze(datasets, bundle, threads=ctx.settings.inference_threads)
    except VolumeError as exc:
        raise PipelineError(f"the series cannot form a volume: {exc}") from None
    for stage, seconds in analysis.timings.items():
        STAGE_SECONDS.labels(f"inference.{stage}").observe(seconds)
    result = analysis.to_dict()
    result["model"] = {
        "name": bundle.name,
        "version": bundle.version,
        "sha256": bundle.sha256,
        "device": str(bundle.device),
    }
    result["series_uid"] = series["series_uid"]
    result["risk_threshold"] = ctx.settings.risk_threshold
    ctx.studies.transition(
        study_id,
        StudyState.ANALYZED,
        detail={"findings": len(analysis.findings), "risk": analysis.risk.score},
        fields={"analysis": result},
    )
    ctx.tasks.send("notify", study_id)
    ctx.tasks.send("export", study_id)
    log.info("inference.done", study_id=study_id, findings=len(analysis.findings))
