"""Alert routes: the list and the acknowledgement that stops escalation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal

from . import service

router = APIRouter(prefix="/api/alerts", tags=["alerts"])
Reader = Annotated[
    Principal, Depends(require("oncall", "radiologist", "resident", "manager", "auditor"))
]
Responder = Annotated[Principal, Depends(require("oncall", "radiologist"))]


def _public(alert: dict[str, Any]) -> dict[str, Any]:
    return {("id" if k == "_id" else k): v for k, v in alert.items()}


@router.get("")
def list_alerts(ctx: Ctx, _: Reader, open: bool = False) -> list[dict[str, Any]]:
    return [_public(a) for a in service.list_alerts(ctx, open_only=open)]


@router.post("/{alert_id}/ack")
def acknowledge(
    alert_id: str, ctx: Ctx, caller: Responder, note: Annotated[str, Body(embed=True)] = ""
) -> dict[str, Any]:
    alert = service.acknowledge(ctx, alert_id, caller.name, note)
    AuthService(ctx.documents).audit(caller, "alert.ack", alert_id)
    return _public(alert)
