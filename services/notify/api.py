"""Alert routes: the list with its history, acknowledgement, closing, the signed acknowledgement
link (``/alerts/ack/{token}``: GET shows a confirmation, POST acknowledges) and the rules,
schedules and silences."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Form, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from radpipe.common import blinding
from radpipe.common.alerts import ALERT_CONFIG
from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.errors import BadRequest, Conflict, NotFound
from radpipe.common.studies import now

from . import links, service
from .rules import AlertConfig, Override, Rotation, Schedule, Silence, on_call

router = APIRouter(prefix="/api/alerts", tags=["alerts"])
link_router = APIRouter(prefix="/alerts/ack", tags=["alerts"])
#: Alerts are clinical (they name a finding): no manager, auditor or admin reads them.
Reader = Annotated[Principal, Depends(require("oncall", "radiologist", "resident"))]
Responder = Annotated[Principal, Depends(require("oncall", "radiologist"))]
#: Rules and schedules are the system's: admin only (it sees no alert, which is clinical).
Admin = Annotated[Principal, Depends(require("admin"))]


def _public(alert: dict[str, Any]) -> dict[str, Any]:
    hidden = {"claim", "delivered", "paged"}
    return {("id" if k == "_id" else k): v for k, v in alert.items() if k not in hidden}


@router.get("")
def list_alerts(
    ctx: Ctx,
    caller: Reader,
    open: bool = False,
    state: Literal["open", "acknowledged", "closed", "retracted"] | None = None,
    study: str | None = None,
    urgency: Annotated[int | None, Query(ge=1, le=3)] = None,
    kind: Literal["clinical", "pipeline"] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    found = service.list_alerts(
        ctx,
        open_only=open,
        state=state,
        study_id=study,
        urgency=urgency,
        kind=kind,
        since=since,
        until=until,
        limit=max(1, min(limit, 500)),
    )
    # Residents read first: no alert of a study they have not read yet (common/blinding.py).
    hidden = blinding.hidden_studies(
        ctx.documents, caller, {a.get("study_id") or "" for a in found}
    )
    shown = [_public(a) for a in found if (a.get("study_id") or "") not in hidden]
    AuthService(ctx.documents).audit(
        caller, "alert.list", "alerts", alerts=[a["id"] for a in shown], state=state or ""
    )
    return shown


@router.get("/config")
def get_config(ctx: Ctx, _: Admin) -> dict[str, Any]:
    return service.config_of(ctx).model_dump(mode="json")


@router.put("/config")
def put_config(ctx: Ctx, caller: Admin, config: AlertConfig) -> dict[str, Any]:
    """Replace the rules, deadlines, schedules, people, escalation chain and silences."""
    stored = config.model_dump(mode="json", exclude_unset=True)  # unset: the file's stays
    if "deadlines" in stored:
        stored["deadlines"] = {str(k): v for k, v in config.deadlines.items()}
    ctx.documents.collection("alert_config").update_one(
        {"_id": "config"}, {"$set": stored}, upsert=True
    )
    AuthService(ctx.documents).audit(caller, "alert.config", "config")
    return service.config_of(ctx).model_dump(mode="json")


def _save(
    ctx: Ctx, caller: Principal, action: str, target: str, config: AlertConfig, section: str
) -> AlertConfig:
    """Store one section of the configuration (it then replaces the file's), audited."""
    value = config.model_dump(mode="json")[section]
    ctx.documents.collection(ALERT_CONFIG).update_one(
        {"_id": "config"}, {"$set": {section: value}}, upsert=True
    )
    AuthService(ctx.documents).audit(caller, action, target)
    return service.config_of(ctx)


def _window(starts_at: datetime, ends_at: datetime) -> None:
    if ends_at <= starts_at:
        raise BadRequest("ends_at must be after starts_at")
    if ends_at <= now():
        raise BadRequest("ends_at is in the past: the window would never apply")


def _silence_out(silence: Silence) -> dict[str, Any]:
    at = now()
    return {**silence.model_dump(mode="json"), "active": silence.starts_at <= at < silence.ends_at}


@router.get("/silences")
def list_silences(ctx: Ctx, _: Admin) -> list[dict[str, Any]]:
    """The silences, soonest ending first, each with whether it is in force now."""
    silences = sorted(service.config_of(ctx).silences, key=lambda s: s.ends_at)
    return [_silence_out(s) for s in silences]


@router.post("/silences", status_code=201)
def add_silence(ctx: Ctx, caller: Admin, silence: Silence) -> dict[str, Any]:
    """A new silence (start, end, reason, optional modality, bundle and sender matchers)."""
    _window(silence.starts_at, silence.ends_at)
    with ctx.documents.exclusive():
        config = service.config_of(ctx)
        if any(s.name == silence.name for s in config.silences):
            raise Conflict(f"a silence named {silence.name!r} exists; remove it or pick a name")
        config.silences.append(silence)
        _save(ctx, caller, "alert.silence.add", silence.name, config, "silences")
    return _silence_out(silence)


@router.delete("/silences/{name}")
def remove_silence(name: str, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    with ctx.documents.exclusive():
        config = service.config_of(ctx)
        kept = [s for s in config.silences if s.name != name]
        if len(kept) == len(config.silences):
            raise NotFound(f"no silence named {name!r}")
        config.silences = kept
        _save(ctx, caller, "alert.silence.remove", name, config, "silences")
    return {"name": name, "removed": True}


def _schedule_out(config: AlertConfig, schedule: Schedule) -> dict[str, Any]:
    return {
        **schedule.model_dump(mode="json"),
        "on_call_now": on_call(config, schedule.name, now()),
    }


def _schedule(config: AlertConfig, name: str) -> Schedule:
    found = next((s for s in config.schedules if s.name == name), None)
    if found is None:
        raise NotFound(f"no on-call schedule named {name!r}")
    return found


@router.get("/schedules")
def list_schedules(ctx: Ctx, _: Admin) -> list[dict[str, Any]]:
    """The on-call schedules, each with its overrides and who is on call now."""
    config = service.config_of(ctx)
    return [_schedule_out(config, s) for s in config.schedules]


@router.put("/schedules/{name}")
def put_schedule(name: str, ctx: Ctx, caller: Admin, rotation: Rotation) -> dict[str, Any]:
    """Create the schedule ``name`` or change its rotation (its overrides stay)."""
    with ctx.documents.exclusive():
        config = service.config_of(ctx)
        current = next((s for s in config.schedules if s.name == name), None)
        if current is None:
            current = Schedule(name=name, rotation=rotation)
            config.schedules.append(current)
        current.rotation = rotation
        config = _save(ctx, caller, "alert.schedule.set", name, config, "schedules")
    return _schedule_out(config, _schedule(config, name))


@router.delete("/schedules/{name}")
def remove_schedule(name: str, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    with ctx.documents.exclusive():
        config = service.config_of(ctx)
        _schedule(config, name)
        if any(step.schedule == name for step in config.escalation):
            raise Conflict(f"the escalation chain pages schedule {name!r}: change the chain first")
        config.schedules = [s for s in config.schedules if s.name != name]
        _save(ctx, caller, "alert.schedule.remove", name, config, "schedules")
    return {"name": name, "removed": True}


@router.post("/schedules/{name}/overrides", status_code=201)
def add_override(name: str, ctx: Ctx, caller: Admin, override: Override) -> dict[str, Any]:
    """Someone else on call for a while (a swap, a sick day): overrides win over the rotation."""
    if not override.person.strip():
        raise BadRequest("person names who is on call instead")
    _window(override.starts_at, override.ends_at)
    with ctx.documents.exclusive():
        config = service.config_of(ctx)
        _schedule(config, name).overrides.append(override)
        config = _save(ctx, caller, "alert.schedule.override", name, config, "schedules")
    return _schedule_out(config, _schedule(config, name))


@router.delete("/schedules/{name}/overrides/{number}")
def remove_override(name: str, number: int, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    """Remove override ``number`` (from 1, in the order listed)."""
    with ctx.documents.exclusive():
        config = service.config_of(ctx)
        schedule = _schedule(config, name)
        if not 1 <= number <= len(schedule.overrides):
            raise NotFound(f"schedule {name!r} has no override {number}")
        del schedule.overrides[number - 1]
        config = _save(ctx, caller, "alert.schedule.override-remove", name, config, "schedules")
    return _schedule_out(config, _schedule(config, name))


@router.get("/{alert_id}")
def get_alert(alert_id: str, ctx: Ctx, caller: Reader) -> dict[str, Any]:
    alert = service.get_alert(ctx, alert_id)
    if blinding.hidden_studies(ctx.documents, caller, [alert.get("study_id") or ""]):
        raise NotFound(f"no alert {alert_id}")  # as if absent: its existence is the AI's
    AuthService(ctx.documents).audit(caller, "alert.view", alert_id)
    return _public(alert)


@router.post("/{alert_id}/ack")
def acknowledge(
    alert_id: str, ctx: Ctx, caller: Responder, note: Annotated[str, Body(embed=True)] = ""
) -> dict[str, Any]:
    alert = service.acknowledge(ctx, alert_id, caller.name, note)
    AuthService(ctx.documents).audit(caller, "alert.ack", alert_id)
    return _public(alert)


class Communication(BaseModel):
    told: str
    method: Literal["phone", "in-person", "secure-message", "page", "other"] = "phone"
    read_back: bool = False
    note: str = ""


@router.post("/{alert_id}/close")
def close(
    alert_id: str, ctx: Ctx, caller: Responder, communication: Communication
) -> dict[str, Any]:
    """Record who was told, how and whether they read the result back, then close."""
    alert = service.close(
        ctx,
        alert_id,
        caller.name,
        told=communication.told,
        method=communication.method,
        read_back=communication.read_back,
        note=communication.note,
    )
    AuthService(ctx.documents).audit(caller, "alert.close", alert_id)
    return _public(alert)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        "<!doctype html><html><head><meta charset='utf-8'><meta name='robots' content='noindex'>"
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})


@link_router.get("/{token}", response_class=HTMLResponse)
def confirm_link(token: str, ctx: Ctx) -> HTMLResponse:
    """A confirmation form: a GET never acknowledges (mail scanners fetch links)."""
    alert, link = links.check(ctx, token)
    form = (
        f"<p>Alert {escape(alert['_id'])}: {escape(alert.get('summary', ''))}</p>"
        f"<p>Urgency: ACR category {alert.get('urgency')}; state: {escape(alert['state'])}</p>"
        "<form method='post'><label>Note <input name='note' maxlength='1000'></label> "
        f"<button type='submit'>Acknowledge as {escape(link.recipient)}</button></form>"
    )
    return _page("Acknowledge alert", form)


@link_router.post("/{token}", response_class=HTMLResponse)
def use_link(token: str, ctx: Ctx, note: Annotated[str, Form()] = "") -> HTMLResponse:
    alert = links.use(ctx, token, note)
    who = escape(str(alert.get("acknowledged_by")))
    return _page(
        "Alert acknowledged",
        f"<p>Alert {escape(alert['_id'])} is {escape(alert['state'])} (by {who}).</p>",
    )
