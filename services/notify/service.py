"""Alerts for high-risk studies: one JSON webhook per analysed version, no PHI in it.

Idempotent: the alert document's id is the study id plus its version, and the webhook is
posted only while that alert is not yet marked delivered.
"""

from __future__ import annotations

from typing import Any

import httpx
from pymongo import ReturnDocument

from radpipe.common.context import Context
from radpipe.common.errors import NotFound, TransientError
from radpipe.common.logging import get_logger
from radpipe.common.studies import ALERTS, StudyState, now

log = get_logger("radpipe.notify")
DISCLAIMER = "AI triage notification for prioritisation only; not for diagnosis."


def alert_payload(ctx: Context, alert: dict[str, Any]) -> dict[str, Any]:
    """The webhook body: pseudonymous ids, risk and a portal link, never an identifier."""
    return {
        "type": "radpipe.alert",
        "alert_id": alert["_id"],
        "study_id": alert["study_id"],
        "version": alert["version"],
        "risk": alert["risk"],
        "summary": alert["summary"],
        "link": ctx.settings.public(f"studies/{alert['study_id']}"),
        "created_at": alert["created_at"].isoformat(),
        "disclaimer": DISCLAIMER,
    }


def _summary(analysis: dict[str, Any]) -> str:
    findings = analysis.get("findings") or []
    if not findings:
        return "no finding"
    largest = max(findings, key=lambda f: f.get("diameter_mm", 0.0))
    return f"{len(findings)} finding(s); largest {largest.get('diameter_mm', 0.0):.1f} mm"


def post_webhook(url: str, payload: dict[str, Any], timeout: float) -> None:
    try:
        response = httpx.post(url, json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        raise TransientError(f"alert webhook unreachable: {type(exc).__name__}") from exc
    if response.status_code >= 300:
        raise TransientError(f"alert webhook answered HTTP {response.status_code}")


def notify_study(ctx: Context, study_id: str) -> None:
    """The ``notify`` stage: alert when the risk is at or above ``RADPIPE_RISK_THRESHOLD``."""
    study = ctx.studies.get(study_id)
    if study["state"] != StudyState.ANALYZED:
        return
    analysis = study.get("analysis") or {}
    risk = analysis.get("risk") or {}
    threshold = ctx.settings.risk_threshold
    if float(risk.get("score", 0.0)) < threshold:
        if not any(
            e["type"] == "alert.not-required" and e.get("version") == study["version"]
            for e in study.get("events", [])
        ):
            ctx.studies.add_event(
                study_id, "alert.not-required", {"risk": risk.get("score"), "threshold": threshold}
            )
        return
    alerts = ctx.documents.collection(ALERTS)
    alert_id = f"{study_id}-v{study['version']}"
    alerts.update_one(
        {"_id": alert_id},
        {
            "$setOnInsert": {
                "study_id": study_id,
                "version": study["version"],
                "risk": {k: risk.get(k) for k in ("score", "category", "rule")},
                "summary": _summary(analysis),
                "created_at": now(),
                "delivered_at": None,
                "acknowledged_at": None,
                "acknowledged_by": None,
            }
        },
        upsert=True,
    )
    alert = alerts.find_one({"_id": alert_id})
    assert alert is not None
    channel = "portal"
    if ctx.settings.alert_webhook_url is not None and alert.get("delivered_at") is None:
        post_webhook(
            str(ctx.settings.alert_webhook_url),
            alert_payload(ctx, alert),
            ctx.settings.alert_timeout_seconds,
        )
        channel = "webhook"
    alerts.update_one({"_id": alert_id}, {"$set": {"delivered_at": now(), "channel": channel}})
    ctx.studies.transition(
        study_id,
        StudyState.ALERTED,
        detail={"alert_id": alert_id, "channel": channel},
        fields={"alert": {"id": alert_id, "channel": channel}},
    )
    log.info("alert.sent", study_id=study_id, alert_id=alert_id, channel=channel)


def list_alerts(ctx: Context, *, open_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    query: dict[str, Any] = {"acknowledged_at": None} if open_only else {}
    return list(ctx.documents.collection(ALERTS).find(query).sort("created_at", -1).limit(limit))


def acknowledge(ctx: Context, alert_id: str, who: str, note: str = "") -> dict[str, Any]:
    """Close the loop: who acknowledged, when, and what was communicated."""
    alerts = ctx.documents.collection(ALERTS)
    if alerts.find_one({"_id": alert_id}) is None:
        raise NotFound(f"alert {alert_id} does not exist")
    first = alerts.find_one_and_update(
        {"_id": alert_id, "acknowledged_at": None},
        {"$set": {"acknowledged_at": now(), "acknowledged_by": who, "note": note[:1000]}},
        return_document=ReturnDocument.AFTER,
    )
    if first is None:  # acknowledged before: the first acknowledgement stands
        alert: dict[str, Any] = alerts.find_one({"_id": alert_id}) or {}
        return alert
    ctx.studies.add_event(
        first["study_id"], "alert.acknowledged", {"alert_id": alert_id, "by": who}
    )
    return dict(first)
