"""Frames and bulk data cut from a stored object for WADO-RS (PS3.18 10.4.1.1.3, 10.4.1.1.5).

Pure functions: a dataset in, the bytes of each part out, in the stored transfer syntax.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.encaps import generate_fragments, generate_frames, parse_basic_offsets

from radpipe.common.dicomio import PixelDataTooLarge, declared_pixel_bytes
from radpipe.common.errors import BadRequest, NotFound

from .media import NATIVE, VIDEO_TYPES

PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Binary:
    """One part of a frames or bulk data response: its bytes, the transfer syntax they are
    encoded in (``None`` for bulk data other than pixel data), and its resource path relative
    to the instance (for the part's Content-Location)."""

    data: bytes
    syntax: str | None
    location: str


def _frame_count(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _native_frame(ds: pydicom.Dataset, data: bytes, number: int) -> bytes:
    """Frame ``number`` (from 1) of native pixel data. Bit-packed frames (Bits Allocated 1) need
    not start on a byte boundary (PS3.5 8.1.1): their bits are re-packed from the frame's
    first pixel, least significant bit first, and the last byte padded with zero bits."""
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    bits *= int(ds.BitsAllocated)
    start = (number - 1) * bits
    if (start + bits + 7) // 8 > len(data):
        raise BadRequest(
            f"the stored Pixel Data holds {len(data)} bytes, too few for frame {number} of "
            f"{ds.Rows} x {ds.Columns} pixels at {ds.BitsAllocated} bits: the object is corrupt"
        )
    if start % 8 == 0 and bits % 8 == 0:
        return data[start // 8 : (start + bits) // 8]
    window = np.frombuffer(data[start // 8 : (start + bits + 7) // 8], dtype=np.uint8)
    unpacked = np.unpackbits(window, bitorder="little")[start % 8 : start % 8 + bits]
    return np.packbits(unpacked, bitorder="little").tobytes()


def _encapsulated_frames(ds: pydicom.Dataset, wanted: set[int] | None = None) -> dict[int, bytes]:
    """Frames (by number, from 1) of encapsulated pixel data: every one, or only ``wanted``,
    read in one pass over the fragments and stopping after the last wanted one, so that
    naming one frame never copies every frame."""
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frames = generate_frames(
        ds.PixelData, number_of_frames=_frame_count(ds), extended_offsets=extended
    )
    last = max(wanted) if wanted else None
    found: dict[int, bytes] = {}
    for number, frame in enumerate(frames, 1):
        if wanted is None or number in wanted:
            found[number] = frame
        if last is not None and number >= last:
            break
    return found


def is_video(syntax: str) -> bool:
    return syntax in VIDEO_TYPES


_FRAME = re.compile(r"[0-9]+")


#: Distinct frames one request may name when the caller gives no limit
#: (``RADPIPE_WADO_MAX_FRAMES``'s default).
MAX_FRAMES = 1000


def frame_numbers(text: str, *, single: bool = False, max_frames: int = MAX_FRAMES) -> list[int]:
    """The ``{frames}`` path segment: a comma-separated list of frame numbers, each an integer
    from 1 (PS3.18 10.4.1.1.3), in the order requested with repeats removed (a frame is sent
    once). A malformed list, a number below 1, or more than ``max_frames`` distinct frames is
    a bad request (400); a number past the last frame is not found (404), once the instance
    is read."""
    items = text.split(",")
    if (single and len(items) != 1) or not all(_FRAME.fullmatch(n) for n in items):
        expected = "a frame number" if single else "frame numbers, separated by commas,"
        raise BadRequest(f"frames: expected {expected} each an integer from 1; got {text[:80]!r}")
    numbers = list(dict.fromkeys(int(n) for n in items))
    if 0 in numbers:
        raise BadRequest(f"frames: frame numbers start at 1; got {text[:80]!r}")
    if len(numbers) > max_frames:
        raise BadRequest(
            f"frames: {len(numbers)} distinct frames requested, at most {max_frames} per "
            "request (RADPIPE_WADO_MAX_FRAMES): ask for the rest in further requests"
        )
    return numbers


def frames(
    ds: pydicom.Dataset, numbers: list[int], *, max_frame_bytes: int | None = None
) -> list[Binary]:
    """Frames (numbered from 1) in the stored transfer syntax (PS3.18 10.4.1.1.3), cut from
    the pixel data without decoding it; a frame declared larger than ``max_frame_bytes``
    (``RADPIPE_MAX_FRAME_BYTES``) is refused (400) before anything is copied."""
    if "PixelData" not in ds:
        raise BadRequest("the instance has no pixel data")
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if is_video(syntax):
        raise BadRequest(
            f"the pixel data is a video stream ({syntax}), not separate frames: retrieve it "
            "with the Pixel Data BulkDataURI from the instance metadata"
        )
    count = _frame_count(ds)
    for number in numbers:
        if not 1 <= number <= count:
            raise NotFound(f"frame {number} does not exist: the instance has {count} frame(s)")
    if max_frame_bytes is not None:
        frame_bytes, _ = declared_pixel_bytes(ds)
        if frame_bytes > max_frame_bytes:
            raise PixelDataTooLarge(
                f"one frame declares {frame_bytes} bytes of pixel data, more than "
                f"RADPIPE_MAX_FRAME_BYTES ({max_frame_bytes} bytes): retrieve the Pixel Data "
                "with its BulkDataURI instead"
            )
    if syntax in NATIVE:
        data = ds.PixelData  # sliced, not copied whole
        return [Binary(_native_frame(ds, data, n), syntax, f"frames/{n}") for n in numbers]
    wanted = _encapsulated_frames(ds, set(numbers))
    missing = [n for n in numbers if n not in wanted]
    if missing:
        raise NotFound(
            f"frame {missing[0]} is not in the encapsulated pixel data: its fragments hold "
            f"fewer frames than Number of Frames ({_frame_count(ds)})"
        )
    return [Binary(wanted[n], syntax, f"frames/{n}") for n in numbers]


_TAG = re.compile(r"[0-9A-Fa-f]{8}")


def bulk_value(ds: pydicom.Dataset, path: str) -> list[Binary]:
    """The value of the bulk data element a BulkDataURI names (PS3.18 10.4.1.1.5).

    ``path`` is a tag, or sequence tag / item number / ... / tag. Pixel Data at the top
    level of a native object is its whole value (every frame); encapsulated Pixel Data is
    one part per frame, and a video stream one part.
    """
    steps = path.strip("/").split("/")
    if len(steps) % 2 == 0 or not all(_TAG.fullmatch(s) for s in steps[::2]):
        raise NotFound(f"{path!r} is not a bulk data path: tag[/item/tag...], tags as 8 hex digits")
    here: pydicom.Dataset = ds
    for tag, number in zip(steps[:-2:2], steps[1::2], strict=True):
        sequence = here.get(int(tag, 16))
        items = sequence.value if sequence is not None and sequence.VR == "SQ" else []
        if not number.isdigit() or not 1 <= int(number) <= len(items):
            raise NotFound(f"no item {number} in sequence ({tag[:4]},{tag[4:]})")
        here = items[int(number) - 1]
    target = int(steps[-1], 16)
    element = here.get(target)
    if element is None or not isinstance(element.value, bytes | bytearray) or not element.value:
        raise NotFound(f"no bulk data element ({steps[-1][:4]},{steps[-1][4:]}) at {path}")
    location = f"bulkdata/{'/'.join(steps)}"
    if target != PIXEL_DATA or len(steps) > 1:
        return [Binary(bytes(element.value), None, location)]
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax in NATIVE:
        return [Binary(bytes(element.value), syntax, location)]
    if is_video(syntax):
        buffer = io.BytesIO(element.value)
        parse_basic_offsets(buffer)
        return [Binary(b"".join(generate_fragments(buffer)), syntax, location)]
    every = _encapsulated_frames(ds)
    return [Binary(f, syntax, f"frames/{n}") for n, f in every.items()]
