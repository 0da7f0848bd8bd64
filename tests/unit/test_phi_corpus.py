"""The PHI corpus and leak scanner of tests/phi.py, tested before anything relies on them."""

from __future__ import annotations

import io
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)
from pydicom.valuerep import validate_value

from ..phi import (
    CATEGORIES,
    FREE_TEXT_FIELDS,
    ODD_PLANTED,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    UN_CREATOR,
    UN_GROUP,
    Corpus,
    PlantedFile,
    generate_corpus,
    generate_odd_files,
    scan_bytes,
    scan_tree,
)

CLASS_UIDS = {
    "SOPClassUID",
    "MediaStorageSOPClassUID",
    "ReferencedSOPClassUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
}
SOP_CLASSES = {
    "ct": CTImageStorage,
    "ct_implicit": CTImageStorage,
    "enhanced_ct": EnhancedCTImageStorage,
    "sr": ComprehensiveSRStorage,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return generate_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_odd_files(tmp_path_factory.mktemp("odd"))


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def first(corpus: Corpus, kind: str) -> PlantedFile:
    return next(f for f in corpus.files if f.kind == kind)


def test_same_seed_writes_the_same_bytes_and_another_seed_other_values(tmp_path: Path) -> None:
    one = generate_corpus(tmp_path / "one", patients=1, seed=5)
    two = generate_corpus(tmp_path / "two", patients=1, seed=5)
    other = generate_corpus(tmp_path / "other", patients=1, seed=6)

    def contents(corpus: Corpus) -> dict[Path, bytes]:
        return {f.path.relative_to(corpus.root): f.path.read_bytes() for f in corpus.files}

    assert contents(one) == contents(two)
    assert one.planted == two.planted
    assert one.patients == two.patients
    identifying = ("name", "mrn", "accession", "uid", "phone", "physician")
    assert not one.values(*identifying) & other.values(*identifying)


def test_default_corpus_has_the_promised_shape(corpus: Corpus) -> None:
    assert Counter(f.kind for f in corpus.files) == {
        "ct": 12,
        "ct_implicit": 12,
        "enhanced_ct": 6,
        "sr": 3,
    }
    assert len(corpus.patients) == 3
    assert {f.patient for f in corpus.files} == set(corpus.patients)
    for patient in corpus.patients.values():
        assert len(patient.study_uids) == len(patient.studies) == 2
        assert {f.study for f in corpus.files if f.patient == patient.patient_id} == set(
            patient.study_uids
        )


def test_every_category_is_planted(corpus: Corpus) -> None:
    assert set(corpus.planted) == set(CATEGORIES)
    assert [category for category, values in corpus.planted.items() if not values] == []
    assert len(corpus.planted["mrn"]) == 3
    assert len(corpus.planted["accession"]) == 6


def test_every_file_reads_and_matches_its_record(corpus: Corpus) -> None:
    for planted in corpus.files:
        ds = pydicom.dcmread(planted.path)
        patient = corpus.patients[planted.patient]
        assert planted.path.is_relative_to(corpus.root)
        assert ds.SOPClassUID == SOP_CLASSES[planted.kind]
        assert ds.PatientID == planted.patient
        assert ds.PatientName == patient.name
        assert ds.PatientBirthDate == patient.birth_date
        assert ds.StudyInstanceUID == planted.study
        assert (ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian) == (
            planted.kind == "ct_implicit"
        )
        study = next(s for s in patient.studies if s.study_uid == planted.study)
        assert ds.SOPInstanceUID in study.sop_uids
        assert ds.SeriesInstanceUID in study.series_uids
        assert ds.StudyDate == study.dates["StudyDate"]
        if planted.kind != "sr":
            assert ds.pixel_array.shape[-2:] == (16, 16)


def test_every_uid_date_datetime_and_person_name_in_the_files_is_planted(corpus: Corpus) -> None:
    checked: Counter[str] = Counter()
    for planted in corpus.files:
        ds = pydicom.dcmread(planted.path)
        for element in [*ds.file_meta, *ds.iterall()]:
            if element.VR == "UI" and element.keyword not in CLASS_UIDS:
                assert element.value in corpus.planted["uid"], element
            elif element.VR == "DA":
                assert element.value in corpus.planted["date"], element
            elif element.VR == "DT":
                assert element.value in corpus.planted["datetime"], element
                assert element.value[:8] in corpus.planted["date"], element
            elif element.VR == "PN":
                assert str(element.value) in corpus.values("name", "physician"), element
            else:
                continue
            checked[element.VR] += 1
    assert min(checked[vr] for vr in ("UI", "DA", "DT", "PN")) > 100


def test_scanner_finds_every_planted_value_somewhere_in_the_tree(corpus: Corpus) -> None:
    found = {value for hits in scan_tree(corpus.root, corpus.planted).values() for value in hits}
    assert sorted(corpus.values() - found) == []


def test_relative_names_carry_identifiers(corpus: Corpus) -> None:
    for planted in corpus.files:
        name = str(planted.path.relative_to(corpus.root)).encode()
        patient = corpus.patients[planted.patient]
        study = next(s for s in patient.studies if s.study_uid == planted.study)
        hits = scan_bytes(name, corpus.planted)
        assert {patient.name, patient.patient_id, study.accession} <= set(hits)
        assert study.dates["StudyDate"] in hits
        assert pydicom.dcmread(planted.path).SOPInstanceUID in hits


def test_scan_tree_reports_a_clean_file_under_an_identifying_folder(tmp_path: Path) -> None:
    (tmp_path / "MRN4829173").mkdir()
    (tmp_path / "MRN4829173" / "x.dcm").write_bytes(b"nothing here")
    (tmp_path / "clean.dcm").write_bytes(b"nothing here")
    assert scan_tree(tmp_path, ["MRN4829173"]) == {
        tmp_path / "MRN4829173": ["MRN4829173"],
        tmp_path / "MRN4829173" / "x.dcm": ["MRN4829173"],
    }


def deep_id(ds: Dataset) -> Dataset:
    return ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].OtherPatientIDsSequence[0]


