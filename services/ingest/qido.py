"""QIDO-RS search over the index (PS3.18 10.6, matching per PS3.4 C.2.2.2).

Pure functions: parameters in, DICOM JSON out. The query is evaluated over the index entries
of the candidate studies; attribute matching supports single values, ``*``/``?`` wildcards,
UID lists (``\\`` or ``,``) and DA/TM/DT ranges.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from radpipe.common.dicomindex import INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS
from radpipe.common.errors import BadRequest
from radpipe.common.studies import UID_PATTERN

from .retrieve import uid_path

LEVEL_KEYWORDS = {
    "study": STUDY_KEYWORDS,
    "series": ("StudyInstanceUID", *SERIES_KEYWORDS),
    "instance": ("StudyInstanceUID", "SeriesInstanceUID", *INSTANCE_KEYWORDS),
}
COMPUTED = {
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
}
CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "orderby"}


@dataclass
class Query:
    level: str
    filters: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int | None = None
    offset: int = 0


def _keyword(key: str) -> str:
    """A query key (keyword or 8 hex digits) as a keyword; 400 when unknown."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        keyword = keyword_for_tag(int(key, 16))
    else:
        keyword = key if tag_for_keyword(key) is not None else ""
    if not keyword:
        raise BadRequest(f"unknown query key {key!r}: use a DICOM keyword or 8 hex digits")
    return keyword


def parse_query(level: str, params: Iterable[tuple[str, str]]) -> Query:
    """The search parameters of a QIDO-RS request (PS3.18 8.3.4); an unknown key or a value
    its VR does not allow is a bad request (400) naming the parameter."""
    query = Query(level)
    for key, value in params:
        if key == "includefield":
            for item in value.split(","):
                if item.strip().lower() == "all":
                    query.include_all = True
                elif item.strip():
                    query.include.add(_keyword(item.strip()))
        elif key in ("limit", "offset"):
            if not (value.isascii() and value.isdigit()):
                raise BadRequest(f"{key} must be a non-negative integer, got {value!r}")
            setattr(query, key, int(value))
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadRequest(f"fuzzymatching must be true or false, got {value!r}")
        elif key == "orderby":
            continue
        else:
            keyword = _keyword(key)
            if keyword in query.filters:
                raise BadRequest(
                    f"{key} is given twice: send one value (a UID list is one value, "
                    "separated by commas or backslashes)"
                )
            check_value(keyword, value, key)
            query.filters[keyword] = value
    return query


_DA = r"\d{8}"
_TM = r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"
_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_FORMATS = {
    "DA": (re.compile(_DA), "YYYYMMDD"),
    "TM": (re.compile(_TM), "HH[MM[SS[.FFFFFF]]]"),
    "DT": (re.compile(_DT), "YYYY[MM[DD[HH[MM[SS[.FFFFFF]]]]]][&ZZXX]"),
}


def _valid_moment(vr: str, text: str) -> bool:
    """A DA, TM or DT value in its PS3.5 Table 6.2-1 form that names a real date and time."""
    pattern, _ = _FORMATS[vr]
    if not pattern.fullmatch(text):
        return False
    digits = text.split(".")[0]
    if vr == "DT":
        digits = re.split(r"[+-]", digits)[0]
    try:
        if vr in ("DA", "DT"):
            month, day = int(digits[4:6] or 1), int(digits[6:8] or 1)
            datetime.date(int(digits[:4]), month, day)
            digits = digits[8:]
        hour, minute, second = int(digits[:2] or 0), int(digits[2:4] or 0), int(digits[4:6] or 0)
    except ValueError:
        return False
    # PS3.5: SS may be 60 for a leap second.
    return hour < 24 and minute < 60 and second <= 60


def _range(vr: str, value: str) -> tuple[str, str] | None:
    """``a-b``, ``a-`` or ``-b`` split in two, or None for a single value. A DT value may carry
    a ``-ZZXX`` offset: a value that reads as a single DT is one (PS3.4 C.2.2.2.5)."""
    if "-" not in value or (vr == "DT" and _valid_moment("DT", value)):
        return None
    if vr != "DT":
        low, _, high = value.partition("-")
        return low, high
    # The range's hyphen is the one whose sides are both valid (or empty) DT values.
    for index, char in enumerate(value):
        if char == "-":
            low, high = value[:index], value[index + 1 :]
            if all(not side or _valid_moment("DT", side) for side in (low, high)):
                return low, high
    return value, ""  # reported as malformed by the caller


