"""dcmtk's storescu and echoscu against the DIMSE door (Debian's binaries, not pynetdicom's)."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from radpipe.common.context import Context

from ..dicom import ct_series, read, to_bytes
from ..servers import free_port, require_tool


@pytest.fixture
def scp(ctx: Context) -> Iterator[int]:
    from radpipe.ingest.dimse import start_scp

    ctx.settings.dimse_port = free_port()
    ctx.settings.dimse_calling_aets = ["CT_SCANNER"]
    server = start_scp(ctx, "127.0.0.1")
    yield ctx.settings.dimse_port
    server.shutdown()


def only_study_id(ctx: Context) -> str:
    """The id of the one study the test stored (keyed: the test need not know the key)."""
    studies = list(ctx.studies.studies.find({}))
    assert len(studies) == 1, studies
    return str(studies[0]["_id"])


def dcmtk(name: str) -> str:
    # pynetdicom installs its own storescu/echoscu into the venv; use dcmtk's.
    path = Path("/usr/bin") / name
    if not path.exists():
        require_tool(f"/usr/bin/{name}", "apt-get install dcmtk")
    return str(path)


def test_storescu_stores_a_series_through_the_same_path(
    scp: int, ctx: Context, tmp_path: Path
) -> None:
    series = ct_series(seed=31)[:6]
    files = []
    for index, data in enumerate(series):
        path = tmp_path / f"{index}.dcm"
        path.write_bytes(data)
        files.append(str(path))
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aet", "CT_SCANNER", "-aec", "RADPIPE", "127.0.0.1", str(scp)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    store = subprocess.run(
        [dcmtk("storescu"), "-aet", "CT_SCANNER", "-aec", "RADPIPE", "127.0.0.1", str(scp), *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert store.returncode == 0, store.stderr
    study_id = only_study_id(ctx)
    study = ctx.studies.get(study_id)
    assert study["instance_count"] == 6 and study["state"] == "received"
    assert ("stable", study_id, ctx.settings.study_stable_seconds) in ctx.tasks.sent  # type: ignore[attr-defined]
    audit = ctx.documents.collection("audit").find_one({"action": "c-store"})
    assert audit["actor"] == "dimse:CT_SCANNER"
    # The calling AE title is the source that picks the de-identification profile.
    assert {i["source"] for i in ctx.studies.instances_of(study_id)} == {"CT_SCANNER"}


def run_dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk(args[0]), *args[1:]], capture_output=True, text=True, timeout=60, check=False
    )


def test_unknown_calling_ae_is_rejected_at_association_and_nothing_stored(
    scp: int, ctx: Context, tmp_path: Path
) -> None:
    path = tmp_path / "one.dcm"
    path.write_bytes(ct_series(seed=32)[0])
    store = run_dcmtk(
        "storescu", "-aet", "INTRUDER", "-aec", "RADPIPE", "127.0.0.1", str(scp), str(path)
    )
    assert store.returncode != 0
    # A-ASSOCIATE-RJ: rejected-permanent, service-user, reason 3 (PS3.8 Table 9-21).
    assert "Association Rejected" in store.stderr, store.stderr
    assert "Rejected Permanent, Source: Service User" in store.stderr
    assert "Calling AE Title Not Recognized" in store.stderr
    echo = run_dcmtk("echoscu", "-aet", "INTRUDER", "-aec", "RADPIPE", "127.0.0.1", str(scp))
    assert echo.returncode != 0 and "Calling AE Title Not Recognized" in echo.stderr
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []
    assert ctx.studies.studies.count_documents({}) == 0


def test_storescu_with_its_default_called_ae_is_accepted(
    scp: int, ctx: Context, tmp_path: Path
) -> None:
    """dcmtk's storescu calls ANY-SCP unless told otherwise; like Orthanc, Radpipe accepts it."""
    assert ctx.settings.dimse_check_called_ae is False  # the default
    path = tmp_path / "one.dcm"
    series = ct_series(seed=35)[:1]
    path.write_bytes(series[0])
    store = run_dcmtk("storescu", "-aet", "CT_SCANNER", "127.0.0.1", str(scp), str(path))
    assert store.returncode == 0, store.stderr
    study_id = only_study_id(ctx)
    assert ctx.studies.get(study_id)["instance_count"] == 1


