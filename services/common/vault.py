"""The re-identification vault: pseudonym -> identity links, encrypted at rest.

Entries are AES-GCM encrypted with the vault's own key (``Purpose.VAULT``, HKDF from
``RADPIPE_SECRET_KEY``, see ``keys.py``); the document store only ever sees ciphertext. An
entry written before keys per purpose (no ``key`` field; AES key from HKDF without salt, info
``radpipe-vault``) is still read, and re-wrapped under the vault key when it is
(:meth:`Vault.get`, :meth:`Vault.rewrap_legacy`). Reading an entry is an audited action reserved for
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
from .keys import Purpose
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
    """Old entries: derived from the Patient ID alone, as the de-identifier then did, with
    the master secret itself (``Settings.master_secret``)."""
    return PatientKeys.derive(secret, str(identity.get("patient_id", ""))).date_offset


#: The ``key`` field of an entry encrypted with ``Purpose.VAULT``'s key.
KEY_ID = str(Purpose.VAULT)


def legacy_key(master: bytes) -> bytes:
    """The AES key of entries from before keys per purpose (HKDF-SHA256 of the master,
    no salt, info ``radpipe-vault``)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"radpipe-vault").derive(
        master
    )


class Vault:
    """Encrypted identity entries. ``key`` is ``Settings.key(Purpose.VAULT)``; ``legacy`` the
    master secret, to open (and re-wrap) entries written before keys per purpose."""

    def __init__(self, documents: DocumentStore, key: bytes, legacy: bytes | None = None) -> None:
        self._collection = documents.collection(COLLECTION)
        self._aead = AESGCM(key)
        self._legacy = AESGCM(legacy_key(legacy)) if legacy is not None else None

    def put(self, entry_id: str, identity: dict[str, Any]) -> None:
        """Store (or replace) the identity behind ``entry_id`` (usually a study id)."""
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, json.dumps(identity).encode(), entry_id.encode())
        self._collection.update_one(
            {"_id": entry_id},
            {
                "$set": {
                    "nonce": nonce.hex(),
                    "blob": blob.hex(),
                    "key": KEY_ID,
                    "updated_at": datetime.now(UTC),
                }
            },
            upsert=True,
        )

    def get(self, entry_id: str) -> dict[str, Any]:
        entry = self._collection.find_one({"_id": entry_id})
        if entry is None:
            raise NotFound(f"no vault entry for {entry_id}")
        result: dict[str, Any] = json.loads(self._open(entry_id, entry))
        if entry.get("key") != KEY_ID:
            self.put(entry_id, result)  # re-wrap a legacy entry under the vault key
        return result

    def rewrap_legacy(self) -> int:
        """Re-encrypt every entry still under the legacy key (an upgrade step; idempotent)."""
        count = 0
        for entry in list(self._collection.find({})):
            if entry.get("key") != KEY_ID:
                self.put(entry["_id"], json.loads(self._open(entry["_id"], entry)))
                count += 1
        return count

    def _open(self, entry_id: str, entry: dict[str, Any]) -> bytes:
        nonce, blob = bytes.fromhex(entry["nonce"]), bytes.fromhex(entry["blob"])
        if entry.get("key") == KEY_ID:
            return self._aead.decrypt(nonce, blob, entry_id.encode())
        if entry.get("key") is not None or self._legacy is None:
            raise ValueError(
                f"vault entry {entry_id} is under a key this process does not have "
                f"({entry.get('key') or 'legacy'}): check RADPIPE_SECRET_KEY"
            )
        return self._legacy.decrypt(nonce, blob, entry_id.encode())
