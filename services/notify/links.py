"""The signed, single-use, expiring acknowledgement link (``signing.py`` makes and reads it)."""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from radpipe.common.alerts import ALERT_TOKENS
from radpipe.common.context import Context
from radpipe.common.errors import Conflict
from radpipe.common.studies import now

from . import service
from .signing import AckLink, read_ack_token


def check(ctx: Context, token: str) -> tuple[dict[str, Any], AckLink]:
    """The alert a valid, unused link acknowledges; raises for a used, forged or expired one."""
    link = read_ack_token(ctx.settings.secret, token)
    if ctx.documents.collection(ALERT_TOKENS).find_one({"_id": link.nonce}) is not None:
        raise Conflict("this acknowledgement link was used already; each link works once")
    return service.get_alert(ctx, link.alert_id), link


def use(ctx: Context, token: str, note: str = "") -> dict[str, Any]:
    """Spend the link (atomically, once) and acknowledge as its recipient."""
    _, link = check(ctx, token)
    try:
        ctx.documents.collection(ALERT_TOKENS).insert_one(
            {"_id": link.nonce, "alert_id": link.alert_id, "used_at": now()}
        )
    except DuplicateKeyError as exc:
        raise Conflict("this acknowledgement link was used already; each link works once") from exc
    return service.acknowledge(ctx, link.alert_id, f"link:{link.recipient}", note, via="link")