def test_wrong_called_ae_title_is_rejected_when_checking_is_on(
    ctx: Context, tmp_path: Path
) -> None:
    from radpipe.ingest.dimse import start_scp

    ctx.settings.dimse_port = free_port()
    ctx.settings.dimse_check_called_ae = True
    server = start_scp(ctx, "127.0.0.1")
    try:
        path = tmp_path / "one.dcm"
        path.write_bytes(ct_series(seed=33)[0])
        port = str(ctx.settings.dimse_port)
        store = run_dcmtk(
            "storescu", "-aet", "CT_SCANNER", "-aec", "PACS", "127.0.0.1", port, str(path)
        )
        default = run_dcmtk("storescu", "127.0.0.1", port, str(path))  # calls ANY-SCP
        right = run_dcmtk("echoscu", "-aec", "RADPIPE", "127.0.0.1", port)
    finally:
        server.shutdown()
    # A-ASSOCIATE-RJ: rejected-permanent, service-user, reason 7 (PS3.8 Table 9-21).
    for rejected in (store, default):
        assert rejected.returncode != 0
        assert "Rejected Permanent, Source: Service User" in rejected.stderr, rejected.stderr
        assert "Called AE Title Not Recognized" in rejected.stderr
    assert right.returncode == 0, right.stderr
    assert ctx.studies.studies.count_documents({}) == 0


def test_open_scp_accepts_any_calling_and_called_ae_by_default(
    ctx: Context, tmp_path: Path
) -> None:
    from radpipe.ingest.dimse import start_scp

    ctx.settings.dimse_port = free_port()
    ctx.settings.dimse_calling_aets = []  # the default: any calling AE
    server = start_scp(ctx, "127.0.0.1")
    try:
        path = tmp_path / "one.dcm"
        series = ct_series(seed=34)[:1]
        path.write_bytes(series[0])
        port = str(ctx.settings.dimse_port)
        store = run_dcmtk(
            "storescu", "-aet", "ANYONE", "-aec", "ANYTHING", "127.0.0.1", port, str(path)
        )
        assert store.returncode == 0, store.stderr
    finally:
        server.shutdown()
    study_id = only_study_id(ctx)
    assert ctx.studies.get(study_id)["instance_count"] == 1


def _small_instance(data: bytes) -> bytes:
    """The same instance without its pixels: a few hundred bytes."""
    ds = read(data)
    del ds.PixelData
    return to_bytes(ds)


def test_instance_over_the_size_limit_is_refused_with_a700_and_nothing_stored(
    scp: int, ctx: Context, tmp_path: Path
) -> None:
    """RADPIPE_MAX_INSTANCE_BYTES bounds DIMSE as it bounds STOW-RS: the large instance gets
    0xA700 (PS3.4 GG.4-1) and nothing is kept; the association goes on and the next,
    small instance is stored."""
    series = ct_series(seed=36)[:1]
    big, small = tmp_path / "big.dcm", tmp_path / "small.dcm"
    big.write_bytes(series[0])
    small.write_bytes(_small_instance(series[0]))
    ctx.settings.max_instance_bytes = 8_000  # the CT image is about 20 kB
    assert len(small.read_bytes()) < 8_000 < len(big.read_bytes())
    # Both in one association: storescu sends the files in order.
    store = run_dcmtk(
        "storescu",
        "-v",
        "--no-halt",
        "-aet",
        "CT_SCANNER",
        "127.0.0.1",
        str(scp),
        str(big),
        str(small),
    )
    responses = [line for line in store.stderr.splitlines() if "Store Response" in line]
    assert responses == [
        "I: Received Store Response (Refused: OutOfResources)",
        "I: Received Store Response (Success)",
    ], store.stderr
    study_id = only_study_id(ctx)
    instances = list(ctx.studies.instances_of(study_id))
    assert len(instances) == 1  # only the small one
    assert len(list(ctx.objects.list(ctx.buckets["raw"]))) == 1
    assert instances[0]["size"] < 8_000


