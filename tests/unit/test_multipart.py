from __future__ import annotations

import pytest

from services.common.errors import BadRequest, UnsupportedMediaType
from services.ingest.multipart import parse_media_type, split_parts, stow_boundary


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
    assert [p.data for p in parts] == payloads
    assert all(not p.truncated for p in parts)
    assert parts[0].content_type.startswith("application/dicom; transfer-syntax=")


def test_truncated_last_part_is_flagged() -> None:
    raw = body("b", [b"complete", b"cut off in the middle"], close=False)[:-10]
    parts = split_parts(raw, "b")
    assert [p.truncated for p in parts] == [False, True]


def test_body_without_delimiter_is_400() -> None:
    with pytest.raises(BadRequest, match="no multipart delimiter"):
        split_parts(b"just some bytes", "b")
