"""DICOM TLS (PS3.15 B.1/B.9) with real certificates: a throwaway CA signs the SCP's, a
modality's and the PACS's certificates; dcmtk's storescu (+tls) and pynetdicom send to the
C-STORE SCP; the exporter sends to a pynetdicom TLS SCP standing in for the PACS."""

from __future__ import annotations

import datetime
import io
import ipaddress
import secrets
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from radpipe.common.context import Context
from radpipe.common.settings import Settings
from radpipe.common.transport import scu_context

from ..dicom import ct_series, read
from ..servers import free_port
from .test_dimse import dcmtk, only_study_id, run_dcmtk


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Path:
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path = folder / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _issue(
    common: str,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    signer_name = issuer[0].subject if issuer else _name(common)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        assert usage is not None
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("Radpipe test CA", None, ca=True)
    other_ca = _issue("Some other CA", None, ca=True)
    server = _issue("radpipe", ca, usage=ExtendedKeyUsageOID.SERVER_AUTH)
    client = _issue("CT_SCANNER", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _issue("ROGUE", other_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write(folder, "ca", *ca),
        server_cert=_write(folder, "server", *server),
        server_key=folder / "server.key",
        client_cert=_write(folder, "client", *client),
        client_key=folder / "client.key",
        rogue_cert=_write(folder, "rogue", *rogue),
        rogue_key=folder / "rogue.key",
    )


@pytest.fixture
def tls_scp(ctx: Context, pki: Pki) -> Iterator[int]:
    from radpipe.ingest.dimse import start_scp

    ctx.settings.dimse_port = free_port()
    ctx.settings.dimse_calling_aets = ["CT_SCANNER"]
    ctx.settings.dimse_tls_cert = pki.server_cert
    ctx.settings.dimse_tls_key = pki.server_key
    ctx.settings.dimse_tls_ca = pki.ca
    server = start_scp(ctx, "127.0.0.1")
    yield ctx.settings.dimse_port
    server.shutdown()


def _client_context(pki: Pki, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _files(tmp_path: Path, seed: int, count: int) -> tuple[list[bytes], list[str]]:
    series = ct_series(seed=seed)[:count]
    paths = []
    for index, data in enumerate(series):
        path = tmp_path / f"{seed}-{index}.dcm"
        path.write_bytes(data)
        paths.append(str(path))
    return series, paths


def test_storescu_over_tls_stores_and_plain_tcp_is_refused(
    tls_scp: int, ctx: Context, pki: Pki, tmp_path: Path
) -> None:
    _, paths = _files(tmp_path, 41, 3)
    plain = run_dcmtk("storescu", "-aet", "CT_SCANNER", "127.0.0.1", str(tls_scp), *paths)
    assert plain.returncode != 0
    assert ctx.studies.studies.count_documents({}) == 0
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []

    # dcmtk's default TLS profile is the Non-Downgrading BCP 195 profile (PS3.15 B.9).
    tls = run_dcmtk(
        "storescu",
        "+tls",
        str(pki.client_key),
        str(pki.client_cert),
        "+cf",
        str(pki.ca),
        "-aet",
        "CT_SCANNER",
        "127.0.0.1",
        str(tls_scp),
        *paths,
    )
    assert tls.returncode == 0, tls.stderr
    study = ctx.studies.get(only_study_id(ctx))
    assert study["instance_count"] == 3
    assert len(list(ctx.objects.list(ctx.buckets["raw"]))) == 3


def test_storescu_without_a_client_certificate_or_with_a_foreign_one_is_refused(
    tls_scp: int, ctx: Context, pki: Pki, tmp_path: Path
) -> None:
    _, paths = _files(tmp_path, 42, 1)
    base = ["-aet", "CT_SCANNER", "127.0.0.1", str(tls_scp), *paths]
    anonymous = run_dcmtk("storescu", "+tla", "+cf", str(pki.ca), *base)
    foreign = run_dcmtk(
        "storescu", "+tls", str(pki.rogue_key), str(pki.rogue_cert), "+cf", str(pki.ca), *base
    )
    for refused in (anonymous, foreign):
        assert refused.returncode != 0, refused.stderr
    assert ctx.studies.studies.count_documents({}) == 0
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []


def test_pynetdicom_over_tls_stores_and_echo_works(tls_scp: int, ctx: Context, pki: Pki) -> None:
    series = ct_series(seed=43)[:2]
    ae = AE(ae_title="CT_SCANNER")
    syntax = str(read(series[0]).file_meta.TransferSyntaxUID)
    ae.add_requested_context(CTImageStorage, syntax)
    ae.add_requested_context("1.2.840.10008.1.1")
    context = _client_context(pki, pki.client_cert, pki.client_key)
    assoc = ae.associate("127.0.0.1", tls_scp, tls_args=(context, "localhost"))
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0
        for data in series:
            assert int(assoc.send_c_store(read(data)).Status) == 0
    finally:
        assoc.release()
    assert ctx.studies.get(only_study_id(ctx))["instance_count"] == 2

    # Without a certificate the handshake fails: no association, nothing more stored.
    bare = AE(ae_title="CT_SCANNER")
    bare.add_requested_context(CTImageStorage, syntax)
    refused = bare.associate(
        "127.0.0.1", tls_scp, tls_args=(_client_context(pki, None, None), "localhost")
    )
    assert not refused.is_established
    assert len(list(ctx.objects.list(ctx.buckets["raw"]))) == 2


class TlsPacs:
    """A pynetdicom C-STORE SCP over TLS requiring a client certificate from the test CA."""

    def __init__(self, pki: Pki, cert: Path, key: Path) -> None:
        self.port = free_port()
        self.received: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cafile=pki.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        ae = AE(ae_title="PACS")
        ae.add_supported_context(CTImageStorage, [pydicom.uid.ExplicitVRLittleEndian])
        for syntax in (pydicom.uid.ImplicitVRLittleEndian,):
            ae.add_supported_context(CTImageStorage, syntax)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=handlers, ssl_context=context
        )

    def _store(self, event: Any) -> int:
        with self.lock:
            self.received.append(event.dataset)
        return 0


def _items(seed: int) -> list[tuple[str, pydicom.Dataset]]:
    return [
        (f"results/{index}.dcm", pydicom.dcmread(io.BytesIO(data)))
        for index, data in enumerate(ct_series(seed=seed)[:2])
    ]


def test_export_over_tls_to_a_pacs_verifies_it_and_presents_radpipe_s_certificate(
    pki: Pki,
) -> None:
    from radpipe.ingest.export import _c_store

    pacs = TlsPacs(pki, pki.server_cert, pki.server_key)
    try:
        settings = Settings(
            secret_key=secrets.token_hex(32),  # type: ignore[arg-type]
            export_dimse=f"PACS@127.0.0.1:{pacs.port}",
            export_dimse_tls=True,
            dimse_tls_cert=pki.client_cert,
            dimse_tls_key=pki.client_key,
            dimse_tls_ca=pki.ca,
        )
        items = _items(44)
        done, failures = _c_store(
            f"PACS@127.0.0.1:{pacs.port}", "RADPIPE", items, scu_context(settings)
        )
        assert failures == [] and done == {key for key, _ in items}
        assert sorted(str(ds.SOPInstanceUID) for ds in pacs.received) == sorted(
            str(ds.SOPInstanceUID) for _, ds in items
        )
        # Without TLS the PACS's TLS port refuses the association: nothing is sent.
        before = len(pacs.received)
        done, failures = _c_store(f"PACS@127.0.0.1:{pacs.port}", "RADPIPE", _items(45))
        assert done == set() and failures and len(pacs.received) == before
    finally:
        pacs.server.shutdown()


def test_export_refuses_a_pacs_whose_certificate_the_ca_did_not_sign(pki: Pki) -> None:
    from radpipe.ingest.export import _c_store

    impostor = TlsPacs(pki, pki.rogue_cert, pki.rogue_key)  # signed by another CA
    try:
        settings = Settings(
            secret_key=secrets.token_hex(32),  # type: ignore[arg-type]
            dimse_tls_cert=pki.client_cert,
            dimse_tls_key=pki.client_key,
            dimse_tls_ca=pki.ca,
        )
        done, failures = _c_store(
            f"PACS@127.0.0.1:{impostor.port}", "RADPIPE", _items(46), scu_context(settings)
        )
        assert done == set()
        assert failures == [
            "DIMSE destination PACS refused or unreachable over TLS (check its certificate and CA)"
        ]
        assert impostor.received == []
    finally:
        impostor.server.shutdown()


def test_dcmtk_is_the_debian_build_with_openssl() -> None:
    """storescu +tls needs dcmtk built with OpenSSL (Debian's is)."""
    import subprocess

    out = subprocess.run([dcmtk("storescu"), "--version"], capture_output=True, text=True)
    assert "OpenSSL" in out.stdout + out.stderr
