"""WADO-RS media types for frames and bulk data, and ``Accept`` negotiation (PS3.18 8.7).

Pure functions, no I/O. Nothing is transcoded: a representation is offered only in the
transfer syntax the object is stored in, labelled with its image or video media type
(PS3.18 Table 8.7.3-2, Table 8.7.4-1) or as ``application/octet-stream``.
"""

from __future__ import annotations

from radpipe.common.errors import NotAcceptable
from radpipe.common.mime import MediaRange, parse_accept, type_matches

OCTET = "application/octet-stream"
DICOM = "application/dicom"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: Pixel data stored in these is native (not encapsulated): frames are plain bytes.
NATIVE = frozenset({"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.1.99", BIG_ENDIAN})

_JPEG = "1.2.840.10008.1.2.4."
#: PS3.18 Table 8.7.3-2: the single-frame image media type of each compressed transfer syntax.
IMAGE_TYPES: dict[str, str] = {
    **{_JPEG + s: "image/jpeg" for s in ("50", "51", "57", "70")},
    **{_JPEG + s: "image/jls" for s in ("80", "81")},
    **{_JPEG + s: "image/jp2" for s in ("90", "91")},
    **{_JPEG + s: "image/jpx" for s in ("92", "93")},
    **{_JPEG + s: "image/jphc" for s in ("201", "202", "203")},
    **{_JPEG + s: "image/jxl" for s in ("110", "111", "112")},
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: PS3.18 Table 8.7.4-1: video transfer syntaxes, whose pixel data is one stream, not frames.
VIDEO_TYPES: dict[str, str] = {
    **{_JPEG + s: "video/mpeg" for s in ("100", "100.1", "101", "101.1")},
    **{
        _JPEG + s: "video/mp4"
        for s in ("102", "102.1", "103", "103.1", "104", "104.1", "105", "105.1", "106", "106.1")
    },
    **{_JPEG + s: "video/H265" for s in ("107", "108")},
}
#: PS3.18 8.7.3: a media type named without ``transfer-syntax`` asks for its default
#: syntax; image and video types have several, so any of theirs is accepted.
DEFAULT_SYNTAX = {OCTET: EXPLICIT_LE, DICOM: EXPLICIT_LE}


def syntax_label(syntax: str) -> str:
    """The transfer syntax a part is labelled with: native little-endian frames are the same
    bytes in every little-endian syntax, so they are labelled Explicit VR Little Endian."""
    if syntax in NATIVE and syntax != BIG_ENDIAN:
        return EXPLICIT_LE
    return syntax


def _allows(accepted: MediaRange, offered: str, label: str | None, *, multipart: bool) -> bool:
    """Whether one Accept entry admits a part of type ``offered`` in transfer syntax ``label``.

    ``multipart/related`` without ``type`` admits any part type. A missing ``transfer-syntax``
    means the media type's default: Explicit VR Little Endian for ``application/octet-stream``
    and ``application/dicom``, any syntax of the type for image and video types (as
    dicomweb-client and OHIF expect); ``*/*`` leaves the syntax to the server.
    """
    if accepted.q <= 0:
        return False
    if accepted.media_type == "multipart/related":
        if not multipart:
            return False
        wanted = accepted.params.get("type", "*/*").lower()
    elif accepted.media_type == "*/*" or not multipart:
        wanted = accepted.media_type
    else:
        return False
    if not type_matches(wanted, offered):
        return False
    syntax = accepted.params.get("transfer-syntax")
    if syntax == "*":
        return True
    if label is None:  # bulk data other than pixel data: its value bytes, little endian
        return syntax in (None, EXPLICIT_LE)
    if syntax is None:
        default = DEFAULT_SYNTAX.get(wanted)
        return default is None or label == default
    return syntax == label


def part_type(
    ranges: list[MediaRange], syntax: str | None, *, multipart: bool, video: bool = False
) -> str | None:
    """The Content-Type of a part holding frames or bulk data stored in ``syntax`` (``None``
    for bulk data other than pixel data), or ``None`` when ``ranges`` admit no representation.

    A compressed frame is offered first with its image media type and then as
    ``application/octet-stream``; both carry a ``transfer-syntax`` parameter.
    """
    if syntax is None:
        return OCTET if any(_allows(r, OCTET, None, multipart=multipart) for r in ranges) else None
    label = syntax_label(syntax)
    offered = [OCTET]
    if syntax not in NATIVE:
        typed = (VIDEO_TYPES if video else IMAGE_TYPES).get(syntax)
        offered = [typed, OCTET] if typed else offered
    for media_type in offered:
        if any(_allows(r, media_type, label, multipart=multipart) for r in ranges):
            return f"{media_type}; transfer-syntax={label}"
    return None


def negotiate(
    accept: str | None, syntaxes: list[str | None], *, video: bool = False
) -> tuple[list[str], bool]:
    """Part Content-Types for parts stored in ``syntaxes``, and whether to send them as
    ``multipart/related`` (PS3.18 8.7.3). A single part may go as a single-part body when
    ``Accept`` names only its bare media type. Raises NotAcceptable (406) otherwise."""
    ranges = parse_accept(accept)
    for multipart in (True, False):
        if not multipart and len(syntaxes) != 1:
            break
        types = [part_type(ranges, s, multipart=multipart, video=video) for s in syntaxes]
        if all(t is not None for t in types):
            return [t for t in types if t is not None], multipart
    stored = ", ".join(sorted({s for s in syntaxes if s}) or ["(none)"])
    typed = sorted({IMAGE_TYPES[s] for s in syntaxes if s in IMAGE_TYPES and not video})
    suggestion = f'type="{typed[0]}" or ' if typed else ""
    raise NotAcceptable(
        f"no acceptable representation: the data is stored in transfer syntax {stored} and is "
        f'not transcoded; accept multipart/related with {suggestion}type="*/*", or '
        'type="application/octet-stream"; transfer-syntax=*'
    )


def instance_type(syntax: str) -> str:
    """The Content-Type of an instance stored in ``syntax``: ``application/dicom``, with a
    ``transfer-syntax`` parameter unless it is the default, Explicit VR Little Endian
    (PS3.18 8.7.3: required for any other syntax, optional for the default)."""
    return DICOM if syntax == EXPLICIT_LE else f"{DICOM}; transfer-syntax={syntax}"


#: Native syntaxes whose objects re-encode losslessly as Explicit VR Little Endian: their value
#: bytes are already little endian (big endian would need its OW values swapped).
TO_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"})


def negotiate_instances(accept: str | None, syntaxes: list[str]) -> tuple[list[str], bool]:
    """The transfer syntax to send each instance stored in ``syntaxes`` in, and whether to send
    them as ``multipart/related`` (the default) or one instance as a single ``application/dicom``
    body because ``Accept`` names only that bare type (PS3.18 8.7.3).

    Each instance goes in its stored syntax when a range admits it, else in Explicit VR Little
    Endian (the default a range without ``transfer-syntax`` asks for) when it is stored in
    Implicit VR Little Endian or Deflated Explicit VR Little Endian, which re-encode losslessly.
    Compressed and big-endian objects are not transcoded.

    Raises NotAcceptable (406) when ``Accept`` admits no such representation.
    """
    ranges = parse_accept(accept)
    for multipart in (True, False):
        if not multipart and len(syntaxes) != 1:
            break
        chosen = [_instance_syntax(ranges, stored, multipart) for stored in syntaxes]
        if all(syntax is not None for syntax in chosen):
            return [syntax for syntax in chosen if syntax is not None], multipart
    stored = ", ".join(sorted(set(syntaxes)))
    single = " (a single-part application/dicom body holds one instance)" if syntaxes[1:] else ""
    raise NotAcceptable(
        f"no acceptable representation{single}: the instances are stored in transfer syntax "
        f"{stored}, and compressed or big-endian objects are not transcoded; accept "
        'multipart/related; type="application/dicom"; transfer-syntax=* (or the stored syntax)'
    )


def _instance_syntax(ranges: list[MediaRange], stored: str, multipart: bool) -> str | None:
    offered = [stored, EXPLICIT_LE] if stored in TO_EXPLICIT_LE else [stored]
    for syntax in offered:
        if any(_allows(r, DICOM, syntax, multipart=multipart) for r in ranges):
            return syntax
    return None
