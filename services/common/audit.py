"""The audit log: append-only and hash-chained, readable by auditors, checkable offline.

Each entry carries its sequence number ``seq`` (1, 2, ...; its ``_id`` is the same number,
zero-padded, so the document store's primary key refuses a second entry with one number) and
``prev``, the SHA-256 of the previous entry; its own ``hash`` is the SHA-256 of its canonical
JSON (sorted keys, no spaces, the time in UTC to the millisecond, every field but ``hash``).
Editing an entry breaks its hash, deleting one leaves a gap in ``seq`` and a ``prev`` that
matches nothing, and deleting the newest ones leaves the chain short of the head document
(``audit_head``: the last number and hash). :func:`AuditLog.verify` names each.

Concurrency across the processes of ``radpipe up`` and replicas: the embedded store runs the
read of the last entry and the insert in one write transaction (``DocumentStore.exclusive``);
on MongoDB two writers that read the same last entry both try to insert the next number, the
primary key admits one, and the other reads again (``DuplicateKeyError``).

Identifying values never go into the log in clear: :func:`keyed` turns an original UID or a
query value into a keyed hash (HMAC-SHA256 under the key derived for ``Purpose.AUDIT``), which
an auditor holding the key can recompute for a value they are asked about
(``radpipe audit hash VALUE``) but which tells nothing without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import DuplicateKeyError

from .keys import Purpose, purpose_key
from .ports import DocumentStore

AUDIT, HEAD = "audit", "audit_head"
#: ``prev`` of the first entry.
GENESIS = "0" * 64
#: Digits of the zero-padded ``_id`` (the sequence number as text sorts as a number).
_ID_DIGITS = 16
_INSERT_ATTEMPTS = 50
#: The fields an entry's hash covers (everything but ``_id`` and ``hash``).
HASHED = ("seq", "at", "actor", "role", "action", "target", "detail", "prev")
#: QIDO-RS query keys whose values identify nothing and are written as they are.
PLAIN_QUERY_KEYS = frozenset(
    {
        "limit",
        "offset",
        "includefield",
        "fuzzymatching",
        "Modality",
        "ModalitiesInStudy",
        "00080060",
        "00080061",
        "SOPClassUID",
        "SOPClassesInStudy",
        "00080016",
        "00080062",
    }
)


def keyed(master: bytes, value: str) -> str:
    """``h:`` + 32 hex digits of HMAC-SHA256(``value``) under the audit key: what the log says
    instead of an original UID or a searched value."""
    mac = hmac.new(purpose_key(master, Purpose.AUDIT), value.encode(), hashlib.sha256)
    return "h:" + mac.hexdigest()[:32]


def keyed_query(master: bytes, params: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A QIDO-RS query as the log keeps it: paging, ``includefield`` and modality in clear,
    every other value (names, ids, UIDs, dates) keyed. Repeated keys are joined with ``|``."""
    shown: dict[str, list[str]] = {}
    for key, value in params:
        shown.setdefault(key, []).append(value if key in PLAIN_QUERY_KEYS else keyed(master, value))
    return {key: "|".join(values) for key, values in shown.items()}


