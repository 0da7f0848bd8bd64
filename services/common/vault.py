"""The re-identification vault: pseudonym -> identity links, encrypted at rest.

Entries are AES-GCM encrypted with a key derived (HKDF) from ``RADPIPE_SECRET_KEY``; the
document store only ever sees ciphertext. Reading an entry is an audited action reserved for
clinical roles (see ``portal.api``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import NotFound
from .ports import DocumentStore

COLLECTION = "vault"


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
