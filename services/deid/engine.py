"""The de-identifier: PS3.15 Annex E Table E.1-1 with options, at every nesting depth.

One :class:`Deidentifier` per (secret, profile). :meth:`Deidentifier.deidentify` changes a
dataset in place and sets the markers (PS3.15 E.1.1). It never decodes or re-encodes Pixel
Data unless the profile configures a pixel cleaner; elements it keeps are written back from
their raw bytes. Actions (PS3.15 E.1.1 Table E.1-1 key):

* ``X`` remove, ``Z`` empty, ``D`` dummy value, ``K`` keep, ``U`` keyed ``2.25.`` UID,
  ``C`` clean (dates shifted per patient, text cleaned, ages capped, sequences recursed);
* combined codes take the first action unless the attribute is Type 1 or 2 somewhere it
  commonly occurs; present attributes are therefore emptied (``Z``) rather than removed, and
  given a dummy where they are Type 1 (:data:`TYPE1`), so output stays conformant;
* attributes the table does not list are kept, but defensively: names emptied, dates shifted,
  UIDs remapped, and every free-text value stripped of the instance's own identifiers.

The walk lives here; the table's actions as applied are :mod:`.actions`, dates and ages
:mod:`.dates` (the shift itself :mod:`radpipe.common.dateshift`), free text :mod:`.text`,
burned-in pixels :mod:`.pixels`, and the PS3.15 E.1.1 markers and file meta :mod:`.markers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from radpipe.common.errors import RadpipeError
from radpipe.common.identity import PatientKeys, pseudonym, pseudonymous_uid

from .actions import CODED, DUMMY, effective_actions, most_retaining, resolve
from .dates import cap_age, date_spellings, shift_da, shift_dt, valid_tm
from .markers import Markers, rebuild_file_meta
from .pixels import burned_in_risk, clean_pixels
from .profile import STANDARD_UID_ROOT, Profile
from .table import PATTERNS, SAFE_PRIVATE
from .text import TextCleaner

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_VALUE_TYPE = BaseTag(0x0040A040)
#: Timezone Offset From UTC: where the patient was. Never passed on: removed (Basic) or, where
#: the table says clean (a Retain Longitudinal option), replaced by UTC.
_TIMEZONE = BaseTag(0x00080201)
_LOOK_VRS = TEXT_VRS | {"SQ", "UI", "PN", "DA", "DT", "TM", "AS", "UN"}
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS", "AT"})

#: Identifiers collected from an instance to clean its free text (besides every PN value).
ID_KEYWORDS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "AccessionNumber",
        "StudyID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "AdmissionID",
        "MedicalRecordLocator",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "PersonAddress",
        "PersonTelephoneNumbers",
        "PersonTelecomInformation",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "RegionOfResidence",
        "CountryOfResidence",
        "PatientInsurancePlanCodeSequence",
        "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest",
        "ClinicalTrialSubjectID",
    }
)

#: Addresses: removed whole, by part and by distinctive word from the instance's free text.
ADDRESS_KEYWORDS = frozenset(
    {"PatientAddress", "InstitutionAddress", "ReferringPhysicianAddress", "PersonAddress"}
)


class Quarantined(RadpipeError):
    """The instance cannot be de-identified safely as configured (e.g. burned-in text)."""

    status = 422


def _each(value: Any, fn: Callable[[str], str | None]) -> Any:
    if isinstance(value, list | MultiValue):
        return [fn(str(v)) or "" for v in value]
    if value in (None, ""):
        return value
    return fn(str(value)) or ""


def _vr_of(ds: Dataset, tag: BaseTag) -> str:
    vr = ds.get_item(tag).VR
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


@dataclass
class _Run:
    """State of one instance's de-identification.

    Text is cleaned after the walk (``texts``), once every name and identifier of the instance
    has been seen (``names``, ``values``): one pass over the dataset instead of two.
    """

    keys: PatientKeys
    full_dates: bool
    modified_dates: bool
    patient_chars: bool
    names: set[str] = field(default_factory=set)
    values: set[str] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    texts: list[tuple[DataElement, bool, str]] = field(default_factory=list)

    def remember(self, vr: str, keyword: str, value: Any) -> None:
        for one in value if isinstance(value, list | MultiValue) else [value]:
            if one in (None, ""):
                continue
            if vr == "DA":
                self.values.update(date_spellings(str(one)))
            elif keyword in ADDRESS_KEYWORDS:
                self.addresses.add(str(one))
            elif vr == "PN":
                self.names.add(str(one))
            else:
                self.values.add(str(one))


class Deidentifier:
    """Applies one profile with one secret; reusable across instances and threads."""

    def __init__(self, secret: bytes, profile: Profile, dates: bytes | None = None) -> None:
        """``secret`` keys UIDs and pseudonyms (``Purpose.PSEUDONYMS``), ``dates`` the date
        offsets (``Purpose.DATES``; ``None``: ``secret`` does both, as before 0.2)."""
        self.secret = secret
        self.dates = dates
        self.profile = profile
        self.options = profile.options
        self._actions = effective_actions(profile.options)
        self._patterns = [
            (mask, value, resolve(most_retaining(basic, by_option, self.options), ""))
            for mask, value, _, basic, by_option in PATTERNS
        ]
        self._uids: dict[str, str] = {}
        self._info: dict[int, tuple[str, str, str, bool]] = {}
        self._markers = Markers(profile)

    # -- identifiers ---------------------------------------------------------------------

    def uid(self, value: str) -> str:
        value = value.strip().rstrip("\x00")
        if not value or value.startswith(STANDARD_UID_ROOT):
            return value
        mapped = self._uids.get(value)
        if mapped is None:
            if len(self._uids) > 200_000:
                self._uids.clear()
            mapped = self._uids[value] = pseudonymous_uid(self.secret, value)
        return mapped

    def patient_keys(self, ds: Dataset) -> PatientKeys:
        """Keyed pseudonyms and date offset of the instance's patient: Issuer of Patient ID
        and Patient ID together name a patient (two issuers may hand out the same id)."""
        return PatientKeys.for_dataset(self.secret, ds, self.dates)

    def applied_date_offset(self, keys: PatientKeys) -> timedelta:
        """The offset this profile actually moves dates by: the patient's keyed offset with
        Retain Longitudinal Modified Dates, none otherwise (dates kept, or removed)."""
        return keys.date_offset if self.profile.shifts_dates else timedelta(0)

    # -- the walk ------------------------------------------------------------------------

    def deidentify(
        self, ds: Dataset, extra_names: Iterable[str] = (), extra_values: Iterable[str] = ()
    ) -> Dataset:
        """De-identify ``ds`` in place (file meta included) and set the PS3.15 markers.

        Raises :class:`Quarantined` when the pixels may show identity and no cleaner is set.
        """
        risk = burned_in_risk(ds)
        pixels_cleaned = False
        if risk:
            if not self.profile.cleans_pixels or "PixelData" not in ds:
                raise Quarantined(
                    f"{risk}; configure clean_pixel_regions for this source "
                    "or review the instance by hand"
                )
            clean_pixels(ds, self.profile.clean_pixel_regions)
            pixels_cleaned = True
        run = _Run(
            keys=self.patient_keys(ds),
            full_dates="rtn_long_full_dates" in self.options,
            modified_dates="rtn_long_modif_dates" in self.options,
            patient_chars="rtn_pat_chars" in self.options,
        )
        self._walk(ds, run, content_item=False)
        if run.texts:
            cleaner = TextCleaner(
                run.names.union(extra_names), run.values.union(extra_values), run.addresses
            )
            for element, patterns, emptied in run.texts:
                dummy = DUMMY.get(element.VR, "")

                def clean(
                    value: str,
                    patterns: bool = patterns,
                    emptied: str = emptied,
                    dummy: str = dummy,
                ) -> str:
                    if not value.strip():
                        return ""
                    cleaned = cleaner.clean(value, patterns)
                    if cleaned is None:  # not checkable with confidence: never passed on
                        return dummy
                    return cleaned or emptied

                element.value = _each(element.value, clean)
        rebuild_file_meta(ds)
        self._markers.apply(ds, pixels_cleaned)
        return ds

    def _action(self, tag: int) -> str:
        action = self._actions.get(tag)
        if action is not None:
            return action
        for mask, value, pattern_action in self._patterns:
            if tag & mask == value:
                return pattern_action
        return ""

    def _describe(self, tag: BaseTag) -> tuple[str, str, str, bool]:
        """(keyword, action, dictionary VR, collect for text cleaning) of a public tag."""
        keyword = keyword_for_tag(tag)
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = "UN"
        info = (keyword, self._action(tag), vr, keyword in ID_KEYWORDS)
        self._info[tag] = info
        return info

    def _walk(self, ds: Dataset, run: _Run, content_item: bool) -> None:
        content_item = content_item or _VALUE_TYPE in ds
        private: list[BaseTag] = []
        for tag in list(ds.keys()):
            group = tag >> 16
            if tag & 0xFFFF == 0 or group == 0x0002:
                del ds[tag]  # group lengths are stale once anything changes; meta is rebuilt
                continue
            if group & 1:
                private.append(tag)
                continue
            if group & 0xFF00 in (0x5000, 0x6000):
                # Curves and overlays go whole (Basic X; Clean Graphics cleans by removing):
                # their bitmaps can carry text, and a half-removed overlay is malformed.
                del ds[tag]
                continue
            keyword, action, vr, collect = self._info.get(tag) or self._describe(tag)
            if tag == _TIMEZONE and action != "X":
                ds[tag].value = "+0000" if ds[tag].value else ""  # never the patient's zone
                continue
            vr = ds.get_item(tag).VR or vr
            if collect or vr == "PN" or vr == "DA":
                run.remember(vr, keyword, ds[tag].value)
            special = _PSEUDONYMS.get(keyword)
            if special is not None:
                special(self, ds, tag, run)
                continue
            if action == "X":
                del ds[tag]
                continue
            if action == "K" and vr != "SQ":
                if keyword == "PatientAge" and run.patient_chars:
                    ds[tag].value = _each(ds[tag].value, cap_age)
                continue
            if action == "" and vr not in _LOOK_VRS:
                continue  # numbers, codes and pixels the table does not list: raw bytes kept
            self._apply(ds, tag, vr, action, keyword, run, content_item)
        if private:
            self._private(ds, private)

    def _apply(
        self,
        ds: Dataset,
        tag: BaseTag,
        vr: str,
        action: str,
        keyword: str,
        run: _Run,
        content_item: bool,
    ) -> None:
        if vr == "TM" and action in ("C", "") and _raw_times_valid(ds, tag):
            return  # valid times stay as read, raw (whole-day shifts leave TM unchanged)
        element = ds[tag]
        if vr == "SQ":
            # Present sequences are kept with every item cleaned rather than emptied: an
            # empty Type 1/3 sequence is malformed, and the walk cleans what is inside.
            for item in element.value or []:
                self._walk(item, run, content_item)
            return
        if action == "U" or (action == "" and vr == "UI"):
            if action == "U" or not _class_like(keyword):
                element.value = _each(element.value, self.uid)
            return
        if action == "Z":
            element.value = b"" if vr in BINARY_VRS else (None if vr in NUMBER_VRS else "")
            return
        if action == "D":
            if vr == "DA" and run.modified_dates:  # a shifted date is a better dummy
                element.value = _each(element.value, lambda v: shift_da(v, run.keys.date_offset))
            elif vr in BINARY_VRS:
                element.value = b""
            else:
                element.value = DUMMY.get(vr, None if vr in NUMBER_VRS else "")
            return
        # ``C`` (clean) and attributes the table does not list.
        if vr == "DA":
            element.value = self._date(element.value, run, shift_da)
        elif vr == "DT":
            element.value = self._date(element.value, run, shift_dt)
        elif vr == "TM":
            element.value = _each(element.value, valid_tm)
        elif vr == "AS":
            element.value = _each(element.value, cap_age)
        elif vr == "PN":
            element.value = "" if action == "" else DUMMY["PN"]
        elif vr in TEXT_VRS:
            patterns = keyword not in CODED and (
                action == "C" or (content_item and "clean_struct_cont" in self.options)
            )
            # Emptied by cleaning: a dummy where the table does not list the attribute (it
            # may be Type 1 somewhere), nothing where it does (descriptors are Type 3).
            run.texts.append((element, patterns, "" if action == "C" else DUMMY[vr]))
        elif vr == "UN" or (action == "C" and vr in BINARY_VRS):
            del ds[tag]  # unreadable (or binary to clean), so uncheckable: never passed on

    def _date(self, value: Any, run: _Run, fn: Callable[[str, timedelta], str | None]) -> Any:
        if run.full_dates:
            return _each(value, lambda v: v if fn(v, timedelta()) else None)
        if run.modified_dates:
            return _each(value, lambda v: fn(v, run.keys.date_offset))
        return ""

    def _private(self, ds: Dataset, tags: list[BaseTag]) -> None:
        """Retain Safe Private (PS3.15 E.3.10): keep an attribute only if Table E.3.10-1 lists
        it for its block's private creator; creators of emptied blocks go too."""
        keep_safe = "rtn_safe_priv" in self.options
        kept_blocks: set[tuple[int, int]] = set()
        creators: list[BaseTag] = []
        for tag in tags:
            if 0x0010 <= tag.element <= 0x00FF:
                creators.append(tag)
                continue
            block = tag.element >> 8
            if keep_safe and tag.element >= 0x1000:
                creator_tag = BaseTag((tag.group << 16) | block)
                creator = str(ds[creator_tag].value).strip() if creator_tag in ds else ""
                if (creator, tag.group, tag.element & 0xFF) in SAFE_PRIVATE:
                    kept_blocks.add((tag.group, block))
                    continue
            del ds[tag]
        for tag in creators:
            if (tag.group, tag.element) not in kept_blocks:
                del ds[tag]


