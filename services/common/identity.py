"""Keyed identifiers: study ids, pseudonyms and ``2.25.`` UIDs derived with HMAC-SHA256.

Nothing here is computable from an original value without its key; a different key gives
unlinkable output (unlike CTP's unkeyed hashes or pydicom's ``generate_uid``). The key is
``Settings.key(Purpose.PSEUDONYMS)`` (date offsets: ``Purpose.DATES``), derived from
``RADPIPE_SECRET_KEY`` (``keys.py``); studies first stored before keys per purpose keep the
master secret itself (``Context.study_key``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


def keyed_digest(secret: bytes, purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` under ``secret``, domain-separated by ``purpose``."""
    return hmac.new(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()


def study_id_for(secret: bytes, source_study_uid: str) -> str:
    """Radpipe's study id for an original Study Instance UID (24 hex characters)."""
    return keyed_digest(secret, "study-id", source_study_uid).hex()[:24]


def instance_key_for(secret: bytes, source_sop_uid: str) -> str:
    """A non-identifying key for one received instance (used in object keys)."""
    return keyed_digest(secret, "instance-key", source_sop_uid).hex()[:32]


def pseudonymous_uid(secret: bytes, uid: str) -> str:
    """A ``2.25.`` UID: the decimal form of a keyed 128-bit value (PS3.5 B.2), <= 44 chars."""
    number = int.from_bytes(keyed_digest(secret, "uid", uid)[:16], "big")
    return f"2.25.{number}"


#: The "key" of UIDs Radpipe makes for its own results and reports: they are derived from
#: pseudonymous ids only (study id, version, purpose), so nothing secret goes in and none is
#: needed (the inference worker holds no key); the derivation only has to be repeatable.
RESULT_UIDS = b"radpipe/result-uids/v1"


def pseudonym(secret: bytes, purpose: str, value: str, length: int = 12) -> str:
    """A stable keyed pseudonym (uppercase hex) for a patient id, name or accession."""
    return keyed_digest(secret, purpose, value).hex()[:length].upper()


def patient_key(patient_id: str, issuer: str = "") -> str:
    """What names one patient: Issuer of Patient ID and Patient ID together (two hospitals
    may both have a patient 12345). Without an issuer the id alone, as keys were derived
    before issuers were taken into account, so existing pseudonyms and offsets stay."""
    patient_id, issuer = patient_id.strip(), issuer.strip()
    return f"{issuer}\x00{patient_id}" if issuer else patient_id


@dataclass(frozen=True)
class PatientKeys:
    """Keyed replacements for one patient, derived from the original Issuer of Patient ID and
    Patient ID: the pseudonymous id and name, and the whole-day offset every date of the
    patient moves by (when the profile shifts dates)."""

    patient_id: str
    patient_name: str
    date_offset: timedelta

    @classmethod
    def derive(
        cls, secret: bytes, original_patient_id: str, issuer: str = "", dates: bytes | None = None
    ) -> PatientKeys:
        """``secret`` keys the pseudonyms, ``dates`` (``Purpose.DATES``) the offset; without
        ``dates`` the one key does both, as before keys per purpose."""
        key = patient_key(original_patient_id, issuer)
        token = pseudonym(secret, "patient", key, 12)
        # A shift of 1-10 years back, whole days: intervals between dates stay exact.
        draw = int.from_bytes(keyed_digest(dates or secret, "date-shift", key)[:4])
        return cls(f"RP{token}", f"ANON^{token}", timedelta(days=-(365 + draw % 3285)))

    @classmethod
    def for_dataset(cls, secret: bytes, ds: Any, dates: bytes | None = None) -> PatientKeys:
        """The keys of a dataset's patient; with no Patient ID the study stands in, so the
        study's dates still move together."""
        original = str(ds.get("PatientID", "") or "").strip()
        if not original:
            study = "study:" + str(ds.get("StudyInstanceUID", "") or "")
            return cls.derive(secret, study, dates=dates)
        return cls.derive(secret, original, str(ds.get("IssuerOfPatientID", "") or ""), dates)
