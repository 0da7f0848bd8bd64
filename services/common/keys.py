"""One key per purpose, derived from ``RADPIPE_SECRET_KEY`` (HKDF-SHA256, RFC 5869).

A key that pseudonymizes UIDs must not also sign session cookies or wrap the vault: a leak or a
rotation of one purpose then touches nothing else. Every consumer asks :func:`purpose_key` for
its own key; nothing uses the master secret directly.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum
from functools import lru_cache


class Purpose(StrEnum):
    """What a derived key is for; the value is HKDF's ``info`` and must never change."""

    PSEUDONYMS = "radpipe/pseudonyms/v1"  # UIDs, study ids, accession pseudonyms
    DATES = "radpipe/date-offsets/v1"  # per-patient date shifts
    VAULT = "radpipe/vault/v1"  # encryption of the re-identification vault
    SESSIONS = "radpipe/sessions/v1"  # CSRF tokens and session cookies
    LINKS = "radpipe/ack-links/v1"  # signed single-use acknowledgement links
    AUDIT = "radpipe/audit/v1"  # keyed hashes of identifiers written to the audit log


_SALT = b"radpipe-hkdf-salt-v1"


def hkdf_sha256(master: bytes, info: bytes, length: int = 32, salt: bytes = _SALT) -> bytes:
    """RFC 5869 extract-then-expand with SHA-256."""
    prk = hmac.new(salt, master, hashlib.sha256).digest()
    block, out, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


@lru_cache(maxsize=64)
def purpose_key(master: bytes, purpose: Purpose) -> bytes:
    """The 256-bit key for ``purpose`` derived from the master secret."""
    return hkdf_sha256(master, str(purpose).encode())