def _raw_times_valid(ds: Dataset, tag: BaseTag) -> bool:
    raw = ds.get_item(tag)
    if not isinstance(raw, RawDataElement) or not isinstance(raw.value, bytes):
        return False
    try:
        text = raw.value.decode("ascii")
    except UnicodeDecodeError:
        return False
    return all(valid_tm(v) is not None for v in text.rstrip(" \x00").split("\\"))


def _class_like(keyword: str) -> bool:
    """UIDs naming a class, syntax or scheme, not an instance: never remapped."""
    return keyword.endswith(("ClassUID", "SyntaxUID", "SchemeUID")) or keyword in {
        "SOPClassesInStudy",
        "MappingResourceUID",
        "ContextGroupExtensionCreatorUID",
    }


def _set_patient_id(self: Deidentifier, ds: Dataset, tag: BaseTag, run: _Run) -> None:
    ds[tag].value = run.keys.patient_id


def _set_patient_name(self: Deidentifier, ds: Dataset, tag: BaseTag, run: _Run) -> None:
    ds[tag].value = run.keys.patient_name


def _set_accession(self: Deidentifier, ds: Dataset, tag: BaseTag, run: _Run) -> None:
    original = str(ds[tag].value or "").strip()
    ds[tag].value = "A" + pseudonym(self.secret, "accession", original, 12) if original else ""


#: Keyed pseudonyms (PS3.15 allows a dummy for Z/D; these are stable per patient and key).
_PSEUDONYMS: dict[str, Callable[[Deidentifier, Dataset, BaseTag, _Run], None]] = {
    "PatientID": _set_patient_id,
    "PatientName": _set_patient_name,
    "AccessionNumber": _set_accession,
}
