"""Times, ages and date spellings for the de-identifier (PS3.15 E.3.6, E.3.4); the keyed date
shift itself is :mod:`radpipe.common.dateshift`, shared with the exporter that undoes it."""

from __future__ import annotations

import re
from collections.abc import Iterable

from radpipe.common.dateshift import shift, shift_da, shift_dt

__all__ = ["cap_age", "date_spellings", "shift", "shift_da", "shift_dt", "valid_tm"]

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?$")
_AS = re.compile(r"^(\d{3})([DWMY])$")


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


def date_spellings(value: str) -> Iterable[str]:
    """The ways a DA is commonly written in free text (to remove the instance's own dates)."""
    match = _DA.match(value.strip())
    if match:
        y, m, d = match.groups()
        yield from (f"{y}{m}{d}", f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}")
        yield from (f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}")
