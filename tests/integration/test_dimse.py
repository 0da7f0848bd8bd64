"""dcmtk's storescu and echoscu against the DIMSE door (Debian's binaries, not pynetdicom's)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from radpipe.common.context import Context
from radpipe.common.identity import study_id_for

from ..dicom import ct_series, read
from ..servers import free_port, require_tool


@pytest.fixture
def scp(ctx: Context) -> Iterator[int]:
    from radpipe.ingest.dimse import start_scp

    ctx.settings.dimse_port = free_port()
    ctx.settings.dimse_calling_aets = ["CT_SCANNER"]
    server = start_scp(ctx, "127.0.0.1")
    yield ctx.settings.dimse_port
    server.shutdown()


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
    study_id = study_id_for(ctx.settings.secret, str(read(series[0]).StudyInstanceUID))
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
    study_id = study_id_for(ctx.settings.secret, str(read(series[0]).StudyInstanceUID))
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
    study_id = study_id_for(ctx.settings.secret, str(read(series[0]).StudyInstanceUID))
    assert ctx.studies.get(study_id)["instance_count"] == 1
