"""Stored per-study TAT facts (``tat_facts``), refreshed incrementally, and a short report memo.

``GET /api/tat`` used to rebuild every study's timeline from its events, first instance and RIS
row on each call (45 s at 100,000 studies). A fact row keeps what the report needs of one study:
its cut dimensions, each stage's first time and seconds since the first event, and the RIS row
it joined. Facts are refreshed lazily on each call, from what changed since the last refresh:

* studies whose ``updated_at`` (state changes) or ``events_at`` (events that are not state
  changes, set by ``StudyRepository.add_event``) is at or after the last refresh, less
  :data:`SKEW` for clocks of other processes (both indexed);
* studies a RIS import joined (``tat_facts_stale``, written by the import).

The sync record (``tat_facts_sync``) holds when the last refresh started and a generation that
grows whenever a fact changes; a computed report is reused for the same filters while the
generation is unchanged (at most :data:`MEMO_MAX_S`) or for ``tat_report_ttl_s`` seconds.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary, WeakSet

from radpipe.common.logging import get_logger
from radpipe.common.ports import Document, DocumentStore
from radpipe.common.studies import now

from .intervals import Timeline

if TYPE_CHECKING:
    from radpipe.common.context import Context

    from .service import Filters

FACTS, STALE, SYNC = "tat_facts", "tat_facts_stale", "tat_facts_sync"
#: Changes stamped this long before the last refresh started are read again (other clocks).
SKEW = timedelta(seconds=120)
#: Studies whose facts are written per transaction of the embedded engine.
BATCH = 500
#: A memoized report is never older than this (stuck studies' waiting times move on).
MEMO_MAX_S = 300.0

log = get_logger("radpipe.tat")
_FLIGHT_LOCK = threading.Lock()
_IN_FLIGHT: set[tuple[int, tuple[Any, ...]]] = set()
_indexed: WeakSet[DocumentStore] = WeakSet()
_MEMO: WeakKeyDictionary[DocumentStore, dict[tuple[Any, ...], tuple[float, int, Any]]] = (
    WeakKeyDictionary()
)


def ensure_indexes(documents: DocumentStore) -> None:
    if documents in _indexed:
        return
    documents.collection(FACTS).create_index("created_at")
    documents.collection("studies").create_index("updated_at")
    documents.collection("studies").create_index("events_at")
    _indexed.add(documents)


def fact_of(timeline: Timeline, created_at: datetime, ris_id: str | None) -> Document:
    """The stored row of one study's timeline."""
    return {
        "_id": timeline.study,
        "created_at": created_at,
        "modality": timeline.modality,
        "priority": timeline.priority,
        "risk": timeline.risk,
        "source": timeline.source,
        "state": timeline.state,
        "failed": timeline.failed,
        "stages": dict(timeline.stages),
        "offsets": timeline.offsets(),
        "intervals": dict(timeline.consecutive()),
        "ris": ris_id,
    }


def timeline_of_fact(fact: Document) -> Timeline:
    return Timeline(
        study=fact["_id"],
        stages=dict(fact.get("stages") or {}),
        modality=str(fact.get("modality", "unknown")),
        priority=str(fact.get("priority", "unknown")),
        risk=str(fact.get("risk", "pending")),
        source=str(fact.get("source", "unknown")),
        state=str(fact.get("state", "")),
        failed=bool(fact.get("failed")),
    )


def mark_stale(documents: DocumentStore, study_ids: list[str]) -> None:
    """Studies whose facts must be rebuilt at the next refresh (a RIS row joined them)."""
    stale = documents.collection(STALE)
    with documents.exclusive():
        for study_id in study_ids:
            stale.update_one({"_id": study_id}, {"$set": {"at": now()}}, upsert=True)
    _MEMO.pop(documents, None)


def _write(ctx: Context, studies: list[Document]) -> None:
    from . import service  # the timeline builders live there

    rows = service.ris_rows_of(ctx.documents, studies)
    facts = ctx.documents.collection(FACTS)
    built = [
        fact_of(
            service.timeline_of(ctx.documents, s, rows.get(s["_id"])),
            s["created_at"],
            (rows.get(s["_id"]) or {}).get("_id"),
        )
        for s in studies
        if isinstance(s.get("created_at"), datetime)
    ]
    with ctx.documents.exclusive():
        for fact in built:
            facts.update_one({"_id": fact["_id"]}, {"$set": fact}, upsert=True)


