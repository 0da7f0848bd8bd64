"""Reading DICOM as real senders write it.

PS3.10 files start with a 128-byte preamble and ``DICM``. Some DICOMweb clients
(dicomweb-client among them) send the File Meta Information without that preamble; the
content is still a complete Part 10 stream, so it is read as such rather than rejected.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID

#: Group 0002 (File Meta Information) as the first little-endian tag of a stream.
_META_GROUP = b"\x02\x00"


def read_part10(file: BinaryIO, *, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """Read a Part 10 stream, with or without the preamble.

    Raises ``InvalidDicomError`` when the bytes are neither, with the fix in the message.
    """
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
