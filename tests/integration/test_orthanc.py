"""Orthanc, a real PACS, pushes a study to Radpipe through its DICOMweb STOW job.

Orthanc's job fails unless every instance it sent is listed as stored and no FailedSOPSequence
is present, so a re-sent study must succeed again (REFERENCE.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from radpipe.common.context import Context
from radpipe.deid.service import deidentify_study

from ..dicom import PHI, ct_series, read
from ..servers import free_port, require_tool, stop, wait_for_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    url: str
    dicom_port: int


@pytest.fixture
def orthanc(tmp_path: Path, live_url: str, tokens: dict[str, str]) -> Iterator[Orthanc]:
    binary = require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    if not PLUGIN.exists():
        require_tool("orthanc-dicomweb-plugin", "apt-get install orthanc-dicomweb")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "RadpipeTestPACS",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Servers": {
                "radpipe": {
                    "Url": f"{live_url}/dicom-web/",
                    "HttpHeaders": {"Authorization": f"Bearer {tokens['modality']}"},
                }
            },
        },
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("wb")
    process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(http_port, 30)
        yield Orthanc(f"http://127.0.0.1:{http_port}", dicom_port)
    finally:
        stop(process)


def push_job(orthanc: Orthanc, study: str) -> dict:
    job = httpx.post(
        f"{orthanc.url}/dicom-web/servers/radpipe/stow",
        json={"Resources": [study], "Synchronous": False},
    ).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = httpx.get(f"{orthanc.url}/jobs/{job['ID']}").json()
        if state["State"] in ("Success", "Failure"):
            return state
        time.sleep(0.3)
    raise AssertionError("Orthanc's STOW job did not finish in 60 s")


def test_orthanc_pushes_a_study_and_its_job_succeeds_twice(orthanc: Orthanc, ctx: Context) -> None:
    series = ct_series(seed=21)
    for data in series:
        answer = httpx.post(f"{orthanc.url}/instances", content=data)
        assert answer.status_code == 200
    study = httpx.get(f"{orthanc.url}/studies").json()[0]
    first = push_job(orthanc, study)
    assert first["State"] == "Success", first
    raw = list(ctx.objects.list(ctx.buckets["raw"]))
    assert len(raw) == len(series)
    assert {ctx.objects.get(ctx.buckets["raw"], key) for key in raw} == set(series)
    again = push_job(orthanc, study)  # a re-sent study is stored again, not failed
    assert again["State"] == "Success", again
    assert len(list(ctx.objects.list(ctx.buckets["raw"]))) == len(series)


@pytest.mark.parametrize("door", ["stow", "dimse"])
def test_results_go_back_to_the_pacs_reidentified_once(
    orthanc: Orthanc, ctx: Context, door: str
) -> None:
    from pydantic import AnyHttpUrl

    from radpipe.ingest.export import export_study

    from ..unit.test_stages import stable_study

    series = ct_series(seed=51)[:3]
    study_id = stable_study(ctx, series)
    deidentify_study(ctx, study_id)
    # Any DICOM object stands in for a result until the inference issue writes SEG/SR.
    deid_key = next(iter(ctx.objects.list(ctx.buckets["deid"])))
    result = ctx.objects.get(ctx.buckets["deid"], deid_key)
    ctx.objects.put(ctx.buckets["results"], f"{study_id}/result-1.dcm", result)
    if door == "stow":
        ctx.settings.export_stow_url = AnyHttpUrl(f"{orthanc.url}/dicom-web")
    else:
        ctx.settings.export_dimse = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    export_study(ctx, study_id)
    export_study(ctx, study_id)  # a retry sends nothing twice
    instances = httpx.get(f"{orthanc.url}/instances?expand").json()
    assert len(instances) == 1
    tags = httpx.get(f"{orthanc.url}/instances/{instances[0]['ID']}/simplified-tags").json()
    original = read(series[0])
    assert tags["PatientID"] == PHI["patient_id"]  # re-identified at the boundary
    assert tags["StudyInstanceUID"] == original.StudyInstanceUID
    assert tags["AccessionNumber"] == PHI["accession"]
    # Dates go back to the originals: the de-identified copy had them shifted.
    assert read(result).StudyDate != original.StudyDate
    for keyword in ("StudyDate", "SeriesDate", "ContentDate"):
        assert tags[keyword] == original.get(keyword), keyword
    assert tags["StudyTime"] == original.StudyTime  # times were never shifted
    study = ctx.studies.get(study_id)
    assert study["exported"] == [f"{study_id}/result-1.dcm"]
    assert [e["type"] for e in study["events"]].count("exported") == 1


def test_export_to_an_unreachable_pacs_is_transient(ctx: Context) -> None:
    from pydantic import AnyHttpUrl

    from radpipe.common.errors import TransientError
    from radpipe.ingest.export import export_study

    from ..unit.test_stages import stable_study

    study_id = stable_study(ctx, ct_series(seed=52)[:1])
    deidentify_study(ctx, study_id)
    ctx.objects.put(ctx.buckets["results"], f"{study_id}/r.dcm", ct_series(seed=52)[0])
    ctx.settings.export_stow_url = AnyHttpUrl(f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(TransientError, match="unreachable"):
        export_study(ctx, study_id)
    assert ctx.studies.get(study_id).get("exported") is None
