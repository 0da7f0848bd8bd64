"""Closed-loop alerts: open an alert for a high-risk study, page until someone acknowledges.

The ``notify`` stage (:func:`notify_study`) decides with the rules (``rules.py``) whether the
study's analysis opens an alert, groups it with an open alert of the same study and rule, or
retracts an open one when a re-analysis fell under the threshold. Paging lives in
``paging.py``: every timer is a field of the alert document (``next_page_at``), so timers
survive worker and broker restarts. Every step is recorded twice: in the alert's ``history``
and as an ``alert.*`` event on the study timeline (so TAT covers flag -> acknowledgement ->
communication).

Idempotent: the alert id is the study id plus the version that opened it; a redelivered task
finds the study ``alerted`` (or the alert already holding its version) and changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument

from radpipe.common.alerts import ALERT_CONFIG, OPEN_QUERY, AlertState, alerts_of
from radpipe.common.context import Context
from radpipe.common.errors import Conflict, NotFound
from radpipe.common.logging import get_logger
from radpipe.common.studies import NOTIFY_DUE, StudyState, now

from . import paging
from .rules import AlertConfig, decide, load_config, silenced_by

log = get_logger("radpipe.notify")
DISCLAIMER = paging.DISCLAIMER
#: The silence of an alert whose study lies outside its model's validated input
#: (`radpipe.inference.scope`): opened and shown, nobody paged, unless the alert configuration
#: sets `page_outside_validated_input`.
OUTSIDE_VALIDATED_INPUT = "outside-validated-input"
#: Steps to record on the alert and the study timeline: (event, detail).
Steps = list[tuple[str, dict[str, Any]]]


def config_of(ctx: Context) -> AlertConfig:
    stored = ctx.documents.collection(ALERT_CONFIG).find_one({"_id": "config"}) or {}
    return load_config(ctx.settings.alert_config, {k: v for k, v in stored.items() if k != "_id"})


def _summary(analysis: dict[str, Any]) -> str:
    findings = analysis.get("findings") or []
    if not findings:
        return "no finding"
    largest = max(findings, key=lambda f: f.get("diameter_mm", 0.0))
    return f"{len(findings)} finding(s); largest {largest.get('diameter_mm', 0.0):.1f} mm"


def _source_of(ctx: Context, study_id: str) -> str | None:
    instance = ctx.studies.instances.find_one({"study_id": study_id})
    return (instance or {}).get("source")


def notify_study(ctx: Context, study_id: str, at: datetime | None = None) -> None:
    """The ``notify`` stage: open (or group, or retract) the study's alert, send the first page."""
    at = at or now()
    study = ctx.studies.get(study_id)
    if study["state"] != StudyState.ANALYZED:
        if NOTIFY_DUE in study:  # re-opened since: the new version is analysed again
            ctx.studies.clear_notify_due(study_id)
        return  # signed, failed, re-opened, or already alerted (a redelivered task)
    config = config_of(ctx)
    decision = decide(config, ctx.settings.risk_threshold, study)
    risk = (study.get("analysis") or {}).get("risk") or {}
    if decision is None:
        if not any(
            e["type"] == "alert.not-required" and e.get("version") == study["version"]
            for e in study.get("events", [])
        ):
            ctx.studies.add_event(
                study_id,
                "alert.not-required",
                {"risk": risk.get("score"), "threshold": ctx.settings.risk_threshold},
            )
        for alert in _open_alerts_of(ctx, study_id):
            paging.retract(ctx, alert, f"re-analysis v{study['version']} under the threshold", at)
        ctx.studies.clear_notify_due(study_id)
        return
    # The steps are recorded after the ``alerted`` transition, so the timeline reads
    # analyzed -> alerted -> alert.opened -> alert.sent ...
    alert, steps = _group(ctx, study, decision.rule, at) or _open(ctx, study, decision, config, at)
    ctx.studies.transition(
        study_id,
        StudyState.ALERTED,
        detail={"alert_id": alert["_id"], "urgency": alert["urgency"]},
        fields={
            "alert": {"id": alert["_id"], "channel": alert["channel"], "urgency": alert["urgency"]}
        },
    )
    for event, detail in steps:
        paging.record(ctx, alert, event, detail, at)
    if alert["created_version"] == study["version"]:
        paging.page_due(ctx, alert["_id"], at)
    log.info("alert.opened", study_id=study_id, alert_id=alert["_id"], urgency=alert["urgency"])


