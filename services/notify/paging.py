"""Pages and their timers: claim a due alert, deliver its page, set the next timer.

Every open alert has ``next_page_at``: the time something must happen (deliver the first page,
retry a failed delivery, or re-page after the acknowledgement deadline). Any notify process
claims a due alert with one atomic ``find_one_and_update`` that moves ``next_page_at`` a lease
ahead and stores a claim token; only that claimant writes the outcome (conditioned on its
token and on the alert still being open, so an acknowledgement in between wins). A claimant
killed mid-page loses its lease and another sweeper takes the page over, so with several
notify workers, and across restarts, each page is delivered once per target (a delivery is
recorded the moment the target accepts it; ``X-Radpipe-Delivery`` lets receivers drop the rare
repeat of a delivery whose record was cut off by a crash).
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReturnDocument

from radpipe.common.alerts import AlertState, alerts_of
from radpipe.common.context import Context
from radpipe.common.errors import NotFound
from radpipe.common.keys import Purpose
from radpipe.common.logging import get_logger
from radpipe.common.studies import StudyState, now

from . import channels
from .channels import DeliveryFailed, Message, Target
from .rules import AlertConfig, escalation_step, on_call
from .signing import make_ack_token

log = get_logger("radpipe.notify")
DISCLAIMER = "AI triage notification for prioritisation only; not for diagnosis."
URGENCY_WORDS = {1: "critical (minutes)", 2: "urgent (hours)", 3: "non-urgent (days)"}


def first_page(at: datetime, deadline_seconds: float, *, paged: bool) -> dict[str, Any]:
    """The timer fields of a new alert: page 1 due now (never, when silenced)."""
    return {
        "page": 1,
        "attempt": 0,
        "page_done": False,
        "page_started_at": at,
        "deadline_at": at + timedelta(seconds=deadline_seconds),
        "next_page_at": at if paged else None,
        "claim": None,
        "delivered": [],
        "paged": [],
        "exhausted": False,
    }


def record(
    ctx: Context, alert: dict[str, Any], event: str, detail: dict[str, Any], at: datetime
) -> None:
    """One step: into the alert's history and, for a study's alert, onto its timeline."""
    entry = {"type": event, "at": at, **detail}
    alerts_of(ctx.documents).update_one({"_id": alert["_id"]}, {"$push": {"history": entry}})
    if alert.get("study_id"):
        try:
            ctx.studies.add_event(alert["study_id"], event, {"alert_id": alert["_id"], **detail})
        except NotFound:  # the study was removed (restore of an older backup): history stays
            log.warning("alert.study-missing", alert_id=alert["_id"], step=event)


def channel_targets(ctx: Context) -> list[Target]:
    """The configured channels (used without an escalation chain, and for pipeline alerts)."""
    settings = ctx.settings
    targets = []
    if settings.alert_webhook_url is not None:
        targets.append(Target("webhook", "webhook", str(settings.alert_webhook_url), "webhook"))
    for address in settings.alert_email_to:
        targets.append(Target("email", f"email:{address}", address, address))
    if settings.slack_webhook_url is not None:
        targets.append(
            Target("slack", "slack", settings.slack_webhook_url.get_secret_value(), "slack")
        )
    if settings.teams_webhook_url is not None:
        targets.append(
            Target("teams", "teams", settings.teams_webhook_url.get_secret_value(), "teams")
        )
    return targets


def person_targets(config: AlertConfig, name: str) -> list[Target]:
    person = next((p for p in config.people if p.name == name), None)
    if person is None:
        return []
    targets = []
    if person.email:
        targets.append(Target("email", f"person:{name}:email", person.email, name))
    if person.webhook_url:
        targets.append(Target("webhook", f"person:{name}:webhook", person.webhook_url, name))
    return targets


def targets_for(ctx: Context, config: AlertConfig, page: int, at: datetime) -> list[Target]:
    """Who page ``page`` goes to: the chain's step (its people, its schedule's on-call), or the
    configured channels when there is no chain or the step reaches nobody."""
    step = escalation_step(config, page)
    if step is None:
        return channel_targets(ctx)
    names = list(step[1].people)
    if step[1].schedule:
        person = on_call(config, step[1].schedule, at)
        if person:
            names.append(person)
    targets = [t for name in names for t in person_targets(config, name)]
    return targets or channel_targets(ctx)


def all_targets(ctx: Context, config: AlertConfig) -> dict[str, Target]:
    found = {t.key: t for t in channel_targets(ctx)}
    for person in config.people:
        found.update({t.key: t for t in person_targets(config, person.name)})
    return found


def message_for(
    ctx: Context, alert: dict[str, Any], page: int, kind: str, recipient: str, attempt: int = 1
) -> Message:
    """The message of one page to one recipient: pseudonymous ids and links, never PHI."""
    settings = ctx.settings
    expires = time.time() + settings.ack_link_seconds
    token = make_ack_token(settings.key(Purpose.LINKS), alert["_id"], recipient, expires)
    links = {}
    if alert.get("study_id"):
        links["Open study"] = settings.public(f"studies/{alert['study_id']}")
    if kind != "retraction":
        links["Acknowledge"] = settings.public(f"alerts/ack/{token}")
    urgency = alert.get("urgency", 2)
    title = {
        "alert": "AI alert",
        "re-page": f"AI alert, re-page {page}",
        "retraction": "AI alert retracted",
        "pipeline": "Pipeline alert",
    }[kind]
    subject = f"[Radpipe] {title}: ACR category {urgency}, alert {alert['_id']}"
    lines = [alert.get("summary", "")]
    if kind == "retraction":
        lines.append(f"Retracted: {alert.get('retracted_reason', '')}")
    elif kind != "pipeline":
        risk = (alert.get("risk") or {}).get("score")
        lines.append(f"Urgency: {URGENCY_WORDS.get(urgency, urgency)}; AI risk {risk}")
        lines.append(f"Acknowledge by {alert['deadline_at'].isoformat()}")
    lines.append(DISCLAIMER)
    payload = {
        "type": f"radpipe.{kind}",
        "alert_id": alert["_id"],
        "kind": alert.get("kind", "clinical"),
        "study_id": alert.get("study_id"),
        "version": alert.get("version"),
        "urgency": urgency,
        "risk": alert.get("risk"),
        "summary": alert.get("summary"),
        "count": alert.get("count", 1),
        "page": page,
        "attempt": attempt,
        "repage": kind == "re-page",
        "deadline_at": alert["deadline_at"].isoformat() if alert.get("deadline_at") else None,
        "link": links.get("Open study"),
        "ack_url": links.get("Acknowledge"),
        "created_at": alert["created_at"].isoformat(),
        "disclaimer": DISCLAIMER,
    }
    return Message(kind, f"{alert['_id']}:{page}:{kind}", subject, lines, payload, links)


def lease_of(ctx: Context) -> timedelta:
    """How long a claim holds: never shorter than two channel timeouts, so one slow delivery
    cannot outlive its claim and be sent again by another worker."""
    settings = ctx.settings
    return timedelta(seconds=max(settings.alert_lease_seconds, 2 * settings.alert_timeout_seconds))


def _renew(ctx: Context, alert: dict[str, Any]) -> dict[str, Any] | None:
    """Extend the claim before each delivery; ``None`` once it is lost or acknowledged."""
    renewed: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert["_id"], "claim": alert["claim"], "open": True},
        {"$set": {"next_page_at": now() + lease_of(ctx)}},
        return_document=ReturnDocument.AFTER,
    )
    return renewed


def claim(ctx: Context, at: datetime, alert_id: str | None = None) -> dict[str, Any] | None:
    """Take the earliest due open alert (or ``alert_id`` if due) for one lease."""
    query: dict[str, Any] = {"open": True, "next_page_at": {"$lte": at}}
    if alert_id is not None:
        query["_id"] = alert_id
    claimed: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
        query,
        {"$set": {"next_page_at": at + lease_of(ctx), "claim": secrets.token_hex(8)}},
        sort=[("next_page_at", 1)],
        return_document=ReturnDocument.AFTER,
    )
    return claimed


def _finish(ctx: Context, alert: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any] | None:
    """Write the claimant's outcome unless it lost the claim or the alert was acknowledged."""
    updated: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert["_id"], "claim": alert["claim"], "open": True},
        {"$set": fields},
        return_document=ReturnDocument.AFTER,
    )
    return updated


