"""What the turnaround analytics need from the ingest and de-identification paths.

Two things are measured where the original values still exist and kept only as numbers: the
time from acquisition to receipt (:func:`acquisition_lag_seconds`, on each received instance,
before de-identification shifts or removes the acquisition dates), and the keyed pseudonym of
an accession number (:func:`accession_pseudonym`, the very value the de-identifier writes into
AccessionNumber, so a RIS row joins a study without the accession being stored in clear).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

from .identity import pseudonym
from .keys import Purpose

#: Instance field holding the acquisition-to-receipt interval in seconds (never the time).
ACQUIRED_TO_RECEIVED = "acquired_to_received_s"

#: Where the acquisition time is read from, most specific first (PS3.3 C.7.6.1, C.7.3.1).
_DATETIME_SOURCES = (
    ("AcquisitionDateTime", None, None),
    (None, "AcquisitionDate", "AcquisitionTime"),
    (None, "ContentDate", "ContentTime"),
    (None, "SeriesDate", "SeriesTime"),
    (None, "StudyDate", "StudyTime"),
)


def _offset(text: str) -> tzinfo | None:
    """A DICOM offset suffix ``&ZZXX`` (PS3.5 Table 6.2-1, DT and Timezone Offset From UTC)."""
    text = text.strip()
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        return None
    minutes = int(text[1:3]) * 60 + int(text[3:5])
    return timezone(timedelta(minutes=-minutes if text[0] == "-" else minutes))


_DT = re.compile(r"^(\d{8}(?:\d{2}){0,3})(?:\.(\d{1,6}))?([+-]\d{4})?$")


def _parse_dicom_datetime(value: str, zone: tzinfo) -> datetime | None:
    """A DT (``YYYYMMDDHHMMSS.FFFFFF&ZZXX``, trailing components optional) as an aware time."""
    found = _DT.match(value.strip())
    if found is None:
        return None
    digits, fraction, suffix = found.groups()
    try:
        moment = datetime.strptime((digits + "000000")[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    if fraction:
        moment = moment.replace(microsecond=int((fraction + "000000")[:6]))
    return moment.replace(tzinfo=(_offset(suffix) if suffix else None) or zone)


def acquisition_time(ds: Any, site_timezone: tzinfo) -> datetime | None:
    """When the instance was acquired, as an aware time, or ``None`` where nothing says.

    A DT with an offset keeps it; otherwise Timezone Offset From UTC (0008,0201), otherwise
    the site's time zone (daylight saving included) interprets the local value.
    """
    zone = _offset(str(ds.get("TimezoneOffsetFromUTC", "") or "")) or site_timezone
    for dt_keyword, date_keyword, time_keyword in _DATETIME_SOURCES:
        if dt_keyword is not None:
            text = str(ds.get(dt_keyword, "") or "")
        else:
            date = str(ds.get(date_keyword, "") or "").strip()
            if not date:
                continue
            text = date + str(ds.get(time_keyword, "") or "").strip()
        if text and (moment := _parse_dicom_datetime(text, zone)) is not None:
            return moment
    return None


def acquisition_lag_seconds(ds: Any, received_at: datetime, site_timezone: tzinfo) -> float | None:
    """Seconds from acquisition to ``received_at`` (what the TAT keeps; the time is dropped).

    Called at receipt, on the original dataset: de-identification later shifts or removes the
    dates this reads. ``None`` when the dataset has no readable acquisition time.
    """
    acquired = acquisition_time(ds, site_timezone)
    if acquired is None:
        return None
    return round((received_at.astimezone(UTC) - acquired.astimezone(UTC)).total_seconds(), 3)


def accession_pseudonym(secret: bytes, accession: str) -> str:
    """The de-identified AccessionNumber of ``accession``: what ``deid`` writes (engine's
    ``_set_accession``), so RIS rows join studies through it; ``""`` for an empty value."""
    original = accession.strip()
    return "A" + pseudonym(secret, "accession", original, 12) if original else ""


def pseudonym_key(settings: Any) -> bytes:
    """The key ``deid`` derives a new study's AccessionNumber pseudonym with: the key of
    ``Purpose.PSEUDONYMS`` (``Settings.key``), or, in a build without keys per purpose, the
    secret itself (what that build's de-identifier used)."""
    derive = getattr(settings, "key", None)
    if callable(derive):
        key: bytes = derive(Purpose.PSEUDONYMS)
        return key
    secret: bytes = settings.secret
    return secret