def resume_due(ctx: Context, at: datetime, limit: int = 20) -> int:
    """The sweeper's backstop: decide the alert of each study ``analyzed`` for longer than
    ``NOTIFY_BACKSTOP`` with no decision yet, here, without the broker; returns how many.

    The ``notify`` task is normally done within a second. One prefetched by a worker when the
    broker restarted waits in the broker's unacked set for the visibility timeout (15 min by
    default): a high-risk alert must not wait with it. Deciding twice changes nothing (see
    :func:`notify_study`), so the late task, when it comes, finds the study ``alerted``.
    """
    resumed = 0
    for study in ctx.studies.notify_due(at, limit):
        if not ctx.studies.claim_notify_due(study["_id"], study[NOTIFY_DUE], at):
            continue  # another notify worker's sweeper has it
        if study["state"] == StudyState.ANALYZED:
            log.warning("notify.backstop", study_id=study["_id"], version=study.get("version"))
            resumed += 1
        notify_study(ctx, study["_id"], at)
    return resumed


def _open_alerts_of(ctx: Context, study_id: str) -> list[dict[str, Any]]:
    cursor = alerts_of(ctx.documents).find({"study_id": study_id, **OPEN_QUERY})
    return list(cursor.sort("created_at", -1).limit(20))


def _group(
    ctx: Context, study: dict[str, Any], rule: str, at: datetime
) -> tuple[dict[str, Any], Steps] | None:
    """Count a re-analysis into an open alert of the same study and rule within the window."""
    window = timedelta(seconds=ctx.settings.alert_group_seconds)
    for alert in _open_alerts_of(ctx, study["_id"]):
        if alert.get("rule") != rule or alert["created_at"] < at - window:
            continue
        if alert.get("last_version", 0) >= study["version"]:
            return alert, []  # this version was counted already (a redelivered task)
        analysis = study.get("analysis") or {}
        grouped: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
            {"_id": alert["_id"], "last_version": {"$lt": study["version"]}},
            {
                "$inc": {"count": 1},
                "$set": {
                    "last_version": study["version"],
                    "last_seen_at": at,
                    "risk": _risk(analysis),
                    "summary": _summary(analysis),
                },
            },
            return_document=ReturnDocument.AFTER,
        )
        if grouped is None:
            return alert, []
        return grouped, [("alert.grouped", {"count": grouped["count"]})]
    return None


def _risk(analysis: dict[str, Any]) -> dict[str, Any]:
    risk = analysis.get("risk") or {}
    return {k: risk.get(k) for k in ("score", "category", "rule")}