def sr_deep_text(ds: Dataset) -> Dataset:
    return ds.ContentSequence[-1].ContentSequence[0].ContentSequence[0]


def private_tag(ds: Dataset, group: int, creator: str, offset: int) -> int:
    return int(ds.private_block(group, creator).get_tag(offset))


def token(data: bytes) -> str:
    return data.replace(b"\\", b" ").split()[0].decode()


Getter = Callable[[Dataset], str]
Blanker = Callable[[Dataset], None]
HIDING_PLACES: dict[str, tuple[str, str, Getter, Blanker]] = {
    "3-deep sequence": (
        "ct",
        "patient_id",
        lambda ds: deep_id(ds).PatientID,
        lambda ds: setattr(deep_id(ds), "PatientID", ""),
    ),
    "private block": (
        "ct",
        "private",
        lambda ds: ds[private_tag(ds, PRIVATE_GROUP, PRIVATE_CREATOR, 0x03)].value,
        lambda ds: setattr(ds[private_tag(ds, PRIVATE_GROUP, PRIVATE_CREATOR, 0x03)], "value", ""),
    ),
    "private block stored as UN": (
        "ct",
        "private",
        lambda ds: token(ds[private_tag(ds, UN_GROUP, UN_CREATOR, 0x01)].value),
        lambda ds: ds.__delitem__(private_tag(ds, UN_GROUP, UN_CREATOR, 0x01)),
    ),
    "private block read as UN from implicit VR": (
        "ct_implicit",
        "private",
        lambda ds: token(ds[private_tag(ds, PRIVATE_GROUP, PRIVATE_CREATOR, 0x03)].value),
        lambda ds: ds.__delitem__(private_tag(ds, PRIVATE_GROUP, PRIVATE_CREATOR, 0x03)),
    ),
    "file meta source AE": (
        "ct",
        "ae_title",
        lambda ds: str(ds.file_meta.SourceApplicationEntityTitle),
        lambda ds: setattr(ds.file_meta, "SourceApplicationEntityTitle", "BLANK"),
    ),
    "file meta private information": (
        "ct",
        "embedded",
        lambda ds: token(ds.file_meta.PrivateInformation),
        lambda ds: ds.file_meta.__delattr__("PrivateInformation"),
    ),
    "overlay label": (
        "ct",
        "free_text",
        lambda ds: ds[0x60001500].value,
        lambda ds: ds.__delitem__(0x60001500),
    ),
    "overlay data": (
        "ct",
        "embedded",
        lambda ds: token(ds[0x60003000].value.rstrip(b"\x00")),
        lambda ds: ds.__delitem__(0x60003000),
    ),
    "icon image": (
        "ct",
        "embedded",
        lambda ds: token(ds.IconImageSequence[0].PixelData),
        lambda ds: ds.__delattr__("IconImageSequence"),
    ),
    "per-frame functional group": (
        "enhanced_ct",
        "free_text",
        lambda ds: ds.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0].FrameComments,
        lambda ds: setattr(
            ds.PerFrameFunctionalGroupsSequence[0].FrameContentSequence[0], "FrameComments", ""
        ),
    ),
    "SR TEXT three containers deep": (
        "sr",
        "free_text",
        lambda ds: sr_deep_text(ds).TextValue,
        lambda ds: setattr(sr_deep_text(ds), "TextValue", "none"),
    ),
    "SR PNAME": (
        "sr",
        "physician",
        lambda ds: str(ds.ContentSequence[0].PersonName),
        lambda ds: setattr(ds.ContentSequence[0], "PersonName", "Observer"),
    ),
}


