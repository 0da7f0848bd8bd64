"""Reading DICOM as real senders write it.

PS3.10 files start with a 128-byte preamble and ``DICM``. Some DICOMweb clients
(dicomweb-client among them) send the File Meta Information without that preamble; the
content is still a complete Part 10 stream, so it is read as such rather than rejected.
"""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from typing import BinaryIO

import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from .errors import BadRequest, PayloadTooLarge

#: Group 0002 (File Meta Information) as the first little-endian tag of a stream.
_META_GROUP = b"\x02\x00"
#: The inflated size a Deflated Explicit VR Little Endian data set may reach when the caller
#: names no limit (``RADPIPE_MAX_INSTANCE_BYTES``'s default).
DEFAULT_MAX_INFLATED = 2 * 1024**3
#: Inflated bytes kept in memory before spilling to a temporary file, and the output step.
_INFLATE_SPOOL = 8 * 1024 * 1024
_INFLATE_STEP = 1024 * 1024


class InflateLimitExceeded(PayloadTooLarge):
    """A deflated data set inflates past the instance size limit (a deflate "bomb").

    ``sop_class_uid`` and ``sop_instance_uid`` come from the (never deflated) File Meta
    Information, so a STOW-RS response can name the refused instance.
    """

    def __init__(self, message: str, sop_class_uid: str | None, sop_instance_uid: str | None):
        super().__init__(message)
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid


class PixelDataTooLarge(BadRequest):
    """The pixel attributes declare more data than this server decodes (see
    :func:`check_pixel_size`); answered 400 before anything is decoded."""


