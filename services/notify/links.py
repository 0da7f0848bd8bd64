"""The signed, single-use, expiring acknowledgement link (``signing.py`` makes and reads it)."""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from radpipe.common.alerts import ALERT_TOKENS
from radpipe.common.context import Context
from radpipe.common.errors import BadRequest, Conflict
from radpipe.common.keys import Purpose
from radpipe.common.settings import Settings
from radpipe.common.studies import now

from . import service
from .signing import AckLink, read_ack_token


def check(ctx: Context, token: str) -> tuple[dict[str, Any], AckLink]:
    """The alert a valid, unused link acknowledges; raises for a used, forged or expired one."""
    link = read_link(ctx.settings, token)
    if ctx.documents.collection(ALERT_TOKENS).find_one({"_id": link.nonce}) is not None:
        raise Conflict("this acknowledgement link was used already; each link works once")
    return service.get_alert(ctx, link.alert_id), link


def read_link(settings: Settings, token: str) -> AckLink:
    """The claims of a link signed with ``Purpose.LINKS``'s key, or of one sent before keys per
    purpose (signed with the master secret; such links expire within ``ack_link_seconds``)."""
    try:
        return read_ack_token(settings.key(Purpose.LINKS), token)
    except BadRequest as first:
        if "not valid" not in first.message:  # malformed, or signed with this key: expired
            raise
        try:
            return read_ack_token(settings.master_secret, token)
        except BadRequest as legacy:
            raise legacy from None  # "not valid" as well, or an expired pre-0.2 link


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
