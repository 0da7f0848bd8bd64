"""Synthetic DICOM fixtures with planted (fake) PHI, built by helpers as pydicom does."""

from __future__ import annotations

import io
from functools import cache

import pydicom

from radpipe.common.dicomio import read_part10
from radpipe.demo import Phantom, make_phantom, phantom_to_datasets

PHI = {
    "patient_name": "Doe^Jane",
    "patient_id": "MRN7731904",
    "accession": "ACC55120",
    "institution": "Saint Radpipe General Hospital",
    "referring": "Smith^John",
}


@cache
def small_phantom(seed: int = 7, nodule_mm: float | None = 12.0) -> Phantom:
    return make_phantom(
        seed, nodules=[nodule_mm] if nodule_mm else [], shape=(16, 96, 96), spacing=(2.5, 3.5, 3.5)
    )


def ct_series(seed: int = 7, nodule_mm: float | None = 12.0, **overrides: str) -> list[bytes]:
    """A small CT series as Part 10 bytes carrying the planted PHI."""
    values = {**PHI, **overrides}
    datasets = phantom_to_datasets(small_phantom(seed, nodule_mm), **values)
    return [to_bytes(ds) for ds in datasets]


def to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def read(data: bytes) -> pydicom.Dataset:
    return read_part10(io.BytesIO(data))
