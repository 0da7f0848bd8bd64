"""QIDO-RS search over the index (PS3.18 10.6, matching per PS3.4 C.2.2.2).

The query runs in the document store (:func:`find`): study and series searches read one
summary document per study or series (``dicomindex``), instance searches the index, and every
form of matching (single values, ``*``/``?`` wildcards, UID lists (``\\`` or ``,``), DA/TM/DT
ranges) becomes an indexed condition; ordering, ``offset`` and ``limit`` (at most
``RADPIPE_QIDO_MAX_RESULTS``) too. :func:`matches` is the reference semantics, kept for the rare
forms the store does not express. Wildcards match in linear time everywhere (:func:`glob_match`,
and an atomic-group ``$regex`` for the stores): no pattern can make a search backtrack.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from radpipe.common.dicomindex import (
    INDEX,
    INSTANCE_KEYWORDS,
    MODALITY_FIELD,
    SERIES_KEYWORDS,
    SERIES_SUMMARIES,
    STUDY_KEYWORDS,
    STUDY_SUMMARIES,
)
from radpipe.common.errors import BadRequest, NotFound
from radpipe.common.ports import DocumentStore
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


def normal_wildcard(pattern: str) -> str:
    """``pattern`` with each run of ``*`` and ``?`` rewritten as its ``?`` then at most one
    ``*`` (``*?*?`` is ``??*``): the same strings match, and no matcher meets two stars in a
    row."""
    out: list[str] = []
    run: list[str] = []
    for char in pattern + "\x00":
        if char in "*?":
            run.append(char)
            continue
        if run:
            out.append("?" * run.count("?") + ("*" if "*" in run else ""))
            run = []
        out.append(char)
    return "".join(out[:-1])


def _segments(pattern: str) -> list[str]:
    """The literal-and-``?`` segments between the stars of a normalised pattern."""
    return normal_wildcard(pattern).split("*")


class Steps:
    """Counts the character comparisons a match makes (tests bound the work, not the time)."""

    def __init__(self) -> None:
        self.count = 0


def _at(segment: str, text: str, start: int, steps: Steps | None) -> bool:
    """Whether ``segment`` (literals and ``?``) matches ``text`` at ``start``."""
    if start + len(segment) > len(text):
        return False
    for offset, char in enumerate(segment):
        if steps is not None:
            steps.count += 1
        if char != "?" and char != text[start + offset]:
            return False
    return True


def glob_match(pattern: str, text: str, steps: Steps | None = None) -> bool:
    """DICOM wildcard matching (PS3.4 C.2.2.2.4: ``*`` any run, ``?`` one character) of the
    whole of ``text``, case-sensitive; compare folded text for case-insensitive matching.

    Greedy, with no backtracking: the first segment must start the text and the last end it,
    and each middle segment is matched at its leftmost place after the previous one (a later
    place never leaves more room for the rest). At most ``len(text) x len(pattern)``
    comparisons, where a regular expression with several ``.*`` backtracks exponentially
    (eight ``*?`` pairs took 0.9 s on one 30-character value).
    """
    segments = _segments(pattern)
    if len(segments) == 1:
        return len(segments[0]) == len(text) and _at(segments[0], text, 0, steps)
    first, *middle, last = segments
    if len(first) + len(last) > len(text) or not _at(first, text, 0, steps):
        return False
    if not _at(last, text, len(text) - len(last), steps):
        return False
    at, end = len(first), len(text) - len(last)
    for segment in middle:
        while at + len(segment) <= end and not _at(segment, text, at, steps):
            at += 1
        if at + len(segment) > end:
            return False
        at += len(segment)
    return True


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
        folded = wanted.upper()
        return any(glob_match(folded, v.upper()) for v in values)
    if vr == "PN":
        return any(v.lower() == wanted.lower() for v in values)
    return any(v == wanted for v in values)


#: The most results one search returns when the caller names no maximum
#: (``RADPIPE_QIDO_MAX_RESULTS``'s default): a larger ``limit``, or none, is cut to it and the
#: response carries :func:`truncated_warning` (PS3.18 8.3.4.4, 10.6.3.3); page with ``offset``.
MAX_RESULTS = 1000


def truncated_warning(host: str) -> str:
    """The ``Warning`` header value of a cut result, as PS3.18 10.6.3.3.1 words it, from the
    server ``host`` (``host[:port]`` of ``RADPIPE_PUBLIC_URL``)."""
    return (
        f'299 {host}: "The number of results exceeded the maximum supported by the server. '
        'Additional results can be requested."'
    )


_COLLECTION = {"study": STUDY_SUMMARIES, "series": SERIES_SUMMARIES, "instance": INDEX}
_OWN_UID = {
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}
#: Result order, each answered by an index (``StudyRepository.ensure_indexes``).
ORDER = {
    "study": [("attributes.StudyDate", 1), ("_id", 1)],
    "series": [("attributes.StudyDate", 1), ("attributes.SeriesNumber", 1), ("_id", 1)],
    "instance": [
        ("attributes.StudyDate", 1),
        ("attributes.SeriesNumber", 1),
        ("attributes.InstanceNumber", 1),
        ("_id", 1),
    ],
}
_NUMBERS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}
_RESIDUAL = object()  # a condition the store does not express: matched after reading


def _wildcard_regex(wanted: str) -> str:
    """A DICOM wildcard value as the anchored ``$regex`` the stores answer from an index.

    Linear, with no backtracking: ``^first(?>.*?middle)...(?>.*?middle).*last$``, each
    middle segment matched at its leftmost place inside an atomic group (PCRE, Python 3.11),
    which is :func:`glob_match`'s greedy algorithm; ``?`` is ``.``, literals are escaped.
    The embedded store turns the same form into ``GLOB`` (``sqlquery``).
    """

    def literal(segment: str) -> str:
        return "".join("." if c == "?" else re.escape(c) for c in segment)

    segments = _segments(wanted)
    if len(segments) == 1:
        return f"^{literal(segments[0])}$"
    first, *middle, last = segments
    groups = "".join(f"(?>.*?{literal(segment)})" for segment in middle)
    return f"^{literal(first)}{groups}.*{literal(last)}$"


def _store_condition(level: str, keyword: str, wanted: str) -> Any:
    """``(field, spec)`` matching ``keyword`` as :func:`matches` does, ``None`` for universal
    matching, or ``_RESIDUAL``."""
    if wanted == "" or (set(wanted) == {"*"}):
        return None
    if keyword == "ModalitiesInStudy":
        exact = level == "study" and "*" not in wanted and "?" not in wanted
        if exact and MODALITY_FIELD.match(wanted):
            return f"has_modality.{wanted}", True
        return _RESIDUAL
    if keyword in COMPUTED:
        return _RESIDUAL
    field = "_id" if _OWN_UID[level] == keyword else f"attributes.{keyword}"
    vr = dictionary_VR(keyword)
    if vr == "UI":
        uids = sorted({u.strip() for u in re.split(r"[\\,]", wanted) if u.strip()})
        return field, (uids[0] if len(uids) == 1 else {"$in": uids})
    if vr in _FORMATS and (sides := _range(vr, wanted)) is not None:
        low, high = (_moment_key(vr, side) for side in sides)
        spec = {"$gte": low} if low else {}
        if high:  # "~" sorts after digits: a value is in when its first len(high) are <= high
            spec["$lte"] = high + "~"
        return field, spec
    if "*" in wanted or "?" in wanted:
        return f"folded.{keyword}", {"$regex": _wildcard_regex(wanted.upper())}
    if vr == "PN" or vr in _NUMBERS:  # person names case-insensitive; numbers as text
        return f"folded.{keyword}", wanted.upper()
    return field, wanted


def store_filter(
    query: Query, study: str | None = None, series: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The store filter for ``query`` under a study/series, and the filters left to match
    after reading (rare forms: wildcards in ModalitiesInStudy, computed attributes)."""
    filter: dict[str, Any] = {}
    if study:
        filter["_id" if query.level == "study" else "attributes.StudyInstanceUID"] = study
    if series:
        filter["_id" if query.level == "series" else "attributes.SeriesInstanceUID"] = series
    residual: dict[str, str] = {}
    for keyword, wanted in query.filters.items():
        condition = _store_condition(query.level, keyword, wanted)
        if condition is None:
            continue
        if condition is _RESIDUAL or condition[0] in filter:
            residual[keyword] = wanted
            continue
        filter[condition[0]] = condition[1]
    return filter, residual


