"""A seeded corpus of fake PHI planted where de-identifiers miss it, and a byte-level leak scanner.

The corpus covers the leak sites listed for PS3.15 Annex E (Table E.1-1): attributes of the
Basic Profile, free-text descriptors (E.3.5 Clean Descriptors), private blocks (E.3.10), nested
sequences, overlays and icons (E.3.2, E.3.3), file meta, structured content (E.3.4) and
longitudinal dates (E.3.6). Nothing here imports the de-identifier under test.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

CATEGORIES = (
    "name",
    "patient_id",
    "mrn",
    "accession",
    "study_id",
    "procedure_id",
    "uid",
    "date",
    "datetime",
    "phone",
    "email",
    "address",
    "institution",
    "physician",
    "station",
    "ae_title",
    "device_serial",
    "free_text",
    "relative",
    "listed_name",
    "timezone",
    "private",
    "embedded",
)
"""Planted categories; `listed_name` (names from the Census lists) and `timezone` come from
small fixed sets, so two corpora may share them; `embedded` holds strings written as raw
bytes into icon pixels, overlay data and the file meta Private Information."""

PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "RADPIPE PHI TEST"
"""Private block with PN/LO elements; it reads back as UN from implicit VR files."""
UN_GROUP = 0x0011
UN_CREATOR = "ACME IMPLICIT HOP"
"""Private block stored with VR UN, as left by an implicit VR hop followed by an explicit write."""

KINDS = ("ct", "ct_implicit", "enhanced_ct", "sr")

#: Given and family names of the 1990 US Census lists, planted with no cue that a name follows
#: ("Seen with Margaret Gonzalez"): only a names list finds them.
CENSUS_NAMES = (
    ("Margaret", "Gonzalez"),
    ("Dorothy", "Nguyen"),
    ("Kenneth", "Ramirez"),
    ("Patricia", "Hernandez"),
    ("Gregory", "Kowalski"),
    ("Theresa", "Schneider"),
)

#: Free-text attributes (VR LO, ST, LT, UT) that PS3.15 Table E.1-1 (2025b) lists with the
#: Clean Descriptors Option ``C``, besides those the corpus fills with its own texts (Study,
#: Series, Requested and Performed Procedure Step Description, Protocol Name, Study and
#: Patient Comments, Additional Patient History, Frame Comments). Every CT instance carries
#: them all, each with a leak: a relative named after a kinship word, the patient's own
#: street and town, a listed name, an e-mail address, a phone number, a doctor's name.
FREE_TEXT_FIELDS: dict[str, str] = {
    "AdmittingDiagnosesDescription": "LO",
    "PyramidDescription": "LO",
    "DerivationDescription": "ST",
    "IdentifyingComments": "LT",
    "MedicalAlerts": "LO",
    "Allergies": "LO",
    "ClinicalTrialTimePointDescription": "ST",
    "ClinicalTrialSeriesDescription": "LO",
    "AcquisitionDeviceProcessingDescription": "LO",
    "AcquisitionComments": "LT",
    "RespiratoryMotionCompensationTechniqueDescription": "ST",
    "MultienergyAcquisitionDescription": "UT",
    "DecompositionDescription": "UT",
    "AcquisitionProtocolDescription": "LT",
    "RequestedSeriesDescription": "LO",
    "ContributionDescription": "ST",
    "PyramidLabel": "LO",
    "ImageComments": "LT",
    "ReasonForStudy": "LO",
    "ReasonForVisit": "UT",
    "RequestedContrastAgent": "LO",
    "DischargeDiagnosisDescription": "LO",
    "ServiceEpisodeDescription": "LO",
    "PatientState": "LO",
    "VisitComments": "LT",
    "WaveformFilterDescription": "ST",
    "FilterLookupTableDescription": "ST",
    "ScheduledProcedureStepDescription": "LO",
    "CommentsOnThePerformedProcedureStep": "ST",
    "CommentsOnRadiationDose": "ST",
    "ContainerDescription": "LO",
    "SpecimenShortDescription": "LO",
    "SpecimenDetailedDescription": "UT",
    "ReasonForTheRequestedProcedure": "LO",
    "RequestedProcedureComments": "LT",
    "ReasonForTheImagingServiceRequest": "LO",
    "ImagingServiceRequestComments": "LT",
    "LongDeviceDescription": "ST",
    "AnnotationGroupDescription": "UT",
    "LabelText": "UT",
    "InterpretationText": "ST",
    "InterpretationDiagnosisDescription": "LT",
    "Impressions": "ST",
    "ResultsComments": "ST",
}
_MAX_LENGTH = {"LO": 64, "ST": 1024, "LT": 10240, "UT": 1 << 20}

_MPPS_CLASS = "1.2.840.10008.3.1.2.3.3"
_STUDY_CLASS = "1.2.840.10008.3.1.2.3.1"
_ONSETS = ("qu", "th", "br", "kv", "zh", "vr", "dr", "gl", "sk", "x", "z", "v", "k", "j", "w")
_VOWELS = ("a", "e", "i", "o", "u", "y", "ae", "ou", "io")
_CODAS = ("nb", "dd", "rq", "x", "lk", "zz", "mb", "rv", "sk", "nd", "lv", "ff", "wk", "")
_FIXED_TEXT = (
    f"{PRIVATE_CREATOR} {UN_CREATOR} acme phantom ct original primary axial derived secondary "
    "chest thorax routine follow-up call reviewed imaging measurement report comment findings "
    "person observer name study date datetime started instance uid memorial hospital imaging wing "
    "lane pydicom anonymous removed modified unmodified basic application confidentiality profile "
    "retain longitudinal temporal clean descriptors structured content pixel graphics device "
    "identity institution private patient identity de-identification method radpipe coerce"
).lower()


@dataclass
class PlantedFile:
    """One corpus file, its original PatientID and StudyInstanceUID, and one of `KINDS`."""

    path: Path
    patient: str
    study: str
    kind: str


@dataclass(frozen=True)
class DatePair:
    """Two original dates of one patient whose interval a date shift must keep (E.3.6)."""

    first: str
    second: str
    where: str

    @property
    def days(self) -> int:
        return (_parse_date(self.second) - _parse_date(self.first)).days


@dataclass
class PlantedStudy:
    """Original facts of one study.

    `dates` maps an attribute keyword to its original date (for a DT keyword, its date part;
    `SRContentDate` and `SRItemDate` are the SR's ContentDate and its DATE content item).
    """

    study_uid: str
    accession: str
    dates: dict[str, str]
    series_uids: list[str]
    sop_uids: list[str]


@dataclass
class PlantedPatient:
    """Original facts of one patient."""

    patient_id: str
    name: str
    birth_date: str
    study_uids: list[str]
    studies: list[PlantedStudy]
    date_pairs: list[DatePair]
    issuer: str = ""
    """IssuerOfPatientID: with PatientID, what names the patient (pseudonyms are keyed on both)."""


@dataclass
class Corpus:
    """Files written by `generate_corpus` and every identifying string planted in them."""

    root: Path
    files: list[PlantedFile]
    planted: dict[str, set[str]]
    patients: dict[str, PlantedPatient] = field(default_factory=dict)

    def values(self, *categories: str) -> set[str]:
        """Planted strings of the given categories, or of all when none is given."""
        chosen = categories or tuple(self.planted)
        return {value for category in chosen for value in self.planted[category]}


def _parse_date(value: str) -> dt.date:
    return dt.datetime.strptime(value, "%Y%m%d").date()


def _spoken(name: str) -> str:
    """A person name as written in free text: "Given Family"."""
    family, given = name.split("^")
    return f"{given} {family}"


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ref(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    return item


def _even(data: bytes, pad: bytes = b"\x00") -> bytes:
    return data + pad if len(data) % 2 else data


class _Planter:
    """Seeded source of unique identifying values; records each value it hands out."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.planted: dict[str, set[str]] = {category: set() for category in CATEGORIES}
        self._used: set[str] = set()
        self._uids = 0
        self._anchors: list[dt.date] = []
        self.free_texts = 0

    def plant(self, category: str, value: str) -> str:
        if "^" in value and category != "name" and category != "physician":
            raise ValueError(f"{value!r}: only person names may hold '^' (scan_bytes splits them)")
        self.planted[category].add(value)
        return value

    def token(self, category: str, prefix: str, digits: int = 7) -> str:
        while True:
            value = prefix + "".join(self.rng.choices("0123456789", k=digits))
            if value not in self._used:
                self._used.add(value)
                return self.plant(category, value)

    def word(self) -> str:
        """A capitalized made-up word of 5+ letters, unique in the corpus and in fixed text."""
        while True:
            parts = [
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                for _ in range(2)
            ]
            word = "".join(parts)
            lower = word.lower()
            if len(word) < 5 or lower in _FIXED_TEXT:
                continue
            if any(lower in used or used in lower for used in self._used):
                continue
            self._used.add(lower)
            return word.capitalize()

    def person(self, category: str) -> str:
        return self.plant(category, f"{self.word()}^{self.word()}")

    def phone(self) -> str:
        while True:
            value = f"555-{self.rng.randrange(10000):04d}-{self.rng.randrange(10000):04d}"
            if value not in self._used:
                self._used.add(value)
                return self.plant("phone", value)

    def uid(self) -> str:
        self._uids += 1
        entropy = ["radpipe-phi-corpus", str(self.seed), str(self._uids)]
        return self.plant("uid", generate_uid(entropy_srcs=entropy))

    def date(self, day: dt.date) -> str:
        return self.plant("date", _da(day))

    def datetime(self, day: dt.date, time: str, suffix: str = "") -> str:
        self.date(day)
        return self.plant("datetime", _da(day) + time + suffix)

    def anchor(self) -> dt.date:
        """A study date at least 60 days from every other, so derived dates never collide."""
        while True:
            day = dt.date(2012, 1, 1) + dt.timedelta(days=self.rng.randrange(12 * 365))
            if all(abs((day - other).days) >= 60 for other in self._anchors):
                self._anchors.append(day)
                return day

    def birth(self) -> dt.date:
        while True:
            day = dt.date(1935, 1, 1) + dt.timedelta(days=self.rng.randrange(60 * 365))
            if _da(day) not in self._used:
                self._used.add(_da(day))
                return day

    def time(self) -> str:
        rng = self.rng
        return f"{rng.randrange(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"


@dataclass
class _Patient:
    name: str
    mrn: str
    other_id: str
    old_id: str
    deep_id: str
    birth: dt.date
    alias: str
    birth_name: str
    mother_name: str
    address: str
    phone: str
    email: str
    institution: str
    institution_address: str
    department: str
    street: str
    town: str
    relative: str
    contact: str
    census: tuple[str, str]
    timezone: str


@dataclass
class _Series:
    uid: str
    number: int
    implicit: bool
    description: str
    sops: list[str]


@dataclass
class _Study:
    uid: str
    day: dt.date
    time: str
    accession: str
    study_id: str
    requested_id: str
    step_id: str
    pps_id: str
    pps_uid: str
    frame_uid: str
    device_uid: str
    event_uid: str
    referring: str
    performing: str
    reading: str
    operator: str
    requesting: str
    station: str
    serial: str
    detector: str
    modality_ae: str
    source_ae: str
    sending_ae: str
    private_token: str
    un_token: str
    series: list[_Series]
    enhanced_series: str
    enhanced_sop: str
    prior_uid: str = ""
    dates: dict[str, str] = field(default_factory=dict)


def _new_patient(p: _Planter) -> _Patient:
    name = p.person("name")
    town = p.plant("address", p.word())
    street = p.plant("address", f"{p.word()} Lane")
    census = p.rng.choice(CENSUS_NAMES)
    for part in census:
        p.plant("listed_name", part)
    return _Patient(
        name=name,
        mrn=p.plant("patient_id", p.token("mrn", "MRN")),
        other_id=p.token("patient_id", "EMPI", 8),
        old_id=p.token("patient_id", "OLD", 7),
        deep_id=p.token("patient_id", "DPX", 7),
        birth=p.birth(),
        alias=p.person("name"),
        birth_name=p.person("name"),
        mother_name=p.person("name"),
        address=p.plant("address", f"{p.rng.randrange(100, 9999)} {street}, {town}"),
        phone=p.phone(),
        email=p.plant("email", f"{name.split('^')[1].lower()}{p.rng.randrange(1000)}@example.net"),
        institution=p.plant("institution", f"{town} Memorial Hospital"),
        institution_address=p.plant("address", f"{p.rng.randrange(1, 99)} {p.word()} Road, {town}"),
        department=p.plant("institution", f"{p.word()} Imaging Wing"),
        street=street,
        town=town,
        relative=p.plant("relative", p.word()),
        contact=p.plant("relative", p.word()),
        census=census,
        timezone=p.plant("timezone", f"+{p.rng.randrange(10, 14):02d}{p.rng.choice((15, 45))}"),
    )


def _new_study(p: _Planter, pat: _Patient, series: int, instances: int) -> _Study:
    day = p.anchor()
    study = _Study(
        uid=p.uid(),
        day=day,
        time=p.time(),
        accession=p.token("accession", "ACC", 8),
        study_id=p.token("study_id", "SID", 6),
        requested_id=p.token("procedure_id", "RP", 7),
        step_id=p.token("procedure_id", "SPS", 7),
        pps_id=p.token("procedure_id", "PPS", 7),
        pps_uid=p.uid(),
        frame_uid=p.uid(),
        device_uid=p.uid(),
        event_uid=p.uid(),
        referring=p.person("physician"),
        performing=p.person("physician"),
        reading=p.person("physician"),
        operator=p.person("physician"),
        requesting=p.person("physician"),
        station=p.token("station", "CTSTN", 5),
        serial=p.token("device_serial", "DSN", 8),
        detector=p.token("device_serial", "DET", 6),
        modality_ae=p.token("ae_title", "MOD", 6),
        source_ae=p.token("ae_title", "SRC", 6),
        sending_ae=p.token("ae_title", "SND", 6),
        private_token=p.token("private", "PRV", 8),
        un_token=p.token("private", "UNK", 8),
        series=[],
        enhanced_series=p.uid(),
        enhanced_sop=p.uid(),
    )
    for index in range(series):
        description = [f"AX 5mm f/u {pat.mrn}", f"COR call {pat.phone}"][index % 2]
        study.series.append(
            _Series(
                uid=p.uid(),
                number=index + 1,
                implicit=index % 2 == 1,
                description=p.plant("free_text", f"{description} series {index + 1}"),
                sops=[p.uid() for _ in range(instances)],
            )
        )
    offsets = {
        "StudyDate": 0,
        "AcquisitionDate": 1,
        "ContentDate": 2,
        "ScheduledProcedureStepStartDate": -3,
        "DateOfLastCalibration": -40,
        "AttributeModificationDateTime": 9,
    }
    study.dates = {key: p.date(day + dt.timedelta(days=n)) for key, n in offsets.items()}
    return study


def _patient_module(ds: Dataset, pat: _Patient, p: _Planter) -> None:
    family, given = pat.name.split("^")
    ds.PatientName = pat.name
    ds.PatientID = pat.mrn
    ds.IssuerOfPatientID = p.plant("institution", f"{pat.institution} MRN")
    ds.PatientBirthDate = p.date(pat.birth)
    ds.PatientSex = "O"
    ds.PatientAddress = pat.address
    ds.PatientTelephoneNumbers = pat.phone
    ds.PatientTelecomInformation = pat.email
    ds.OtherPatientIDs = pat.other_id
    other = Dataset()
    other.PatientID = pat.other_id
    other.IssuerOfPatientID = "EMPI"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.OtherPatientNames = pat.alias
    ds.PatientBirthName = pat.birth_name
    ds.PatientMotherBirthName = pat.mother_name
    ds.MedicalRecordLocator = pat.mrn
    ds.PatientComments = p.plant("free_text", f"Prefers {given}; lives at {pat.address}")
    ds.AdditionalPatientHistory = p.plant(
        "free_text",
        f"Smoker, {family} DOB {_da(pat.birth)} tel {pat.phone}; home {pat.street}, {pat.town}",
    )
    ds.TimezoneOffsetFromUTC = pat.timezone


def _request_item(pat: _Patient, st: _Study, p: _Planter, depth3: bool = False) -> Dataset:
    family, given = pat.name.split("^")
    item = Dataset()
    item.AccessionNumber = st.accession
    item.RequestedProcedureID = st.requested_id
    item.ScheduledProcedureStepID = st.step_id
    item.StudyInstanceUID = st.uid
    item.RequestedProcedureDescription = p.plant(
        "free_text", f"CT THORAX {given} {family} {st.accession}"
    )
    item.ScheduledProcedureStepStartDate = st.dates["ScheduledProcedureStepStartDate"]
    item.ScheduledProcedureStepStartTime = st.time
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = pat.institution
    item.IssuerOfAccessionNumberSequence = Sequence([issuer])
    item.ReferencedStudySequence = Sequence([_ref(_STUDY_CLASS, st.uid)])
    if depth3:
        step_day = _parse_date(st.dates["ScheduledProcedureStepStartDate"])
        item.ScheduledProcedureStepStartDateTime = p.datetime(step_day, st.time, "+0100")
    return item


def _original_attributes(pat: _Patient, st: _Study, p: _Planter) -> Sequence:
    """Original Attributes > Modified Attributes > Other Patient IDs / Request Attributes."""
    deep = Dataset()
    deep.PatientID = pat.deep_id
    deep.IssuerOfPatientID = "LEGACY"
    deep.TypeOfPatientID = "TEXT"
    modified = Dataset()
    modified.PatientName = pat.birth_name
    modified.PatientID = pat.old_id
    modified.PatientBirthDate = _da(pat.birth)
    modified.OtherPatientIDsSequence = Sequence([deep])
    modified.RequestAttributesSequence = Sequence([_request_item(pat, st, p, depth3=True)])
    original = Dataset()
    modified_day = _parse_date(st.dates["AttributeModificationDateTime"])
    original.AttributeModificationDateTime = p.datetime(modified_day, "084500.25", "-0500")
    original.ModifyingSystem = st.sending_ae
    original.SourceOfPreviousValues = pat.institution
    original.ReasonForTheAttributeModification = "COERCE"
    original.ModifiedAttributesSequence = Sequence([modified])
    return Sequence([original])


def _study_module(ds: Dataset, pat: _Patient, st: _Study, p: _Planter) -> None:
    family, given = pat.name.split("^")
    ds.StudyInstanceUID = st.uid
    ds.StudyDate = st.dates["StudyDate"]
    ds.StudyTime = st.time
    ds.AccessionNumber = st.accession
    ds.StudyID = st.study_id
    ds.StudyDescription = p.plant("free_text", f"CT CHEST for {given} {family}")
    ds.StudyComments = p.plant(
        "free_text", f"Urgent: {given} {family} {st.accession}; husband {pat.contact} aware"
    )
    ds.ReferringPhysicianName = st.referring
    ds.PhysiciansOfRecord = st.referring
    ds.NameOfPhysiciansReadingStudy = st.reading
    ds.RequestingPhysician = st.requesting
    ds.InstitutionName = pat.institution
    ds.InstitutionAddress = pat.institution_address
    ds.InstitutionalDepartmentName = pat.department
    ds.StationName = st.station
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "PHANTOM CT 1"
    ds.DeviceSerialNumber = st.serial
    ds.DeviceUID = st.device_uid
    ds.DetectorID = st.detector
    ds.DateOfLastCalibration = st.dates["DateOfLastCalibration"]
    ds.PerformedStationAETitle = st.modality_ae
    ds.PerformedProcedureStepID = st.pps_id
    ds.PerformedProcedureStepStartDate = st.dates["StudyDate"]
    ds.PerformedProcedureStepStartTime = st.time
    ds.PerformedProcedureStepDescription = p.plant(
        "free_text", f"CT chest performed on {family} by {st.operator.split('^')[0]}"
    )
    ds.RequestAttributesSequence = Sequence([_request_item(pat, st, p)])
    ds.OriginalAttributesSequence = _original_attributes(pat, st, p)
    ds.ReferencedStudySequence = Sequence([_ref(_STUDY_CLASS, st.prior_uid)])
    ds.ReferencedPerformedProcedureStepSequence = Sequence([_ref(_MPPS_CLASS, st.pps_uid)])
    _private_blocks(ds, pat, st)


def _private_blocks(ds: Dataset, pat: _Patient, st: _Study) -> None:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "PN", pat.name)
    block.add_new(0x02, "LO", pat.mrn)
    block.add_new(0x03, "LO", st.private_token)
    raw = ds.private_block(UN_GROUP, UN_CREATOR, create=True)
    raw.add_new(0x01, "UN", _even(f"{st.un_token}\\{pat.name}".encode(), b" "))