@pytest.mark.parametrize("place", HIDING_PLACES)
def test_scan_finds_a_hidden_value_until_it_is_blanked(corpus: Corpus, place: str) -> None:
    kind, category, get, blank = HIDING_PLACES[place]
    planted = first(corpus, kind)
    ds = pydicom.dcmread(planted.path)
    value = get(ds)
    assert value in corpus.planted[category]
    assert value in scan_bytes(planted.path.read_bytes(), corpus.planted)

    blank(ds)
    after = scan_bytes(to_bytes(ds), corpus.planted)
    assert value not in after
    assert corpus.patients[planted.patient].name in after


def test_implicit_vr_private_elements_read_back_as_un(corpus: Corpus) -> None:
    ds = pydicom.dcmread(first(corpus, "ct_implicit").path)
    name = ds[private_tag(ds, PRIVATE_GROUP, PRIVATE_CREATOR, 0x01)]
    assert name.VR == "UN"
    assert name.value.rstrip(b" ").decode() == ds.PatientName


def test_references_point_at_original_uids_in_the_corpus(corpus: Corpus) -> None:
    sops = {pydicom.dcmread(f.path).SOPInstanceUID for f in corpus.files}
    for planted in corpus.files:
        if planted.kind not in ("ct", "ct_implicit"):
            continue
        ds = pydicom.dcmread(planted.path)
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID in sops
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID in sops
        prior = ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID
        assert prior in corpus.patients[planted.patient].study_uids
        assert prior != ds.StudyInstanceUID


