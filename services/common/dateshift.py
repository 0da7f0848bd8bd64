"""The keyed date shift of PS3.15 E.3.6 (Retain Longitudinal Temporal Information), both ways.

One shift serves both directions: the de-identifier moves a patient's dates by its keyed
offset, the exporter moves a result's dates back by the negated offset
(``shift(shift(v, o), -o) == v`` for every value :func:`shift` accepts). Whole days only, so
times (TM, and the clock of a DT) never move.

Precision is kept (PS3.5 6.2 DT): a DT of a year or a month is shifted by the offset rounded
to whole years or months, so it keeps its precision and comes back exactly.
"""

from __future__ import annotations

import re
from datetime import date, timedelta

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?$")
_YEAR_DAYS = 365.2425
_MONTH_DAYS = _YEAR_DAYS / 12


def shift_da(value: str, offset: timedelta) -> str | None:
    """A DA moved by ``offset``; ``None`` when it is not a valid date (never passed on)."""
    match = _DA.match(value.strip())
    if not match:
        return None
    try:
        day = date(int(match[1]), int(match[2]), int(match[3])) + offset
    except (ValueError, OverflowError):
        return None
    return day.strftime("%Y%m%d")


def shift_dt(value: str, offset: timedelta) -> str | None:
    """A DT moved by ``offset`` at its own precision, clock and UTC offset suffix kept."""
    match = _DT.match(value.strip())
    if not match:
        return None
    year, month, day, clock, zone = match.groups()
    if day is None and clock:
        return None  # a clock needs a day (PS3.5 6.2 DT)
    try:
        if day:
            moved = (date(int(year), int(month), int(day)) + offset).strftime("%Y%m%d")
        elif month:
            if not 1 <= int(month) <= 12:
                return None
            months = int(year) * 12 + int(month) - 1 + round(offset.days / _MONTH_DAYS)
            moved = f"{months // 12:04d}{months % 12 + 1:02d}"
        else:
            moved = f"{int(year) + round(offset.days / _YEAR_DAYS):04d}"
    except (ValueError, OverflowError):
        return None
    if not 1 <= int(moved[:4]) <= 9999 or len(moved) not in (4, 6, 8):
        return None
    return moved + (clock or "") + (zone or "")


def shift(vr: str, value: str, offset: timedelta) -> str | None:
    """A DA or DT value moved by ``offset`` (see :func:`shift_da`, :func:`shift_dt`)."""
    return shift_da(value, offset) if vr == "DA" else shift_dt(value, offset)


def first_day(vr: str, value: str) -> date | None:
    """The first day a DA or DT value stands for (a year's 1 January), or ``None``."""
    match = (_DA if vr == "DA" else _DT).match(value.strip())
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2] or 1), int(match[3] or 1))
    except ValueError:
        return None
