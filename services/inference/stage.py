"""The ``inference`` stage: route a de-identified series to a MONAI bundle, run it, store results.

The model logic lives in ``service.py`` (the pipeline of pure stages in ``volume.py``,
``model.py``, ``findings.py``, ``risk.py``), the result objects in ``outputs.py`` (with
``seg.py``, ``sr.py``, ``key_images.py``); this module does the I/O around them: read the
series, write DICOM SEG, TID 1500 SR and key images into the ``results`` bucket, index them so
QIDO-RS/WADO-RS serve them in the study, and record findings with their provenance.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

from radpipe.common.context import Context
from radpipe.common.dicomindex import add_all_to_index, index_document
from radpipe.common.dicomio import write_part10
from radpipe.common.errors import PipelineError
from radpipe.common.identity import RESULT_UIDS, pseudonymous_uid
from radpipe.common.logging import get_logger
from radpipe.common.metrics import STAGE_SECONDS
from radpipe.common.monitoring import record_analysis
from radpipe.common.studies import StudyState, now

from .bundle import Bundle, select_device
from .outputs import build_results
from .registry import Entry, discover, route
from .result_context import UnsupportedSources
from .scope import check_input, geometry
from .service import VolumeError, analyze
from .zoo import BundleError, ZooBundle, load_model

log = get_logger("radpipe.inference")
#: Object-store reads and writes in flight at once per study (I/O waits, not CPU).
IO_THREADS = 8
_bundles: dict[Path, Bundle | ZooBundle] = {}
_bundles_lock = threading.Lock()


def bundle_for(ctx: Context, entry: Entry) -> Bundle | ZooBundle:
    """The bundle of a registry entry (Radpipe's format or a MONAI Model Zoo one), loaded
    once per worker process; one whose files differ from its recorded sha256 manifest is
    refused (``PipelineError`` naming ``radpipe models verify``)."""
    with _bundles_lock:
        if entry.path not in _bundles:
            try:
                _bundles[entry.path] = load_model(
                    entry.path, select_device(ctx.settings.inference_device)
                )
            except (BundleError, ValueError) as exc:
                raise PipelineError(str(exc)) from None
        return _bundles[entry.path]


#: States a study is in once its findings are recorded (the notify stage and the reader move
#: it on from ``analyzed``).
RECORDED = (StudyState.ANALYZED, StudyState.ALERTED, StudyState.SIGNED)


def analyze_study(ctx: Context, study_id: str) -> None:
    """Route, run the model, record the findings and hand the study to ``notify`` at once;
    then write the result objects (SEG, SR, key images) and hand it to ``export``.

    The alert does not wait for the result objects (~0.2-0.6 s of DICOM building and stores
    on 2 cores): until they are stored the analysis says ``outputs_pending`` and the viewer
    shows the study without its overlay. A worker lost in between leaves ``outputs_pending``
    set; the redelivered task runs the model again and writes them (result UIDs are keyed on
    the study and its version, so nothing is stored twice).
    """
    study = ctx.studies.get(study_id)
    recorded = study.get("analysis") or {}
    if study["state"] in RECORDED and recorded.get("outputs_pending"):
        _run(ctx, study, resume=True)
        return
    if study["state"] == StudyState.ANALYZED:  # redelivered after the hand-offs were lost
        ctx.tasks.send("notify", study_id)
        ctx.tasks.send("export", study_id)
        return
    if study["state"] != StudyState.DEIDENTIFIED:
        log.info("inference.skip", study_id=study_id, state=study["state"])
        return
    _run(ctx, study, resume=False)


def _run(ctx: Context, study: dict[str, Any], *, resume: bool) -> None:
    study_id = study["_id"]
    started = time.perf_counter()
    queued = 0.0 if resume else _queued_seconds(study)
    entry, series, rule = route(
        discover(ctx.settings.models_dir, ctx.documents),  # with the admin's overrides
        (study.get("deid") or {}).get("series", []),
    )
    bundle = bundle_for(ctx, entry)

    def read(key: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(ctx.objects.get(ctx.buckets["deid"], key)))

    # Each instance read once, several at a time: an object store answers each request after
    # its own round trip (S3) or file open and read; one after the other, they add up.
    with ThreadPoolExecutor(IO_THREADS) as pool:
        datasets = list(pool.map(read, series["keys"]))
    load_seconds = time.perf_counter() - started
    try:
        analysis = analyze(
            datasets,
            bundle,
            threads=ctx.settings.inference_threads,
            max_pixel_bytes=ctx.settings.max_pixel_bytes,
            max_frame_bytes=ctx.settings.max_frame_bytes,
        )
    except VolumeError as exc:
        raise PipelineError(f"the series cannot form a volume: {exc.reason}") from None
    except Exception as exc:  # a failing model is a permanent, per-study reason
        log.error("inference.model_failed", study_id=study_id, error=type(exc).__name__)
        raise PipelineError(
            f"bundle {bundle.name} {bundle.version} failed ({type(exc).__name__}); "
            "check the bundle with scripts/train_demo_bundle.py or its own tests"
        ) from None
    timings = {"queue": queued, "load": load_seconds, **analysis.timings}
    result = analysis.to_dict()
    result["timings"] = {k: round(v, 4) for k, v in timings.items()}
    result["model"] = {
        "name": bundle.name,
        "version": bundle.version,
        "sha256": bundle.sha256,
        "device": str(bundle.device),
        "rule": rule.describe(),
        "format": analysis.model.get("format", "radpipe"),  # or "monai-zoo"
        "kind": analysis.kind,  # segmentation | detection | classification
    }
    if isinstance(bundle, Bundle) and bundle.candidates is not None:  # a second stage
        result["model"]["candidate_classifier"] = bundle.to_dict()["candidate_classifier"]
    result["series_uid"] = series["series_uid"]
    volume = getattr(analysis, "volume", None)
    if volume is not None:  # the bundle's validated input (`scope.py`), when it declares one
        measured = geometry(volume.spacing, getattr(volume, "slice_thickness", None))
        scope = check_input(getattr(bundle, "validated_input", {}), measured)
        if scope is not None:
            result["input_scope"] = scope
            if not scope["within"]:
                log.info("inference.outside-validated-input", study_id=study_id, **measured)
    result["risk_threshold"] = ctx.settings.risk_threshold
    result["outputs"] = []
    result["outputs_pending"] = True
    if not resume:
        # Input statistics for model monitoring (docs/monitoring.md), once per study version.
        volume, path = getattr(analysis, "volume", None), bundle.path
        record_analysis(ctx.documents, study_id, study["version"], result["model"], volume, path)
        ctx.studies.transition(
            study_id,
            StudyState.ANALYZED,
            detail={"findings": len(analysis.findings), "risk": analysis.risk.score},
            fields={"analysis": result},
        )
        ctx.tasks.send("notify", study_id)  # the alert does not wait for the result objects

    write_started = time.perf_counter()
    outputs = _store_results(ctx, study_id, study["version"], datasets, analysis)
    timings["write"] = time.perf_counter() - write_started
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(f"inference.{stage}").observe(seconds)
    result["timings"] = {k: round(v, 4) for k, v in timings.items()}
    result["outputs"] = outputs
    result["outputs_pending"] = False
    if not ctx.studies.set_fields(study_id, {"analysis": result}, version=study["version"]):
        log.info("inference.superseded", study_id=study_id, version=study["version"])
        return  # re-opened meanwhile: the new version is analysed on its own
    if resume and study["state"] == StudyState.ANALYZED:
        ctx.tasks.send("notify", study_id)
    ctx.tasks.send("export", study_id)
    log.info("inference.done", study_id=study_id, findings=len(analysis.findings))


def _store_results(
    ctx: Context,
    study_id: str,
    version: int,
    datasets: Sequence[pydicom.Dataset],
    analysis: Any,
) -> list[dict[str, str]]:
    """Write SEG, SR, key images (DICOM and PNG) to ``results`` and index the DICOM ones.

    UIDs are keyed on the study and its version, so a redelivered task rewrites the same
    objects instead of adding copies; a re-opened study (version + 1) gets new ones.
    """
    secret = RESULT_UIDS  # no key: this worker holds none (RADPIPE_KEYLESS)

    def uid(purpose: str) -> str:
        return pseudonymous_uid(secret, f"result:{study_id}:v{version}:{purpose}")

    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    order = [reference.split("#")[0] for reference in analysis.input_sop_uids]
    sources = [by_uid[u] for u in dict.fromkeys(order)]
    try:  # frames of a multi-frame source are referenced by their frame numbers
        results = build_results(sources, analysis.volume, analysis, uid=uid)
    except UnsupportedSources as exc:  # frames spread over several multi-frame instances
        log.warning("inference.no_result_objects", study_id=study_id, reason=str(exc)[:200])
        return []
    bucket = ctx.buckets["results"]
    stored: list[dict[str, str]] = []
    writes: list[tuple[str, bytes, str]] = []
    for obj in results.objects:
        ds = obj.dataset
        key = f"{study_id}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        writes.append((key, write_part10(ds), "application/dicom"))
        stored.append(
            {
                "kind": obj.kind,
                "key": key,
                "series_uid": str(ds.SeriesInstanceUID),
                "sop_instance_uid": str(ds.SOPInstanceUID),
            }
        )
    for name, png in results.pngs:
        key = f"{study_id}/v{version}/{name}"
        writes.append((key, png, "image/png"))
        stored.append({"kind": "png", "key": key})
    # The objects are stored together (each put waits for its own fsync or round trip), and
    # indexed once all are stored: QIDO-RS never lists an object WADO-RS cannot serve yet.
    with ThreadPoolExecutor(IO_THREADS) as pool:
        list(pool.map(lambda write: ctx.objects.put(bucket, *write), writes))
    add_all_to_index(  # one transaction
        ctx.documents,
        [
            index_document(obj.dataset, study_id, entry["key"], bucket)
            for obj, entry in zip(results.objects, stored, strict=False)
        ],
    )
    return stored


def _queued_seconds(study: dict[str, Any]) -> float:
    """Seconds from the study's ``deidentified`` event to this task's start: the queue hop,
    from the timeline's own timestamps (bench/pipeline.py breaks the latency down with it)."""
    at = next(
        (
            event["at"]
            for event in reversed(study.get("events", []))
            if event["type"] == StudyState.DEIDENTIFIED
            and event.get("version", 1) == study.get("version", 1)
        ),
        None,
    )
    if not isinstance(at, datetime):
        return 0.0
    return max(0.0, (now() - (at if at.tzinfo else at.replace(tzinfo=UTC))).total_seconds())