def _image_pixels(ds: Dataset, rng: np.random.Generator, frames: int = 1) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    shape = (frames, 16, 16) if frames > 1 else (16, 16)
    ds.PixelData = rng.integers(0, 2000, size=shape, dtype=np.int16).tobytes()


def _leaks(pat: _Patient, st: _Study) -> tuple[str, ...]:
    """Free-text leaks of PS3.15 E.3.5, each at most 64 characters (LO)."""
    doctor = st.reading.split("^")[0]
    given, family = pat.census
    return (
        f"Call daughter {pat.relative} on {pat.phone}",
        f"Home {pat.street}, {pat.town}",
        f"Seen with {given} {family}",
        f"contact {pat.contact} {pat.email}",
        f"Reviewed by Dr {doctor}",
        f"WIFE {pat.relative.upper()} TEL {pat.phone}",
    )


def _free_text_fields(ds: Dataset, pat: _Patient, st: _Study, start: int) -> None:
    leaks = _leaks(pat, st)
    for n, (keyword, vr) in enumerate(FREE_TEXT_FIELDS.items()):
        text = f"{leaks[(start + n) % len(leaks)]} (4.6 ACRIN)"
        if len(text) > _MAX_LENGTH[vr]:
            raise ValueError(f"{keyword}: {text!r} is too long for {vr}")
        ds.add_new(keyword, vr, text)