def _row(doc: dict[str, Any], level: str, hidden: set[str]) -> dict[str, Any]:
    """A summary or index document as the attributes of one result (computed ones added)."""
    row = dict(doc.get("attributes") or {})
    if level == "study":
        parts = [p for p in (doc.get("by_bucket") or {}).values() if p.get("bucket") not in hidden]
        modalities = {m for p in parts for m in p.get("modalities", [])} - {""}
        row["ModalitiesInStudy"] = sorted(modalities)
        row["NumberOfStudyRelatedSeries"] = len({s for p in parts for s in p.get("series", [])})
        row["NumberOfStudyRelatedInstances"] = sum(p.get("instances", 0) for p in parts)
    elif level == "series":
        row["NumberOfSeriesRelatedInstances"] = doc.get("instances", 0)
    return row


def _holds(doc: dict[str, Any], bucket: str) -> bool:
    """Whether an index entry, or a summary's parts, lie in ``bucket``."""
    parts = (doc.get("by_bucket") or {}).values()
    return doc.get("bucket") == bucket or any(p.get("bucket") == bucket for p in parts)


def _matches_all(row: dict[str, Any], filters: dict[str, str]) -> bool:
    for keyword, wanted in filters.items():
        actual = row.get(keyword, []) if keyword == "ModalitiesInStudy" else row.get(keyword)
        if not matches("Modality" if keyword == "ModalitiesInStudy" else keyword, wanted, actual):
            return False
    return True