def _count(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise BadRequest(f"{keyword} is {value!r}, not a number: the object is corrupt") from None
    if number < 0:
        raise BadRequest(f"{keyword} is {number}, below 0: the object is corrupt")
    return number


def declared_pixel_bytes(ds: pydicom.Dataset) -> tuple[int, int]:
    """``(one frame, every frame)``: the bytes of pixel data the Image Pixel attributes declare
    (Rows x Columns x Samples per Pixel x Bits Allocated, times Number of Frames; PS3.3
    C.7.6.3), read from the header only, whatever the pixel data really holds."""
    bits = _count(ds, "Rows", 0) * _count(ds, "Columns", 0) * _count(ds, "SamplesPerPixel", 1)
    bits *= _count(ds, "BitsAllocated", 8)
    frame = (bits + 7) // 8
    return frame, frame * max(_count(ds, "NumberOfFrames", 1), 1)


def check_pixel_size(ds: pydicom.Dataset, *, max_pixel_bytes: int, max_frame_bytes: int) -> None:
    """Refuse, before any decoding, an image whose declared pixel data is larger than
    ``max_pixel_bytes`` (``RADPIPE_MAX_PIXEL_BYTES``) or one of whose frames is larger than
    ``max_frame_bytes`` (``RADPIPE_MAX_FRAME_BYTES``).

    Raises :class:`PixelDataTooLarge` naming the attributes and the setting.
    """
    frame, total = declared_pixel_bytes(ds)
    shape = (
        f"Rows {ds.get('Rows')} x Columns {ds.get('Columns')} x Samples per Pixel "
        f"{ds.get('SamplesPerPixel', 1)} x Bits Allocated {ds.get('BitsAllocated')}"
    )
    if frame > max_frame_bytes:
        raise PixelDataTooLarge(
            f"one frame declares {frame} bytes of pixel data ({shape}), more than "
            f"RADPIPE_MAX_FRAME_BYTES ({max_frame_bytes} bytes): it is not decoded; retrieve "
            "the instance or its frames as stored instead"
        )
    if total > max_pixel_bytes:
        raise PixelDataTooLarge(
            f"the instance declares {total} bytes of pixel data ({shape} x Number of Frames "
            f"{ds.get('NumberOfFrames', 1)}), more than RADPIPE_MAX_PIXEL_BYTES "
            f"({max_pixel_bytes} bytes): it is not decoded; retrieve the instance or its "
            "frames as stored instead"
        )


def read_part10(
    file: BinaryIO,
    *,
    stop_before_pixels: bool = False,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED,
) -> pydicom.Dataset:
    """Read a Part 10 stream, with or without the preamble.

    A Deflated Explicit VR Little Endian data set (PS3.5 A.5) is inflated here, a step at a
    time with a hard output limit, never whole in memory as ``dcmread`` would (a 300 KB part
    can inflate to 300 MB); the dataset keeps its deflated transfer syntax in ``file_meta``.

    Raises ``InvalidDicomError`` when the bytes are neither, with the fix in the message, and
    :class:`InflateLimitExceeded` past ``max_inflated_bytes``.
    """
    inflated = _inflate_if_deflated(file, max_inflated_bytes)
    if inflated is not None:
        ds = pydicom.dcmread(inflated, stop_before_pixels=stop_before_pixels)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return ds
    start = file.tell()
    try:
        return pydicom.dcmread(file, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        file.seek(start)
        if file.read(2) != _META_GROUP:
            raise InvalidDicomError(
                "not a DICOM Part 10 stream: send files with the 128-byte preamble and 'DICM' "
                "prefix, or at least their File Meta Information (group 0002)"
            ) from None
        file.seek(start)
        ds = pydicom.dcmread(file, force=True, stop_before_pixels=stop_before_pixels)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            raise InvalidDicomError("the File Meta Information has no TransferSyntaxUID") from None
        return ds


def _meta_end(head: bytes) -> tuple[int, dict[int, bytes]] | None:
    """Where the File Meta Information ends in ``head``, and its element values by element
    number; ``None`` when ``head`` does not start with a (preamble and) group 0002."""
    start = 132 if head[128:132] == b"DICM" else 0
    if head[start : start + 2] != _META_GROUP:
        return None
    at, values = start, {}
    while head[at : at + 2] == _META_GROUP and at + 8 <= len(head):
        element, vr = struct.unpack("<H2s", head[at + 2 : at + 6])
        if vr.decode("latin-1") in _LONG_VRS:
            (length,) = struct.unpack("<I", head[at + 8 : at + 12])
            header = 12
        else:
            (length,) = struct.unpack("<H", head[at + 6 : at + 8])
            header = 8
        values[element] = head[at + header : at + header + length]
        at += header + length
    return at, values


#: The File Meta Information is read from at most this many bytes (it is a few hundred).
_META_MAX = 64 * 1024


def _inflate_if_deflated(file: BinaryIO, limit: int) -> BinaryIO | None:
    """The stream re-encoded as Explicit VR Little Endian when its data set is deflated, or
    ``None`` (``file`` back at its start) when it is not."""
    start = file.tell()
    head = file.read(_META_MAX)
    found = _meta_end(head)
    end = found[0] if found is not None else 0
    if found is not None and len(head) == _META_MAX and head[end : end + 2] in (b"", _META_GROUP):
        # Still in group 0002 at the end of what was read: a File Meta Information padded
        # past any real one (a transfer syntax hidden after it would escape the check).
        raise InvalidDicomError(
            f"the File Meta Information is larger than {_META_MAX // 1024} KiB: send the "
            "file with a standard File Meta Information (PS3.10 7.1)"
        )
    syntax = found[1].get(0x0010, b"").rstrip(b"\x00 ") if found else b""
    if found is None or syntax.decode("latin-1") != DeflatedExplicitVRLittleEndian:
        file.seek(start)
        return None
    meta_end, values = found
    file.seek(start + meta_end)
    meta = pydicom.dcmread(io.BytesIO(head[:meta_end]), force=True).file_meta
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out: BinaryIO = tempfile.SpooledTemporaryFile(max_size=_INFLATE_SPOOL)  # type: ignore[assignment]  # noqa: SIM115
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(DicomFileLike(out), meta, enforce_standard=True)
    try:
        inflate_to(file, out, limit)
    except InflateLimitExceeded as exc:
        out.close()
        uid = {k: values.get(k, b"").rstrip(b"\x00 ").decode("latin-1") or None for k in (2, 3)}
        raise InflateLimitExceeded(exc.message, uid[2], uid[3]) from None
    out.seek(0)
    return out


def inflate_to(source: BinaryIO, target: BinaryIO, limit: int) -> int:
    """Inflate the raw deflate stream (RFC 1951, no zlib header: PS3.5 A.5) in ``source``
    into ``target``, at most ``limit`` bytes; returns the inflated size.

    Output is produced a bounded step at a time (``max_length``), so memory stays at one step
    whatever the compression ratio. Raises :class:`InflateLimitExceeded` past ``limit`` and
    ``InvalidDicomError`` for a corrupt or cut-off stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while not inflater.eof:
        data = inflater.unconsumed_tail or source.read(_INFLATE_STEP)
        try:
            out = inflater.decompress(data, _INFLATE_STEP)
        except zlib.error as exc:
            raise InvalidDicomError(f"the deflated data set is corrupt ({exc})") from None
        total += len(out)
        if total > limit:
            raise InflateLimitExceeded(
                f"the deflated data set inflates past RADPIPE_MAX_INSTANCE_BYTES ({limit} bytes): "
                "send it uncompressed or in a compressed pixel transfer syntax, or raise the limit",
                None,
                None,
            )
        target.write(out)
        if not data and not out:
            raise InvalidDicomError("the deflated data set is cut off before its end")
    return total


def write_part10(ds: pydicom.Dataset) -> bytes:
    """A dataset as a Part 10 file (preamble, ``DICM``, file meta) in its transfer syntax."""
    buffer = io.BytesIO()
    write_part10_to(buffer, ds)
    return buffer.getvalue()


#: Explicit VR Little Endian VRs with a 4-byte length field (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


#: Short-length VRs whose values are plain ASCII: encoded here as pydicom would (PS3.5 6.2).
_ASCII_VRS = frozenset({"UI", "DA", "DT", "TM", "CS", "AS"})


def _ascii_value(element: pydicom.DataElement) -> bytes | None:
    """The encoded value of a simple ASCII element, or ``None`` to let pydicom encode it."""
    if element.VR not in _ASCII_VRS:
        return None
    value = element.value
    if value is None or value == "":
        return b""
    values = list(value) if isinstance(value, list | MultiValue) else [value]
    if not all(type(v) is str or isinstance(v, UID) for v in values):
        return None
    try:
        data = "\\".join(values).encode("ascii")
    except UnicodeEncodeError:
        return None
    if len(data) % 2:
        data += b"\x00" if element.VR == "UI" else b" "
    return data if len(data) <= 0xFFFF else None


def write_part10_to(handle: BinaryIO, ds: pydicom.Dataset) -> None:
    """Write ``ds`` as a Part 10 file: the same bytes as ``pydicom.dcmwrite(handle, ds,
    enforce_file_format=True)``, faster when most elements are unchanged.

    Elements still in their raw, as-read encoding are copied with their header built here;
    everything else (changed values, sequences, undefined lengths) goes through pydicom's own
    element writer. Transfer syntaxes or datasets that need re-encoding (deflate, big endian,
    another VR encoding or character set than the one read) are left to ``dcmwrite`` whole.
    """
    meta = ds.file_meta
    syntax = meta.TransferSyntaxUID
    encoding = (syntax.is_implicit_VR, syntax.is_little_endian)
    if (
        syntax.is_deflated
        or not syntax.is_little_endian
        or ds.original_encoding != encoding
        or ds.original_character_set != ds._character_set
    ):
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        return
    fp = DicomFileLike(handle)
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=True)
    fp.is_implicit_VR, fp.is_little_endian = encoding
    charset = ds.get("SpecificCharacterSet", default_encoding)
    implicit = syntax.is_implicit_VR
    for tag in sorted(ds.keys()):
        if tag.element == 0 and tag.group > 6:
            continue  # retired group lengths are not written (PS3.5 7.2)
        element = ds.get_item(tag)
        if (
            isinstance(element, RawDataElement)
            and isinstance(element.value, bytes)
            and element.length != 0xFFFFFFFF
        ):
            value, vr = element.value, element.VR
            if implicit:
                handle.write(struct.pack("<HHI", tag.group, tag.element, len(value)))
            elif vr in _LONG_VRS:
                handle.write(
                    struct.pack("<HH2sHI", tag.group, tag.element, vr.encode(), 0, len(value))
                )
            elif vr and len(value) <= 0xFFFF:
                handle.write(struct.pack("<HH2sH", tag.group, tag.element, vr.encode(), len(value)))
            else:
                write_data_element(fp, ds[tag], charset)
                continue
            handle.write(value)
        else:
            element = ds[tag]
            encoded = _ascii_value(element)
            if encoded is None or implicit:
                write_data_element(fp, element, charset)
            else:
                header = struct.pack(
                    "<HH2sH", tag.group, tag.element, element.VR.encode(), len(encoded)
                )
                handle.write(header + encoded)
