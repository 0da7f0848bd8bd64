"""API tokens, users and portal sessions, all stored hashed.

Tokens are 256-bit random strings stored as SHA-256 (they are high-entropy, so a fast hash is
the right tool); passwords are stored with Argon2id. Sessions are server-side and revocable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from .errors import BadRequest, Conflict, Unauthorized
from .ports import DocumentStore
from .settings import ROLES
from .studies import now

TOKENS, USERS, SESSIONS, AUDIT = "tokens", "users", "sessions", "audit"
SESSION_LIFETIME = timedelta(hours=12)
#: A portal session ends after this long without a request (the page logs out too).
SESSION_IDLE = timedelta(minutes=15)
#: How stale ``last_seen`` may get before a request writes it again (limits writes).
_SEEN_EVERY = timedelta(seconds=30)
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's or user's name and role."""

    name: str
    role: str
    kind: str  # "token" | "session"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def csrf_token(secret: bytes, session: str) -> str:
    """The CSRF token of a portal session: an HMAC of the session cookie, so it needs no
    storage and a page of another origin, which cannot read the cookie, cannot forge it."""
    return hmac.new(secret, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()[:40]


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")


class AuthService:
    def __init__(self, documents: DocumentStore) -> None:
        self.tokens = documents.collection(TOKENS)
        self.users = documents.collection(USERS)
        self.sessions = documents.collection(SESSIONS)
        self.audit_log = documents.collection(AUDIT)

    def create_token(self, name: str, role: str) -> str:
        _check_role(role)
        token = "rp_" + secrets.token_urlsafe(32)
        self.tokens.insert_one(
            {"_id": _sha256(token), "name": name, "role": role, "created_at": now()}
        )
        return token

    def authenticate_token(self, token: str) -> Principal:
        entry = self.tokens.find_one({"_id": _sha256(token)})
        if entry is None or entry.get("revoked"):
            raise Unauthorized("invalid API token; create one with `radpipe token create`")
        return Principal(entry["name"], entry["role"], "token")

    def add_user(self, name: str, role: str, password: str) -> None:
        _check_role(role)
        if len(password) < 8:
            raise BadRequest("password must have at least 8 characters")
        if self.users.find_one({"_id": name}) is not None:
            raise Conflict(f"user {name!r} exists already")
        self.users.insert_one(
            {"_id": name, "role": role, "password": _hasher.hash(password), "created_at": now()}
        )

    def login(self, name: str, password: str) -> str:
        """Check a password and open a session; returns the session cookie value."""
        user = self.users.find_one({"_id": name})
        try:
            if user is None:
                raise VerificationError("no such user")
            _hasher.verify(user["password"], password)
        except VerificationError:
            raise Unauthorized("wrong user name or password") from None
        session = secrets.token_urlsafe(32)
        self.sessions.insert_one(
            {
                "_id": _sha256(session),
                "name": name,
                "role": user["role"],
                "expires_at": now() + SESSION_LIFETIME,
                "last_seen": now(),
            }
        )
        return session

    def authenticate_session(self, session: str) -> Principal:
        """The session's user; ``Unauthorized`` once it expired or sat idle ``SESSION_IDLE``."""
        entry = self.sessions.find_one({"_id": _sha256(session)})
        at = now()
        if entry is None or entry["expires_at"] < at:
            raise Unauthorized("session expired; log in again at /login")
        last_seen = entry.get("last_seen") or at
        if at - last_seen > SESSION_IDLE:
            self.sessions.delete_one({"_id": entry["_id"]})
            raise Unauthorized("logged out after inactivity; log in again at /login")
        if at - last_seen > _SEEN_EVERY:
            self.sessions.update_one({"_id": entry["_id"]}, {"$set": {"last_seen": at}})
        return Principal(entry["name"], entry["role"], "session")

    def logout(self, session: str) -> None:
        self.sessions.delete_one({"_id": _sha256(session)})

    def audit(self, principal: Principal, action: str, target: str, **detail: object) -> None:
        """Append to the audit log (who, as what role, did what to which id, when)."""
        self.audit_log.insert_one(
            {
                "_id": secrets.token_hex(12),
                "at": now(),
                "actor": principal.name,
                "role": principal.role,
                "action": action,
                "target": target,
                "detail": detail,
            }
        )
