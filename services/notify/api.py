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
from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.errors import NotFound

from . import links, service
from .rules import AlertConfig

router = APIRouter(prefix="/api/alerts", tags=["alerts"])
link_router = APIRouter(prefix="/alerts/ack", tags=["alerts"])
Reader = Annotated[
    Principal, Depends(require("oncall", "radiologist", "resident", "manager", "auditor"))
]
Responder = Annotated[Principal, Depends(require("oncall", "radiologist"))]
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
    return [_public(a) for a in found if (a.get("study_id") or "") not in hidden]


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


@router.get("/{alert_id}")
def get_alert(alert_id: str, ctx: Ctx, caller: Reader) -> dict[str, Any]:
    alert = service.get_alert(ctx, alert_id)
    if blinding.hidden_studies(ctx.documents, caller, [alert.get("study_id") or ""]):
        raise NotFound(f"no alert {alert_id}")  # as if absent: its existence is the AI's
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
