"""Table E.1-1 actions as applied (PS3.15 E.1.1): the most retaining action of the options in
use, combined codes resolved so output stays conformant, and the dummy value of each VR."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import keyword_for_tag

from .table import OPTIONS, TABLE

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


def resolve(code: str, keyword: str) -> str:
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


def most_retaining(basic: str, by_option: tuple[str, ...], options: frozenset[str]) -> str:
    """The Basic Profile action, overridden by the most retaining action of an option in use."""
    chosen = basic
    for option, action in zip(OPTIONS, by_option, strict=True):
        if action and option in options and _RANK.get(action, 0) > _RANK.get(chosen, 0):
            chosen = action
    return chosen


def effective_actions(options: frozenset[str]) -> dict[int, str]:
    """Tag -> the action Table E.1-1 prescribes with ``options`` (the most retaining one)."""
    return {
        tag: resolve(most_retaining(basic, by_option, options), keyword_for_tag(tag) or "")
        for tag, (_, basic, by_option) in TABLE.items()
    }
