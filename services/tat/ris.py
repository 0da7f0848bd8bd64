"""RIS CSV exports: column mapping, row-by-row validation and the data-quality report.

Pure functions (no store): :func:`parse` turns the bytes of an export into clean rows and
flagged rows, each flagged row with every reason found. Nothing is dropped silently: a row is
either clean or flagged. Accession numbers leave this module only as keyed pseudonyms (the
de-identifier's, see ``common/tat.py``); ages are checked and then discarded.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from radpipe.common.errors import BadRequest

#: Fields read from an export, and the headers common RIS exports use for them (compared
#: lower-case with everything but letters and digits removed).
ALIASES: dict[str, tuple[str, ...]] = {
    "accession": (
        "accession",
        "accessionnumber",
        "accessionno",
        "accno",
        "accnum",
        "acc",
        "accessionid",
        "examaccession",
        "fillerordernumber",
    ),
    "modality": ("modality", "mod", "modalitycode", "modalitytype", "exammodality"),
    "priority": ("priority", "urgency", "exampriority", "orderpriority", "stat"),
    "ordered_at": (
        "ordered",
        "ordertime",
        "orderdatetime",
        "orderdate",
        "orderedat",
        "ordereddatetime",
        "orderdttm",
        "requesttime",
        "requestdatetime",
        "orderplaced",
    ),
    "exam_complete_at": (
        "examcomplete",
        "examcompleted",
        "examcompletetime",
        "examcompletedatetime",
        "examcompletedat",
        "examend",
        "examendtime",
        "completed",
        "completetime",
        "completeddatetime",
        "performedend",
        "examcompleteddttm",
    ),
    "final_report_at": (
        "finalreport",
        "finalreporttime",
        "finalreportdatetime",
        "finalized",
        "finalizedtime",
        "finaldatetime",
        "reportfinal",
        "reportfinalized",
        "reportfinalizedtime",
        "reportsigned",
        "signedtime",
        "finalreportat",
        "finaldttm",
    ),
    "age": ("age", "patientage", "ptage", "ageyears"),
}
REQUIRED = ("accession", "ordered_at", "exam_complete_at")
TIME_FIELDS = ("ordered_at", "exam_complete_at", "final_report_at")
TIME_LABELS = {
    "ordered_at": "order time",
    "exam_complete_at": "exam complete time",
    "final_report_at": "final report time",
}

#: DICOM modality values (PS3.3 C.7.3.1.1.1, current and retired ones still exported by RIS).
MODALITIES = frozenset(
    {
        "AR",
        "AS",
        "ASMT",
        "AU",
        "BDUS",
        "BI",
        "BMD",
        "CD",
        "CF",
        "CP",
        "CR",
        "CS",
        "CT",
        "DD",
        "DF",
        "DG",
        "DM",
        "DOC",
        "DS",
        "DX",
        "EC",
        "ECG",
        "EPS",
        "ES",
        "FA",
        "FID",
        "FS",
        "GM",
        "HC",
        "HD",
        "IO",
        "IOL",
        "IVOCT",
        "IVUS",
        "KER",
        "KO",
        "LEN",
        "LP",
        "LS",
        "MA",
        "MG",
        "MR",
        "MS",
        "NM",
        "OAM",
        "OCT",
        "OP",
        "OPM",
        "OPR",
        "OPT",
        "OPV",
        "OSS",
        "OT",
        "PLAN",
        "PR",
        "PT",
        "PX",
        "REG",
        "RESP",
        "RF",
        "RG",
        "RTDOSE",
        "RTIMAGE",
        "RTPLAN",
        "RTRECORD",
        "RTSTRUCT",
        "RWV",
        "SEG",
        "SM",
        "SMR",
        "SR",
        "SRF",
        "ST",
        "STAIN",
        "TG",
        "US",
        "VA",
        "VF",
        "XA",
        "XC",
    }
)
#: RIS priority spellings -> the three levels the cuts use (HL7 v2 ORC-7/TQ1-9: S, A, R).
PRIORITIES: dict[str, str] = {
    "STAT": "STAT",
    "S": "STAT",
    "EMERGENCY": "STAT",
    "1": "STAT",
    "URGENT": "URGENT",
    "ASAP": "URGENT",
    "A": "URGENT",
    "U": "URGENT",
    "2": "URGENT",
    "ROUTINE": "ROUTINE",
    "R": "ROUTINE",
    "ELECTIVE": "ROUTINE",
    "3": "ROUTINE",
    "": "unknown",
}
#: A time further ahead than this (clock skew) is a future time.
FUTURE_SLACK = timedelta(minutes=5)
MAX_AGE_YEARS = 130
MAX_BYTES = 64 * 1024**2

_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %I:%M:%S %p",
    "%m/%d/%Y %I:%M %p",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
)
_AGE = re.compile(r"^(-?\d{1,4})\s*([DWMY]?)$", re.IGNORECASE)


def _norm(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", header.lower())


def parse_time(text: str, zone: tzinfo) -> datetime | None:
    """A RIS timestamp as an aware UTC time; local times are read in the site's ``zone``.

    ISO 8601 (with or without an offset), ``YYYY-MM-DD HH:MM[:SS]``, US ``MM/DD/YYYY``,
    European ``DD.MM.YYYY`` and DICOM ``YYYYMMDDHHMM[SS]``; ``None`` when none fits.
    """
    text = text.strip()
    if not text:
        return None
    moment: datetime | None = None
    if text.isdigit():  # DICOM DT without separators: strptime would read widths loosely
        if len(text) not in (12, 14):
            return None
        text = f"{text[:4]}-{text[4:6]}-{text[6:8]} {text[8:10]}:{text[10:12]}:{text[12:] or '00'}"
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        for fmt in _FORMATS:
            try:
                moment = datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
    if moment is None:
        return None
    if moment.tzinfo is None:
        # zoneinfo resolves a time repeated at fall-back with fold=0 (the first, DST one),
        # and one skipped at spring-forward as if the clock had not yet moved (PEP 495).
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def age_years(text: str) -> float | None:
    """An age as years: a number, or DICOM AS (``042Y``, ``006M``, ``003W``, ``010D``)."""
    found = _AGE.match(text.strip())
    if found is None:
        return None
    number, unit = int(found.group(1)), found.group(2).upper() or "Y"
    return number / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[unit]


@dataclass
class ColumnMap:
    """Which CSV column feeds each field (index), and the headers not used."""

    columns: dict[str, int]
    headers: list[str]
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": {f: self.headers[i] for f, i in self.columns.items()},
            "ignored": self.ignored,
        }


def map_columns(headers: list[str], override: Mapping[str, str] | None = None) -> ColumnMap:
    """Match ``headers`` to fields by alias (or by ``override``: field -> header)."""
    normalised = [_norm(h) for h in headers]
    columns: dict[str, int] = {}
    for name, header in (override or {}).items():
        if name not in ALIASES:
            raise BadRequest(f"mapping names an unknown field {name!r}; known: {sorted(ALIASES)}")
        if _norm(header) not in normalised:
            raise BadRequest(f"mapping: the file has no column {header!r} (for {name})")
        columns[name] = normalised.index(_norm(header))
    for name, aliases in ALIASES.items():
        if name in columns:
            continue
        for alias in aliases:
            if alias in normalised and normalised.index(alias) not in columns.values():
                columns[name] = normalised.index(alias)
                break
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise BadRequest(
            f"the CSV has no column for {', '.join(missing)} (headers: {', '.join(headers)}); "
            "rename the columns or send a `mapping` such as "
            '{"accession": "Acc #", "ordered_at": "Order Time"}'
        )
    used = set(columns.values())
    return ColumnMap(columns, headers, [h for i, h in enumerate(headers) if i not in used])


@dataclass
class Row:
    """One validated row: pseudonymous accession, normalised values, UTC times."""

    line: int
    accession: str  # keyed pseudonym, never the original
    modality: str
    priority: str
    times: dict[str, datetime | None]
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "accession": self.accession,
            "modality": self.modality,
            "priority": self.priority,
            **self.times,
            "reasons": self.reasons,
        }


@dataclass
class Parsed:
    mapping: ColumnMap
    clean: list[Row]
    flagged: list[Row]
    rows: int


def _decode(data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def parse(
    data: bytes,
    pseudonymize: Callable[[str], str],
    zone: tzinfo,
    now: datetime,
    override: Mapping[str, str] | None = None,
) -> Parsed:
    """Validate every row of a RIS export; see the module docstring.

    Raises ``BadRequest`` (nothing is stored) when the file is empty, too large, not CSV, or
    lacks a required column.
    """
    if not data.strip():
        raise BadRequest("the RIS file is empty; export the exams as CSV with a header row")
    if len(data) > MAX_BYTES:
        raise BadRequest(f"the RIS file is over {MAX_BYTES // 1024**2} MiB; split the export")
    text = _decode(data)
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        headers = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise BadRequest(f"the RIS file is not CSV ({exc}); export it as CSV") from None
    mapping = map_columns([h.strip() for h in headers], override)
    clean: list[Row] = []
    flagged: list[Row] = []
    first_line: dict[str, int] = {}
    rows = 0
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        rows += 1
        row = _row(number, cells, mapping, pseudonymize, zone, now)
        if row.accession:
            if row.accession in first_line:
                first = first_line[row.accession]
                row.reasons.append(f"duplicate accession (first on line {first})")
            else:
                first_line[row.accession] = number
        (flagged if row.reasons else clean).append(row)
    return Parsed(mapping, clean, flagged, rows)


def _row(
    number: int,
    cells: list[str],
    mapping: ColumnMap,
    pseudonymize: Callable[[str], str],
    zone: tzinfo,
    now: datetime,
) -> Row:
    def cell(name: str) -> str:
        index = mapping.columns.get(name)
        return cells[index].strip() if index is not None and index < len(cells) else ""

    reasons = []
    if len(cells) != len(mapping.headers):
        reasons.append(f"{len(cells)} cells where the header has {len(mapping.headers)}")
    accession = cell("accession")
    if not accession:
        reasons.append("missing accession number")
    modality = cell("modality").upper()
    if "modality" in mapping.columns and modality not in MODALITIES:
        reasons.append(f"unknown modality {modality!r}" if modality else "missing modality")
    raw_priority = cell("priority").upper()
    priority = PRIORITIES.get(raw_priority, raw_priority)
    times: dict[str, datetime | None] = {}
    for name in TIME_FIELDS:
        text = cell(name)
        times[name] = parse_time(text, zone) if text else None
        label = TIME_LABELS[name]
        if not text:
            if name in REQUIRED:
                reasons.append(f"missing {label}")
        elif times[name] is None:
            reasons.append(f"unparseable {label}")
        elif times[name] > now + FUTURE_SLACK:  # type: ignore[operator]
            reasons.append(f"{label} in the future")
    present = [(n, t) for n, t in times.items() if t is not None]
    for (a, ta), (b, tb) in itertools.pairwise(present):
        if tb < ta:
            reasons.append(f"out of order: {TIME_LABELS[b]} before {TIME_LABELS[a]}")
    if "age" in mapping.columns and (text := cell("age")):
        years = age_years(text)
        if years is None or not 0 <= years <= MAX_AGE_YEARS:
            reasons.append("impossible age" if years is not None else "unparseable age")
    return Row(
        line=number,
        accession=pseudonymize(accession) if accession else "",
        modality=modality or "unknown",
        priority=priority or "unknown",
        times=times,
        reasons=reasons,
    )
