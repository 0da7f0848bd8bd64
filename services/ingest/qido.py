"""QIDO-RS search over the index (PS3.18 10.6, matching per PS3.4 C.2.2.2).

Pure functions: parameters in, DICOM JSON out. The query is evaluated over the index entries
of the candidate studies; attribute matching supports single values, ``*``/``?`` wildcards,
UID lists (``\\`` or ``,``) and DA/TM/DT ranges.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from radpipe.common.dicomindex import INSTANCE_KEYWORDS, SERIES_KEYWORDS, STUDY_KEYWORDS
from radpipe.common.errors import BadRequest

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
    query = Query(level)
    for key, value in params:
        if key == "includefield":
            for item in value.split(","):
                if item.strip().lower() == "all":
                    query.include_all = True
                elif item.strip():
                    query.include.add(_keyword(item.strip()))
        elif key in ("limit", "offset"):
            if not value.isdigit():
                raise BadRequest(f"{key} must be a non-negative integer, got {value!r}")
            setattr(query, key, int(value))
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false")
        elif key == "orderby":
            continue
        else:
            query.filters[_keyword(key)] = value
    return query


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
    if vr in ("DA", "TM", "DT") and "-" in wanted:
        low, _, high = wanted.partition("-")
        return any(v and (not low or v >= low) and (not high or v <= high) for v in values)
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
