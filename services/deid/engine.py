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
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_sequence
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian

from radpipe.common.errors import RadpipeError
from radpipe.common.identity import PatientKeys, pseudonym, pseudonymous_uid

from .profile import STANDARD_UID_ROOT, Profile
from .table import OPTIONS, PATTERNS, SAFE_PRIVATE, TABLE
from .text import TextCleaner

IMPLEMENTATION_CLASS_UID = "2.25.302276541947036655349212185420826170493"
IMPLEMENTATION_VERSION = "RADPIPE_020"

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_VALUE_TYPE = BaseTag(0x0040A040)
_METHOD_CODES = BaseTag(0x00120064)
_LOOK_VRS = TEXT_VRS | {"SQ", "UI", "PN", "DA", "DT", "TM", "AS", "UN"}
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "IS", "DS", "AT"})

#: Attributes that are Type 1 where they commonly occur (SR documents, enhanced images), so a
#: combined action with ``D`` gives them a dummy rather than an empty value.
TYPE1 = frozenset(
    {
        "ContentDate",
        "ContentTime",
        "VerifyingObserverName",
        "VerifyingOrganization",
        "VerificationDateTime",
        "ObservationDateTime",
        "AcquisitionDateTime",
        "FrameAcquisitionDateTime",
        "FrameReferenceDateTime",
        "PersonName",
        "Date",
        "Time",
        "DateTime",
        "TextValue",
        "DeviceSerialNumber",
    }
)

#: Coded-entry components (PS3.3 Table 8.8-1): only ever cleaned of the instance's own
#: identifiers, never by pattern (code values such as 113100 look like ids).
CODED = frozenset(
    {
        "CodeValue",
        "LongCodeValue",
        "URNCodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "ContextIdentifier",
        "ContextGroupVersion",
        "MappingResource",
        "MappingResourceName",
    }
)

#: Dummy values per VR (action ``D``); all valid for their VR.
DUMMY: dict[str, Any] = {
    "PN": "ANONYMOUS",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}

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

#: SOP classes whose pixels commonly carry burned-in text or a face (PS3.15 E.3.1 notes).
AT_RISK_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "Video Photographic",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
}
AT_RISK_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES", "GM", "DOC", "SM"})

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")
_TM = re.compile(r"^\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?$")
_AS = re.compile(r"^(\d{3})([DWMY])$")


class Quarantined(RadpipeError):
    """The instance cannot be de-identified safely as configured (e.g. burned-in text)."""

    status = 422


def shift_da(value: str, offset: timedelta) -> str | None:
    """A DA shifted by ``offset``; ``None`` when it is not a valid date (never passed on)."""
    match = _DA.match(value.strip())
    if not match:
        return None
    try:
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None
    return (day + offset).strftime("%Y%m%d")


def shift_dt(value: str, offset: timedelta) -> str | None:
    """A DT shifted by whole days, precision and timezone offset kept (PS3.5 6.2 DT)."""
    match = _DT.match(value.strip())
    if not match:
        return None
    year, month, day, clock, zone = match.groups()
    try:
        start = date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    shifted = (start + offset).strftime("%Y%m%d")
    precision = 4 + (2 if month else 0) + (2 if day else 0)
    return shifted[:precision] + (clock or "") + (zone or "")


def valid_tm(value: str) -> str | None:
    text = value.strip()
    return text if _TM.match(text) else None


def cap_age(value: str) -> str | None:
    """Retain Patient Characteristics: ages above 89 years become ``090Y`` (HIPAA)."""
    match = _AS.match(value.strip())
    if not match:
        return None
    years = int(match[1]) / {"D": 365.25, "W": 52.18, "M": 12, "Y": 1}[match[2]]
    return "090Y" if years > 89 else value.strip()


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


def _resolve(code: str, keyword: str) -> str:
    """A combined action (``X/Z``, ``Z/D``, ``X/Z/D``, ``X/D``, ``X/Z/U*``) for a present
    attribute: keep it conformant rather than remove something a module may require."""
    if "/" not in code:
        return code
    if "U*" in code:
        return "U"
    parts = code.split("/")
    if "D" in parts and (keyword in TYPE1 or "Z" not in parts):
        return "D"
    return "Z"