def _overlay_and_icon(ds: Dataset, pat: _Patient, st: _Study, p: _Planter) -> None:
    family = pat.name.split("^")[0]
    overlay = p.token("embedded", "OVD", 7).encode()
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    marked = p.plant("free_text", f"Marked for {family} by {_spoken(st.operator)}")
    ds.add_new(0x60000022, "LO", marked)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60001500, "LO", p.plant("free_text", f"OVL {family} {pat.mrn}"))
    ds.add_new(0x60003000, "OW", overlay.ljust(32, b"\x00"))
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows = icon.Columns = 8
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    burned = f"{p.token('embedded', 'ICN', 7)} {pat.name}".encode()
    icon.PixelData = burned.ljust(64, b"\x00")[:64]
    ds.IconImageSequence = Sequence([icon])


def _file_meta(ds: Dataset, st: _Study, p: _Planter, implicit: bool) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = st.source_ae
    meta.SendingApplicationEntityTitle = st.sending_ae
    meta.PrivateInformationCreatorUID = UID(p.uid())
    meta.PrivateInformation = _even(p.token("embedded", "FMI", 7).encode())
    ds.file_meta = meta


def _ct(pat: _Patient, st: _Study, series: _Series, index: int, p: _Planter) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = series.sops[index]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    _patient_module(ds, pat, p)
    _study_module(ds, pat, st, p)
    ds.InstanceCreationDate = st.dates["ContentDate"]
    ds.InstanceCreationTime = st.time
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDate = st.dates["StudyDate"]
    ds.SeriesTime = st.time
    ds.SeriesDescription = series.description
    ds.ProtocolName = p.plant("free_text", f"CHEST ROUTINE {pat.name.split('^')[0].upper()}")
    p.free_texts += 1  # each CT instance starts the leaks at the next one: all in every field
    _free_text_fields(ds, pat, st, p.free_texts)
    ds.OperatorsName = st.operator
    ds.PerformingPhysicianName = st.performing
    ds.FrameOfReferenceUID = st.frame_uid
    ds.IrradiationEventUID = st.event_uid
    ds.AcquisitionDate = st.dates["AcquisitionDate"]
    ds.AcquisitionTime = st.time
    acquired = _parse_date(st.dates["AcquisitionDate"])
    ds.AcquisitionDateTime = p.datetime(acquired, st.time + ".123", "+0100")
    ds.ContentDate = st.dates["ContentDate"]
    ds.ContentTime = st.time
    ds.InstanceNumber = index + 1
    ds.ImageComments = p.plant("free_text", f"f/u {pat.mrn} call {pat.phone}; {ds.ImageComments}")
    ds.BodyPartExamined = "CHEST"
    ds.KVP = 120
    ds.SliceThickness = 5
    ds.PixelSpacing = [0.7, 0.7]
    ds.ImagePositionPatient = [0, 0, 5 * index]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.BurnedInAnnotation = "NO"
    ds.ReferencedImageSequence = Sequence([_ref(CTImageStorage, series.sops[index - 1])])
    source = st.series[series.number % len(st.series)].sops[index]
    ds.SourceImageSequence = Sequence([_ref(CTImageStorage, source)])
    _overlay_and_icon(ds, pat, st, p)
    _image_pixels(ds, np.random.default_rng([p.seed, series.number, index, st.day.toordinal()]))
    _file_meta(ds, st, p, series.implicit)
    return ds