def test_pdu_over_the_maximum_aborts_the_association_before_it_is_read(
    scp: int, ctx: Context
) -> None:
    """A P-DATA-TF PDU longer than the announced Maximum Length (PS3.8 D.1) ends the
    association: pynetdicom alone would read up to 4 GiB of it into memory."""
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import MaximumLengthNotification
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ctx.settings.dimse_max_pdu_bytes = 16_384
    data = ct_series(seed=37)[0]
    ae = AE(ae_title="CT_SCANNER")
    ae.add_requested_context(CTImageStorage, str(read(data).file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", scp)
    assert assoc.is_established
    # Ignore the maximum the SCP announced: send the 20 kB data set in one PDU.
    for item in assoc.acceptor.user_information:
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = 0  # 0: no limit (PS3.8 D.1)
    status = assoc.send_c_store(read(data))
    assert not status  # no response: the association was aborted
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []

    # A control PDU claiming 100 MB is refused at its header, and the SCP stays up.
    with socket.create_connection(("127.0.0.1", scp), timeout=10) as raw:
        raw.sendall(struct.pack(">BBL", 0x01, 0, 100_000_000))
        with pytest.raises(OSError):
            for _ in range(200):  # 200 x 512 kB: far more than the socket buffers hold
                raw.sendall(b"\0" * 512 * 1024)
    echo = run_dcmtk("echoscu", "-aet", "CT_SCANNER", "127.0.0.1", str(scp))
    assert echo.returncode == 0, echo.stderr


def test_pdu_guard_cuts_only_the_data_sets_over_the_limit() -> None:
    """PduGuard alone, on P-DATA-TF PDUs built by hand (PS3.8 9.3.5, E.2): fragments of one
    data set spread over PDUs are counted together; past the limit they pass on empty, the
    message still completes, and the handler learns which messages were cut, in order."""
    from radpipe.ingest.dimse import PduGuard, PduTooLong

    def pdv(control: int, data: bytes) -> bytes:
        return struct.pack(">LBB", len(data) + 2, 1, control) + data

    def pdu(*items: bytes) -> bytes:
        body = b"".join(items)
        return struct.pack(">BBL", 0x04, 0, len(body)) + body

    last_command = 0b11  # the last (here only) command fragment
    data, last_data = 0b00, 0b10  # data set fragment; its last
    stream = bytearray(
        pdu(pdv(last_command, b"C" * 10), pdv(data, b"a" * 60))
        + pdu(pdv(last_data, b"a" * 60))  # 120 bytes: over the limit of 100
        + pdu(pdv(last_command, b"C" * 10), pdv(last_data, b"b" * 50))  # 50: kept
    )

    def recv(n: int) -> bytearray:
        chunk = stream[:n]
        del stream[:n]
        return chunk

    guard = PduGuard(recv, max_pdu=1000, max_instance=100)
    seen = []
    while stream:
        header = guard.recv(6)
        length = struct.unpack(">BBL", header)[2]
        seen.append(bytes(guard.recv(length)))
    assert b"a" * 60 in seen[0]  # 60 of 100: kept
    assert b"a" not in seen[1] and seen[1] == pdv(last_data, b"")  # cut, message complete
    assert b"b" * 50 in seen[2]
    assert [guard.over_limit(), guard.over_limit(), guard.over_limit()] == [True, False, False]

    stream[:] = struct.pack(">BBL", 0x04, 0, 1001)
    with pytest.raises(PduTooLong):
        guard.recv(6)  # refused at its header: the body is never read
    stream[:] = struct.pack(">BBL", 0x01, 0, 2 * 1024**2)  # a 2 MiB A-ASSOCIATE-RQ
    with pytest.raises(PduTooLong):
        guard.recv(6)
