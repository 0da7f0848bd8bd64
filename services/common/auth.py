"""API tokens, users and portal sessions, all stored hashed.

Tokens are 256-bit random strings stored as SHA-256 (they are high-entropy, so a fast hash is
the right tool); passwords are stored with Argon2id. Sessions are server-side and revocable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from .errors import BadRequest, Conflict, NotFound, Unauthorized
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

    def create_token(self, name: str, role: str, expires_at: datetime | None = None) -> str:
        _check_role(role)
        token = "rp_" + secrets.token_urlsafe(32)
        entry = {"_id": _sha256(token), "name": name, "role": role, "created_at": now()}
        if expires_at is not None:
            entry["expires_at"] = expires_at
        self.tokens.insert_one(entry)
        return token

    def authenticate_token(self, token: str) -> Principal:
        entry = self.tokens.find_one({"_id": _sha256(token)})
        if entry is None or entry.get("revoked"):
            raise Unauthorized("invalid API token; create one with `radpipe token create`")
        if entry.get("expires_at") is not None and entry["expires_at"] < now():
            raise Unauthorized(f"API token {entry['name']!r} expired; ask an admin for a new one")
        return Principal(entry["name"], entry["role"], "token")

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token's name, role, dates and state; never the token or its hash."""
        shown = ("name", "role", "created_at", "expires_at", "revoked", "revoked_at")
        return [
            {k: entry.get(k) for k in shown} for entry in self.tokens.find({}).sort("created_at", 1)
        ]

    def revoke_token(self, name: str) -> int:
        """Revoke every token named ``name``; how many were still valid."""
        revoked = 0
        for entry in list(self.tokens.find({"name": name})):
            if not entry.get("revoked"):
                self.tokens.update_one(
                    {"_id": entry["_id"]}, {"$set": {"revoked": True, "revoked_at": now()}}
                )
                revoked += 1
        if not revoked:
            raise NotFound(f"no valid token named {name!r}")
        return revoked

    def list_users(self) -> list[dict[str, Any]]:
        return [
            {
                "name": u["_id"],
                "role": u["role"],
                "disabled": bool(u.get("disabled")),
                "created_at": u.get("created_at"),
            }
            for u in self.users.find({}).sort("created_at", 1)
        ]

    def _end_sessions(self, name: str) -> None:
        for session in list(self.sessions.find({"name": name})):
            self.sessions.delete_one({"_id": session["_id"]})

    def disable_user(self, name: str) -> None:
        """The user can no longer log in; their open sessions end now."""
        if self.users.update_one({"_id": name}, {"$set": {"disabled": True}}).matched_count != 1:
            raise NotFound(f"no user {name!r}")
        self._end_sessions(name)

    def set_role(self, name: str, role: str) -> None:
        """A new role; open sessions end, so the next request carries the new one."""
        _check_role(role)
        if self.users.update_one({"_id": name}, {"$set": {"role": role}}).matched_count != 1:
            raise NotFound(f"no user {name!r}")
        self._end_sessions(name)

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
            if user is None or user.get("disabled"):
                raise VerificationError("no such user, or disabled")
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