def refresh(ctx: Context) -> int:
    """Bring the facts up to date; returns the generation (grows when any fact changed)."""
    ensure_indexes(ctx.documents)
    documents = ctx.documents
    sync = documents.collection(SYNC)
    record = sync.find_one({"_id": "sync"}) or {}
    started = now()
    last = record.get("until")
    studies = documents.collection("studies")
    if isinstance(last, datetime):
        since = last - SKEW
        changed: dict[str, Document] = {}
        for field in ("updated_at", "events_at"):
            for study in studies.find({field: {"$gte": since}}):
                changed[study["_id"]] = study
        cursor: Any = list(changed.values())
    else:
        cursor = studies.find({})  # first refresh: every study
    stale = [row["_id"] for row in documents.collection(STALE).find({})]
    batch: list[Document] = []
    seen: set[str] = set()
    fresh = 0  # changes not seen by the last refresh (the SKEW window re-reads the rest)
    for study in cursor:
        seen.add(study["_id"])
        stamps = [study.get(f) for f in ("updated_at", "events_at")]
        if not isinstance(last, datetime) or any(
            isinstance(at, datetime) and at >= last for at in stamps
        ):
            fresh += 1
        batch.append(study)
        if len(batch) >= BATCH:
            _write(ctx, batch)
            batch = []
    missing = [s for s in stale if s not in seen]
    for start in range(0, len(missing), BATCH):
        batch += list(studies.find({"_id": {"$in": missing[start : start + BATCH]}}))
        _write(ctx, batch)
        batch = []
    if batch:
        _write(ctx, batch)
    if stale:
        with documents.exclusive():
            for study_id in stale:
                documents.collection(STALE).delete_one({"_id": study_id})
    generation = int(record.get("generation", 0)) + (1 if fresh or stale or not record else 0)
    sync.update_one(
        {"_id": "sync"}, {"$set": {"until": started, "generation": generation}}, upsert=True
    )
    return generation


def facts_in(ctx: Context, filters: Filters) -> list[Timeline]:
    """Timelines of the facts in the filter's range that pass its filters."""
    found = ctx.documents.collection(FACTS).find(
        {"created_at": {"$gte": filters.since, "$lt": filters.until}}
    )
    return [t for t in map(timeline_of_fact, found) if filters.admits(t)]


def joined_ris(ctx: Context, filters: Filters) -> set[str]:
    found = ctx.documents.collection(FACTS).find(
        {"created_at": {"$gte": filters.since, "$lt": filters.until}}
    )
    return {f["ris"] for f in found if f.get("ris")}


def memo_get(ctx: Context, key: tuple[Any, ...], generation: int) -> tuple[Any, bool] | None:
    """(the memoized report, whether it is current) or None: current while no fact changed
    (for at most :data:`MEMO_MAX_S`), else usable for ``tat_report_ttl_s`` seconds."""
    entry = _MEMO.get(ctx.documents, {}).get(key)
    if entry is None:
        return None
    at, gen, answer = entry
    age = time.monotonic() - at
    if age < MEMO_MAX_S and gen == generation:
        return copy.deepcopy(answer), True
    if age < ctx.settings.tat_report_ttl_s:
        return copy.deepcopy(answer), False
    return None


def memo_put(ctx: Context, key: tuple[Any, ...], generation: int, answer: Any) -> None:
    memo = _MEMO.setdefault(ctx.documents, {})
    if len(memo) > 64:
        memo.clear()
    memo[key] = (time.monotonic(), generation, copy.deepcopy(answer))


def recompute_later(ctx: Context, key: tuple[Any, ...], compute: Callable[[], Any]) -> None:
    """Run ``compute`` (which memoizes its report) in a thread, once per store and key."""
    flight = (id(ctx.documents), key)
    with _FLIGHT_LOCK:
        if flight in _IN_FLIGHT:
            return
        _IN_FLIGHT.add(flight)

    def run() -> None:
        try:
            compute()
        except Exception:  # the next call computes in the foreground and shows the error
            log.error("tat.recompute_failed", exc_info=True)
        finally:
            with _FLIGHT_LOCK:
                _IN_FLIGHT.discard(flight)

    threading.Thread(target=run, name="tat-recompute", daemon=True).start()


def clear_memo(documents: DocumentStore) -> None:
    _MEMO.pop(documents, None)
