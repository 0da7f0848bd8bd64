"""API tokens, users and portal sessions, all stored hashed; sign-in limits; the audit hook.

Tokens are 256-bit random strings stored as SHA-256 (they are high-entropy, so a fast hash is
the right tool); passwords are stored with Argon2id. Sessions are server-side and revocable.
Neither depends on ``RADPIPE_SECRET_KEY``, so rotating it keeps every token and session; only
the CSRF tokens (keyed with the ``sessions`` purpose key) change, and a page opened before the
rotation is asked to reload (docs/security.md, "Credentials and sessions").

Sign-in failures are counted per user name and per client address in the document store (so
the limit holds across the processes and replicas of the portal): ``USER_FAILURES`` wrong
passwords for one name, or ``ADDRESS_FAILURES`` from one address, within ``FAILURE_WINDOW``
lock that name or address for ``LOCKOUT``. An unknown name costs the same Argon2 verification
as a known one (against a dummy hash) and is locked the same way, so neither the answer, its
time nor the lockout tells which names exist.
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
from pymongo import ReturnDocument

from .audit import AUDIT, AuditLog
from .errors import BadRequest, Conflict, NotFound, RadpipeError, Unauthorized
from .keys import Purpose, purpose_key
from .ports import DocumentStore
from .settings import ROLES
from .studies import now

TOKENS, USERS, SESSIONS = "tokens", "users", "sessions"
LOGIN_FAILURES = "login_failures"
__all__ = ["AUDIT", "SESSIONS", "TOKENS", "USERS", "AuthService", "LoginLocked", "Principal"]
SESSION_LIFETIME = timedelta(hours=12)
#: A portal session ends after this long without a request (the page logs out too).
SESSION_IDLE = timedelta(minutes=15)
#: How stale ``last_seen`` may get before a request writes it again (limits writes).
_SEEN_EVERY = timedelta(seconds=30)
#: Wrong sign-ins for one user name, and from one client address, before a lockout.
USER_FAILURES = 5
ADDRESS_FAILURES = 20
FAILURE_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)
_hasher = PasswordHasher()
#: Verified when the user does not exist, so an unknown name costs what a wrong password does.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(24))


class LoginLocked(RadpipeError):
    """Too many failed sign-ins for a user name or from an address (HTTP 429)."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's or user's name and role."""

    name: str
    role: str
    kind: str  # "token" | "session"


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def csrf_token(master: bytes, session: str) -> str:
    """The CSRF token of a portal session: an HMAC of the session cookie under the key derived
    from ``master`` for ``Purpose.SESSIONS``, so it needs no storage and a page of another
    origin, which cannot read the cookie, cannot forge it."""
    key = purpose_key(master, Purpose.SESSIONS)
    return hmac.new(key, b"csrf:" + session.encode(), hashlib.sha256).hexdigest()[:40]


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r}; choose one of: {', '.join(ROLES)}")