_RANK = {"K": 3, "C": 2}


def _most_retaining(basic: str, by_option: tuple[str, ...], options: frozenset[str]) -> str:
    """The Basic Profile action, overridden by the most retaining action of an option in use."""
    chosen = basic
    for option, action in zip(OPTIONS, by_option, strict=True):
        if action and option in options and _RANK.get(action, 0) > _RANK.get(chosen, 0):
            chosen = action
    return chosen


def effective_actions(options: frozenset[str]) -> dict[int, str]:
    """Tag -> the action Table E.1-1 prescribes with ``options`` (the most retaining one)."""
    return {
        tag: _resolve(_most_retaining(basic, by_option, options), keyword_for_tag(tag) or "")
        for tag, (_, basic, by_option) in TABLE.items()
    }


def burned_in_risk(ds: Dataset) -> str | None:
    """Why the pixels may carry identity (PS3.15 E.3.1, Clean Pixel Data), or ``None``."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES":
        return "BurnedInAnnotation is YES"
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class in AT_RISK_SOP_CLASSES:
        return f"{AT_RISK_SOP_CLASSES[sop_class]} images often carry burned-in text"
    modality = str(ds.get("Modality", "") or "").upper()
    if modality in AT_RISK_MODALITIES and "PixelData" in ds:
        return f"modality {modality} often carries burned-in text"
    image_type = [str(v).upper() for v in ds.get("ImageType", []) or []]
    if "SCREEN SAVE" in image_type or "DOSE_INFO" in image_type:
        return "a screen capture (dose or annotation screen)"
    return None


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
    texts: list[tuple[DataElement, bool, str]] = field(default_factory=list)

    def remember(self, vr: str, keyword: str, value: Any) -> None:
        for one in value if isinstance(value, list | MultiValue) else [value]:
            if one in (None, ""):
                continue
            if vr == "DA":
                self.values.update(_date_spellings(str(one)))
            elif vr == "PN":
                self.names.add(str(one))
            else:
                self.values.add(str(one))


class Deidentifier:
    """Applies one profile with one secret; reusable across instances and threads."""

    def __init__(self, secret: bytes, profile: Profile) -> None:
        self.secret = secret
        self.profile = profile
        self.options = profile.options
        self._actions = effective_actions(profile.options)
        self._patterns = [
            (mask, value, _resolve(_most_retaining(basic, by_option, self.options), ""))
            for mask, value, _, basic, by_option in PATTERNS
        ]
        self._uids: dict[str, str] = {}
        self._info: dict[int, tuple[str, str, str, bool]] = {}
        self._codes: dict[bool, list[Dataset]] = {}
        self._encoded: dict[tuple[bool, bool], RawDataElement] = {}

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
        original = str(ds.get("PatientID", "") or "").strip()
        if not original:  # no id: the study stands in, so its dates still shift together
            original = "study:" + str(ds.get("StudyInstanceUID", "") or "")
        return PatientKeys.derive(self.secret, original)

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
        cleaner = TextCleaner(run.names.union(extra_names), run.values.union(extra_values))
        for element, patterns, emptied in run.texts:

            def clean(value: str, patterns: bool = patterns, emptied: str = emptied) -> str:
                return cleaner.clean(value, patterns) or (emptied if value.strip() else "")

            element.value = _each(element.value, clean)
        self._file_meta(ds)
        self._markers(ds, pixels_cleaned)
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
        elif vr == "UN" and action == "":
            del ds[tag]  # unreadable, so uncheckable

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

    def _file_meta(self, ds: Dataset) -> None:
        """Rebuild the File Meta Information: no source AE, no private meta (PS3.10 7.1)."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = old.get("TransferSyntaxUID") or ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        if getattr(ds, "preamble", None):
            ds.preamble = b"\x00" * 128  # 128 free bytes (PS3.10 7.1) could carry anything

    def _code_items(self, pixels_cleaned: bool) -> list[Dataset]:
        """The method code items of this profile, built once (shared by every output)."""
        cached = self._codes.get(pixels_cleaned)
        if cached is None:
            cached = []
            for value, meaning in self.profile.method_codes(pixels_cleaned):
                item = Dataset()
                item.add_new(0x00080100, "SH", value)
                item.add_new(0x00080102, "SH", "DCM")
                item.add_new(0x00080104, "LO", meaning)
                cached.append(item)
            self._codes[pixels_cleaned] = cached
        return cached

    def _encoded_codes(self, pixels_cleaned: bool, implicit: bool) -> RawDataElement:
        """The method code sequence as an already-encoded element (copied as is on write)."""
        key = (pixels_cleaned, implicit)
        raw = self._encoded.get(key)
        if raw is None:
            element = DataElement(_METHOD_CODES, "SQ", Sequence(self._code_items(pixels_cleaned)))
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
            write_sequence(buffer, element, [default_encoding])
            value = buffer.getvalue()
            raw = RawDataElement(
                _METHOD_CODES, None if implicit else "SQ", len(value), value, 0, implicit, True
            )
            self._encoded[key] = raw
        return raw

    def _markers(self, ds: Dataset, pixels_cleaned: bool) -> None:
        """PS3.15 E.1.1: Patient Identity Removed, the method and its codes, and
        Longitudinal Temporal Information Modified; earlier methods and codes are kept."""
        ds.add_new(0x00120062, "CS", "YES")
        ours = self.profile.method_text()
        earlier = ds.get("DeidentificationMethod")
        if earlier:
            values = [earlier] if isinstance(earlier, str) else [str(m) for m in earlier]
            methods = [m for m in values if m and m != ours] + [ours]
        else:
            methods = [ours]
        ds.add_new(0x00120063, "LO", methods if len(methods) > 1 else ours)
        syntax = ds.file_meta.TransferSyntaxUID
        if _METHOD_CODES not in ds and syntax.is_little_endian and not syntax.is_deflated:
            # The usual case: our items only, already encoded once for this profile.
            ds[_METHOD_CODES] = self._encoded_codes(pixels_cleaned, syntax.is_implicit_VR)
            items = []
        else:
            items = list(ds.get("DeidentificationMethodCodeSequence", []) or [])
        present = {
            (str(i.get("CodeValue", "")), str(i.get("CodingSchemeDesignator", ""))) for i in items
        }
        if _METHOD_CODES not in ds or items:
            items += [
                item
                for item in self._code_items(pixels_cleaned)
                if (item[0x00080100].value, "DCM") not in present
            ]
            ds.add_new(_METHOD_CODES, "SQ", Sequence(items))
        if "rtn_long_modif_dates" in self.options:
            marker = "MODIFIED"
        elif "rtn_long_full_dates" in self.options:
            marker = "UNMODIFIED"
        else:
            marker = "REMOVED"
        ds.add_new(0x00280303, "CS", marker)
        if pixels_cleaned:
            ds.add_new(0x00280301, "CS", "NO")


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


def _date_spellings(value: str) -> Iterable[str]:
    match = _DA.match(value.strip())
    if match:
        y, m, d = match.groups()
        yield from (f"{y}{m}{d}", f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}")
        yield from (f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}")


def clean_pixels(ds: Dataset, regions: Iterable[tuple[int, int, int, int]]) -> None:
    """A configured pixel cleaner (Clean Pixel Data, 113101): blank the regions in every frame.

    The pixels are decoded and written back uncompressed (Explicit VR Little Endian).
    """
    pixels = np.array(ds.pixel_array)  # writable copy
    frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]
    for x0, y0, x1, y1 in regions:
        frames[:, y0:y1, x0:x1, ...] = 0
    ds.PixelData = pixels.tobytes()
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if "PhotometricInterpretation" in ds and str(ds.PhotometricInterpretation).startswith(
            "YBR"
        ):
            ds.PhotometricInterpretation = "RGB"
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
