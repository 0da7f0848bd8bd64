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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import NotFound
from .identity import PatientKeys
from .keys import Purpose
from .ports import DocumentStore
from .studies import MIGRATIONS

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
#: The ``migrations`` marker of :meth:`Vault.rewrap_legacy`.
REWRAPPED = "vault-keys-per-purpose-v1"


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
        self._documents = documents
        self._collection = documents.collection(COLLECTION)
        self._aead = AESGCM(key)
        self._legacy = AESGCM(legacy_key(legacy)) if legacy is not None else None

    def put(self, entry_id: str, identity: dict[str, Any]) -> None:
        """Store (or replace) the identity behind ``entry_id`` (usually a study id)."""
        self._collection.update_one(
            {"_id": entry_id}, {"$set": self._sealed(entry_id, identity)}, upsert=True
        )

    def get(self, entry_id: str) -> dict[str, Any]:
        entry = self._collection.find_one({"_id": entry_id})
        if entry is None:
            raise NotFound(f"no vault entry for {entry_id}")
        result: dict[str, Any] = json.loads(self._open(entry_id, entry))
        if entry.get("key") != KEY_ID:
            self._rewrap(entry, result)
        return result

    def rewrap_legacy(self, batch: int = 500) -> int:
        """Re-encrypt every entry still under the legacy key, once (an upgrade step run when
        a process with the key starts; a marker in ``migrations`` says it ran). Idempotent,
        and safe beside writers: an entry changed meanwhile is left to its writer. Returns
        how many entries it re-wrapped."""
        done = self._documents.collection(MIGRATIONS)
        if done.find_one({"_id": REWRAPPED}) is not None:
            return 0
        count, last = 0, None
        while True:
            query: dict[str, Any] = {"key": {"$exists": False}}
            if last is not None:
                query["_id"] = {"$gt": last}
            page = list(self._collection.find(query).sort("_id", 1).limit(batch))
            if not page:
                break
            last = page[-1]["_id"]
            for entry in page:
                count += self._rewrap(entry, json.loads(self._open(entry["_id"], entry)))
        done.update_one({"_id": REWRAPPED}, {"$set": {"done": datetime.now(UTC)}}, upsert=True)
        return count

    def _sealed(self, entry_id: str, identity: dict[str, Any]) -> dict[str, Any]:
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, json.dumps(identity).encode(), entry_id.encode())
        return {
            "nonce": nonce.hex(),
            "blob": blob.hex(),
            "key": KEY_ID,
            "updated_at": datetime.now(UTC),
        }

    def _rewrap(self, entry: dict[str, Any], identity: dict[str, Any]) -> int:
        """The entry under the vault key, unless it was rewritten since it was read (its nonce
        changes with every write): 1 when this call re-wrapped it."""
        found = self._collection.update_one(
            {"_id": entry["_id"], "nonce": entry["nonce"]},
            {"$set": self._sealed(entry["_id"], identity)},
        )
        return int(found.modified_count)

    def _open(self, entry_id: str, entry: dict[str, Any]) -> bytes:
        nonce, blob = bytes.fromhex(entry["nonce"]), bytes.fromhex(entry["blob"])
        aead = self._aead if entry.get("key") == KEY_ID else self._legacy
        if aead is None or entry.get("key") not in (KEY_ID, None):
            raise ValueError(
                f"vault entry {entry_id} is under a key this process does not have "
                f"({entry.get('key') or 'legacy'}): check RADPIPE_SECRET_KEY"
            )
        try:
            return aead.decrypt(nonce, blob, entry_id.encode())
        except InvalidTag:
            raise ValueError(
                f"vault entry {entry_id} does not open with this RADPIPE_SECRET_KEY: it was "
                "written under another master secret (restore the one the data was made with)"
            ) from None
