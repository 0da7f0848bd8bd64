"""A lenient ``multipart/related`` reader for STOW-RS bodies (RFC 2387, PS3.18 8.6.1.2).

Accepts what real clients send: quoted or unquoted ``boundary``/``type`` parameters, a leading
CRLF before the first delimiter (dicomweb-client), per-part headers such as Content-Length
(Orthanc) and part types with parameters (``application/dicom; transfer-syntax=...``).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import BadRequest, UnsupportedMediaType


@dataclass
class Part:
    content_type: str
    data: bytes
    truncated: bool = False


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` -> (type, params)."""
    pieces = _split_params(value)
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        if "=" in piece:
            key, _, raw = piece.partition("=")
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1]
            params[key.strip().lower()] = raw
    return media, params


def _split_params(value: str) -> list[str]:
    """Split on ``;`` outside double quotes."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == ";" and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def stow_boundary(content_type: str) -> str:
    """Validate a STOW-RS request Content-Type and return its boundary.

    Raises ``UnsupportedMediaType`` for anything but ``multipart/related`` with
    ``type=application/dicom`` (PS3.18 10.5.1.1) and ``BadRequest`` without a boundary.
    """
    media, params = parse_media_type(content_type or "")
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS needs Content-Type multipart/related; type="application/dicom", '
            f"got {media or 'none'!r}"
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            f'this server stores type="application/dicom" parts, got type={part_type!r}'
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest("the multipart/related Content-Type has no boundary parameter")
    return boundary


def split_parts(body: bytes, boundary: str) -> list[Part]:
    """Split a complete body into parts; a part cut off before its delimiter is ``truncated``."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise BadRequest("the body contains no multipart delimiter matching the boundary")
    parts: list[Part] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):  # close delimiter
            return parts
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            return parts
        header_end = body.find(b"\r\n\r\n", line_end)
        if header_end < 0:
            parts.append(Part("application/dicom", b"", truncated=True))
            return parts
        headers = _headers(body[line_end + 2 : header_end])
        data_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, data_start)
        content_type = headers.get("content-type", "application/dicom")
        if next_delimiter < 0:
            parts.append(Part(content_type, body[data_start:], truncated=True))
            return parts
        parts.append(Part(content_type, body[data_start:next_delimiter]))
        position = next_delimiter + 2 + len(delimiter)


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers
