from __future__ import annotations

import pytest

from radpipe.common.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from radpipe.common.mime import parse_media_type
from radpipe.ingest.multipart import MultipartReader, split_parts, stow_boundary


def body(
    boundary: str, parts: list[bytes], *, leading_crlf: bool = False, close: bool = True
) -> bytes:
    out = b"\r\n" if leading_crlf else b""
    for index, part in enumerate(parts):
        headers = b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        headers += f"Content-Length: {len(part)}\r\n".encode() if index % 2 else b""
        out += f"--{boundary}\r\n".encode() + headers + b"\r\n" + part + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return out


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/dicom"; boundary="abc 123"',
        "multipart/related; type=application/dicom; boundary=abc 123",
        'Multipart/Related; boundary="abc 123"; type="application/dicom"',
    ],
)
def test_boundary_quoted_or_not(header: str) -> None:
    assert stow_boundary(header) == "abc 123"


def test_media_type_params_keep_quoted_semicolons() -> None:
    media, params = parse_media_type('multipart/related; boundary="a;b"; type="application/dicom"')
    assert media == "multipart/related"
    assert params == {"boundary": "a;b", "type": "application/dicom"}


def test_wrong_content_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="multipart/related"):
        stow_boundary("application/json")
    with pytest.raises(UnsupportedMediaType, match="application/dicom"):
        stow_boundary('multipart/related; type="application/dicom+xml"; boundary=x')


def test_missing_boundary_is_400() -> None:
    with pytest.raises(BadRequest, match="boundary"):
        stow_boundary('multipart/related; type="application/dicom"')


def test_split_parts_with_leading_crlf_and_part_headers() -> None:
    payloads = [b"first\r\n--not-a-delimiter", b"\x00\x01second", b"third"]
    parts = split_parts(body("xyz", payloads, leading_crlf=True), "xyz")
    assert [p.read() for p in parts] == payloads
    assert all(not p.truncated for p in parts)
    assert parts[0].content_type.startswith("application/dicom; transfer-syntax=")


def test_truncated_last_part_is_flagged() -> None:
    raw = body("b", [b"complete", b"cut off in the middle"], close=False)[:-10]
    parts = split_parts(raw, "b")
    assert [p.truncated for p in parts] == [False, True]


def test_body_without_delimiter_is_400() -> None:
    with pytest.raises(BadRequest, match="no multipart delimiter"):
        split_parts(b"just some bytes", "b")


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_streaming_in_any_chunking_gives_the_same_parts(chunk: int) -> None:
    # Near-misses of the delimiter inside the content must survive any chunk split.
    payloads = [b"\r\n--boundary-xy" * 50, bytes(range(256)) * 40, b"", b"last"]
    raw = body("boundary-xyz", payloads, leading_crlf=True)
    reader = MultipartReader("boundary-xyz", max_part_bytes=1 << 20, spool_bytes=1000)
    parts = []
    for start in range(0, len(raw), chunk):
        parts += reader.feed(raw[start : start + chunk])
    parts += reader.close()
    assert [p.read() for p in parts] == payloads
    assert [p.size for p in parts] == [len(p) for p in payloads]
    assert parts[1].file._rolled  # type: ignore[attr-defined]  # spilled to disk


def test_part_larger_than_the_instance_limit_is_413() -> None:
    reader = MultipartReader("b", max_part_bytes=100)
    with pytest.raises(PayloadTooLarge, match="RADPIPE_MAX_INSTANCE_BYTES"):
        reader.feed(body("b", [b"x" * 500]))


def test_part_without_headers_defaults_to_dicom() -> None:
    parts = split_parts(b"--b\r\n\r\nDATA\r\n--b--", "b")
    assert [(p.content_type, p.read()) for p in parts] == [("application/dicom", b"DATA")]
