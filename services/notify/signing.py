"""Webhook signatures and signed acknowledgement links.

Webhook (docs/security.md "Verifying alert webhooks"): the sender puts the Unix time in
``X-Radpipe-Timestamp`` and ``sha256=<hex>`` in ``X-Radpipe-Signature``, the HMAC-SHA256 of
``<timestamp>.<raw body>`` under ``RADPIPE_WEBHOOK_SECRET``. A receiver recomputes it over the
bytes it received, compares in constant time and refuses timestamps older than a few minutes
(a captured request cannot be replayed later). :func:`verify_webhook` is the reference.

Acknowledgement links carry ``base64url(json) "." base64url(mac)``: the alert, the recipient,
an expiry and a random nonce, MACed with a key derived from ``RADPIPE_SECRET_KEY``
(:func:`~radpipe.common.identity.keyed_digest`, purpose ``alert-ack-link``). The nonce is
spent on first use, so a link works once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from radpipe.common.errors import BadRequest
from radpipe.common.identity import keyed_digest

TIMESTAMP_HEADER = "X-Radpipe-Timestamp"
SIGNATURE_HEADER = "X-Radpipe-Signature"
#: ``<alert id>:<page>:<message kind>``: the same value for a repeated delivery of one message.
DELIVERY_HEADER = "X-Radpipe-Delivery"
TOLERANCE_SECONDS = 300


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def signed_headers(secret: bytes | None, body: bytes, at: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if at is None else at)
    headers = {TIMESTAMP_HEADER: str(timestamp)}
    if secret:
        headers[SIGNATURE_HEADER] = webhook_signature(secret, timestamp, body)
    return headers


def verify_webhook(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: recompute over the raw body, constant-time compare, bound age."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False
    return hmac.compare_digest(webhook_signature(secret, sent, body), signature)


@dataclass(frozen=True)
class AckLink:
    alert_id: str
    recipient: str
    expires: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _link_key(secret: bytes) -> bytes:
    return keyed_digest(secret, "alert-ack-link", "v1")


def make_ack_token(secret: bytes, alert_id: str, recipient: str, expires: float) -> str:
    claims = {"a": alert_id, "r": recipient, "e": int(expires), "n": secrets.token_urlsafe(12)}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(_link_key(secret), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def read_ack_token(secret: bytes, token: str, now: float | None = None) -> AckLink:
    """The link's claims; raises :class:`BadRequest` for a forged, malformed or expired one."""
    try:
        payload_text, mac_text = token.split(".", 1)
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (ValueError, TypeError) as exc:
        raise BadRequest("this acknowledgement link is malformed; use the link as sent") from exc
    expected = hmac.new(_link_key(secret), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise BadRequest("this acknowledgement link is not valid; use the link as sent")
    claims = json.loads(payload)
    link = AckLink(str(claims["a"]), str(claims["r"]), int(claims["e"]), str(claims["n"]))
    if (time.time() if now is None else now) >= link.expires:
        raise BadRequest("this acknowledgement link has expired; acknowledge in the portal")
    return link