def _open(
    ctx: Context, study: dict[str, Any], decision: Any, config: AlertConfig, at: datetime
) -> tuple[dict[str, Any], Steps]:
    analysis = study.get("analysis") or {}
    seconds = config.deadline_seconds(decision.urgency, ctx.settings.ack_timeout_seconds)
    silence = silenced_by(config, study, _source_of(ctx, study["_id"]), at)
    scope = analysis.get("input_scope") or {}
    outside = scope.get("within") is False and not config.page_outside_validated_input
    silenced = silence.name if silence else OUTSIDE_VALIDATED_INPUT if outside else None
    targets = paging.targets_for(ctx, config, 1, at)
    alert_id = f"{study['_id']}-v{study['version']}"
    alerts = alerts_of(ctx.documents)
    before = alerts.find_one_and_update(
        {"_id": alert_id},
        {
            "$setOnInsert": {
                "kind": "clinical",
                "study_id": study["_id"],
                "version": study["version"],
                "created_version": study["version"],
                "last_version": study["version"],
                "count": 1,
                "rule": decision.rule,
                "urgency": decision.urgency,
                "threshold": decision.threshold,
                "risk": _risk(analysis),
                "summary": _summary(analysis),
                "deadline_seconds": seconds,
                "state": str(AlertState.OPEN),
                "open": True,
                "silenced": silenced,
                "created_at": at,
                "last_seen_at": at,
                "channel": targets[0].channel if targets else "portal",
                **paging.first_page(at, seconds, paged=silenced is None),
                "delivered_at": None,
                "acknowledged_at": None,
                "acknowledged_by": None,
                "history": [],
            }
        },
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    alert: dict[str, Any] = alerts.find_one({"_id": alert_id}) or {}
    if before is not None:
        return alert, []  # opened by an earlier delivery of this task
    detail = {"urgency": decision.urgency, "rule": decision.rule, "deadline_s": seconds}
    steps: Steps = [("alert.opened", detail)]
    if silence is not None:
        steps.append(("alert.silenced", {"silence": silence.name}))
    elif outside:
        steps.append(("alert.silenced", {"silence": silenced, "reasons": scope.get("reasons")}))
    return alert, steps


def list_alerts(
    ctx: Context,
    *,
    open_only: bool = False,
    state: str | None = None,
    study_id: str | None = None,
    urgency: int | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alerts newest first; each filter has an index (``common/alerts.py``)."""
    query: dict[str, Any] = dict(OPEN_QUERY) if open_only else {}
    if state:
        query["state"] = state
    if study_id:
        query["study_id"] = study_id
    if urgency:
        query["urgency"] = urgency
    if kind:
        query["kind"] = kind
    created: dict[str, Any] = {}
    if since:
        created["$gte"] = since
    if until:
        created["$lt"] = until
    if created:
        query["created_at"] = created
    return list(alerts_of(ctx.documents).find(query).sort("created_at", -1).limit(limit))


def get_alert(ctx: Context, alert_id: str) -> dict[str, Any]:
    alert: dict[str, Any] | None = alerts_of(ctx.documents).find_one({"_id": alert_id})
    if alert is None:
        raise NotFound(f"alert {alert_id} does not exist")
    return alert


def acknowledge(
    ctx: Context,
    alert_id: str,
    who: str,
    note: str = "",
    via: str = "api",
    at: datetime | None = None,
) -> dict[str, Any]:
    """A person took the alert: no further page. The first acknowledgement stands."""
    at = at or now()
    get_alert(ctx, alert_id)
    first: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert_id, "state": str(AlertState.OPEN)},
        {
            "$set": {
                "state": str(AlertState.ACKNOWLEDGED),
                "open": False,
                "next_page_at": None,
                "acknowledged_at": at,
                "acknowledged_by": who,
                "acknowledged_via": via,
                "note": note[:1000],
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if first is None:  # acknowledged, closed or retracted before: that stands
        return get_alert(ctx, alert_id)
    paging.record(ctx, first, "alert.acknowledged", {"by": who, "via": via}, at)
    log.info("alert.acknowledged", alert_id=alert_id, via=via)
    return get_alert(ctx, alert_id)


def close(
    ctx: Context,
    alert_id: str,
    who: str,
    *,
    told: str,
    method: str,
    read_back: bool,
    note: str = "",
    at: datetime | None = None,
) -> dict[str, Any]:
    """Document the communication (who was told, how, when, read-back) and close the alert."""
    at = at or now()
    alert = get_alert(ctx, alert_id)
    if alert["state"] == AlertState.OPEN:
        acknowledge(ctx, alert_id, who, note, at=at)
    communication = {
        "by": who,
        "told": told[:200],
        "method": method[:50],
        "read_back": read_back,
        "at": at,
        "note": note[:1000],
    }
    closed: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert_id, "state": str(AlertState.ACKNOWLEDGED)},
        {
            "$set": {
                "state": str(AlertState.CLOSED),
                "closed_at": at,
                "communication": communication,
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if closed is None:
        raise Conflict(f"alert {alert_id} is {get_alert(ctx, alert_id)['state']}; it cannot close")
    detail = {k: v for k, v in communication.items() if k not in ("at", "note")}
    paging.record(ctx, closed, "alert.communicated", detail, at)
    paging.record(ctx, closed, "alert.closed", {"by": who}, at)
    return get_alert(ctx, alert_id)
