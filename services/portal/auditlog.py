"""``GET /api/audit``: the audit log for the ``auditor`` role, newest first, with filters.

The log is hash-chained (``radpipe.common.audit``); ``radpipe audit verify`` checks it. Reading
it is itself audited (``audit.read``), so who looked at the trail is on the trail.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from radpipe.common.api import Ctx, require
from radpipe.common.audit import AuditLog
from radpipe.common.auth import AuthService, Principal

router = APIRouter(tags=["audit"])
Auditor = Annotated[Principal, Depends(require("auditor"))]


def _utc(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("/api/audit")
def read_audit(
    ctx: Ctx,
    caller: Auditor,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """Entries matching every filter (``since`` inclusive, ``until`` exclusive; a time without
    a zone is UTC), newest first, ``limit`` at a time from ``offset``; and the total."""
    entries, total = AuditLog(ctx.documents).search(
        actor=actor,
        action=action,
        target=target,
        since=_utc(since),
        until=_utc(until),
        offset=offset,
        limit=limit,
    )
    filters = {k: v for k, v in (("actor", actor), ("action", action), ("target", target)) if v}
    AuthService(ctx.documents).audit(caller, "audit.read", "audit", offset=offset, filters=filters)
    return {"total": total, "offset": offset, "limit": limit, "entries": entries}