def page_due(ctx: Context, alert_id: str, at: datetime | None = None) -> bool:
    """Deliver ``alert_id``'s page now if it is due and nobody else holds it."""
    alert = claim(ctx, at or now(), alert_id)
    if alert is None:
        return False
    work(ctx, alert, at or now())
    return True


def sweep(ctx: Context, at: datetime | None = None, limit: int = 100) -> int:
    """Handle every due alert (the periodic task); returns how many were handled."""
    from .pipeline import check_pipeline
    from .service import resume_due

    handled = 0
    moment = at or now()
    try:
        resume_due(ctx, moment)
    except Exception:
        # The backstop must not hold up the pages of this sweep (tried again at the next).
        log.error("sweeper.backstop-failed", exc_info=True)
    check_pipeline(ctx, moment)
    while handled < limit:
        alert = claim(ctx, moment)
        if alert is None:
            break
        work(ctx, alert, moment)
        handled += 1
        moment = at or now()
    return handled


def work(ctx: Context, alert: dict[str, Any], at: datetime) -> None:
    """One claimed turn: start the next page if the deadline passed, deliver what is pending."""
    from .service import config_of

    settings = ctx.settings
    config = config_of(ctx)
    if alert.get("study_id"):
        study = ctx.studies.find(alert["study_id"])
        if study is not None and study["state"] == StudyState.SIGNED:
            _close_signed(ctx, alert, at)
            return
    if alert["page_done"]:
        if alert["page"] >= settings.alert_max_pages:
            if _finish(ctx, alert, {"next_page_at": None, "exhausted": True, "claim": None}):
                record(ctx, alert, "alert.exhausted", {"pages": alert["page"]}, at)
            return
        seconds = alert["deadline_seconds"]
        started = _finish(
            ctx,
            alert,
            {
                "page": alert["page"] + 1,
                "attempt": 0,
                "page_done": False,
                "page_started_at": at,
                "deadline_at": at + timedelta(seconds=seconds),
            },
        )
        if started is None:
            return
        alert = started
        record(ctx, alert, "alert.re-paged", {"page": alert["page"]}, at)
        step = escalation_step(config, alert["page"])
        before = escalation_step(config, alert["page"] - 1)
        if step is not None and before is not None and step[0] != before[0]:
            record(ctx, alert, "alert.escalated", {"page": alert["page"], "step": step[0]}, at)
    _deliver_page(ctx, config, alert, at)


