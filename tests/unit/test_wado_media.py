"""Accept negotiation for WADO-RS frames and bulk data (PS3.18 8.7.3, Table 8.7.3-2)."""

from __future__ import annotations

import pytest

from radpipe.common.errors import NotAcceptable
from radpipe.common.mime import parse_accept
from radpipe.ingest.media import negotiate

JPEG = "1.2.840.10008.1.2.4.50"
JLS = "1.2.840.10008.1.2.4.80"
HTJ2K = "1.2.840.10008.1.2.4.201"
RLE = "1.2.840.10008.1.2.5"
IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
OHIF = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def test_parse_accept_handles_quotes_parameters_and_q_values() -> None:
    ranges = parse_accept(
        'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50, '
        "Multipart/Related;Type=image/jls;q=0.5,*/*;q=0"
    )
    assert [(r.media_type, r.params, r.q) for r in ranges] == [
        ("multipart/related", {"type": "image/jpeg", "transfer-syntax": JPEG}, 1.0),
        ("multipart/related", {"type": "image/jls"}, 0.5),
        ("*/*", {}, 0.0),
    ]
    assert [r.media_type for r in parse_accept(None)] == ["*/*"]
    assert [r.media_type for r in parse_accept("  ")] == ["*/*"]


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [(JPEG, "image/jpeg"), (JLS, "image/jls"), (HTJ2K, "image/jphc"), (RLE, "image/dicom-rle")],
)
def test_compressed_frames_prefer_their_image_media_type(syntax: str, media_type: str) -> None:
    for accept in (None, "*/*", 'multipart/related; type="*/*"', "multipart/related"):
        assert negotiate(accept, [syntax, syntax]) == (
            [f"{media_type}; transfer-syntax={syntax}"] * 2,
            True,
        ), accept
    typed = f'multipart/related; type="{media_type}"; transfer-syntax={syntax}'
    assert negotiate(typed, [syntax])[0] == [f"{media_type}; transfer-syntax={syntax}"]
    assert negotiate(OHIF, [syntax])[0] == [f"application/octet-stream; transfer-syntax={syntax}"]
    assert negotiate(media_type, [syntax]) == ([f"{media_type}; transfer-syntax={syntax}"], False)


def test_what_cannot_be_met_is_406() -> None:
    for accept in (
        'multipart/related; type="application/octet-stream"',  # default syntax: uncompressed
        'multipart/related; type="image/jls"',
        f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG}; q=0',
        "application/dicom",
        "*/*; q=0",
    ):
        with pytest.raises(NotAcceptable, match="not transcoded"):
            negotiate(accept, [JPEG])
    with pytest.raises(NotAcceptable):
        negotiate("image/jpeg", [JPEG, JPEG])  # two frames cannot go single-part


def test_native_frames_are_octet_stream_labelled_explicit_little_endian() -> None:
    octet = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    for accept in (None, OHIF, 'multipart/related; type="application/octet-stream"'):
        assert negotiate(accept, [IMPLICIT]) == ([octet], True)
    assert negotiate("application/octet-stream", [IMPLICIT]) == ([octet], False)
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="image/jpeg"', [IMPLICIT])
    # Big endian bytes are not what the default syntax promises.
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="application/octet-stream"', [BIG])
    assert negotiate(OHIF, [BIG])[0] == [f"application/octet-stream; transfer-syntax={BIG}"]


def test_bulk_data_other_than_pixels_is_plain_octet_stream() -> None:
    assert negotiate(None, [None]) == (["application/octet-stream"], True)
    assert negotiate(OHIF, [None]) == (["application/octet-stream"], True)
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="image/jpeg"', [None])
