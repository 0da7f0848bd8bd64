"""Reading DICOM as real senders write it.

PS3.10 files start with a 128-byte preamble and ``DICM``. Some DICOMweb clients
(dicomweb-client among them) send the File Meta Information without that preamble; the
content is still a complete Part 10 stream, so it is read as such rather than rejected.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError

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
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
