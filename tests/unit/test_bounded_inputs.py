"""Bounded inputs on the HTTP and decode side (security issue, item 1): a deflated part
inflates with a hard limit, declared pixel sizes are capped before decoding and a frame is
decoded alone, WADO frame lists are capped and de-duplicated, a study retrieval streams,
QIDO wildcards match in linear time and a search has a maximum. Every refusal is a 4xx (or a
per-instance STOW failure) with its reason, and nothing is half-stored."""

from __future__ import annotations

import io
import random
import re
import tracemalloc
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from radpipe.common.context import Context
from radpipe.common.dicomio import (
    InflateLimitExceeded,
    PixelDataTooLarge,
    check_pixel_size,
    declared_pixel_bytes,
    read_part10,
)
from radpipe.common.errors import BadRequest
from radpipe.common.mime import encode_multipart
from radpipe.common.sqlquery import where
from radpipe.inference import volume as volume_module
from radpipe.inference.volume import VolumeError, series_to_volume
from radpipe.ingest import bulkdata, qido, retrieve
from radpipe.ingest.multipart import split_parts

from ..dicom import ct_series, read
from ..integration.test_wado_bulkdata_frames import _image, put_deid

A700 = 0xA700
MiB = 1024 * 1024


def deflated(ds: pydicom.Dataset) -> bytes:
    """``ds`` written as Deflated Explicit VR Little Endian (PS3.5 A.5)."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def bomb(inflated_bytes: int) -> tuple[bytes, pydicom.Dataset]:
    """A small deflated instance whose data set inflates to about ``inflated_bytes`` (zeros in
    a private OB element deflate about 1000:1)."""
    ds = read(ct_series()[0])
    del ds.PixelData
    block = ds.private_block(0x0009, "RADPIPE TEST", create=True)
    block.add_new(0x10, "OB", bytes(inflated_bytes))
    return deflated(ds), ds


def stow(client: TestClient, token: str, payloads: list[bytes]) -> Any:
    body, content_type = encode_multipart(payloads)
    return client.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )


def stored_nothing(ctx: Context) -> bool:
    return (
        list(ctx.objects.list(ctx.buckets["raw"])) == []
        and ctx.studies.studies.count_documents({}) == 0
        and ctx.studies.instances.count_documents({}) == 0
    )


# --- deflate: a hard output limit -----------------------------------------------------------


def test_a_deflate_bomb_is_refused_at_the_limit_with_bounded_memory() -> None:
    data, ds = bomb(64 * MiB)
    assert len(data) < 200 * 1024  # ~64 KB on the wire
    tracemalloc.start()
    try:
        with pytest.raises(InflateLimitExceeded, match="RADPIPE_MAX_INSTANCE_BYTES") as caught:
            read_part10(io.BytesIO(data), stop_before_pixels=True, max_inflated_bytes=4 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # dcmread inflates the whole data set at once (64 MiB here, 20 GB for a 10 MB part).
    assert peak < 16 * MiB, peak
    assert caught.value.sop_instance_uid == ds.SOPInstanceUID  # from the File Meta Information
    assert caught.value.status == 413


def test_a_deflated_instance_under_the_limit_reads_as_before() -> None:
    source = read(ct_series()[0])
    data = deflated(source)
    ds = read_part10(io.BytesIO(data), max_inflated_bytes=10 * MiB)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert ds.SOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(io.BytesIO(data)).pixel_array)
    header = read_part10(io.BytesIO(data), stop_before_pixels=True)
    assert "PixelData" not in header and header.PatientID == source.PatientID


def test_a_transfer_syntax_hidden_behind_padded_file_meta_is_refused(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    """A File Meta Information padded past 64 KiB cannot hide a deflated data set from the
    limit: the part is refused (C000), not handed to an unbounded inflate."""
    data, _ = bomb(16 * MiB)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.add_new(0x00020102, "OB", bytes(70000))  # Private Information
    ds.file_meta.add_new(0x00020100, "UI", "1.2.3")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    with pytest.raises(pydicom.errors.InvalidDicomError, match="larger than 64 KiB"):
        read_part10(io.BytesIO(buffer.getvalue()), max_inflated_bytes=MiB)
    response = stow(client, tokens["modality"], [buffer.getvalue()])
    assert response.status_code == 400
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert stored_nothing(ctx)


def test_stow_refuses_a_deflate_bomb_a700_stores_the_rest(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    ctx.settings.max_instance_bytes = 8 * MiB  # the same limit as a plain instance
    data, ds = bomb(64 * MiB)
    plain = ct_series()[1]
    response = stow(client, tokens["modality"], [data, plain])
    assert response.status_code == 202, response.text
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"] for item in failed] == [[A700]]
    assert failed[0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert "inflates past RADPIPE_MAX_INSTANCE_BYTES (8388608 bytes)" in response.headers["warning"]
    # Only the plain instance is stored and recorded.
    keys = list(ctx.objects.list(ctx.buckets["raw"]))
    assert [ctx.objects.get(ctx.buckets["raw"], k) for k in keys] == [plain]
    assert ctx.studies.instances.count_documents({}) == 1


def test_stow_of_only_a_deflate_bomb_stores_nothing(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    ctx.settings.max_instance_bytes = 4 * MiB
    response = stow(client, tokens["modality"], [bomb(16 * MiB)[0]])
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [A700]
    assert stored_nothing(ctx)


def test_a_corrupt_deflate_stream_is_c000(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    data = deflated(read(ct_series()[0]))
    response = stow(client, tokens["modality"], [data[:-400]])  # cut inside the stream
    assert response.status_code == 400
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert stored_nothing(ctx)


# --- declared pixel sizes, checked before decoding ------------------------------------------


def _declaring(rows: int, columns: int, frames: int, bits: int = 16) -> pydicom.Dataset:
    """An image header declaring a size its (tiny) pixel data does not hold: decoding it would
    fail, so a refusal proves nothing was decoded."""
    ds = _image(2, 2, 8, 1, bytes(4))
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.BitsAllocated = rows, columns, frames, bits
    ds.BitsStored, ds.HighBit = bits, bits - 1
    return ds


def test_declared_pixel_bytes_and_the_caps() -> None:
    ds = _declaring(65535, 65535, 1000)
    frame, total = declared_pixel_bytes(ds)
    assert frame == 65535 * 65535 * 2 and total == frame * 1000
    with pytest.raises(PixelDataTooLarge, match="RADPIPE_MAX_FRAME_BYTES"):
        check_pixel_size(ds, max_pixel_bytes=2**62, max_frame_bytes=256 * MiB)
    with pytest.raises(PixelDataTooLarge, match="RADPIPE_MAX_PIXEL_BYTES") as caught:
        check_pixel_size(ds, max_pixel_bytes=2 * 1024**3, max_frame_bytes=2**62)
    assert caught.value.status == 400
    check_pixel_size(_declaring(512, 512, 1), max_pixel_bytes=MiB, max_frame_bytes=MiB)
    bad = _declaring(4, 4, 1)
    bad.NumberOfFrames = -3
    with pytest.raises(BadRequest, match="NumberOfFrames is -3"):
        declared_pixel_bytes(bad)


@pytest.mark.parametrize("suffix", ["/rendered", "/frames/1/rendered", "/thumbnail"])
def test_rendering_a_declared_giant_is_400_before_decoding(
    client: TestClient, ctx: Context, tokens: dict[str, str], suffix: str
) -> None:
    path = put_deid(ctx, _declaring(40000, 40000, 2))
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    response = client.get(f"/dicom-web{path}{suffix}", headers=auth)
    assert response.status_code == 400, response.text
    assert "RADPIPE_MAX_PIXEL_BYTES" in response.text or "RADPIPE_MAX_FRAME_BYTES" in response.text
    ctx.settings.max_frame_bytes = 1000
    frames = client.get(f"/dicom-web{path}/frames/1", headers=auth)
    assert frames.status_code == 400 and "RADPIPE_MAX_FRAME_BYTES" in frames.text


def _rle_frames(count: int, rows: int = 8, columns: int = 8) -> tuple[pydicom.Dataset, np.ndarray]:
    """An RLE Lossless multi-frame image whose last frame is corrupt."""
    pixels = np.arange(count * rows * columns, dtype=np.uint8).reshape(count, rows, columns)
    ds = _image(rows, columns, 8, count, pixels.tobytes())
    ds.compress(RLELossless, encoding_plugin="pydicom")
    fragments = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=count))
    fragments[-1] = b"\x01\x00\x00\x00" + b"\xff" * 60  # an RLE header naming no segment
    ds.PixelData = encapsulate(fragments)
    return ds, pixels


def test_rendering_a_frame_decodes_that_frame_only(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    ds, pixels = _rle_frames(3)
    path = put_deid(ctx, ds)
    auth = {"Authorization": f"Bearer {tokens['radiologist']}", "Accept": "image/png"}
    first = client.get(f"/dicom-web{path}/frames/1/rendered", headers=auth)
    assert first.status_code == 200, first.text  # the corrupt third frame is never decoded
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(first.content)))
    assert image.shape == (8, 8)
    assert np.argmax(image) == np.argmax(pixels[0])
    assert client.get(f"/dicom-web{path}/frames/3/rendered", headers=auth).status_code == 406


def _enhanced(frames: int) -> pydicom.Dataset:
    """A multi-frame CT with per-frame geometry, as ``series_to_volume`` reads it."""
    from pydicom.sequence import Sequence

    pixels = np.arange(frames * 16, dtype=np.uint16).reshape(frames, 4, 4)
    ds = _image(4, 4, 16, frames, pixels.tobytes())
    ds.SeriesInstanceUID = generate_uid()
    shared = pydicom.Dataset()
    orientation, measures = pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing = [1, 1]
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    items = []
    for index in range(frames):
        item, plane = pydicom.Dataset(), pydicom.Dataset()
        plane.ImagePositionPatient = [0, 0, float(index)]
        item.PlanePositionSequence = Sequence([plane])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    return ds


def test_inference_decodes_each_frame_once_and_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []
    real = volume_module.pixel_array

    def counting(src: Any, **kwargs: Any) -> np.ndarray:
        calls.append(kwargs.get("index"))
        return real(src, **kwargs)

    monkeypatch.setattr(volume_module, "pixel_array", counting)
    volume = series_to_volume([_enhanced(5)])
    assert volume.array.shape == (5, 4, 4)
    assert sorted(calls) == [0, 1, 2, 3, 4]  # five frames, five single-frame decodes
    assert volume.array[4, 0, 0] == 64


def test_inference_refuses_declared_giants_before_decoding() -> None:
    giant = _enhanced(3)
    giant.Rows = giant.Columns = 30000  # 1.8 GB a frame declared; 96 bytes held
    with pytest.raises(VolumeError, match="RADPIPE_MAX_FRAME_BYTES"):
        series_to_volume([giant])
    with pytest.raises(VolumeError, match="RADPIPE_MAX_PIXEL_BYTES"):
        series_to_volume([_enhanced(5)], max_pixel_bytes=5 * 16 * 4 - 1)


# --- WADO frame lists -----------------------------------------------------------------------


def test_frame_lists_are_deduplicated_in_order_and_capped() -> None:
    assert bulkdata.frame_numbers("3,1,3,2,1") == [3, 1, 2]
    assert bulkdata.frame_numbers(",".join(["7"] * 5000)) == [7]
    many = ",".join(str(n) for n in range(1, 1002))
    with pytest.raises(BadRequest, match=r"1001 distinct frames.*RADPIPE_WADO_MAX_FRAMES"):
        bulkdata.frame_numbers(many)
    assert len(bulkdata.frame_numbers(many, max_frames=2000)) == 1001


def test_wado_frames_route_dedupes_and_caps(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    frames = np.arange(3 * 20, dtype=np.uint8).reshape(3, 4, 5)
    path = put_deid(ctx, _image(4, 5, 8, 3, frames.tobytes()))
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    response = client.get(f"/dicom-web{path}/frames/3,1,3", headers=auth)
    assert response.status_code == 200
    boundary = response.headers["content-type"].split("boundary=")[1]
    parts = split_parts(response.content, boundary)
    assert [p.read() for p in parts] == [frames[2].tobytes(), frames[0].tobytes()]
    ctx.settings.wado_max_frames = 2
    refused = client.get(f"/dicom-web{path}/frames/1,2,3", headers=auth)
    assert refused.status_code == 400 and "RADPIPE_WADO_MAX_FRAMES" in refused.text


def test_encapsulated_frames_are_cut_without_copying_every_frame() -> None:
    ds, _ = _rle_frames(4)
    wanted = bulkdata._encapsulated_frames(ds, {2})
    assert list(wanted) == [2]  # stopped after frame 2
    parts = bulkdata.frames(ds, [2, 1])
    assert [p.location for p in parts] == ["frames/2", "frames/1"]


# --- a study retrieval streams ---------------------------------------------------------------


def test_multipart_stream_reads_one_part_at_a_time() -> None:
    read_so_far: list[int] = []

    def parts() -> Any:
        for n in range(3):
            read_so_far.append(n)
            yield bytes([n]) * 10, "application/dicom", f"/i/{n}"

    stream, content_type = retrieve.multipart_stream(parts(), "application/dicom")
    first = next(stream)
    assert read_so_far == [0] and first.startswith(b"--radpipe-")
    body = first + b"".join(stream)
    assert read_so_far == [0, 1, 2]
    boundary = content_type.split("boundary=")[1]
    assert [p.read() for p in split_parts(body, boundary)] == [
        b"\x00" * 10,
        b"\x01" * 10,
        b"\x02" * 10,
    ]


def test_a_study_retrieval_is_streamed_and_complete(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    study, series = generate_uid(), generate_uid()
    stored = []
    for number in (1, 2, 3):
        ds = _image(4, 5, 8, 1, bytes(20))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
        put_deid(ctx, ds)
        stored.append(ds.SOPInstanceUID)
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    response = client.get(f"/dicom-web/studies/{study}", headers=auth)
    assert response.status_code == 200
    assert "content-length" not in response.headers  # streamed, chunked
    boundary = response.headers["content-type"].split("boundary=")[1]
    parts = split_parts(response.content, boundary)
    assert [read(p.read()).SOPInstanceUID for p in parts] == stored
    head = client.head(f"/dicom-web/studies/{study}", headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("multipart/related")


# --- QIDO: linear wildcards ------------------------------------------------------------------

PATHOLOGICAL = [
    ("*?" * 8 + "Z", "A" * 64),
    ("*A" * 8 + "B", "A" * 64),
    ("*" + "A" * 16 + "B*", "A" * 200),
    ("*A*A*A*A*A*A*A*A*A*A*A*A*A*A*A*AB", "A" * 300),
]


@pytest.mark.parametrize(("pattern", "text"), PATHOLOGICAL)
def test_wildcards_match_within_a_step_bound(pattern: str, text: str) -> None:
    """A regular expression backtracks O(n^k) on these (eight ``*?`` pairs: 0.9 s on one
    30-character value); the matcher makes at most len(text) x len(pattern) comparisons."""
    steps = qido.Steps()
    assert qido.glob_match(pattern, text, steps) is False
    assert steps.count <= (len(text) + 1) * (len(pattern) + 1), steps.count
    matching = text[:-1] + pattern[-1] if pattern[-1] not in "*?" else text
    steps = qido.Steps()
    expected = _reference(pattern, matching)
    assert qido.glob_match(pattern, matching, steps) is expected
    assert steps.count <= (len(matching) + 1) * (len(pattern) + 1)


def _reference(pattern: str, text: str) -> bool:
    """PS3.4 C.2.2.2.4 wildcard matching by dynamic programming (the slow, obvious way)."""
    m, n = len(pattern), len(text)
    table = [[False] * (n + 1) for _ in range(m + 1)]
    table[0][0] = True
    for i in range(1, m + 1):
        table[i][0] = table[i - 1][0] and pattern[i - 1] == "*"
        for j in range(1, n + 1):
            if pattern[i - 1] == "*":
                table[i][j] = table[i - 1][j] or table[i][j - 1]
            else:
                same = pattern[i - 1] in ("?", text[j - 1])
                table[i][j] = same and table[i - 1][j - 1]
    return table[m][n]


def test_glob_match_and_the_store_regex_agree_with_the_reference() -> None:
    rng = random.Random(1804)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(0, 8)))
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 9)))
        expected = _reference(pattern, text)
        assert qido.glob_match(pattern, text) is expected, (pattern, text)
        regex = qido._wildcard_regex(pattern)
        assert (re.fullmatch(regex, text) is not None) is expected, (pattern, text, regex)


def test_the_store_regex_has_no_backtracking_quantifier() -> None:
    """Every ``.*`` between segments sits in an atomic group (PCRE and Python 3.11 commit to
    the leftmost match of the segment); one free ``.*`` at most, before the last segment."""
    regex = qido._wildcard_regex("*?" * 8 + "A*B*C?D*E")
    assert regex == r"^........(?>.*?A)(?>.*?B)(?>.*?C.D).*E$"
    free = re.sub(r"\(\?>\.\*\?[^()]*\)", "", regex)
    assert free.count(".*") <= 1
    assert qido.normal_wildcard("a*?*?**b?*") == "a??*b?*"


def test_matches_uses_the_linear_matcher(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = qido.Steps()
    real = qido.glob_match
    monkeypatch.setattr(qido, "glob_match", lambda p, t, s=None: real(p, t, steps))
    name = "DOE^JOHNATHAN^" + "A" * 40
    assert qido.matches("PatientName", "*?" * 8 + "Z", name) is False
    assert qido.matches("PatientName", "doe^*?*?*?*?*?*?*?*?a", name) is True
    assert 0 < steps.count <= 2 * (len(name) + 1) * 21


def test_the_embedded_store_answers_a_pathological_wildcard_with_glob(ctx: Context) -> None:
    clause, params = where({"folded.PatientName": {"$regex": qido._wildcard_regex("*?" * 8 + "Z")}})
    assert "GLOB" in clause and params[-1] == "????????*Z"
    names = ["A" * 40, "B" * 39 + "Z", "SHORTZ", "Z"]
    collection = ctx.documents.collection("bounded_test")
    for number, name in enumerate(names):
        collection.insert_one({"_id": str(number), "folded": {"PatientName": name}})
    for pattern in ("*?" * 8 + "Z", "*A*A*A*A*A*A*A*AB", "?*Z", "*"):
        found = collection.find({"folded.PatientName": {"$regex": qido._wildcard_regex(pattern)}})
        assert sorted(d["folded"]["PatientName"] for d in found) == sorted(
            n for n in names if _reference(pattern, n)
        ), pattern


# --- QIDO: a maximum -------------------------------------------------------------------------


def test_a_search_is_cut_at_the_setting_with_the_ps318_warning(
    client: TestClient, ctx: Context, tokens: dict[str, str]
) -> None:
    study, series = generate_uid(), generate_uid()
    for number in range(1, 5):
        ds = _image(2, 2, 8, 1, bytes(4))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, number
        put_deid(ctx, ds)
    ctx.settings.qido_max_results = 3
    auth = {"Authorization": f"Bearer {tokens['radiologist']}"}
    warning = (
        '299 127.0.0.1:8000: "The number of results exceeded the maximum supported by the '
        'server. Additional results can be requested."'
    )
    for query in ("", "?limit=100000"):
        first = client.get(f"/dicom-web/instances{query}", headers=auth)
        assert first.status_code == 200 and len(first.json()) == 3
        assert first.headers["warning"] == warning
    rest = client.get("/dicom-web/instances?offset=3", headers=auth)
    assert len(rest.json()) == 1 and "warning" not in rest.headers
    own = client.get("/dicom-web/instances?limit=2", headers=auth)
    assert len(own.json()) == 2 and "warning" not in own.headers
