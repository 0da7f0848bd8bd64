"""A real local SMTP server (aiosmtpd) that offers STARTTLS with a throwaway certificate."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .servers import free_port


@dataclass
class Mailbox:
    host: str
    port: int
    ca_file: Path | None
    messages: list[Message] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    tls: list[bool] = field(default_factory=list)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@contextmanager
def smtp_server(folder: Path, *, starttls: bool = True) -> Iterator[Mailbox]:
    """aiosmtpd on a free port; with ``starttls`` it offers and requires STARTTLS."""
    folder.mkdir(parents=True, exist_ok=True)
    tls_context = None
    ca_file = None
    if starttls:
        ca_file, key_file = self_signed(folder)
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(ca_file, key_file)
    box = Mailbox("127.0.0.1", free_port(), ca_file)
    lock = threading.Lock()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with lock:
                box.raw.append(envelope.content)
                box.messages.append(message_from_bytes(envelope.content))
                box.tls.append(session.ssl is not None)
            return "250 OK"

    controller = Controller(
        Handler(),
        hostname=box.host,
        port=box.port,
        tls_context=tls_context,
        require_starttls=starttls,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()
