"""Channels: signed JSON webhook, e-mail over SMTP, Slack and Microsoft Teams incoming webhooks.

A :class:`Message` is built once per page (pseudonymous ids, urgency, a deep link and an
acknowledgement link; never PHI) and rendered per channel. Each ``send`` is one attempt and
raises :class:`DeliveryFailed` with a reason that names no value from the study; retries and
their backoff belong to the caller (``service.py``), which records every attempt. Webhook and
chat URLs must be https outside development (``radpipe.common.transport``); e-mail uses
STARTTLS whenever the server offers it.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Literal

import httpx

from radpipe.common.settings import Settings
from radpipe.common.transport import insecure_url_reason

from .signing import DELIVERY_HEADER, signed_headers

Channel = Literal["webhook", "email", "slack", "teams"]


class DeliveryFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """One destination of a page. ``key`` is stored in the alert's history; ``address`` (a
    URL that may embed a secret, or an e-mail address) is not."""

    channel: Channel
    key: str
    address: str
    recipient: str


@dataclass
class Message:
    kind: str  # alert | re-page | retraction | pipeline
    delivery_id: str
    subject: str
    lines: list[str]
    payload: dict[str, Any]
    links: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        links = [f"{label}: {url}" for label, url in self.links.items()]
        return "\n".join([self.subject, *self.lines, *links])


def webhook_request(settings: Settings, message: Message) -> tuple[bytes, dict[str, str]]:
    """The exact bytes and headers posted; the signature covers these bytes."""
    body = json.dumps(message.payload, separators=(",", ":"), sort_keys=True).encode()
    secret = (
        settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
    )
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "radpipe-notify",
        DELIVERY_HEADER: message.delivery_id,
        **signed_headers(secret, body),
    }
    return body, headers


def slack_body(message: Message) -> dict[str, Any]:
    """Slack incoming-webhook format: fallback ``text`` plus Block Kit with link buttons."""
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": label}, "url": url}
        for label, url in message.links.items()
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": message.subject[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(message.lines)}},
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return {"text": message.subject, "blocks": blocks}


def teams_body(message: Message) -> dict[str, Any]:
    """Teams incoming-webhook (Workflows) format: a message carrying one Adaptive Card."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": message.subject, "weight": "Bolder", "wrap": True},
            *({"type": "TextBlock", "text": line, "wrap": True} for line in message.lines),
        ],
        "actions": [
            {"type": "Action.OpenUrl", "title": label, "url": url}
            for label, url in message.links.items()
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
        ],
    }


_clients: dict[int, httpx.Client] = {}


def _client() -> httpx.Client:
    """One pooled client per process (building one loads the CA bundle: tens of ms)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()  # a forked child must not share its parent's connections
        _clients[pid] = httpx.Client(headers={"User-Agent": "radpipe-notify"})
    return _clients[pid]


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    try:
        response = _client().post(url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"unreachable: {type(exc).__name__}") from exc
    if response.status_code >= 300:
        raise DeliveryFailed(f"answered HTTP {response.status_code}")


def email_message(settings: Settings, to: str, message: Message) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = settings.smtp_from
    mail["To"] = to
    mail["Subject"] = message.subject
    mail["Message-ID"] = make_msgid(domain="radpipe")
    mail["X-Radpipe-Delivery"] = message.delivery_id
    mail.set_content(message.text + "\n")
    return mail


def send_email(settings: Settings, to: str, message: Message) -> None:
    """One SMTP transaction; STARTTLS whenever the server offers it, then AUTH if configured."""
    if not settings.smtp_host:
        raise DeliveryFailed("no SMTP server: set RADPIPE_SMTP_HOST")
    context = ssl.create_default_context(
        cafile=str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    )
    try:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.alert_timeout_seconds
        ) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls(context=context)
                smtp.ehlo()
            if settings.smtp_username and settings.smtp_password is not None:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            smtp.send_message(email_message(settings, to, message))
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(f"SMTP: {type(exc).__name__}") from exc


def send(settings: Settings, target: Target, message: Message) -> None:
    """One delivery attempt of ``message`` to ``target``."""
    timeout = settings.alert_timeout_seconds
    if target.channel != "email":
        # Settings validation checks the configured URLs; a person's own webhook comes from
        # the alert configuration and is checked here, before anything is sent.
        reason = insecure_url_reason(settings, target.address, f"the {target.channel} URL")
        if reason is not None:
            raise DeliveryFailed(reason)
    if target.channel == "webhook":
        body, headers = webhook_request(settings, message)
        _post(target.address, body, headers, timeout)
    elif target.channel == "email":
        send_email(settings, target.address, message)
    else:
        payload = slack_body(message) if target.channel == "slack" else teams_body(message)
        body = json.dumps(payload).encode()
        _post(target.address, body, {"Content-Type": "application/json"}, timeout)