def _enhanced_ct(pat: _Patient, st: _Study, p: _Planter) -> Dataset:
    """Enhanced CT with shared and per-frame functional groups three sequences deep."""
    ds = Dataset()
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = st.enhanced_sop
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    ds.Modality = "CT"
    _patient_module(ds, pat, p)
    _study_module(ds, pat, st, p)
    ds.SeriesInstanceUID = st.enhanced_series
    ds.SeriesNumber = 99
    ds.SeriesDescription = p.plant("free_text", f"MPR for {_spoken(pat.name)}")
    ds.FrameOfReferenceUID = st.frame_uid
    ds.InstanceNumber = 1
    ds.ContentDate = st.dates["ContentDate"]
    ds.ContentTime = st.time
    acquired = _parse_date(st.dates["AcquisitionDate"])
    ds.AcquisitionDateTime = p.datetime(acquired, st.time + ".123", "+0100")
    dimension = Dataset()
    dimension.DimensionOrganizationUID = p.uid()
    ds.DimensionOrganizationSequence = Sequence([dimension])
    measures = Dataset()
    measures.PixelSpacing = [0.7, 0.7]
    measures.SliceThickness = 5
    event = Dataset()
    event.IrradiationEventUID = st.event_uid
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.IrradiationEventIdentificationSequence = Sequence([event])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for index, sop in enumerate(st.series[0].sops[:2]):
        content = Dataset()
        content.FrameAcquisitionNumber = index + 1
        content.FrameAcquisitionDateTime = p.datetime(acquired, st.time + ".123456")
        content.FrameReferenceDateTime = p.datetime(acquired, st.time, "+0100")
        content.FrameComments = p.plant(
            "free_text", f"frame {index + 1} checked by {_spoken(st.reading)} for {pat.mrn}"
        )
        position = Dataset()
        position.ImagePositionPatient = [0, 0, 5 * index]
        derivation = Dataset()
        derivation.SourceImageSequence = Sequence([_ref(CTImageStorage, sop)])
        frame = Dataset()
        frame.FrameContentSequence = Sequence([content])
        frame.PlanePositionSequence = Sequence([position])
        frame.DerivationImageSequence = Sequence([derivation])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.NumberOfFrames = len(frames)
    _image_pixels(ds, np.random.default_rng([p.seed, 99, st.day.toordinal()]), len(frames))
    _file_meta(ds, st, p, implicit=False)
    return ds


