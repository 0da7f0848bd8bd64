"""Frames and bulk data cut from a dataset (services/ingest/bulkdata.py), without a server."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian

from radpipe.common.errors import BadRequest, NotFound
from radpipe.ingest.bulkdata import bulk_value, frames


def image(
    rows: int, columns: int, bits: int, count: int, data: bytes, syntax: str
) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = rows, columns, 1, bits
    ds.NumberOfFrames = count
    ds.PixelData = data
    return ds


def test_bit_packed_frames_of_odd_size_are_repacked_bit_by_bit() -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, 3 * 21, dtype=np.uint8)  # 3 x 7 pixels: 21 bits per frame
    ds = image(3, 7, 1, 3, np.packbits(bits, bitorder="little").tobytes(), ExplicitVRLittleEndian)
    got = frames(ds, [3, 1, 2])
    for part, number in zip(got, [3, 1, 2], strict=True):
        frame_bits = bits[(number - 1) * 21 : number * 21]
        assert part.data == np.packbits(frame_bits, bitorder="little").tobytes()
        assert len(part.data) == 3 and part.location == f"frames/{number}"
        # the padding bits of the last byte are zero
        assert part.data[-1] >> (21 % 8) == 0


def test_short_pixel_data_is_reported_not_cut() -> None:
    ds = image(4, 4, 16, 2, bytes(40), ExplicitVRLittleEndian)  # 2 frames need 64 bytes
    assert frames(ds, [1])[0].data == bytes(32)
    with pytest.raises(BadRequest, match="too few for frame 2"):
        frames(ds, [2])
    with pytest.raises(NotFound, match="frame 3 does not exist"):
        frames(ds, [3])


def test_video_has_no_frames_but_one_bulk_stream() -> None:
    stream = [b"\x00\x00\x01\xb3" + bytes(10), bytes(6)]
    ds = image(2, 2, 8, 30, encapsulate(stream), "1.2.840.10008.1.2.4.102")
    with pytest.raises(BadRequest, match="video stream"):
        frames(ds, [1])
    [part] = bulk_value(ds, "7FE00010")
    assert part.data == b"".join(stream) and part.syntax == "1.2.840.10008.1.2.4.102"


@pytest.mark.parametrize(
    "path", ["7FE00011", "00100010", "7FE00010/1/7FE00010", "00880200/1/00280010", "x"]
)
def test_paths_that_name_no_binary_value_are_not_found(path: str) -> None:
    ds = image(2, 2, 8, 1, bytes(4), ExplicitVRLittleEndian)
    ds.PatientName = "ANON^X"
    icon = pydicom.Dataset()
    icon.Rows = 2
    ds.IconImageSequence = [icon]
    with pytest.raises(NotFound):
        bulk_value(ds, path)
