"""Pipeline alerts (the operations side): failed (dead-lettered) and stuck studies page the
admins through the same channels, with the stage and the reason.

Run by the sweeper. Each finding is one alert whose id names the study, version and problem,
upserted with ``$setOnInsert``, so a study is paged about once however often the sweeper
looks. Queries go through the study indexes (``state``, ``updated_at``).

Model monitoring (``radpipe.common.monitoring``, docs/monitoring.md) pages too: input drift
against the bundle's training data (rule ``model.drift``) and a reader PPV under the threshold
(``model.ppv``), per model version. A condition that starts holding opens one alert for its
episode (the episode number is in the alert id); it is paged again only after it has cleared
and come back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument

from radpipe.common import monitoring
from radpipe.common.alerts import AlertState, alerts_of
from radpipe.common.context import Context
from radpipe.common.logging import get_logger
from radpipe.common.queues import inference_queue
from radpipe.common.studies import StudyState

from . import paging

log = get_logger("radpipe.notify.pipeline")
#: A study waiting longer than this in a state is stuck (seconds).
#: (``analyzed`` is where a study under the threshold rests until it is signed.)
STUCK_AFTER: dict[str, float] = {
    StudyState.RECEIVED: 6 * 3600,
    StudyState.STABLE: 1800,
    StudyState.DEIDENTIFIED: 3600,
}
#: Failed studies are looked for back to this far (older ones were paged before).
LOOKBACK = timedelta(days=2)
#: A stage's queue without a consumer this long pages (workers take a while to start).
NO_WORKER_GRACE = timedelta(minutes=2)
_missing_since: dict[str, datetime] = {}
#: Model figures are checked at most this often per process (they move with each study).
MODEL_CHECK_EVERY = timedelta(seconds=30)
_models_checked: dict[int, datetime] = {}


def check_pipeline(ctx: Context, at: datetime) -> int:
    """Open a pipeline alert for each newly failed or stuck study; returns how many."""
    opened = 0
    failed = ctx.studies.studies.find(
        {"state": str(StudyState.FAILED), "updated_at": {"$gte": at - LOOKBACK}}
    ).limit(500)
    for study in failed:
        failure = study.get("failure") or {}
        reason = f"failed in {failure.get('stage', '?')}: {failure.get('reason', '')}"[:300]
        opened += _open(ctx, study, "failed", failure.get("stage", "?"), reason, at, "failed")
    for state, seconds in STUCK_AFTER.items():
        cutoff = at - timedelta(seconds=seconds)
        stuck = ctx.studies.studies.find({"state": str(state), "updated_at": {"$lt": cutoff}})
        for study in stuck.limit(100):
            reason = f"stuck in {state} for more than {seconds:.0f} s"
            opened += _open(ctx, study, f"stuck-{state}", str(state), reason, at, "stuck")
    last = _models_checked.get(id(ctx.documents))
    if last is None or not timedelta(0) <= at - last < MODEL_CHECK_EVERY:
        _models_checked[id(ctx.documents)] = at
        try:
            opened += check_models(ctx, at)
        except Exception:
            # Monitoring must never hold up the pages of this sweep (logged with its traceback;
            # tried again in MODEL_CHECK_EVERY).
            log.error("pipeline.model-check-failed", exc_info=True)
    return opened


def check_models(ctx: Context, at: datetime) -> int:
    """Page the admins once per episode of input drift or low reader PPV of a model version
    (``model.drift``, ``model.ppv``); returns how many alerts were opened."""
    opened = 0
    for figures in monitoring.summaries(ctx.documents, ctx.settings):
        key = figures["model"]
        for name, condition in figures["conditions"].items():
            turned = monitoring.set_condition(ctx.documents, key, name, condition["active"])
            if not condition["active"]:
                continue
            stats = monitoring.stats_of(ctx.documents, key) or {}
            number = turned or monitoring.episode(stats, name)
            extra = {"model": key, "condition": f"model.{name}"}
            problem = f"model.{name}-{key}-e{number}"
            reason = f"Model monitoring: {condition['reason']}"
            opened += _open(ctx, None, problem, "model", reason, at, f"model.{name}", extra)
    return opened


def check_workers(ctx: Context, at: datetime, live: set[str]) -> int:
    """Page when a stage's queue has had no live consumer for ``NO_WORKER_GRACE`` (one alert
    per queue and day while it lasts); ``live`` are the queues some worker consumes now."""
    expected = {"deid", inference_queue(ctx.settings), "notify"}
    if ctx.settings.export_stow_url or ctx.settings.export_dimse:
        expected.add("export")
    opened = 0
    for queue in sorted(expected):
        if queue in live:
            _missing_since.pop(queue, None)
            continue
        since = _missing_since.setdefault(queue, at)
        if at - since < NO_WORKER_GRACE:
            continue
        reason = f"no live worker consumes queue {queue} since {since.isoformat()}"
        problem = f"no-worker-{queue}-{at:%Y%m%d}"
        opened += _open(ctx, None, problem, queue, reason, at, "no-worker")
    return opened


def _open(
    ctx: Context,
    study: dict[str, Any] | None,
    problem: str,
    stage: str,
    reason: str,
    at: datetime,
    rule: str,
    extra: dict[str, Any] | None = None,
) -> int:
    if study is None:
        alert_id, study_id, version, summary = f"pipeline-{problem}", None, None, reason
    else:
        study_id, version = study["_id"], study.get("version", 1)
        alert_id = f"pipeline-{problem}-{study_id}-v{version}"
        summary = f"Pipeline: study {study_id} {reason}"
    if alerts_of(ctx.documents).find_one({"_id": alert_id}) is not None:
        return 0  # paged before (a read: the sweeper looks every few seconds)
    seconds = ctx.settings.ack_timeout_seconds or 4 * 3600
    before = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert_id},
        {
            "$setOnInsert": {
                "kind": "pipeline",
                "study_id": study_id,
                "version": version,
                "urgency": 2,
                "rule": f"pipeline-{rule}",
                "stage": stage,
                "summary": summary,
                "count": 1,
                "deadline_seconds": seconds,
                "state": str(AlertState.OPEN),
                "open": True,
                "created_at": at,
                "channel": "pipeline",
                **paging.first_page(at, seconds, paged=True),
                "delivered_at": None,
                "acknowledged_at": None,
                "acknowledged_by": None,
                "history": [],
                **(extra or {}),
            }
        },
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    if before is not None:
        return 0
    alert = alerts_of(ctx.documents).find_one({"_id": alert_id}) or {"_id": alert_id}
    paging.record(ctx, alert, "alert.opened", {"kind": "pipeline", "stage": stage}, at)
    return 1