def _sr_item(relationship: str, value_type: str, concept: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _sr(pat: _Patient, st: _Study, p: _Planter) -> tuple[Dataset, dict[str, str]]:
    """Comprehensive SR whose content tree holds identifiers down to three containers deep."""
    family, given = pat.name.split("^")
    ds = Dataset()
    ds.SOPClassUID = ComprehensiveSRStorage
    ds.SOPInstanceUID = p.uid()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.Modality = "SR"
    _patient_module(ds, pat, p)
    _study_module(ds, pat, st, p)
    ds.SeriesInstanceUID = p.uid()
    ds.SeriesNumber = 900
    ds.SeriesDescription = p.plant("free_text", f"Report {family} {st.accession}")
    ds.InstanceNumber = 1
    report_day = st.day + dt.timedelta(days=5)
    ds.ContentDate = p.date(report_day)
    ds.ContentTime = st.time
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    verifier = Dataset()
    verifier.VerifyingObserverName = st.reading
    verifier.VerifyingOrganization = pat.institution
    verified = st.day + dt.timedelta(days=7)
    verifier.VerificationDateTime = p.datetime(verified, "170102", "+0000")
    ds.VerifyingObserverSequence = Sequence([verifier])
    image = st.series[0]
    evidence_series = Dataset()
    evidence_series.SeriesInstanceUID = image.uid
    evidence_series.ReferencedSOPSequence = Sequence([_ref(CTImageStorage, image.sops[0])])
    evidence = Dataset()
    evidence.StudyInstanceUID = st.uid
    evidence.ReferencedSeriesSequence = Sequence([evidence_series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("126000", "Imaging Measurement Report")])
    ds.ContinuityOfContent = "SEPARATE"
    observer = p.person("physician")
    text = p.plant("free_text", f"Reviewed with {given} {family} ({pat.mrn}), tel {pat.phone}")
    deep_text = p.plant(
        "free_text", f"Nested note {p.token('free_text', 'NOTE', 6)} for {_spoken(pat.birth_name)}"
    )
    seen = p.date(st.day + dt.timedelta(days=6))
    started = p.datetime(st.day, st.time)
    deepest = _sr_item(
        "CONTAINS",
        "CONTAINER",
        _code("121071", "Finding"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence(
            [
                _sr_item("CONTAINS", "TEXT", _code("121106", "Comment"), TextValue=deep_text),
                _sr_item(
                    "HAS OBS CONTEXT",
                    "PNAME",
                    _code("121008", "Person Observer Name"),
                    PersonName=st.performing,
                ),
                _sr_item("CONTAINS", "DATE", _code("111060", "Study Date"), Date=seen),
            ]
        ),
    )
    findings = _sr_item(
        "CONTAINS",
        "CONTAINER",
        _code("121070", "Findings"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence([deepest]),
    )
    ds.ContentSequence = Sequence(
        [
            _sr_item(
                "HAS OBS CONTEXT",
                "PNAME",
                _code("121008", "Person Observer Name"),
                PersonName=observer,
            ),
            _sr_item(
                "HAS OBS CONTEXT", "UIDREF", _code("110180", "Study Instance UID"), UID=st.uid
            ),
            _sr_item("CONTAINS", "TEXT", _code("121106", "Comment"), TextValue=text),
            _sr_item("CONTAINS", "DATE", _code("111060", "Study Date"), Date=st.dates["StudyDate"]),
            _sr_item("CONTAINS", "DATETIME", _code("111526", "DateTime Started"), DateTime=started),
            _sr_item(
                "CONTAINS",
                "IMAGE",
                _code("121112", "Source of Measurement"),
                ReferencedSOPSequence=Sequence([_ref(CTImageStorage, image.sops[0])]),
            ),
            findings,
        ]
    )
    _file_meta(ds, st, p, implicit=False)
    dates = {
        "SRContentDate": _da(report_day),
        "SRItemDate": seen,
        "VerificationDateTime": _da(verified),
    }
    return ds, dates


def _write(path: Path, ds: Dataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _emit(folder: Path, ds: Dataset, pat: _Patient, st: _Study, kind: str) -> PlantedFile:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    _write(path, ds)
    return PlantedFile(path, pat.mrn, st.uid, kind)


def generate_corpus(
    root: Path,
    *,
    patients: int = 3,
    studies_per_patient: int = 2,
    series_per_study: int = 2,
    instances_per_series: int = 2,
    seed: int = 0,
) -> Corpus:
    """Write a seeded corpus of Part 10 files laden with fake PHI under `root`.

    Layout: `root/<Family>_<Given>_<MRN>/<Accession>_<StudyDate>/<SeriesNumber>_<Station>/
    <SOPInstanceUID>.dcm`, so the names themselves carry identifiers. Per study: the CT series
    (odd-indexed series in implicit VR little endian, kind `ct_implicit`, the rest explicit,
    kind `ct`) and one Enhanced CT; per patient one Comprehensive SR in the first study.
    """
    p = _Planter(seed)
    files: list[PlantedFile] = []
    facts: dict[str, PlantedPatient] = {}
    for _ in range(patients):
        pat = _new_patient(p)
        studies = [
            _new_study(p, pat, series_per_study, instances_per_series)
            for _ in range(studies_per_patient)
        ]
        for index, st in enumerate(studies):
            st.prior_uid = studies[index - 1].uid if len(studies) > 1 else p.uid()
        family, given = pat.name.split("^")
        patient_dir = root / f"{family}_{given}_{pat.mrn}"
        planted_studies = []
        for st in studies:
            study_dir = patient_dir / f"{st.accession}_{st.dates['StudyDate']}"
            for series in st.series:
                kind = "ct_implicit" if series.implicit else "ct"
                folder = study_dir / f"{series.number:03d}_{st.station}"
                for index in range(len(series.sops)):
                    files.append(_emit(folder, _ct(pat, st, series, index, p), pat, st, kind))
            enhanced = _enhanced_ct(pat, st, p)
            files.append(_emit(study_dir / f"099_{st.station}", enhanced, pat, st, "enhanced_ct"))
            planted_studies.append(
                PlantedStudy(
                    study_uid=st.uid,
                    accession=st.accession,
                    dates=dict(st.dates),
                    series_uids=[s.uid for s in st.series] + [st.enhanced_series],
                    sop_uids=[uid for s in st.series for uid in s.sops] + [st.enhanced_sop],
                )
            )
        first = studies[0]
        sr, sr_dates = _sr(pat, first, p)
        folder = patient_dir / f"{first.accession}_{first.dates['StudyDate']}" / "900_REPORT"
        files.append(_emit(folder, sr, pat, first, "sr"))
        planted_studies[0].series_uids.append(sr.SeriesInstanceUID)
        planted_studies[0].sop_uids.append(sr.SOPInstanceUID)
        planted_studies[0].dates.update(sr_dates)
        facts[pat.mrn] = PlantedPatient(
            patient_id=pat.mrn,
            name=pat.name,
            birth_date=_da(pat.birth),
            study_uids=[st.uid for st in studies],
            studies=planted_studies,
            date_pairs=_date_pairs(studies, sr_dates["SRContentDate"]),
            issuer=f"{pat.institution} MRN",
        )
    return Corpus(root=root, files=files, planted=p.planted, patients=facts)


def _date_pairs(studies: list[_Study], report_date: str) -> list[DatePair]:
    first = studies[0].dates
    pairs = [
        DatePair(first["StudyDate"], first["AcquisitionDate"], "StudyDate/AcquisitionDate"),
        DatePair(
            first["ScheduledProcedureStepStartDate"],
            first["StudyDate"],
            "RequestAttributesSequence ScheduledProcedureStepStartDate/StudyDate",
        ),
        DatePair(first["StudyDate"], report_date, "StudyDate/SR ContentDate"),
    ]
    pairs += [
        DatePair(first["StudyDate"], st.dates["StudyDate"], f"StudyDate of study 1/study {n}")
        for n, st in enumerate(studies[1:], start=2)
    ]
    return pairs


_ODD_PATIENTS = {
    "truncated": ("Brokvaer^Tamsyx", "ODD7340021"),
    "not_dicom": ("Halvorzk^Ferriq", "ODD7340022"),
    "no_meta": ("Metazkov^Corwynd", "ODD7340023"),
    "bad_vr": ("Badvouq^Ysolzd", "ODD7340024"),
    "utf8": ("Müller^Jürgen", "ODD7340025"),
    "japanese": ("ヤマダ^タロウ=山田^太郎=やまだ^たろう", "ODD7340026"),
    "sc_burned": ("Burnqiel^Osrikk", "ODD7340027"),
    "us_burned": ("Sonvyk^Elarqa", "ODD7340028"),
    "us_no_flag": ("Echovard^Pimmex", "ODD7340029"),
}
_BAD_DATE = "2021-3-4"

ODD_PLANTED: Mapping[str, frozenset[str]] = {
    key: frozenset(values) | ({_BAD_DATE} if key == "bad_vr" else set())
    for key, values in _ODD_PATIENTS.items()
}
"""Identifiers each odd file of `generate_odd_files` carries: PatientName, PatientID and, for
bad_vr, the malformed StudyDate."""


def _odd_dataset(key: str, sop_class: str = SecondaryCaptureImageStorage) -> Dataset:
    name, patient_id = _ODD_PATIENTS[key]
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["radpipe-odd", key])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["radpipe-odd", key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["radpipe-odd", key, "series"])
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.StudyDate = "20190611"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = np.zeros((16, 16), dtype=np.uint8)
    pixels[2:5, 1:15] = 255
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def generate_odd_files(root: Path) -> dict[str, Path]:
    """Write inputs a de-identifier must survive or refuse; `ODD_PLANTED` lists their PHI.

    Keys: truncated, not_dicom, no_meta (raw implicit VR dataset), bad_vr (DA "2021-3-4",
    AS "abc", UI with letters), utf8 (ISO_IR 192), japanese (ISO 2022 IR 87), sc_burned and
    us_burned (Burned In Annotation YES) and us_no_flag (no Burned In Annotation).
    """
    root.mkdir(parents=True, exist_ok=True)
    paths = {key: root / f"{key}.dcm" for key in ODD_PLANTED}

    truncated = _odd_dataset("truncated")
    _write(paths["truncated"], truncated)
    whole = paths["truncated"].read_bytes()
    cut = whole.index(b"\xe0\x7f\x10\x00") + 10
    paths["truncated"].write_bytes(whole[:cut])

    name, patient_id = _ODD_PATIENTS["not_dicom"]
    paths["not_dicom"].write_bytes(f"%PDF-1.4\nReferral for {name} id {patient_id}\n".encode())

    raw = _odd_dataset("no_meta")
    del raw.file_meta
    pydicom.dcmwrite(paths["no_meta"], raw, implicit_vr=True, little_endian=True)

    bad = _odd_dataset("bad_vr")
    for tag, vr, value in (
        (0x00080020, "DA", _BAD_DATE),
        (0x00101010, "AS", "abc"),
        (0x0020000D, "UI", "1.2.abc.4"),
    ):
        bad[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    _write(paths["bad_vr"], bad)

    utf8 = _odd_dataset("utf8")
    utf8.SpecificCharacterSet = "ISO_IR 192"
    _write(paths["utf8"], utf8)

    japanese = _odd_dataset("japanese")
    japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    _write(paths["japanese"], japanese)

    for key, sop_class, modality, flag in (
        ("sc_burned", SecondaryCaptureImageStorage, "OT", "YES"),
        ("us_burned", UltrasoundImageStorage, "US", "YES"),
        ("us_no_flag", UltrasoundImageStorage, "US", None),
    ):
        ds = _odd_dataset(key, sop_class)
        ds.Modality = modality
        if flag:
            ds.BurnedInAnnotation = flag
        _write(paths[key], ds)
    return paths


@dataclass(frozen=True)
class _Needle:
    value: str
    literals: tuple[bytes, ...]
    pattern: re.Pattern[bytes] | None = None


_DATE = re.compile(r"\d{8}")
_NAME_SPLIT = re.compile(r"[\^= ]+")


def _encodings(text: str) -> set[bytes]:
    found = set()
    codecs = ("latin-1", "utf-8") if text.isascii() else ("latin-1", "utf-8", "iso2022_jp")
    for codec in codecs:
        try:
            found.add(text.encode(codec).lower())
        except UnicodeEncodeError:
            continue
    return found


def _needle(value: str) -> _Needle:
    if _DATE.fullmatch(value):
        digits = value.encode()
        pattern = re.compile(
            rb"(?<![0-9.])" + digits + rb"(?:[0-9]{6}|[0-9]{4}|[0-9]{2})?(?![0-9])"
        )
        return _Needle(value, (), pattern)
    texts = {value}
    if "^" in value or "=" in value:
        texts |= {
            part
            for part in _NAME_SPLIT.split(value)
            if len(part) >= 3 or (len(part) >= 2 and not part.isascii())
        }
    literals = set().union(*(_encodings(text) for text in texts))
    return _Needle(value, tuple(sorted(literal for literal in literals if literal)))


def _needles(planted: Iterable[str] | Mapping[str, Iterable[str]]) -> list[_Needle]:
    if isinstance(planted, Mapping):
        values = {value for group in planted.values() for value in group}
    else:
        values = set(planted)
    return [_needle(value) for value in sorted(values) if value]


def _find(data: bytes, needles: list[_Needle]) -> list[str]:
    lower = data.lower()
    return [
        needle.value
        for needle in needles
        if (needle.pattern is not None and needle.pattern.search(data))
        or any(literal in lower for literal in needle.literals)
    ]


def scan_bytes(data: bytes, planted: Iterable[str] | Mapping[str, Iterable[str]]) -> list[str]:
    """The planted strings that occur in `data`, sorted.

    `planted` is strings or a category mapping such as `Corpus.planted`. Each value is searched
    case-insensitively (ASCII letters) as Latin-1, UTF-8 and, when not ASCII, ISO-2022-JP bytes.
    A value with `^` or `=` is a person name: each component split on `^`, `=` and spaces is
    searched too when it has 3+ characters (2+ when not ASCII). An 8-digit value is a date,
    searched only as stored and only where it starts a digit run of 8, 10, 12 or 14 digits
    (a DA, or the date part of a DT) not preceded by a digit or `.`: every component of a UID
    after the first follows a `.` or a digit, so a date never matches inside a `2.25.` UID.
    """
    return _find(data, _needles(planted))


def scan_tree(
    root: Path, planted: Iterable[str] | Mapping[str, Iterable[str]]
) -> dict[Path, list[str]]:
    """Planted strings found per path under `root`, in the file bytes or in the relative name.

    Only paths with findings appear, so an empty result means a clean tree.
    """
    needles = _needles(planted)
    found: dict[Path, list[str]] = {}
    for path in sorted(root.rglob("*")):
        hits = set(_find(str(path.relative_to(root)).encode(), needles))
        if path.is_file():
            hits.update(_find(path.read_bytes(), needles))
        if hits:
            found[path] = sorted(hits)
    return found