def find(
    documents: DocumentStore,
    query: Query,
    study: str | None = None,
    series: str | None = None,
    *,
    hide_results: Callable[[set[str]], set[str]] | None = None,
    results_bucket: str | None = None,
    max_results: int | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """The rows of one page, in :data:`ORDER`, and whether ``max_results`` (default
    :data:`MAX_RESULTS`) cut it.

    Filter, order, offset and limit run in the store over the summaries (study, series) or the
    index (instance). ``hide_results(study_ids)`` names the studies whose objects in
    ``results_bucket`` the caller may not see yet; they are left out after reading (a page
    may then be shorter than ``limit``), and a search under such a series is NotFound.
    """
    if series and hide_results is not None and results_bucket is not None:
        summary = documents.collection(SERIES_SUMMARIES).find_one({"_id": series}) or {}
        if summary.get("bucket") == results_bucket and hide_results({summary["study_id"]}):
            raise NotFound("no such study, series or instance in the de-identified store")
    filter, residual = store_filter(query, study, series)
    cap = MAX_RESULTS if max_results is None else max_results
    size = cap if query.limit is None else min(query.limit, cap)
    if size == 0:
        return [], False
    cursor = documents.collection(_COLLECTION[query.level]).find(filter).sort(ORDER[query.level])
    docs = list(cursor if residual else cursor.skip(query.offset).limit(size + 1))
    hide: set[str] = set()
    if hide_results is not None and results_bucket is not None:
        with_results = {d.get("study_id", "") for d in docs if _holds(d, results_bucket)}
        hide = hide_results(with_results) if with_results else set()
        docs = [
            d for d in docs if not (d.get("bucket") == results_bucket and d.get("study_id") in hide)
        ]
    hidden_parts = {results_bucket} if hide and results_bucket else set()
    rows = [
        _row(d, query.level, hidden_parts if d.get("study_id") in hide else set()) for d in docs
    ]
    if residual:
        rows = [r for r in rows if _matches_all(r, residual)][query.offset :]
    elif hide and "ModalitiesInStudy" in query.filters:  # matched on a hidden result's modality
        rows = [
            r
            for r in rows
            if _matches_all(r, {"ModalitiesInStudy": query.filters["ModalitiesInStudy"]})
        ]
    more = len(rows) > size
    truncated = more and (query.limit is None or query.limit > cap)
    return rows[:size], truncated


def search(
    documents: DocumentStore,
    query: Query,
    base_url: str,
    study: str | None = None,
    series: str | None = None,
    **visibility: Any,
) -> tuple[list[dict[str, Any]], bool]:
    """The matching objects as DICOM JSON, and whether the server maximum cut them."""
    rows, truncated = find(documents, query, study, series, **visibility)
    return [_render(row, query, base_url) for row in rows], truncated


def _render(row: dict[str, Any], query: Query, base_url: str) -> dict[str, Any]:
    """One result as DICOM JSON (PS3.18 F.2): the level's attributes, the query keys, the
    ``includefield`` ones and the Retrieve URL; an attribute without a value is present and
    empty, whatever its VR."""
    wanted = set(LEVEL_KEYWORDS[query.level]) | set(query.filters) | query.include
    wanted |= {k for k in COMPUTED if k in row}
    if query.include_all:
        wanted |= set(row)
    out = {}
    for keyword in wanted:
        value = row.get(keyword)
        if keyword in COMPUTED and value is None:
            continue
        tag, attribute = json_attribute(keyword, value)
        out[tag] = attribute
    tag, attribute = json_attribute("RetrieveURL", base_url + uid_path(row, query.level))
    out[tag] = attribute
    return out


@functools.cache
def _tag_and_vr(keyword: str) -> tuple[str, str]:
    return f"{tag_for_keyword(keyword):08X}", dictionary_VR(keyword)


_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI"})
_TEXT_VRS |= {"UR", "UT"}
_INT_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})


def json_attribute(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """``(tag, attribute object)`` of one indexed value, as pydicom's ``to_json_dict`` writes
    it; built directly for the value kinds the index holds (a pydicom Dataset per result cost
    most of a search), through pydicom for anything else."""
    tag, vr = _tag_and_vr(keyword)
    if value is None or value == "" or value == []:
        return tag, {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if all(type(v) is str and "\\" not in v for v in values):
        if vr in _TEXT_VRS:
            return tag, {"vr": vr, "Value": list(values)}
        if vr == "PN" and not any("=" in v for v in values):
            return tag, {"vr": vr, "Value": [{"Alphabetic": v} for v in values]}
    elif vr in _INT_VRS and all(type(v) is int for v in values):
        return tag, {"vr": vr, "Value": list(values)}
    ds = pydicom.Dataset()
    setattr(ds, keyword, value)
    return tag, ds.to_json_dict()[tag]