class AuthService:
    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents
        self.tokens = documents.collection(TOKENS)
        self.users = documents.collection(USERS)
        self.sessions = documents.collection(SESSIONS)
        self.failures = documents.collection(LOGIN_FAILURES)

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

    def rotate_token(self, name: str, expires_at: datetime | None = None) -> str:
        """A new secret for the token ``name`` (same name and role); the old one is revoked.

        The expiry is ``expires_at`` when given, else the old token's (when still ahead)."""
        valid = [
            entry
            for entry in self.tokens.find({"name": name})
            if not entry.get("revoked")
            and (entry.get("expires_at") is None or entry["expires_at"] > now())
        ]
        if not valid:
            raise NotFound(f"no valid token named {name!r}; create one with `radpipe token create`")
        roles = {entry["role"] for entry in valid}
        if len(roles) > 1:
            raise Conflict(
                f"tokens named {name!r} have different roles ({', '.join(sorted(roles))}): "
                "revoke them and create one"
            )
        if expires_at is None:
            expires_at = max((e["expires_at"] for e in valid if e.get("expires_at")), default=None)
        token = self.create_token(name, roles.pop(), expires_at)
        for entry in valid:
            self.tokens.update_one(
                {"_id": entry["_id"]},
                {"$set": {"revoked": True, "revoked_at": now(), "rotated": True}},
            )
        return token

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

    def login(self, name: str, password: str, address: str = "-") -> str:
        """Check a password and open a session; returns the session cookie value.

        Raises ``LoginLocked`` (429, with when to retry) while the name or the address is
        locked, ``Unauthorized`` for a wrong name or password; every outcome is audited."""
        user = self.users.find_one({"_id": name})
        who = Principal(name, user["role"] if user else "-", "session")
        self._refuse_if_locked(who, address)
        try:
            # The same Argon2 work whether or not the user exists or is disabled.
            _hasher.verify(user["password"] if user else _DUMMY_HASH, password)
            if user is None or user.get("disabled"):
                raise VerificationError("no such user, or disabled")
        except VerificationError:
            self._count_failure(who, address)
            raise Unauthorized("wrong user name or password") from None
        self.failures.delete_one({"_id": f"user:{name}"})
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
        self.audit(who, "auth.login", name, address=address)
        return session

    def _refuse_if_locked(self, who: Principal, address: str) -> None:
        at = now()
        for key, what in ((f"user:{who.name}", "this user"), (f"addr:{address}", "this address")):
            entry = self.failures.find_one({"_id": key})
            until = entry.get("locked_until") if entry else None
            if until is not None and until > at:
                wait = int((until - at).total_seconds()) + 1
                self.audit(who, "auth.login.locked", who.name, address=address, scope=key[:4])
                raise LoginLocked(
                    f"too many failed sign-ins for {what}: try again after "
                    f"{until:%H:%M:%S} UTC (in {max(1, round(wait / 60))} min), or ask an "
                    "admin to check the account",
                    retry_after=wait,
                )

    def _count_failure(self, who: Principal, address: str) -> None:
        """One more failure for the name and the address; a lockout once a limit is reached."""
        counts = {}
        for key, limit in (
            (f"user:{who.name}", USER_FAILURES),
            (f"addr:{address}", ADDRESS_FAILURES),
        ):
            counts[key[:4]] = self._failure(key, limit)
        self.audit(who, "auth.login.failed", who.name, address=address, failures=counts["user"])

    def _failure(self, key: str, limit: int) -> int:
        at = now()
        with self.documents.exclusive():
            entry = self.failures.find_one({"_id": key})
            stale = (
                entry is None
                or entry["first_at"] < at - FAILURE_WINDOW
                or (entry.get("locked_until") is not None and entry["locked_until"] <= at)
            )
            if stale:
                self.failures.update_one(
                    {"_id": key},
                    {"$set": {"count": 1, "first_at": at, "locked_until": None}},
                    upsert=True,
                )
                count = 1
            else:
                after = self.failures.find_one_and_update(
                    {"_id": key}, {"$inc": {"count": 1}}, return_document=ReturnDocument.AFTER
                )
                count = int(after["count"]) if after else 1
            if count >= limit:
                self.failures.update_one({"_id": key}, {"$set": {"locked_until": at + LOCKOUT}})
        return count

    def unlock(self, name: str) -> bool:
        """Lift a user name's lockout (``radpipe user unlock``); whether one was in force."""
        return bool(self.failures.delete_one({"_id": f"user:{name}"}).deleted_count)

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
        entry = self.sessions.find_one({"_id": _sha256(session)})
        self.sessions.delete_one({"_id": _sha256(session)})
        if entry is not None:
            self.audit(
                Principal(entry["name"], entry["role"], "session"), "auth.logout", entry["name"]
            )

    def audit(self, principal: Principal, action: str, target: str, **detail: object) -> None:
        """Append to the hash-chained audit log (who, as what role, did what to which id, when;
        ``radpipe.common.audit``). Never pass an original identifier: key it with
        :func:`radpipe.common.audit.keyed`."""
        AuditLog(self.documents).append(principal.name, principal.role, action, target, detail)
