"""E-mail alerts against a real local SMTP server (aiosmtpd): STARTTLS whenever offered."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AnyHttpUrl

from radpipe.common.context import Context
from radpipe.notify.service import list_alerts, notify_study

from ..dicom import PHI
from ..smtp import smtp_server
from ..unit.test_alerts import analysed


@pytest.mark.parametrize("starttls", [True, False])
def test_alert_mail_goes_over_starttls_when_offered(
    ctx: Context, tmp_path: Path, starttls: bool
) -> None:
    with smtp_server(tmp_path / "smtp", starttls=starttls) as box:
        ctx.settings.smtp_host, ctx.settings.smtp_port = box.host, box.port
        ctx.settings.smtp_ca_file = box.ca_file
        ctx.settings.alert_email_to = ["oncall@hospital.test"]
        ctx.settings.public_url = AnyHttpUrl("https://radpipe.hospital.test")
        analysed(ctx, "m1", 0.9)
        notify_study(ctx, "m1")
    [mail] = box.messages
    assert box.tls == [starttls]  # the server requires STARTTLS when it offers it
    assert mail["To"] == "oncall@hospital.test"
    assert mail["Subject"].startswith("[Radpipe] AI alert: ACR category 2")
    assert mail["X-Radpipe-Delivery"] == "m1-v1:1:alert"
    body = mail.get_payload(decode=True).decode()
    assert "https://radpipe.hospital.test/studies/m1" in body
    assert "https://radpipe.hospital.test/alerts/ack/" in body
    for value in PHI.values():
        assert value.encode() not in box.raw[0]
    [alert] = list_alerts(ctx, study_id="m1")
    assert alert["delivered_at"] is not None and alert["channel"] == "email"


def test_refused_mail_is_recorded_as_a_failed_attempt(ctx: Context, tmp_path: Path) -> None:
    with smtp_server(tmp_path / "smtp", starttls=True) as box:
        ctx.settings.smtp_host, ctx.settings.smtp_port = box.host, box.port
        ctx.settings.smtp_ca_file = None  # the throwaway certificate is not trusted
        ctx.settings.alert_email_to = ["oncall@hospital.test"]
        analysed(ctx, "m2", 0.9)
        notify_study(ctx, "m2")
    assert box.messages == []
    failed = [e for e in ctx.studies.get("m2")["events"] if e["type"] == "alert.failed"]
    assert failed and failed[0]["detail"]["reason"].startswith("SMTP: ")
