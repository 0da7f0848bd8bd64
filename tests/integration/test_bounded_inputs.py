"""Bounded inputs over real HTTP, with the objects in SeaweedFS (S3) and QIDO on every
document engine: a deflate bomb among good parts, a streamed study retrieval, rendering and
frame-list limits, and QIDO wildcards and maximum (security issue, item 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydantic import AnyHttpUrl, SecretStr
from pydicom.uid import generate_uid

from radpipe.common.context import Context
from radpipe.common.dicomindex import add_to_index
from radpipe.common.mime import encode_multipart
from radpipe.common.objectstore import S3ObjectStore
from radpipe.common.ports import DocumentStore
from radpipe.common.settings import Settings
from radpipe.ingest import qido

from ..dicom import ct_series
from ..servers import DOCUMENT_ENGINES, S3Server, document_store
from ..unit.test_bounded_inputs import _declaring, _reference, bomb
from .test_wado_bulkdata_frames import _image, put_deid

MiB = 1024 * 1024


@pytest.fixture
def settings(settings: Settings, s3: S3Server) -> Settings:
    """The test settings with the object store on SeaweedFS."""
    return settings.model_copy(
        update={
            "s3_endpoint": AnyHttpUrl(s3.endpoint),
            "s3_access_key": s3.access_key,
            "s3_secret_key": SecretStr(s3.secret_key),
        }
    )


@pytest.fixture
def auth(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['radiologist']}"}


def _stow(live_url: str, token: str, payloads: list[bytes]) -> httpx.Response:
    body, content_type = encode_multipart(payloads)
    return httpx.post(
        f"{live_url}/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        timeout=60,
    )


def test_objects_are_in_seaweedfs(ctx: Context) -> None:
    assert isinstance(ctx.objects, S3ObjectStore)


def test_a_deflate_bomb_among_good_parts_is_refused_alone(
    live_url: str, ctx: Context, tokens: dict[str, str]
) -> None:
    ctx.settings.max_instance_bytes = 8 * MiB
    data, ds = bomb(200 * MiB)  # ~200 KB on the wire
    good = ct_series()[:2]
    response = _stow(live_url, tokens["modality"], [good[0], data, good[1]])
    assert response.status_code == 202, response.text
    body = response.json()
    assert len(body["00081199"]["Value"]) == 2
    [failed] = body["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xA700]
    assert failed["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert "part 2:" in response.headers["warning"]
    assert "RADPIPE_MAX_INSTANCE_BYTES" in response.headers["warning"]
    keys = list(ctx.objects.list(ctx.buckets["raw"]))
    assert sorted(ctx.objects.get(ctx.buckets["raw"], k) for k in keys) == sorted(good)
    assert ctx.studies.instances.count_documents({}) == 2


def test_a_request_of_only_bombs_stores_nothing(
    live_url: str, ctx: Context, tokens: dict[str, str]
) -> None:
    ctx.settings.max_instance_bytes = 4 * MiB
    response = _stow(live_url, tokens["modality"], [bomb(32 * MiB)[0], bomb(32 * MiB)[0]])
    assert response.status_code == 409
    reasons = [i["00081197"]["Value"] for i in response.json()["00081198"]["Value"]]
    assert reasons == [[0xA700], [0xA700]]
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []
    assert ctx.studies.studies.count_documents({}) == 0
    assert ctx.studies.instances.count_documents({}) == 0


@pytest.fixture
def study(ctx: Context) -> dict[str, Any]:
    """Five single-frame instances of one de-identified series, in SeaweedFS."""
    study_uid, series_uid = generate_uid(), generate_uid()
    uids = []
    for number in range(1, 6):
        ds = _image(4, 5, 8, 1, bytes(range(number, number + 20)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study_uid, series_uid, number
        put_deid(ctx, ds)
        uids.append(ds.SOPInstanceUID)
    return {"study": study_uid, "series": series_uid, "instances": uids}


def test_a_study_retrieval_streams_every_instance(
    live_url: str, auth: dict[str, str], study: dict[str, Any]
) -> None:
    url = f"{live_url}/dicom-web/studies/{study['study']}"
    with httpx.stream("GET", url, headers=auth) as response:
        assert response.status_code == 200
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        response.read()
    client = DICOMwebClient(url=f"{live_url}/dicom-web", headers=auth)
    instances = client.retrieve_study(study["study"])
    assert [ds.SOPInstanceUID for ds in instances] == study["instances"]
    series = client.retrieve_series(study["study"], study["series"])
    assert [ds.PixelData for ds in series] == [ds.PixelData for ds in instances]
    head = httpx.head(url, headers=auth)
    assert head.status_code == 200 and head.content == b""


def test_frame_lists_and_declared_sizes_over_http(
    live_url: str, ctx: Context, auth: dict[str, str]
) -> None:
    frames = bytes(range(60))
    path = put_deid(ctx, _image(4, 5, 8, 3, frames))
    base = f"{live_url}/dicom-web{path}"
    client = DICOMwebClient(url=f"{live_url}/dicom-web", headers=auth)
    study_uid, series_uid, sop_uid = path.split("/")[2::2]
    got = client.retrieve_instance_frames(study_uid, series_uid, sop_uid, [2, 2, 1, 2])
    assert got == [frames[20:40], frames[0:20]]  # each frame once, in the order asked
    ctx.settings.wado_max_frames = 2
    refused = httpx.get(f"{base}/frames/1,2,3", headers=auth)
    assert refused.status_code == 400 and "RADPIPE_WADO_MAX_FRAMES" in refused.text
    giant = put_deid(ctx, _declaring(60000, 60000, 1))  # 7.2 GB declared, 4 bytes held
    for suffix in ("/rendered", "/thumbnail"):
        response = httpx.get(f"{live_url}/dicom-web{giant}{suffix}", headers=auth)
        assert response.status_code == 400, suffix
        assert "RADPIPE_MAX_FRAME_BYTES" in response.text


def test_qido_maximum_and_a_pathological_wildcard_over_http(
    live_url: str, ctx: Context, auth: dict[str, str], study: dict[str, Any]
) -> None:
    ctx.settings.qido_max_results = 2
    host = live_url.removeprefix("http://")
    page = httpx.get(f"{live_url}/dicom-web/instances", headers=auth)
    assert page.status_code == 200 and len(page.json()) == 2
    assert page.headers["warning"] == (
        f'299 {host}: "The number of results exceeded the maximum supported by the server. '
        'Additional results can be requested."'
    )
    rest = httpx.get(f"{live_url}/dicom-web/instances", params={"offset": 4}, headers=auth)
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    none = httpx.get(
        f"{live_url}/dicom-web/studies", params={"PatientID": "*?" * 8 + "Z"}, headers=auth
    )
    assert none.status_code == 200 and none.json() == []
    found = httpx.get(
        f"{live_url}/dicom-web/studies", params={"PatientID": "*?*?*?*?*?1"}, headers=auth
    )
    assert [r["0020000D"]["Value"][0] for r in found.json()] == [study["study"]]  # RP0001


@pytest.fixture(params=DOCUMENT_ENGINES)
def documents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    store = document_store(request.param, tmp_path, "QIDO-RS wildcards")
    yield store
    store.close()


NAMES = ["A" * 40, "A" * 39 + "Z", "DOE^JANE", "DOE^JOHN^" + "Q" * 30, "Z"]


def test_every_store_answers_pathological_wildcards_correctly(documents: DocumentStore) -> None:
    """The atomic-group ``$regex`` on MongoDB and litemongo, ``GLOB`` on SQLite: the same
    rows as the reference matcher, for patterns that make a backtracking matcher explode."""
    for number, name in enumerate(NAMES):
        uid = f"1.2.9.{number}"
        add_to_index(
            documents,
            {
                "_id": uid + ".1",
                "study_id": f"s{number}",
                "bucket": "deid",
                "key": f"{uid}.dcm",
                "attributes": {
                    "StudyInstanceUID": uid,
                    "SeriesInstanceUID": uid + ".0",
                    "SOPInstanceUID": uid + ".1",
                    "PatientName": name,
                    "StudyDate": "20240101",
                },
            },
        )
    for pattern in ("*?" * 8 + "Z", "*A" * 8 + "Z", "doe^*?*?*?*?j*", "?*", "*A*A*A*A*A*A*AB"):
        query = qido.parse_query("study", [("PatientName", pattern)])
        rows, truncated = qido.find(documents, query)
        expected = sorted(n for n in NAMES if _reference(pattern.upper(), n))
        assert sorted(r["PatientName"] for r in rows) == expected, pattern
        assert not truncated
