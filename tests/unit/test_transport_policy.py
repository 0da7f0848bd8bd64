"""Destinations outside Radpipe only over TLS outside development; DICOM TLS settings checked
together (radpipe.common.transport, called by Settings' validation)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from radpipe.common.settings import Settings
from radpipe.notify import channels
from radpipe.notify.channels import DeliveryFailed, Message, Target


def _settings(**values: Any) -> Settings:
    return Settings(secret_key=secrets.token_hex(32), **values)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("alert_webhook_url", "http://pager.hospital.example/hook"),
        ("slack_webhook_url", "http://hooks.slack.example/services/T/B/x"),
        ("teams_webhook_url", "http://teams.example/webhook"),
        ("export_stow_url", "http://pacs.hospital.example/dicom-web"),
    ],
)
def test_plain_http_destinations_are_refused_outside_development(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as error:
        _settings(**{name: value})
    message = error.value.errors()[0]["msg"]  # our message (pydantic's text adds the input)
    assert f"RADPIPE_{name.upper()} must be an https URL outside development" in message
    assert "hospital.example" not in message and "slack.example" not in message  # no URL echoed
    _settings(**{name: value.replace("http://", "https://")})  # the fix works


def test_loopback_and_all_in_one_may_use_plain_http() -> None:
    for host in ("127.0.0.1:9000", "localhost:8080", "[::1]:80"):
        _settings(alert_webhook_url=f"http://{host}/hook")
    Settings(all_in_one=True, alert_webhook_url="http://pager.lan/hook")  # type: ignore[arg-type]


def test_dimse_export_needs_tls_outside_development() -> None:
    with pytest.raises(ValidationError, match="set RADPIPE_EXPORT_DIMSE_TLS=true"):
        _settings(export_dimse="PACS@10.0.0.5:104")
    _settings(export_dimse="PACS@10.0.0.5:2762", export_dimse_tls=True)
    _settings(export_dimse="PACS@127.0.0.1:4242")  # a PACS on this machine


def test_dicom_tls_files_are_checked_together(tmp_path: Path) -> None:
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    with pytest.raises(
        ValidationError, match="set RADPIPE_DIMSE_TLS_CERT and RADPIPE_DIMSE_TLS_KEY"
    ):
        _settings(dimse_tls_cert=cert)
    with pytest.raises(ValidationError, match="set RADPIPE_DIMSE_TLS_CA"):
        _settings(dimse_tls_cert=cert, dimse_tls_key=key)
    _settings(dimse_tls_cert=cert, dimse_tls_key=key, dimse_tls_ca=ca)
    _settings(dimse_tls_cert=cert, dimse_tls_key=key, dimse_tls_require_client_cert=False)


def test_a_person_s_plain_http_webhook_is_refused_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per-person webhooks come from the alert configuration, not the settings: the channel
    refuses them at delivery with the fix in the reason, and posts nothing."""
    posted: list[str] = []
    monkeypatch.setattr(channels, "_post", lambda url, *a: posted.append(url))
    message = Message("alert", "a-v1:1:alert", "subject", ["line"], {"type": "radpipe.alert"})
    settings = _settings()
    target = Target("webhook", "person:ana:webhook", "http://ana.example/hook", "ana")
    with pytest.raises(DeliveryFailed) as failed:
        channels.send(settings, target, message)
    assert "must be an https URL outside development" in failed.value.reason
    assert "ana.example" not in failed.value.reason
    assert posted == []
    channels.send(settings, Target("webhook", "k", "https://ana.example/hook", "ana"), message)
    channels.send(settings, Target("slack", "k", "http://127.0.0.1:9/hook", "s"), message)
    assert posted == ["https://ana.example/hook", "http://127.0.0.1:9/hook"]


def test_an_unreadable_tls_file_names_the_setting(tmp_path: Path) -> None:
    from radpipe.common.transport import TlsConfigError, scp_context, scu_context

    missing = tmp_path / "nowhere.pem"
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    settings = _settings(dimse_tls_cert=missing, dimse_tls_key=missing, dimse_tls_ca=not_pem)
    with pytest.raises(TlsConfigError, match=r"RADPIPE_DIMSE_TLS_CERT / RADPIPE_DIMSE_TLS_KEY"):
        scp_context(settings)
    with pytest.raises(TlsConfigError, match=r"RADPIPE_DIMSE_TLS_CA cannot be loaded"):
        scu_context(settings)