def _moment(at: datetime) -> datetime:
    """UTC, to the millisecond: what both document stores keep, so the hash still matches."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return _moment(value).isoformat(timespec="milliseconds")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON: pass ids, counts, text and times")


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers: the ``HASHED`` fields as canonical JSON."""
    body = {name: entry.get(name) for name in HASHED}
    return json.dumps(
        body, default=_plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def _entry_id(seq: int) -> str:
    return f"{seq:0{_ID_DIGITS}d}"


@dataclass
class Verification:
    """What ``verify`` found: entries checked, and every break named by its ``seq``."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    unchained: int = 0  # entries from before the chain (no seq): listed, not verifiable

    @property
    def ok(self) -> bool:
        return not self.problems


class AuditLog:
    """The ``audit`` collection behind an append-only, hash-chained API."""

    def __init__(self, documents: DocumentStore) -> None:
        self.documents = documents
        self.entries = documents.collection(AUDIT)
        self.head = documents.collection(HEAD)
        _ensure_indexes(documents)

    def append(
        self, actor: str, role: str, action: str, target: str, detail: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Write the next entry; returns it (with ``seq`` and ``hash``)."""
        body = json.loads(json.dumps(dict(detail), default=_plain))  # stored = hashed
        for _ in range(_INSERT_ATTEMPTS):
            with self.documents.exclusive():
                last = self.last()
                seq = (last["seq"] + 1) if last else 1
                entry: dict[str, Any] = {
                    "_id": _entry_id(seq),
                    "seq": seq,
                    "at": _moment(datetime.now(UTC)),
                    "actor": actor,
                    "role": role,
                    "action": action,
                    "target": target,
                    "detail": body,
                    "prev": last["hash"] if last else GENESIS,
                }
                entry["hash"] = entry_hash(entry)
                try:
                    self.entries.insert_one(entry)
                except DuplicateKeyError:
                    continue  # another writer took this number: read the new last one
                self._advance_head(seq, entry["hash"])
                return entry
        raise RuntimeError(f"audit: no free sequence number after {_INSERT_ATTEMPTS} attempts")

    def _advance_head(self, seq: int, digest: str) -> None:
        """The head only moves forward (a slower writer of an earlier number leaves it)."""
        with contextlib.suppress(DuplicateKeyError):  # the head is past ``seq`` already
            self.head.update_one(
                {"_id": "head", "seq": {"$lt": seq}},
                {"$set": {"seq": seq, "hash": digest}},
                upsert=True,
            )

    def last(self) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.entries.find_one(
            {"seq": {"$gt": 0}}, sort=[("seq", -1)]
        )
        return found

    def search(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int]:
        """Entries matching every filter given, newest first (entries from before the chain,
        without ``seq``, after the chained ones); and how many match."""
        query: dict[str, Any] = {}
        for name, value in (("actor", actor), ("action", action), ("target", target)):
            if value is not None:
                query[name] = value
        if since is not None or until is not None:
            query["at"] = {
                **({"$gte": since} if since is not None else {}),
                **({"$lt": until} if until is not None else {}),
            }
        total = self.entries.count_documents(query)
        order = [("seq", -1), ("at", -1)]
        cursor = self.entries.find(query).sort(order).skip(offset).limit(limit)
        return [public(entry) for entry in cursor], total

    def chain(self, batch: int = 1000) -> Iterator[dict[str, Any]]:
        """Every chained entry in ``seq`` order, read in batches (bounded memory)."""
        after = 0
        while True:
            page = list(self.entries.find({"seq": {"$gt": after}}).sort("seq", 1).limit(batch))
            yield from page
            if len(page) < batch:
                return
            after = page[-1]["seq"]

    def verify(self) -> Verification:
        """Recompute the chain; name every edited, deleted or reordered entry."""
        result = Verification()
        expected_seq, prev_hash = 1, GENESIS
        for entry in self.chain():
            seq = entry.get("seq")
            if not isinstance(seq, int):
                result.problems.append(f"entry {entry.get('_id')!r} has no valid seq: edited")
                continue
            if seq > expected_seq:
                missing = (
                    f"seq {expected_seq}"
                    if seq == expected_seq + 1
                    else f"seq {expected_seq} to {seq - 1}"
                )
                result.problems.append(f"entry {missing} missing: deleted")
            if entry.get("_id") != _entry_id(seq):
                result.problems.append(f"entry seq {seq}: _id {entry.get('_id')!r} was changed")
            digest = entry_hash(entry)
            if digest != entry.get("hash"):
                result.problems.append(
                    f"entry seq {seq} ({entry.get('action')} by {entry.get('actor')}) was edited: "
                    "its content no longer matches its hash"
                )
            elif seq == expected_seq and entry.get("prev") != prev_hash:
                result.problems.append(
                    f"entry seq {seq - 1} was replaced: entry seq {seq}'s prev does not match "
                    "its hash"
                )
            result.checked += 1
            expected_seq, prev_hash = seq + 1, str(entry.get("hash"))
        head = self.head.find_one({"_id": "head"})
        if head is not None and head.get("seq", 0) >= expected_seq:
            result.problems.append(
                f"entries seq {expected_seq} to {head['seq']} missing: deleted from the end "
                "(the head names a later entry)"
            )
        elif (
            head is not None
            and head.get("seq") == expected_seq - 1
            and (head.get("hash") != prev_hash)
        ):
            result.problems.append(f"entry seq {head['seq']}: differs from the head's hash")
        result.unchained = self.entries.count_documents({"seq": None})
        return result


#: The actor of what the pipeline does on its own (no person): the export to the PACS.
SYSTEM_ROLE = "system"


def audit_export(
    documents: DocumentStore, study_id: str, destinations: list[str], objects: int
) -> None:
    """Results sent back to the PACS re-identified (vault read, original identifiers out):
    ``export.pacs`` by ``exporter``, the study id as target."""
    detail = {"destinations": destinations, "objects": objects}
    AuditLog(documents).append("exporter", SYSTEM_ROLE, "export.pacs", study_id, detail)


def public(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry as the API answers it (``id`` for ``_id``)."""
    return {("id" if k == "_id" else k): v for k, v in entry.items()}


def _ensure_indexes(documents: DocumentStore) -> None:
    """Indexes for the chain order and the auditors' filters, once per store object."""
    if getattr(documents, "_audit_indexes", False):
        return
    entries = documents.collection(AUDIT)
    entries.create_index("seq")
    for name in ("actor", "action", "target"):
        entries.create_index([(name, 1), ("seq", 1)])
    entries.create_index("at")
    setattr(documents, "_audit_indexes", True)  # noqa: B010 - a flag on a Protocol object
