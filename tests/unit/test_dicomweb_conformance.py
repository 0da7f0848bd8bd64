"""PS3.18 to the letter on the read and store routes: DICOM JSON Model order (Annex F.2),
request errors (400 with a reason, 404, 406) and one media-type toolkit for both sides."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from radpipe.common.context import Context
from radpipe.common.dicomjson import dumps, ordered
from radpipe.common.errors import NotAcceptable
from radpipe.common.mime import (
    BodyPart,
    choose,
    encode_multipart,
    parse_accept,
    parse_media_type,
)
from radpipe.ingest.multipart import split_parts, stow_boundary

from ..dicom import ct_series
from ..dicomjson import check_model, every_dicom_json_response_is_checked  # noqa: F401
from ..integration.test_wado_bulkdata_frames import _image, put_deid

JPEG = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def auth(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['radiologist']}"}


@pytest.fixture
def series(ctx: Context) -> dict[str, Any]:
    """Two 3-frame instances of one de-identified series, with a nested sequence and a group
    length element in the stored objects."""
    study, series_uid = generate_uid(), generate_uid()
    paths = []
    for number in (1, 2):
        ds = _image(4, 5, 8, 3, np.arange(60, dtype=np.uint8).tobytes())
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series_uid, number
        ds.PatientName, ds.StudyDate, ds.StudyTime = "ANON^RP0001", "20240105", "101500"
        ds.StudyDescription, ds.AccessionNumber = "CHEST", "RP0001"
        reference = pydicom.Dataset()
        reference.ReferencedSOPInstanceUID = generate_uid()
        reference.ReferencedSOPClassUID = ds.SOPClassUID
        ds.SourceImageSequence = Sequence([reference])
        paths.append(put_deid(ctx, ds))
        # A Group Length (0008,0000), as some writers keep them: not part of the JSON model.
        key = f"{study}/{series_uid}/{ds.SOPInstanceUID}.dcm"
        data = ctx.objects.get(ctx.buckets["deid"], key)
        at = data.index(b"\x08\x00\x16\x00UI")
        data = data[:at] + struct.pack("<HH2sHI", 8, 0, b"UL", 4, 0) + data[at:]
        ctx.objects.put(ctx.buckets["deid"], key, data, "application/dicom")
    return {"study": study, "series": series_uid, "instances": paths}


def ordered_keys(body: Any) -> list[list[str]]:
    """The keys of each dataset in a body, in the order they were sent."""
    datasets = body if isinstance(body, list) else [body]
    return [list(dataset) for dataset in datasets]


def is_sorted(keys: list[str]) -> bool:
    return keys == sorted(keys, key=lambda k: int(k, 16))


# --- the checker itself can fail ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"00100010": {"vr": "PN"}, "00080020": {"vr": "DA"}}, "out of order"),
        ({"0008001a": {"vr": "UI"}}, "8 uppercase hex"),
        ({"00080000": {"vr": "UL", "Value": [4]}}, "group length"),
        ({"00080020": {"Value": ["20240101"]}}, "vr"),
        ({"00080020": {"vr": "XX"}}, "vr"),
        ({"7FE00010": {"vr": "OB", "BulkDataURI": "u", "InlineBinary": "AA=="}}, "more than"),
        ({"00080020": {"vr": "DA", "Value": []}}, "non-empty"),
        ({"00100010": {"vr": "PN", "Value": ["Doe^Jane"]}}, "PN value"),
        ({"00100010": {"vr": "PN", "Value": [{"Name": "x"}]}}, "PN groups"),
        (
            {"00082112": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI"}, "00081150": {}}]}},
            "out of order",
        ),
    ],
)
def test_the_model_checker_rejects_what_annex_f_forbids(body: Any, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_model(body)


def test_ordered_sorts_every_level_and_drops_group_lengths() -> None:
    item = {"00081155": {"vr": "UI", "Value": ["1.2"]}, "00081150": {"vr": "UI", "Value": ["1"]}}
    dataset = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]},
        "00100000": {"vr": "UL", "Value": [8]},
        "00082112": {"vr": "SQ", "Value": [item]},
        "00080020": {"vr": "DA", "Value": ["20240101"]},
    }
    result = ordered(dataset)
    assert list(result) == ["00080020", "00082112", "00100010"]
    assert list(result["00082112"]["Value"][0]) == ["00081150", "00081155"]
    check_model(json.loads(dumps([dataset])))


# --- F.2.2 order in every body the server sends -------------------------------------------


def test_every_dicom_json_response_is_walked(
    client: TestClient,
    auth: dict[str, str],
    series: dict[str, Any],
    every_dicom_json_response_is_checked: list[str],  # noqa: F811
) -> None:
    response = client.get("/dicom-web/studies", headers=auth)
    assert response.status_code == 200
    assert every_dicom_json_response_is_checked == ["http://testserver/dicom-web/studies"]


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies?includefield=all",
        "/dicom-web/series?includefield=00081030,00080060",
        "/dicom-web/series?includefield=all",
        "/dicom-web/instances?includefield=00200013",
        "/dicom-web/studies/{study}/series?includefield=all",
        "/dicom-web/studies/{study}/series/{series}/instances",
    ],
)
def test_qido_results_are_in_tag_order(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], path: str
) -> None:
    response = client.get(path.format(**series), headers=auth)
    assert response.status_code == 200 and response.json()
    for keys in ordered_keys(json.loads(response.content)):
        assert "00081190" in keys and is_sorted(keys), keys


def test_metadata_is_in_tag_order_without_group_lengths(
    client: TestClient, auth: dict[str, str], series: dict[str, Any]
) -> None:
    for path in (
        f"/dicom-web/studies/{series['study']}/metadata",
        f"/dicom-web{series['instances'][0]}/metadata",
    ):
        response = client.get(path, headers=auth)
        assert response.status_code == 200
        for dataset in json.loads(response.content):
            assert "00080016" in dataset and "00080000" not in dataset
            assert is_sorted(list(dataset))
            item = dataset["00082112"]["Value"][0]
            assert list(item) == ["00081150", "00081155"]


def test_stow_response_with_failures_is_in_tag_order(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    body, content_type = encode_multipart([ct_series()[0], b"not DICOM"])
    response = client.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {tokens['modality']}"},
    )
    assert response.status_code == 202
    [keys] = ordered_keys(json.loads(response.content))
    assert keys == ["00081190", "00081198", "00081199"]


# --- 400 with a reason for malformed query values ----------------------------------------


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("StudyDate=2024-13-45", "StudyDate"),
        ("StudyDate=20240230", "StudyDate"),
        ("StudyDate=20240102-20240101", "reversed"),
        ("StudyDate=-", "StudyDate"),
        ("StudyDate=2024", "StudyDate"),
        ("StudyTime=2561", "StudyTime"),
        ("StudyTime=1200-1000", "reversed"),
        ("AcquisitionDateTime=20240102-20240101", "reversed"),
        ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
        ("StudyInstanceUID=1.02", "not a UID"),
        ("limit=abc", "limit"),
        ("limit=%C2%B2", "limit"),  # a superscript two is a digit to str.isdigit
        ("limit=1.5", "limit"),
        ("offset=-3", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("PatientID=A&PatientID=B", "twice"),
        ("NoSuchKeyword=1", "NoSuchKeyword"),
    ],
)
def test_malformed_search_values_are_400_with_a_reason(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], query: str, named: str
) -> None:
    response = client.get(f"/dicom-web/studies?{query}", headers=auth)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert named in response.json()["detail"]


@pytest.mark.parametrize(
    ("query", "count"),
    [
        ("StudyDate=20240101-20240131", 1),
        ("StudyDate=20240106-", 0),
        ("StudyDate=-20240105", 1),
        ("StudyTime=1000-1015", 1),  # 10:15:00 is within 10:00-10:15 at that precision
        ("StudyTime=1016-", 0),
        ("StudyDate=", 1),
        ("StudyInstanceUID={study}%5C1.2.3", 1),
        ("StudyInstanceUID=1.2.3,1.2.4", 0),
    ],
)
def test_well_formed_ranges_and_lists_match(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], query: str, count: int
) -> None:
    response = client.get(f"/dicom-web/studies?{query.format(**series)}", headers=auth)
    assert response.status_code == 200, response.text
    assert len(response.json()) == count


def test_a_search_cut_at_the_server_maximum_says_so(
    client: TestClient,
    auth: dict[str, str],
    series: dict[str, Any],
    ctx: Context,
) -> None:
    """PS3.18 8.3.4.4, 10.6.3.3: a result cut at the server's maximum
    (``RADPIPE_QIDO_MAX_RESULTS``) is the first page, with a ``Warning: 299``."""
    ctx.settings.qido_max_results = 1
    cut = client.get("/dicom-web/instances", headers=auth)
    assert cut.status_code == 200 and len(cut.json()) == 1
    assert cut.headers["warning"] == (
        '299 127.0.0.1:8000: "The number of results exceeded the maximum supported by the '
        'server. Additional results can be requested."'
    )
    rest = client.get("/dicom-web/instances?limit=5&offset=1", headers=auth)
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    own = client.get("/dicom-web/instances?limit=1", headers=auth)
    assert len(own.json()) == 1 and "warning" not in own.headers  # the client's own limit
    assert cut.json() != rest.json()


# --- frames: 400 for a malformed list, 404 past the end ----------------------------------


@pytest.mark.parametrize(
    ("suffix", "status"),
    [
        ("/frames/0", 400),
        ("/frames/1,0", 400),
        ("/frames/-1", 400),
        ("/frames/abc", 400),
        ("/frames/1,,2", 400),
        ("/frames/%201", 400),
        ("/frames/4", 404),
        ("/frames/2,4", 404),
        ("/frames/3,1", 200),
        ("/frames/0/rendered", 400),
        ("/frames/abc/rendered", 400),
        ("/frames/1,2/rendered", 400),
        ("/frames/4/rendered", 404),
        ("/frames/2/rendered", 200),
    ],
)
def test_frame_numbers(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], suffix: str, status: int
) -> None:
    response = client.get(f"/dicom-web{series['instances'][0]}{suffix}", headers=auth)
    assert response.status_code == status, response.text
    if status == 400:
        assert "frame" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/studies/abc/metadata", 400),
        ("/studies/1.02.3", 400),
        ("/studies/{study}/series/x.y/metadata", 400),
        ("/studies/{study}/series/{series}/instances/1.2.3.4%0A/metadata", 400),
        ("/studies/1.2.3/metadata", 404),
        ("/studies/{study}/series/1.2.3/instances", 404),
    ],
)
def test_a_path_segment_that_is_not_a_uid_is_400(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], path: str, status: int
) -> None:
    response = client.get("/dicom-web" + path.format(**series), headers=auth)
    assert response.status_code == status, response.text
    if status == 400:
        assert "is not a UID" in response.json()["detail"]


@pytest.mark.parametrize(
    ("window", "status"),
    [
        ("40", 400),
        ("40,0", 400),
        ("40,-5", 400),
        ("a,b", 400),
        ("40,400,cubic", 400),
        ("40,400,linear,1", 400),
        ("40,400", 200),
        ("40,400,LINEAR", 200),
        ("40,400,sigmoid", 200),
    ],
)
def test_window_parameter(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], window: str, status: int
) -> None:
    url = f"/dicom-web{series['instances'][0]}/rendered"
    response = client.get(url, params={"window": window}, headers=auth)
    assert response.status_code == status, response.text
    if status == 400:
        assert "window" in response.json()["detail"]


# --- 406 on every route, the default for */* or no Accept --------------------------------

ROUTES = [
    "/studies",
    "/series",
    "/studies/{study}/series",
    "/studies/{study}/series/{series}/instances",
    "/studies/{study}",
    "/studies/{study}/series/{series}",
    "{instance}",
    "/studies/{study}/metadata",
    "/studies/{study}/series/{series}/metadata",
    "{instance}/metadata",
    "{instance}/frames/1",
    "{instance}/bulkdata/7FE00010",
    "{instance}/rendered",
    "{instance}/frames/1/rendered",
    "/studies/{study}/thumbnail",
    "/studies/{study}/series/{series}/thumbnail",
    "{instance}/thumbnail",
]


def _url(route: str, series: dict[str, Any]) -> str:
    return "/dicom-web" + route.format(instance=series["instances"][0], **series)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "accept", ["text/html", "application/dicom+xml", "*/*;q=0", 'multipart/related; type="x/y"']
)
def test_an_accept_no_representation_meets_is_406_on_every_route(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], route: str, accept: str
) -> None:
    for method in ("GET", "HEAD"):
        response = client.request(method, _url(route, series), headers={**auth, "Accept": accept})
        assert response.status_code == 406, (method, response.text)
    assert "acceptable" in client.get(_url(route, series), headers={**auth, "Accept": accept}).text


@pytest.mark.parametrize("route", ROUTES)
def test_no_accept_or_any_gets_the_default(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], route: str
) -> None:
    url = _url(route, series)
    plain = client.get(url, headers=auth)  # TestClient sends */*
    assert plain.status_code == 200, plain.text
    bare = client.build_request("GET", url, headers=auth)
    del bare.headers["accept"]
    missing = client.send(bare)
    assert missing.status_code == 200, missing.text
    assert (
        missing.headers["content-type"].split(";")[0] == plain.headers["content-type"].split(";")[0]
    )


@pytest.mark.parametrize(
    ("route", "accept"),
    [
        ("{instance}", "application/dicom+json"),  # not application/dicom
        ("{instance}", 'multipart/related; type="application/octet-stream"'),
        ("/studies/{study}", "application/dicom"),  # two instances cannot go single-part
        ("{instance}", f'multipart/related; type="application/dicom"; transfer-syntax={JPEG}'),
        ("{instance}/metadata", 'multipart/related; type="application/dicom+json"'),
        ("/studies", "application/dicom"),
        ("{instance}/rendered", 'multipart/related; type="image/jpeg"'),
        ("{instance}/rendered", "image/jpeg;q=0, image/gif"),
        ("{instance}/thumbnail", "image/png"),
    ],
)
def test_accepts_that_name_the_wrong_thing_are_406(
    client: TestClient, auth: dict[str, str], series: dict[str, Any], route: str, accept: str
) -> None:
    response = client.get(_url(route, series), headers={**auth, "Accept": accept})
    assert response.status_code == 406, response.text


@pytest.mark.parametrize(
    ("route", "accept", "served"),
    [
        ("{instance}", "application/dicom", "application/dicom"),
        ("{instance}", 'multipart/related; type="application/dicom"', "multipart/related"),
        (
            "/studies/{study}",
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            "multipart/related",
        ),
        ("{instance}/metadata", "application/json", "application/json"),
        ("/studies", "application/dicom+json", "application/dicom+json"),
        ("{instance}/rendered", "image/jpeg;q=0, image/png", "image/png"),
        ("{instance}/rendered", "image/*", "image/jpeg"),
        ("{instance}/rendered", "image/png;q=0.5, image/jpeg;q=0.9", "image/jpeg"),
        ("{instance}/thumbnail", "text/html, image/*;q=0.1", "image/jpeg"),
    ],
)
def test_accepts_that_can_be_met_choose_the_representation(
    client: TestClient,
    auth: dict[str, str],
    series: dict[str, Any],
    route: str,
    accept: str,
    served: str,
) -> None:
    response = client.get(_url(route, series), headers={**auth, "Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == served


def test_instances_in_another_syntax_are_labelled_and_not_passed_off_as_the_default(
    client: TestClient, auth: dict[str, str], ctx: Context
) -> None:
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    assert ds.file_meta.TransferSyntaxUID == JPEG
    url = "/dicom-web" + put_deid(ctx, ds)
    labelled = f"application/dicom; transfer-syntax={JPEG}"
    for accept in ("*/*", 'multipart/related; type="application/dicom"; transfer-syntax=*'):
        response = client.get(url, headers={**auth, "Accept": accept})
        assert response.status_code == 200, accept
        assert response.headers["content-type"].startswith(
            'multipart/related; type="application/dicom"'
        )
        assert f"Content-Type: {labelled}\r\n".encode() in response.content
    single = client.get(
        url, headers={**auth, "Accept": f"application/dicom; transfer-syntax={JPEG}"}
    )
    assert single.headers["content-type"] == labelled
    assert pydicom.dcmread(io.BytesIO(single.content)).SOPInstanceUID == ds.SOPInstanceUID
    # Without transfer-syntax the media type's default, Explicit VR Little Endian, is asked for.
    default = client.get(
        url, headers={**auth, "Accept": 'multipart/related; type="application/dicom"'}
    )
    assert default.status_code == 406
    assert "transfer-syntax=*" in default.json()["detail"]


IMPLICIT, DEFLATED, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"


@pytest.mark.parametrize(
    ("name", "stored"),
    [("MR_small_implicit.dcm", IMPLICIT), ("image_dfl.dcm", DEFLATED)],
)
def test_native_little_endian_instances_are_re_encoded_for_the_default(
    client: TestClient, auth: dict[str, str], ctx: Context, name: str, stored: str
) -> None:
    original = pydicom.dcmread(get_testdata_file(name))
    assert original.file_meta.TransferSyntaxUID == stored
    url = "/dicom-web" + put_deid(ctx, original)
    # The default (no transfer-syntax) is Explicit VR Little Endian: re-encoded, values kept.
    for accept in (
        'multipart/related; type="application/dicom"',
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}',
        "application/dicom",
    ):
        response = client.get(url, headers={**auth, "Accept": accept})
        assert response.status_code == 200, accept
        body = response.content
        if response.headers["content-type"].startswith("multipart/related"):
            [(headers, body)] = multipart_parts(response)
            assert headers["Content-Type"] == "application/dicom"
        else:
            assert response.headers["content-type"] == "application/dicom"
        sent = pydicom.dcmread(io.BytesIO(body))
        assert sent.file_meta.TransferSyntaxUID == EXPLICIT_LE, accept
        assert sent.PatientName == original.PatientName
        assert np.array_equal(sent.pixel_array, original.pixel_array)
    # Any syntax, or the stored one, gets the stored bytes, labelled.
    for accept in ("*/*", f'multipart/related; type="application/dicom"; transfer-syntax={stored}'):
        [(headers, body)] = multipart_parts(client.get(url, headers={**auth, "Accept": accept}))
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={stored}"
        assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == stored


def test_big_endian_instances_are_not_transcoded(
    client: TestClient, auth: dict[str, str], ctx: Context
) -> None:
    original = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    original.SOPInstanceUID = generate_uid()
    url = "/dicom-web" + put_deid(ctx, original)
    refused = client.get(
        url, headers={**auth, "Accept": 'multipart/related; type="application/dicom"'}
    )
    assert refused.status_code == 406 and "big-endian" in refused.json()["detail"]
    assert client.get(url, headers={**auth, "Accept": "*/*"}).status_code == 200


def multipart_parts(response: Any) -> list[tuple[dict[str, str], bytes]]:
    media_type, params = parse_media_type(response.headers["content-type"])
    assert media_type == "multipart/related", response.text
    return [
        ({"Content-Type": part.content_type}, part.read())
        for part in split_parts(response.content, params["boundary"])
    ]


def test_stow_refuses_an_accept_it_cannot_answer_before_storing(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    body, content_type = encode_multipart(ct_series()[:1])
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {tokens['modality']}"}
    refused = client.post(
        "/dicom-web/studies", content=body, headers={**headers, "Accept": "application/dicom+xml"}
    )
    assert refused.status_code == 406
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []
    for accept, served in (("*/*", "application/dicom+json"), ("application/json", None)):
        stored = client.post(
            "/dicom-web/studies", content=body, headers={**headers, "Accept": accept}
        )
        assert stored.status_code == 200
        assert stored.headers["content-type"] == (served or accept)


def test_stow_to_a_study_path_that_is_not_a_uid_is_400_and_nothing_stored(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    body, content_type = encode_multipart(ct_series()[:1])
    response = client.post(
        "/dicom-web/studies/not-a-uid",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {tokens['modality']}"},
    )
    assert response.status_code == 400 and "is not a UID" in response.json()["detail"]
    assert list(ctx.objects.list(ctx.buckets["raw"])) == []


# --- one parser and one builder, for the client and the server ---------------------------


def test_choose_follows_q_values_and_the_most_specific_range() -> None:
    offered = ("image/jpeg", "image/png")
    assert choose(None, offered) == "image/jpeg"
    assert choose("*/*", offered) == "image/jpeg"
    assert choose("image/*;q=0.2, image/png", offered) == "image/png"
    assert choose("image/*, image/jpeg;q=0", offered) == "image/png"
    assert choose('text/html, IMAGE/PNG;q="0.3"', offered) == "image/png"
    with pytest.raises(NotAcceptable, match="image/jpeg or image/png"):
        choose("image/*;q=0", offered)


def test_the_builder_round_trips_through_the_servers_reader() -> None:
    parts = [b"\r\n--not-a-boundary\r\n", b"second", BodyPart(b"third", "application/dicom")]
    body, content_type = encode_multipart(parts)
    read = split_parts(body, stow_boundary(content_type))
    assert [p.read() for p in read] == [b"\r\n--not-a-boundary\r\n", b"second", b"third"]
    framed, framed_type = encode_multipart(
        [BodyPart(b"x", "image/jpeg; transfer-syntax=" + JPEG, "http://h/frames/1")], "image/jpeg"
    )
    assert framed_type.startswith('multipart/related; type="image/jpeg"; boundary=')
    assert b"Content-Location: http://h/frames/1\r\n" in framed
    assert parse_accept(framed_type)[0].params["type"] == "image/jpeg"