def check_value(keyword: str, value: str, key: str) -> None:
    """400 unless ``value`` is a matching key value for ``keyword``'s VR (PS3.18 8.3.4.1,
    PS3.4 C.2.2.2): dates, times and date-times as single values or ranges with the low end
    not after the high end; UIDs as a list of valid UIDs. Empty means universal matching."""
    if value == "":
        return
    vr = dictionary_VR(keyword)
    if vr in _FORMATS:
        _, form = _FORMATS[vr]
        sides = _range(vr, value)
        if sides is None:
            if not _valid_moment(vr, value):
                raise BadRequest(
                    f"{key}={value!r} is not a valid {vr} value: use {form}, or a range "
                    f"a-b, a- or -b of them"
                )
            return
        low, high = sides
        if not (low or high) or not all(not s or _valid_moment(vr, s) for s in (low, high)):
            raise BadRequest(
                f"{key}={value!r} is not a valid {vr} range: use a-b, a- or -b, each {form}"
            )
        if low and high and _after(_moment_key(vr, low), _moment_key(vr, high)):
            raise BadRequest(f"{key}={value!r} is a reversed range: the start is after the end")
    elif vr == "UI":
        uids = [u.strip() for u in re.split(r"[\\,]", value)]
        bad = [u for u in uids if len(u) > 64 or not UID_PATTERN.fullmatch(u)]
        if bad:
            raise BadRequest(
                f"{key}={value!r}: {bad[0]!r} is not a UID (digits and dots, at most 64 "
                "characters); separate several with commas or backslashes"
            )


def _after(first: str, second: str) -> bool:
    """Whether ``first`` is later than ``second`` at the precision both give."""
    size = min(len(first), len(second))
    return first[:size] > second[:size]


def _moment_key(vr: str, text: str) -> str:
    """A sortable form of a DA/TM/DT value (offset ignored, missing components as lowest)."""
    digits = re.split(r"[+-]", text)[0] if vr == "DT" else text
    whole, _, fraction = digits.partition(".")
    return whole + ("." + fraction if fraction else "")


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
        re.IGNORECASE | re.DOTALL,
    )


def matches(keyword: str, wanted: str, actual: Any) -> bool:
    """One attribute against one query value (empty query value matches everything)."""
    if wanted == "":
        return True
    values = actual if isinstance(actual, list) else [actual]
    values = ["" if v is None else str(v) for v in values]
    vr = dictionary_VR(keyword)
    if vr == "UI":
        wanted_uids = {u.strip() for u in re.split(r"[\\\\,]", wanted) if u.strip()}
        return any(v in wanted_uids for v in values)
    if vr in _FORMATS and (sides := _range(vr, wanted)) is not None:
        low, high = (_moment_key(vr, side) for side in sides)
        return any(
            not (low and _after(low, key)) and not (high and _after(key, high))
            for key in (_moment_key(vr, v) for v in values if v)
        )
    if "*" in wanted or "?" in wanted:
        pattern = _wildcard(wanted)
        return any(pattern.fullmatch(v) for v in values)
    if vr == "PN":
        return any(v.lower() == wanted.lower() for v in values)
    return any(v == wanted for v in values)


def aggregate(entries: list[dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """Index entries -> one attribute dict per study, series or instance."""
    key = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}.get(level)
    if key is None:
        return [dict(e["attributes"]) for e in entries]
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(entry["attributes"].get(key, ""), []).append(entry["attributes"])
    results = []
    for members in groups.values():
        merged = dict(members[0])
        if level == "study":
            merged["ModalitiesInStudy"] = sorted({m.get("Modality") or "" for m in members} - {""})
            merged["NumberOfStudyRelatedSeries"] = len(
                {m.get("SeriesInstanceUID") for m in members}
            )
            merged["NumberOfStudyRelatedInstances"] = len(members)
        else:
            merged["NumberOfSeriesRelatedInstances"] = len(members)
        results.append(merged)
    return results


def search(entries: list[dict[str, Any]], query: Query, base_url: str) -> list[dict[str, Any]]:
    """Filter, page and render the matching objects as DICOM JSON."""
    rows = aggregate(entries, query.level)
    for keyword, wanted in query.filters.items():
        if keyword == "ModalitiesInStudy":
            rows = [r for r in rows if matches("Modality", wanted, r.get(keyword, []))]
        else:
            rows = [r for r in rows if matches(keyword, wanted, r.get(keyword))]
    rows.sort(
        key=lambda r: (
            str(r.get("StudyDate") or ""),
            str(r.get("SeriesNumber") or ""),
            str(r.get("InstanceNumber") or ""),
        )
    )
    rows = rows[query.offset :]
    if query.limit is not None:
        rows = rows[: query.limit]
    return [_render(row, query, base_url) for row in rows]


def _render(row: dict[str, Any], query: Query, base_url: str) -> dict[str, Any]:
    wanted = set(LEVEL_KEYWORDS[query.level]) | set(query.filters) | query.include
    wanted |= {k for k in COMPUTED if k in row}
    if query.include_all:
        wanted |= set(row)
    ds = pydicom.Dataset()
    for keyword in sorted(wanted):
        value = row.get(keyword)
        if keyword in COMPUTED and value is None:
            continue
        setattr(ds, keyword, value)  # None: present and empty, whatever the VR
    ds.RetrieveURL = base_url + uid_path(row, query.level)
    return ds.to_json_dict()