def test_date_pairs_are_the_dates_written_in_the_files(corpus: Corpus) -> None:
    for patient in corpus.patients.values():
        dates = [date for study in patient.studies for date in study.dates.values()]
        assert len(dates) == len(set(dates))
        assert len(patient.date_pairs) >= 4
        assert all(pair.days != 0 for pair in patient.date_pairs)
        study = patient.studies[0]
        files = [f for f in corpus.files if f.study == study.study_uid]
        ct = pydicom.dcmread(next(f.path for f in files if f.kind == "ct"))
        sr = pydicom.dcmread(next(f.path for f in files if f.kind == "sr"))
        written = {
            "StudyDate": ct.StudyDate,
            "AcquisitionDate": ct.AcquisitionDate,
            "ScheduledProcedureStepStartDate": (
                ct.RequestAttributesSequence[0].ScheduledProcedureStepStartDate
            ),
            "SRContentDate": sr.ContentDate,
        }
        assert {key: study.dates[key] for key in written} == written


DATE = "20210304"


@pytest.mark.parametrize(
    "data",
    [
        DATE.encode(),
        b"DA\x08\x00" + DATE.encode(),
        b"DOB 20210304 tel",
        b"20210304101530.123+0100",
        b"2021030410",
        b"ACC1_20210304.dcm",
        b"20210101\\20210304",
    ],
)
def test_a_date_standing_alone_or_starting_a_datetime_is_reported(data: bytes) -> None:
    assert scan_bytes(data, [DATE]) == [DATE]


@pytest.mark.parametrize(
    "data",
    [
        b"2.25.1234" + DATE.encode() + b"5678",
        b"1.2.20210304.5",
        b"9" + DATE.encode(),
        DATE.encode() + b"123",
        DATE.encode() + b"1015301234567",
        b"2021-03-04",
    ],
)
def test_a_date_inside_a_digit_run_or_reformatted_is_not_reported(data: bytes) -> None:
    assert scan_bytes(data, [DATE]) == []


@pytest.mark.parametrize(
    ("data", "planted", "found"),
    [
        (b"seen by THADDEUS today", "Quenby^Thaddeus", True),
        (b"quenby", "Quenby^Thaddeus", True),
        (b"Al Jo", "Jo^Al", False),
        (b"JO^AL", "Jo^Al", True),
        ("Müller".encode("latin-1"), "Müller^Jürgen", True),
        ("JÜRGEN".encode(), "Müller^Jürgen", False),
        ("Jürgen".encode(), "Müller^Jürgen", True),
        ("山田".encode("iso2022_jp"), "ヤマダ^タロウ=山田^太郎=やまだ^たろう", True),
        ("山田".encode(), "ヤマダ^タロウ=山田^太郎=やまだ^たろう", True),
        (b"Memorial", "Brackenfield Memorial Hospital", False),
        (b"BRACKENFIELD MEMORIAL HOSPITAL", "Brackenfield Memorial Hospital", True),
        (b"call mrn4829173", "MRN4829173", True),
        (b"2.25.55501429987", "555-0142-9987", False),
    ],
)
def test_names_match_by_component_and_any_case(data: bytes, planted: str, found: bool) -> None:
    assert scan_bytes(data, [planted]) == ([planted] if found else [])


def test_a_category_mapping_is_scanned_by_value_not_by_category_name(corpus: Corpus) -> None:
    mrn = sorted(corpus.planted["mrn"])[0]
    assert scan_bytes(b"name date uid free_text private", corpus.planted) == []
    assert scan_bytes(f"id {mrn}".encode(), corpus.planted) == [mrn]


def test_unrelated_dicom_reports_nothing(corpus: Corpus, tmp_path: Path) -> None:
    sample = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    assert scan_bytes(sample, corpus.planted) == []
    other = generate_corpus(tmp_path, patients=1, seed=99)
    shared = ("date", "datetime", "listed_name", "timezone")  # drawn from small fixed sets
    undated = corpus.values(*(c for c in CATEGORIES if c not in shared))
    assert scan_tree(other.root, undated) == {}


def test_odd_files_carry_their_planted_identifiers(odd: dict[str, Path]) -> None:
    assert set(odd) == set(ODD_PLANTED)
    for key, path in odd.items():
        assert sorted(scan_bytes(path.read_bytes(), ODD_PLANTED[key])) == sorted(
            ODD_PLANTED[key]
        ), key


