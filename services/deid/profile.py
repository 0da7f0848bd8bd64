"""What the de-identifier keeps, replaces and removes (PS3.15 Annex E, Basic Profile).

This is the narrow first profile: every free-text, person-name and identifying element is
blanked or replaced unless it is on :data:`KEEP_TEXT`; private attributes, overlays, curves and
icon images are removed; UIDs are remapped; dates are shifted per patient. The full Table
E.1-1 with its options replaces it in the de-identification issue.
"""

from __future__ import annotations

#: Text elements (LO, SH, ST, LT, UT, UC) that carry no identity and stay as they are:
#: coded-entry components (PS3.3 Table 8.8-1) and device/technique descriptions.
KEEP_TEXT = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "ContextIdentifier",
        "ContextGroupVersion",
        "MappingResource",
        "Manufacturer",
        "ManufacturerModelName",
        "ConvolutionKernel",
        "WindowCenterWidthExplanation",
        "RescaleType",
        "DeidentificationMethod",
    }
)

#: Text VRs that may hold free text or identifiers.
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "AE", "UR"})

#: Elements removed outright wherever they occur (PS3.15 E.1-1 action X).
REMOVE = frozenset(
    {
        "OtherPatientIDsSequence",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "OriginalAttributesSequence",
        "RequestAttributesSequence",
        "IconImageSequence",
        "ReferencedPatientSequence",
        "ReferencedPatientPhotoSequence",
        "DigitalSignaturesSequence",
        "MACParametersSequence",
        "EncryptedAttributesSequence",
    }
)

#: Elements emptied (action Z) rather than shifted: they identify by themselves.
EMPTY_DATES = frozenset({"PatientBirthDate", "PatientBirthTime"})

#: DICOM's own UID root: SOP classes, transfer syntaxes, coding schemes are not identifying.
STANDARD_UID_ROOT = "1.2.840.10008."

METHOD = "Radpipe 0.1: PS3.15 Basic Profile, Retain Modified Dates"
METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)
