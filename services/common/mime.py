"""Media types on the wire: one parser, one ``Accept`` reader, one ``multipart/related`` writer.

Shared by the DICOMweb server (``radpipe.ingest``) and the STOW-RS client (``radpipe push``),
so both sides read and write the same syntax (RFC 9110 8.3.1 and 12.5.1, RFC 2387,
PS3.18 8.7). Pure functions, no I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import NotAcceptable


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"; boundary=x'`` -> (type, params).

    The type and parameter names are lower-cased; quoted values lose their quotes and keep
    any ``;`` or ``,`` inside them.
    """
    pieces = _split(value, ";")
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


def _split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


@dataclass(frozen=True)
class MediaRange:
    """One entry of an ``Accept`` header: ``type/subtype`` with lower-cased parameter names."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header (RFC 9110 12.5.1); none or empty is ``*/*``.

    An unreadable ``q`` counts as 1 and is clamped to 0..1.
    """
    ranges = []
    for item in _split(header or "", ","):
        media_type, params = parse_media_type(item)
        if not media_type:
            continue
        try:
            q = min(max(float(params.pop("q", "1")), 0.0), 1.0)
        except ValueError:
            q = 1.0
        ranges.append(MediaRange(media_type, params, q))
    return ranges or [MediaRange("*/*")]


def type_matches(wanted: str, offered: str) -> bool:
    """Whether the media range ``wanted`` (``*/*``, ``type/*`` or a type) covers ``offered``."""
    offered = offered.lower()
    if wanted in ("*/*", offered):
        return True
    return wanted.endswith("/*") and offered.startswith(wanted[:-1])


def choose(accept: str | None, offered: Sequence[str]) -> str:
    """The media type from ``offered`` (in the server's order of preference) that ``accept``
    ranks highest; a missing ``Accept`` or ``*/*`` gets the first. Only bare media ranges
    count: ``multipart/related`` admits none of these single-part types.

    Raises:
        NotAcceptable: no offered type has a q above 0 (PS3.18 8.7.5: 406).
    """
    ranges = parse_accept(accept)
    best, best_q = None, 0.0
    for media_type in offered:
        # RFC 9110 12.5.1: the most specific matching range decides a type's quality.
        matching = [r for r in ranges if type_matches(r.media_type, media_type)]
        if not matching:
            continue
        q = max(matching, key=lambda r: _specificity(r.media_type)).q
        if q > best_q:
            best, best_q = media_type, q
    if best is None:
        raise NotAcceptable(
            f"no acceptable representation for Accept: {accept!r}; this resource is served as "
            + " or ".join(offered)
        )
    return best


def _specificity(media_range: str) -> int:
    if media_range == "*/*":
        return 0
    return 1 if media_range.endswith("/*") else 2


@dataclass(frozen=True)
class BodyPart:
    """One part of a ``multipart/related`` body, with an optional Content-Location."""

    data: bytes
    content_type: str = "application/dicom"
    location: str | None = None


def encode_multipart(
    parts: Iterable[bytes | BodyPart], root_type: str = "application/dicom"
) -> tuple[bytes, str]:
    """(body, Content-Type) of a ``multipart/related`` message (RFC 2387, PS3.18 8.6.1.2).

    Plain ``bytes`` parts are of ``root_type``; the Content-Type names ``root_type`` as its
    ``type`` parameter and carries a random boundary.
    """
    boundary = "radpipe-" + secrets.token_hex(16)
    body = bytearray()
    for part in parts:
        if not isinstance(part, BodyPart):
            part = BodyPart(part, root_type)
        body += f"--{boundary}\r\nContent-Type: {part.content_type}\r\n".encode()
        if part.location:
            body += f"Content-Location: {part.location}\r\n".encode()
        body += b"\r\n" + part.data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="{root_type}"; boundary={boundary}'
