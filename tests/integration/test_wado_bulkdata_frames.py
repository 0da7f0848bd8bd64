"""WADO-RS bulk data, frames in their image media types, bit-packed frames, Content-Location
and HEAD, over real HTTP with dicomweb-client and httpx (PS3.18 8.4.3, 8.7, 10.4).

The objects are put straight into the de-identified store and index, as the deid stage
would, so these tests exercise the read side only.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radpipe.common.context import Context
from radpipe.common.dicomindex import add_to_index, index_document
from radpipe.common.dicomio import write_part10
from radpipe.common.identity import pseudonymous_uid

from ..dicomjson import every_dicom_json_response_is_checked  # noqa: F401

RNG = np.random.default_rng(1804)


def put_deid(ctx: Context, ds: pydicom.Dataset) -> str:
    """Store ``ds`` as a de-identified object and index it; returns its instance path."""
    key = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    ctx.objects.put(ctx.buckets["deid"], key, write_part10(ds), "application/dicom")
    add_to_index(ctx.documents, index_document(ds, "study-test", key, ctx.buckets["deid"]))
    return (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _image(rows: int, columns: int, bits: int, frames: int, pixel_data: bytes) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.2" if bits > 1 else "1.2.840.10008.5.1.4.1.1.7.1"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.InstanceNumber = "RP0001", "OT", 1
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    return ds


def _icon(size: int) -> pydicom.Dataset:
    icon = pydicom.Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = size, size, 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = RNG.integers(0, 255, size * size, dtype=np.uint8).tobytes()
    icon["PixelData"].VR = "OB"
    return icon


@pytest.fixture
def multiframe(ctx: Context) -> tuple[str, pydicom.Dataset]:
    """A 3-frame 8-bit image with bulk data at the top level and nested one and two deep."""
    frames = RNG.integers(0, 255, (3, 4, 5), dtype=np.uint8)
    ds = _image(4, 5, 8, 3, frames.tobytes())
    ds.ICCProfile = RNG.integers(0, 255, 2000, dtype=np.uint8).tobytes()
    ds.IconImageSequence = Sequence([_icon(32)])
    source = pydicom.Dataset()
    source.ReferencedSOPClassUID, source.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    source.IconImageSequence = Sequence([_icon(48)])
    small = pydicom.Dataset()
    small.ReferencedSOPClassUID, small.ReferencedSOPInstanceUID = ds.SOPClassUID, generate_uid()
    small.IconImageSequence = Sequence([_icon(8)])  # 64 bytes: stays InlineBinary
    ds.SourceImageSequence = Sequence([small, source])
    return put_deid(ctx, ds), ds


@pytest.fixture
def auth(tokens: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens['radiologist']}"}


@pytest.fixture
def dicomweb(live_url: str, auth: dict[str, str]) -> DICOMwebClient:
    return DICOMwebClient(url=f"{live_url}/dicom-web", headers=auth)


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The (headers, body) of each part of a multipart/related response."""
    match = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"])
    assert match, response.headers["content-type"]
    out = []
    for chunk in response.content.split(b"--" + match.group(1).encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((headers, body[:-2]))
    return out


def bulk_uris(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Every BulkDataURI in DICOM JSON, keyed by (tag, item index, tag, ...)."""
    found: dict[tuple[str, ...], str] = {}
    for tag, attribute in node.items():
        if "BulkDataURI" in attribute:
            found[(*path, tag)] = attribute["BulkDataURI"]
        for index, item in enumerate(attribute.get("Value", []) if attribute["vr"] == "SQ" else []):
            found.update(bulk_uris(item, (*path, tag, str(index))))
    return found


def element_at(ds: pydicom.Dataset, path: tuple[str, ...]) -> bytes:
    for tag, index in zip(path[:-1:2], path[1::2], strict=True):
        ds = ds[int(tag, 16)].value[int(index)]
    return bytes(ds[int(path[-1], 16)].value)


def test_every_bulkdata_uri_returns_its_element_at_any_depth(
    dicomweb: DICOMwebClient, multiframe: tuple[str, pydicom.Dataset], live_url: str
) -> None:
    path, ds = multiframe
    metadata = dicomweb.retrieve_instance_metadata(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    uris = bulk_uris(metadata)
    instance_url = f"{live_url}/dicom-web{path}"
    assert uris == {
        ("7FE00010",): f"{instance_url}/bulkdata/7FE00010",
        ("00282000",): f"{instance_url}/bulkdata/00282000",
        ("00880200", "0", "7FE00010"): f"{instance_url}/bulkdata/00880200/1/7FE00010",
        ("00082112", "1", "00880200", "0", "7FE00010"): (
            f"{instance_url}/bulkdata/00082112/2/00880200/1/7FE00010"
        ),
    }
    small = metadata["00082112"]["Value"][0]["00880200"]["Value"][0]["7FE00010"]
    assert "InlineBinary" in small  # the threshold still applies below the top level
    for position, uri in uris.items():
        assert dicomweb.retrieve_bulkdata(uri) == [element_at(ds, position)], position
    # The Pixel Data BulkDataURI of a multi-frame instance returns every frame.
    assert len(dicomweb.retrieve_bulkdata(uris[("7FE00010",)])[0]) == 3 * 4 * 5


def test_bulkdata_errors_headers_and_audit(
    live_url: str, auth: dict[str, str], ctx: Context, multiframe: tuple[str, pydicom.Dataset]
) -> None:
    path, ds = multiframe
    url = f"{live_url}/dicom-web{path}/bulkdata"
    for missing in ("00091001", "00100010", "00880200/2/7FE00010", "00880200/x/7FE00010"):
        response = httpx.get(f"{url}/{missing}", headers=auth)
        assert response.status_code == 404, missing
        assert response.json()["error"] == "NotFound"
    icc = httpx.get(f"{url}/00282000", headers=auth)
    assert icc.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"'
    )
    assert icc.headers["content-location"] == f"{url}/00282000"
    [(headers, body)] = parts(icc)
    assert headers["Content-Type"] == "application/octet-stream" and body == ds.ICCProfile
    single = httpx.get(f"{url}/00282000", headers={**auth, "Accept": "application/octet-stream"})
    assert single.headers["content-type"] == "application/octet-stream"
    assert single.content == ds.ICCProfile
    refused = httpx.get(f"{url}/00282000", headers={**auth, "Accept": "image/jpeg"})
    assert refused.status_code == 406
    targets = [
        e["target"] for e in ctx.documents.collection("audit").find({"action": "dicomweb.read"})
    ]
    assert f"/dicom-web{path}/bulkdata/00282000" in targets
    assert f"/dicom-web{path}/bulkdata/00091001" in targets


def test_bit_packed_frames_are_repacked_from_the_frame_start(
    live_url: str, auth: dict[str, str], ctx: Context
) -> None:
    # 5 x 5 one-bit pixels: frame 2 starts at bit 25, in the middle of a byte (PS3.5 8.1.1).
    bits = RNG.integers(0, 2, 75, dtype=np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    ds = _image(5, 5, 1, 3, packed + b"\x00" * (len(packed) % 2))
    path = put_deid(ctx, ds)
    assert np.array_equal(
        pydicom.dcmread(pydicom.filebase.DicomBytesIO(write_part10(ds))).pixel_array.ravel(), bits
    )
    response = httpx.get(f"{live_url}/dicom-web{path}/frames/1,2,3", headers=auth)
    assert response.status_code == 200
    got = [body for _, body in parts(response)]
    for number, frame in enumerate(got):
        expected = np.packbits(bits[number * 25 : (number + 1) * 25], bitorder="little")
        assert frame == expected.tobytes(), f"frame {number + 1}"
    whole = httpx.get(f"{live_url}/dicom-web{path}/bulkdata/7FE00010", headers=auth)
    assert parts(whole)[0][1] == ds.PixelData  # bulk data is the value as stored


COMPRESSED = [
    ("examples_ybr_color.dcm", "image/jpeg", "1.2.840.10008.1.2.4.50"),
    ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg", "1.2.840.10008.1.2.4.70"),
    ("MR_small_jpeg_ls_lossless.dcm", "image/jls", "1.2.840.10008.1.2.4.80"),
    ("MR_small_jp2klossless.dcm", "image/jp2", "1.2.840.10008.1.2.4.90"),
    ("SC_rgb_rle_2frame.dcm", "image/dicom-rle", "1.2.840.10008.1.2.5"),
]


@pytest.mark.parametrize(("name", "media_type", "syntax"), COMPRESSED)
def test_compressed_frames_carry_their_image_media_type(
    live_url: str, auth: dict[str, str], ctx: Context, name: str, media_type: str, syntax: str
) -> None:
    ds = pydicom.dcmread(get_testdata_file(name))
    assert ds.file_meta.TransferSyntaxUID == syntax
    count = int(ds.get("NumberOfFrames", 1) or 1)
    expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    path = put_deid(ctx, ds)
    numbers = ",".join(str(n) for n in range(1, count + 1))
    url = f"{live_url}/dicom-web{path}/frames/{numbers}"
    response = httpx.get(url, headers={**auth, "Accept": 'multipart/related; type="*/*"'})
    assert response.headers["content-type"].startswith(f'multipart/related; type="{media_type}"')
    assert response.headers["content-location"] == url
    got = parts(response)
    assert [body for _, body in got] == expected
    for number, (headers, _) in enumerate(got, 1):
        assert headers["Content-Type"] == f"{media_type}; transfer-syntax={syntax}"
        assert headers["Content-Location"] == f"{live_url}/dicom-web{path}/frames/{number}"
    for accept in ("*/*", f'multipart/related; type="{media_type}"'):
        again = httpx.get(url, headers={**auth, "Accept": accept})
        assert again.status_code == 200, accept
        assert [body for _, body in parts(again)] == expected
    # The bare media type asks for a single-part body: one frame only.
    first = httpx.get(
        f"{live_url}/dicom-web{path}/frames/1", headers={**auth, "Accept": media_type}
    )
    assert first.headers["content-type"] == f"{media_type}; transfer-syntax={syntax}"
    assert first.content == expected[0]
    if count > 1:
        assert httpx.get(url, headers={**auth, "Accept": media_type}).status_code == 406
    # OHIF asks for octet-stream in any transfer syntax: the compressed bytes, labelled.
    ohif = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    labelled = parts(httpx.get(url, headers={**auth, "Accept": ohif}))
    assert labelled[0][0]["Content-Type"] == f"application/octet-stream; transfer-syntax={syntax}"
    assert [body for _, body in labelled] == expected
    # Neither uncompressed octet-stream (the default syntax) nor another codec can be met.
    for accept in (
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="image/png"',
        f'multipart/related; type="{media_type}"; transfer-syntax=1.2.840.10008.1.2.4.999',
    ):
        refused = httpx.get(url, headers={**auth, "Accept": accept})
        assert refused.status_code == 406, accept
        assert "not transcoded" in refused.json()["detail"]
    # The Pixel Data bulk data of a compressed instance: one part per frame.
    bulk = httpx.get(f"{live_url}/dicom-web{path}/bulkdata/7FE00010", headers=auth)
    assert [body for _, body in parts(bulk)] == expected


def test_native_frames_stay_octet_stream(
    live_url: str, auth: dict[str, str], multiframe: tuple[str, pydicom.Dataset]
) -> None:
    path, ds = multiframe
    url = f"{live_url}/dicom-web{path}/frames/3,1"
    response = httpx.get(url, headers=auth)  # no Accept: anything goes
    got = parts(response)
    assert response.headers["content-type"].startswith(
        'multipart/related; type="application/octet-stream"'
    )
    assert [h["Content-Type"] for h, _ in got] == [
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    ] * 2
    assert [body for _, body in got] == [ds.PixelData[40:60], ds.PixelData[0:20]]
    plain = httpx.get(
        url, headers={**auth, "Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert [body for _, body in parts(plain)] == [ds.PixelData[40:60], ds.PixelData[0:20]]
    jpeg = httpx.get(url, headers={**auth, "Accept": 'multipart/related; type="image/jpeg"'})
    assert jpeg.status_code == 406
    q0 = httpx.get(url, headers={**auth, "Accept": "*/*;q=0"})
    assert q0.status_code == 406


def test_content_location_names_the_deidentified_resource(
    live_url: str, auth: dict[str, str], ctx: Context
) -> None:
    # Stored under keyed pseudonyms; requested with the "original" UIDs (a STOW RetrieveURL).
    study, series, sop = "1.2.3.4.5", "1.2.3.4.5.6", "1.2.3.4.5.6.7"
    ds = _image(2, 2, 8, 1, bytes(4))
    secret = ctx.pseudonym_key
    ds.StudyInstanceUID = pseudonymous_uid(secret, study)
    ds.SeriesInstanceUID = pseudonymous_uid(secret, series)
    ds.SOPInstanceUID = pseudonymous_uid(secret, sop)
    canonical = f"{live_url}/dicom-web{put_deid(ctx, ds)}"
    asked = f"{live_url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    for suffix in ("", "/metadata", "/frames/1", "/bulkdata/7FE00010", "/rendered"):
        response = httpx.get(asked + suffix, headers=auth)
        assert response.status_code == 200, suffix
        assert response.headers["content-location"] == canonical + suffix
    study_url = f"{live_url}/dicom-web/studies/{ds.StudyInstanceUID}"
    whole = httpx.get(study_url, headers=auth)
    assert whole.headers["content-location"] == study_url
    [(headers, _)] = parts(whole)
    assert headers["Content-Location"] == canonical  # each instance part names itself
    windowed = httpx.get(f"{asked}/rendered?window=10,20", headers=auth)
    assert windowed.headers["content-location"] == f"{canonical}/rendered?window=10,20"


def test_head_answers_like_get_without_a_body(
    live_url: str, auth: dict[str, str], ctx: Context, multiframe: tuple[str, pydicom.Dataset]
) -> None:
    path, ds = multiframe
    base = f"{live_url}/dicom-web"
    for url in (
        f"{base}/studies",
        f"{base}/studies/{ds.StudyInstanceUID}/series",
        f"{base}{path}",
        f"{base}{path}/metadata",
        f"{base}{path}/frames/2",
        f"{base}{path}/bulkdata/00282000",
        f"{base}{path}/rendered",
        f"{base}/studies/{ds.StudyInstanceUID}/thumbnail",
    ):
        get, head = httpx.get(url, headers=auth), httpx.head(url, headers=auth)
        assert head.status_code == get.status_code == 200, url
        assert head.content == b"", url
        assert head.headers["content-length"] == str(len(get.content)), url
        assert (
            head.headers["content-type"].split(";")[0] == get.headers["content-type"].split(";")[0]
        )
    assert httpx.head(f"{base}{path}/frames/9", headers=auth).status_code == 404
    assert httpx.head(f"{base}/studies").status_code == 401
    assert "HEAD" in httpx.delete(f"{base}/studies").headers["allow"]
    heads = [
        e
        for e in ctx.documents.collection("audit").find({"action": "dicomweb.read"})
        if e["target"] == f"/dicom-web{path}/metadata"
    ]
    assert len(heads) == 2  # HEAD is a read, audited like GET
