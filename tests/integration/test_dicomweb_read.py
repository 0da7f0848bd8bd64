"""QIDO-RS and WADO-RS with dicomweb-client, the reference client, over real HTTP."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from radpipe.common.context import Context
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable

from ..dicom import ct_series, read
from ..dicomjson import every_dicom_json_response_is_checked  # noqa: F401
from ..unit.test_stages import after_quiet_time, ingest


@pytest.fixture
def stored(ctx: Context) -> dict[str, str]:
    """One de-identified 16-slice CT study in the index; returns its de-identified UIDs."""
    study_id = ingest(ctx, ct_series())
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))  # stepped past, not slept
    assert ctx.studies.get(study_id)["state"] == "stable"
    deidentify_study(ctx, study_id)
    deid = ctx.studies.get(study_id)["deid"]
    return {"study": deid["study_uid"], "series": deid["series"][0]["series_uid"]}


@pytest.fixture
def client(live_url: str, tokens: dict[str, str]) -> DICOMwebClient:
    return DICOMwebClient(
        url=f"{live_url}/dicom-web", headers={"Authorization": f"Bearer {tokens['radiologist']}"}
    )


def test_qido_at_every_level(client: DICOMwebClient, stored: dict[str, str]) -> None:
    studies = client.search_for_studies()
    assert len(studies) == 1
    study = pydicom.Dataset.from_json(studies[0])
    assert study.StudyInstanceUID == stored["study"]
    assert study.NumberOfStudyRelatedInstances == 16 and study.ModalitiesInStudy == "CT"
    assert study.PatientID.startswith("RP")  # only de-identified values are searchable
    series = client.search_for_series(study_instance_uid=stored["study"])
    assert [s["0020000E"]["Value"][0] for s in series] == [stored["series"]]
    instances = client.search_for_instances(
        study_instance_uid=stored["study"], series_instance_uid=stored["series"]
    )
    assert len(instances) == 16
    assert client.search_for_studies(search_filters={"PatientID": "MRN*"}) == []
    assert len(client.search_for_studies(search_filters={"PatientID": "RP*"})) == 1
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19010101"}) == []
    page = client.search_for_instances(limit=5, offset=14)
    assert len(page) == 2


def test_reads_are_audited_by_token_name(
    client: DICOMwebClient, ctx: Context, stored: dict[str, str]
) -> None:
    client.search_for_series(study_instance_uid=stored["study"])
    entries = list(ctx.documents.collection("audit").find({"action": "dicomweb.read"}))
    assert [(e["actor"], e["target"]) for e in entries] == [
        ("test-radiologist", f"/dicom-web/studies/{stored['study']}/series")
    ]


def test_qido_uid_lists_includefield_and_bad_parameters(
    live_url: str, tokens: dict[str, str], stored: dict[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    both = f"{stored['study']}\\1.2.3"
    found = httpx.get(
        f"{live_url}/dicom-web/studies", params={"StudyInstanceUID": both}, headers=auth
    )
    assert len(found.json()) == 1
    ohif = httpx.get(
        f"{live_url}/dicom-web/studies?limit=101&offset=0&fuzzymatching=false"
        "&includefield=00081030%2C00080060",
        headers=auth,
    )
    assert ohif.status_code == 200 and "00081030" in ohif.json()[0]
    assert httpx.get(f"{live_url}/dicom-web/studies?NoSuchKey=1", headers=auth).status_code == 400
    assert httpx.get(f"{live_url}/dicom-web/studies?limit=-1", headers=auth).status_code == 400
    modality = {"Authorization": f"Bearer {tokens['modality']}"}
    assert httpx.get(f"{live_url}/dicom-web/studies", headers=modality).status_code == 403


def test_wado_metadata_instances_frames_rendered(
    client: DICOMwebClient, stored: dict[str, str]
) -> None:
    metadata = client.retrieve_series_metadata(stored["study"], stored["series"])
    assert len(metadata) == 16
    first = metadata[0]
    assert "BulkDataURI" in first["7FE00010"] and "InlineBinary" not in first["7FE00010"]
    sop = first["00080018"]["Value"][0]
    instance = client.retrieve_instance(stored["study"], stored["series"], sop)
    assert instance.SOPInstanceUID == sop and instance.PatientIdentityRemoved == "YES"
    frames = client.retrieve_instance_frames(stored["study"], stored["series"], sop, [1])
    assert len(frames) == 1 and len(frames[0]) == instance.Rows * instance.Columns * 2
    assert frames[0] == instance.PixelData
    png = client.retrieve_instance_rendered(
        stored["study"], stored["series"], sop, media_types=("image/png",)
    )
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (instance.Rows, instance.Columns) and image.max() > image.min()


def test_wado_errors(live_url: str, tokens: dict[str, str], stored: dict[str, str]) -> None:
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    base = f"{live_url}/dicom-web/studies/{stored['study']}/series/{stored['series']}"
    assert httpx.get(f"{base}/instances/1.2.3/metadata", headers=auth).status_code == 404
    sop = httpx.get(f"{base}/metadata", headers=auth).json()[0]["00080018"]["Value"][0]
    assert httpx.get(f"{base}/instances/{sop}/frames/2", headers=auth).status_code == 404
    assert httpx.get(f"{base}/instances/{sop}/frames/x", headers=auth).status_code == 400
    text = httpx.get(f"{base}/instances/{sop}/rendered", headers={**auth, "Accept": "text/html"})
    assert text.status_code == 406
    single = httpx.get(f"{base}/instances/{sop}", headers={**auth, "Accept": "application/dicom"})
    assert single.headers["content-type"] == "application/dicom"
    assert read(single.content).SOPInstanceUID == sop


def test_cors_preflight_and_405_with_allow(live_url: str) -> None:
    preflight = httpx.options(
        f"{live_url}/dicom-web/studies",
        headers={
            "Origin": "http://viewer.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    wrong = httpx.delete(f"{live_url}/dicom-web/studies")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) >= {"GET", "POST", "OPTIONS"}
    put = httpx.put(f"{live_url}/dicom-web/studies/1.2/series/3.4")
    assert put.status_code == 405 and "GET" in put.headers["allow"]


def test_stow_retrieve_url_answers_after_deidentification(
    live_url: str, ctx: Context, tokens: dict[str, str]
) -> None:
    from radpipe.common.mime import encode_multipart

    series = ct_series(seed=71)[:2]
    body, content_type = encode_multipart(series)
    stow = httpx.post(
        f"{live_url}/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {tokens['modality']}"},
    ).json()
    url = stow["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert url.startswith(live_url)
    study_id = next(iter(ctx.studies.studies.find({})))["_id"]
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))  # stepped past, not slept
    assert ctx.studies.get(study_id)["state"] == "stable"
    deidentify_study(ctx, study_id)
    auth = {"Authorization": f"Bearer {tokens['radiologist']}", "Accept": "application/dicom"}
    retrieved = httpx.get(url, headers=auth)
    assert retrieved.status_code == 200
    clean = read(retrieved.content)
    assert clean.PatientIdentityRemoved == "YES"  # de-identified, whatever the URL named
    assert clean.SOPInstanceUID != read(series[0]).SOPInstanceUID


def test_thumbnails_at_every_level(
    live_url: str, tokens: dict[str, str], stored: dict[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    base = f"{live_url}/dicom-web/studies/{stored['study']}"
    for url in (f"{base}/thumbnail", f"{base}/series/{stored['series']}/thumbnail"):
        response = httpx.get(url, params={"viewport": "64,64"}, headers=auth)
        assert response.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(response.content)).size) == 64
    bad = httpx.get(f"{base}/thumbnail", params={"viewport": "0,64"}, headers=auth)
    assert bad.status_code == 400