def test_truncated_file_fails_a_full_read(odd: dict[str, Path]) -> None:
    data = odd["truncated"].read_bytes()
    assert data[128:132] == b"DICM"
    with pytest.raises((struct.error, EOFError)):
        pydicom.dcmread(odd["truncated"])


def test_non_dicom_and_metaless_files_are_refused_without_force(odd: dict[str, Path]) -> None:
    for key in ("not_dicom", "no_meta"):
        with pytest.raises(InvalidDicomError):
            pydicom.dcmread(odd[key])
    raw = odd["no_meta"].read_bytes()
    assert raw[:2] == b"\x08\x00" and b"DICM" not in raw
    ds = pydicom.dcmread(odd["no_meta"], force=True)
    assert ds.PatientID == "ODD7340023"
    assert "TransferSyntaxUID" not in ds.file_meta


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_bad_vr_values_fail_validation(odd: dict[str, Path]) -> None:
    ds = pydicom.dcmread(odd["bad_vr"])
    for keyword in ("StudyDate", "PatientAge", "StudyInstanceUID"):
        element = ds[keyword]
        with pytest.raises(ValueError):
            validate_value(element.VR, element.value, config.RAISE)
    assert ds.StudyDate == "2021-3-4"


def test_character_sets_encode_names_as_declared(odd: dict[str, Path]) -> None:
    utf8 = pydicom.dcmread(odd["utf8"])
    assert utf8.SpecificCharacterSet == "ISO_IR 192"
    assert utf8.PatientName == "Müller^Jürgen"
    assert "Müller".encode() in odd["utf8"].read_bytes()
    japanese = pydicom.dcmread(odd["japanese"])
    assert japanese.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert japanese.PatientName == "ヤマダ^タロウ=山田^太郎=やまだ^たろう"
    assert "山田".encode("iso2022_jp") in odd["japanese"].read_bytes()


def test_burned_in_annotation_flags(odd: dict[str, Path]) -> None:
    sc, us, unflagged = (pydicom.dcmread(odd[k]) for k in ("sc_burned", "us_burned", "us_no_flag"))
    assert (sc.SOPClassUID, sc.BurnedInAnnotation) == (SecondaryCaptureImageStorage, "YES")
    assert (us.SOPClassUID, us.BurnedInAnnotation) == (UltrasoundImageStorage, "YES")
    assert unflagged.SOPClassUID == UltrasoundImageStorage
    assert "BurnedInAnnotation" not in unflagged


def test_every_clean_descriptors_field_carries_leaks_of_each_kind(corpus: Corpus) -> None:
    """Issue 9 item 4: relatives, own address parts, listed names, e-mail and phone numbers
    in every free-text attribute the Clean Descriptors Option cleans."""
    cts = [pydicom.dcmread(f.path) for f in corpus.files if f.kind in ("ct", "ct_implicit")]
    kinds = {
        "relative": corpus.planted["relative"],
        "address": corpus.planted["address"],
        "listed_name": corpus.planted["listed_name"],
        "email": corpus.planted["email"],
        "phone": corpus.planted["phone"],
    }
    for keyword in (*FREE_TEXT_FIELDS, "AdditionalPatientHistory", "PatientComments"):
        texts = [str(ds[keyword].value) for ds in cts]
        assert all(scan_bytes(t.encode(), corpus.planted) for t in texts), keyword
        found = {
            kind for kind, values in kinds.items() for t in texts if scan_bytes(t.encode(), values)
        }
        if keyword in FREE_TEXT_FIELDS:
            assert found == set(kinds), keyword
    alerts = {str(ds.MedicalAlerts).split(" ")[0:2] == ["Call", "daughter"] for ds in cts}
    assert alerts == {True, False}  # a daughter to be called, by name, in some of them
    assert all(ds.TimezoneOffsetFromUTC in corpus.planted["timezone"] for ds in cts)