def _deliver_page(ctx: Context, config: AlertConfig, alert: dict[str, Any], at: datetime) -> None:
    page = alert["page"]
    attempt = alert["attempt"] + 1
    kind = "pipeline" if alert.get("kind") == "pipeline" else ("alert" if page == 1 else "re-page")
    failures = 0
    alerts = alerts_of(ctx.documents)
    for target in targets_for(ctx, config, page, at):
        delivered_key = f"{page}|{target.key}"
        current = _renew(ctx, alert)
        if current is None:
            return  # acknowledged meanwhile (no further page), or the claim was taken over
        if delivered_key in current["delivered"]:
            continue
        detail = {"page": page, "attempt": attempt, "channel": target.channel, "to": target.key}
        record(ctx, alert, "alert.sent", detail, now())
        try:
            channels.send(
                ctx.settings, target, message_for(ctx, alert, page, kind, target.recipient, attempt)
            )
        except DeliveryFailed as exc:
            failures += 1
            record(ctx, alert, "alert.failed", {**detail, "reason": exc.reason}, now())
            log.warning("alert.failed", alert_id=alert["_id"], **detail, reason=exc.reason)
            continue
        alerts.update_one(
            {"_id": alert["_id"]}, {"$addToSet": {"delivered": delivered_key, "paged": target.key}}
        )
        alerts.update_one(
            {"_id": alert["_id"], "delivered_at": None}, {"$set": {"delivered_at": now()}}
        )
        record(ctx, alert, "alert.delivered", detail, now())
    done = failures == 0 or attempt >= ctx.settings.alert_delivery_attempts
    if done:
        next_at = alert["deadline_at"]
    else:
        backoff = ctx.settings.alert_retry_seconds * 2 ** (attempt - 1)
        next_at = min(at + timedelta(seconds=backoff), alert["deadline_at"])
    _finish(
        ctx, alert, {"attempt": attempt, "page_done": done, "next_page_at": next_at, "claim": None}
    )


def _close_signed(ctx: Context, alert: dict[str, Any], at: datetime) -> None:
    closed = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert["_id"], "claim": alert["claim"], "open": True},
        {
            "$set": {
                "state": str(AlertState.CLOSED),
                "open": False,
                "next_page_at": None,
                "closed_at": at,
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if closed is not None:
        record(ctx, closed, "alert.closed", {"reason": "study signed"}, at)


def retract(ctx: Context, alert: dict[str, Any], reason: str, at: datetime) -> None:
    """Stop paging and tell whoever was paged that the alert no longer stands."""
    from .service import config_of

    retracted: dict[str, Any] | None = alerts_of(ctx.documents).find_one_and_update(
        {"_id": alert["_id"], "open": True},
        {
            "$set": {
                "state": str(AlertState.RETRACTED),
                "open": False,
                "next_page_at": None,
                "retracted_at": at,
                "retracted_reason": reason,
            }
        },
        return_document=ReturnDocument.AFTER,
    )
    if retracted is None:
        return
    record(ctx, retracted, "alert.retracted", {"reason": reason}, at)
    known = all_targets(ctx, config_of(ctx))
    for key in retracted.get("paged", []):
        target = known.get(key)
        if target is None:
            continue
        message = message_for(ctx, retracted, retracted["page"], "retraction", target.recipient)
        for attempt in range(1, ctx.settings.alert_delivery_attempts + 1):
            detail = {"attempt": attempt, "channel": target.channel, "to": key, "retraction": True}
            try:
                channels.send(ctx.settings, target, message)
            except DeliveryFailed as exc:
                record(ctx, retracted, "alert.failed", {**detail, "reason": exc.reason}, now())
                time.sleep(min(ctx.settings.alert_retry_seconds * 2 ** (attempt - 1), 30))
                continue
            record(ctx, retracted, "alert.delivered", detail, now())
            break
