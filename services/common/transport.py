"""Transport security: DICOM TLS contexts and the rule that data leaves only over TLS.

DICOM TLS follows PS3.15 Annex B: B.1 (Basic TLS Secure Transport Connection Profile: both
ends authenticated by X.509 certificates) with the protocol floor and cipher suites of B.9
(Non-Downgrading BCP 195 TLS Secure Transport Connection Profile: TLS 1.2 or later, no
fallback, the RFC 7525 / BCP 195 AEAD suites). pynetdicom takes a plain ``ssl.SSLContext``
(``AE.start_server(ssl_context=...)``, ``AE.associate(tls_args=(context, hostname))``).

Destinations outside Radpipe (alert webhooks, chat webhooks, the PACS) must be reached over
TLS except in development: ``radpipe up`` (``RADPIPE_ALL_IN_ONE``) and loopback addresses,
whose traffic never leaves the machine (a local TLS-terminating sidecar, a test receiver).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit


class Settings(Protocol):
    """The settings this module reads (``radpipe.common.settings.Settings`` has them); a
    protocol, so ``settings`` can call :func:`check_transport` without an import cycle."""

    @property
    def dimse_tls_cert(self) -> Path | None: ...
    @property
    def dimse_tls_key(self) -> Path | None: ...
    @property
    def dimse_tls_ca(self) -> Path | None: ...
    @property
    def dimse_tls_require_client_cert(self) -> bool: ...
    @property
    def all_in_one(self) -> bool: ...
    @property
    def mongo_url(self) -> str | None: ...
    @property
    def s3_endpoint(self) -> Any: ...
    @property
    def alert_webhook_url(self) -> Any: ...
    @property
    def export_stow_url(self) -> Any: ...
    @property
    def slack_webhook_url(self) -> Any: ...
    @property
    def teams_webhook_url(self) -> Any: ...
    @property
    def export_dimse(self) -> str | None: ...
    @property
    def export_dimse_tls(self) -> bool: ...


#: BCP 195 (RFC 7525 section 4.2) AEAD suites for TLS 1.2; TLS 1.3 suites are all AEAD.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _bcp195(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    return context


class TlsConfigError(ValueError):
    """A DICOM TLS file that cannot be loaded; the message names the setting."""


def _load(what: str, load: Callable[[], object]) -> None:
    try:
        load()
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"{what} cannot be loaded ({type(exc).__name__}: {exc.strerror or exc}): point it "
            "at a readable PEM file (certificate chain, unencrypted private key, CA bundle)"
        ) from None


def scp_context(settings: Settings) -> ssl.SSLContext | None:
    """The C-STORE SCP's server context, or None when ``RADPIPE_DIMSE_TLS_CERT`` is unset.

    With ``RADPIPE_DIMSE_TLS_REQUIRE_CLIENT_CERT`` (the default, PS3.15 B.1: both nodes are
    authenticated) a peer without a certificate signed by ``RADPIPE_DIMSE_TLS_CA`` fails the
    handshake before any DICOM byte is read.
    """
    if settings.dimse_tls_cert is None:
        return None
    context = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    cert, key, ca = settings.dimse_tls_cert, settings.dimse_tls_key, settings.dimse_tls_ca
    _load(
        "RADPIPE_DIMSE_TLS_CERT / RADPIPE_DIMSE_TLS_KEY",
        lambda: context.load_cert_chain(cert, key),
    )
    if ca is not None:
        _load("RADPIPE_DIMSE_TLS_CA", lambda: context.load_verify_locations(cafile=ca))
    if settings.dimse_tls_require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def scu_context(settings: Settings) -> ssl.SSLContext:
    """The exporter's client context: the PACS's certificate is verified against
    ``RADPIPE_DIMSE_TLS_CA`` (the system's CAs when unset), host name included; Radpipe's
    own certificate (``RADPIPE_DIMSE_TLS_CERT``) is presented when configured."""
    context = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    cert, key, ca = settings.dimse_tls_cert, settings.dimse_tls_key, settings.dimse_tls_ca
    if ca is not None:
        _load("RADPIPE_DIMSE_TLS_CA", lambda: context.load_verify_locations(cafile=ca))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        _load(
            "RADPIPE_DIMSE_TLS_CERT / RADPIPE_DIMSE_TLS_KEY",
            lambda: context.load_cert_chain(cert, key),
        )
    return context


def is_loopback(host: str) -> bool:
    """A host name or address that never leaves the machine."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _development(settings: Settings) -> bool:
    """``radpipe up`` on its embedded stores; ``RADPIPE_ALL_IN_ONE`` set by hand on a
    deployment with MongoDB or S3 relaxes nothing."""
    return settings.all_in_one and settings.mongo_url is None and settings.s3_endpoint is None


def plaintext_allowed(settings: Settings, host: str) -> bool:
    """Development: ``radpipe up``, or a destination on this machine."""
    return _development(settings) or is_loopback(host)


def insecure_url_reason(settings: Settings, url: str, what: str) -> str | None:
    """Why ``url`` may not be used for ``what`` (None: it may). The message names the fix and
    never the URL itself (chat webhook URLs carry their secret)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or plaintext_allowed(settings, parts.hostname or ""):
        return None
    return (
        f"{what} must be an https URL outside development: plain {parts.scheme or 'http'} "
        "sends what it carries in clear. Use https (a TLS-terminating proxy in front of the "
        "receiver works), or a loopback address for a receiver on this machine"
    )


def check_transport(settings: Settings) -> None:
    """Settings validation: consistent DICOM TLS files, and TLS to every configured
    destination outside development. Raises ``ValueError`` naming the setting to change."""
    if (settings.dimse_tls_cert is None) != (settings.dimse_tls_key is None):
        raise ValueError(
            "set RADPIPE_DIMSE_TLS_CERT and RADPIPE_DIMSE_TLS_KEY together (PEM files: the "
            "certificate chain and its private key)"
        )
    if (
        settings.dimse_tls_cert is not None
        and settings.dimse_tls_require_client_cert
        and settings.dimse_tls_ca is None
    ):
        raise ValueError(
            "RADPIPE_DIMSE_TLS_REQUIRE_CLIENT_CERT is on: set RADPIPE_DIMSE_TLS_CA to the CA "
            "bundle that signs the modalities' certificates (PS3.15 B.1), or turn it off"
        )
    urls = {
        "RADPIPE_ALERT_WEBHOOK_URL": settings.alert_webhook_url,
        "RADPIPE_EXPORT_STOW_URL": settings.export_stow_url,
        "RADPIPE_SLACK_WEBHOOK_URL": settings.slack_webhook_url,
        "RADPIPE_TEAMS_WEBHOOK_URL": settings.teams_webhook_url,
    }
    for name, value in urls.items():
        if value is None:
            continue
        url = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
        reason = insecure_url_reason(settings, url, name)
        if reason is not None:
            raise ValueError(reason)
    if settings.export_dimse is not None and not settings.export_dimse_tls:
        host = settings.export_dimse.partition("@")[2].rpartition(":")[0]
        if not plaintext_allowed(settings, host):
            raise ValueError(
                "RADPIPE_EXPORT_DIMSE sends re-identified results to the PACS: set "
                "RADPIPE_EXPORT_DIMSE_TLS=true (DICOM TLS, PS3.15 B.9) and RADPIPE_DIMSE_TLS_CA "
                "to the CA that signs the PACS's certificate"
            )
