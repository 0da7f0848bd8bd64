"""The re-identification vault: pseudonym -> identity links, encrypted at rest.

Entries are AES-GCM encrypted with a key derived (HKDF) from ``RADPIPE_SECRET_KEY``; the
document store only ever sees ciphertext. Reading an entry is an audited action reserved for
clinical roles (see ``portal.api``).

An entry (one per study) holds the original values of :data:`IDENTITY_ATTRIBUTES`, the date
offset the de-identifier applied (``date_offset_days``, 0 when the profile kept or removed
dates) and the de-identified -> original UID map. Entries written before the offset was
recorded (no ``date_offset_days``) were keyed on Patient ID alone; the exporter derives their
offset that way (:func:`legacy_date_offset`).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import NotFound
from .identity import PatientKeys
from .ports import DocumentStore

COLLECTION = "vault"

#: Vault field -> the attribute it holds: what a PACS matches a returned result on.
IDENTITY_ATTRIBUTES = {
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "accession_number": "AccessionNumber",
    "study_id": "StudyID",
    "study_instance_uid": "StudyInstanceUID",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
}


def applied_date_offset(identity: dict[str, Any], secret: bytes) -> timedelta:
    """The offset the de-identifier moved this study's dates by, as the entry recorded it;
    for an entry from before offsets were recorded, :func:`legacy_date_offset`."""
    days = identity.get("date_offset_days")
    if isinstance(days, int):
        return timedelta(days=days)
    return legacy_date_offset(identity, secret)


def legacy_date_offset(identity: dict[str, Any], secret: bytes) -> timedelta:
    """Old entries: derived from the Patient ID alone, as the de-identifier then did."""
    return PatientKeys.derive(secret, str(identity.get("patient_id", ""))).date_offset


def _key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"radpipe-vault").derive(
        secret
    )


class Vault:
    def __init__(self, documents: DocumentStore, secret: bytes) -> None:
        self._collection = documents.collection(COLLECTION)
        self._aead = AESGCM(_key(secret))

    def put(self, entry_id: str, identity: dict[str, Any]) -> None:
        """Store (or replace) the identity behind ``entry_id`` (usually a study id)."""
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, json.dumps(identity).encode(), entry_id.encode())
        self._collection.update_one(
            {"_id": entry_id},
            {"$set": {"nonce": nonce.hex(), "blob": blob.hex(), "updated_at": datetime.now(UTC)}},
            upsert=True,
        )

    def get(self, entry_id: str) -> dict[str, Any]:
        entry = self._collection.find_one({"_id": entry_id})
        if entry is None:
            raise NotFound(f"no vault entry for {entry_id}")
        plain = self._aead.decrypt(
            bytes.fromhex(entry["nonce"]), bytes.fromhex(entry["blob"]), entry_id.encode()
        )
        result: dict[str, Any] = json.loads(plain)
        return result
