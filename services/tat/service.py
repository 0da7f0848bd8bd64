"""Turnaround analytics against the stores: study timelines, the RIS import, the report.

Every query goes through the document-store port with what both adapters index: studies by
``created_at`` range (index made here), instances by ``study_id`` (the repository's index),
study summaries and RIS rows by ``_id``, imports by ``at``. Nothing here stores or returns an
accession number in clear, a patient identifier or an original date.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from weakref import WeakKeyDictionary, WeakSet

from pymongo.errors import DuplicateKeyError

from radpipe.common.context import Context
from radpipe.common.dicomindex import STUDY_SUMMARIES
from radpipe.common.errors import BadRequest, NotFound
from radpipe.common.logging import get_logger
from radpipe.common.metrics import TAT_SECONDS
from radpipe.common.ports import Document, DocumentStore
from radpipe.common.studies import now
from radpipe.common.tat import ACQUIRED_TO_RECEIVED, accession_pseudonym, pseudonym_key

from . import agreement, facts, intervals, ris
from .intervals import Timeline

log = get_logger("radpipe.tat")

RIS_ROWS, RIS_FLAGGED, IMPORTS = "tat_ris", "tat_ris_flagged", "tat_imports"
#: The object-store bucket (after the prefix) holding each RIS file as received.
RIS_BUCKET = "ris"
#: Acquisition->receipt lags outside this range are not a live acquisition (a migration, a
#: prior sent again, a wrong modality clock) and are left out of the timeline.
LAG_RANGE = (-300.0, 7 * 86400.0)
DEFAULT_DAYS = 30
AI_RISKS = ("high", "moderate", "low", "none", "pending")

_indexed: WeakSet[DocumentStore] = WeakSet()  # stores whose indexes this process made


def ensure_indexes(documents: DocumentStore) -> None:
    """The indexes the TAT queries use (once per store and process)."""
    if documents in _indexed:
        return
    documents.collection("studies").create_index("created_at")
    documents.collection(IMPORTS).create_index("at")
    documents.collection(RIS_FLAGGED).create_index([("import_id", 1), ("line", 1)])
    documents.collection(RIS_ROWS).create_index("exam_complete_at")
    _indexed.add(documents)


def ris_bucket(ctx: Context) -> str:
    return f"{ctx.settings.bucket_prefix}-{RIS_BUCKET}"


# -- filters -----------------------------------------------------------------------------------


@dataclass
class Filters:
    since: datetime
    until: datetime
    modality: str | None = None
    source: str | None = None
    priority: str | None = None  # a RIS priority (STAT...) or an AI risk category (high...)
    #: The parameters as asked (``to`` defaults to now): what a memoized report is found by.
    key: tuple[Any, ...] = ()

    def admits(self, t: Timeline) -> bool:
        if self.modality and t.modality.upper() != self.modality.upper():
            return False
        if self.source and t.source != self.source:
            return False
        if self.priority:
            wanted = self.priority.lower()
            if wanted in AI_RISKS:
                return t.risk == wanted
            return t.priority.upper() == self.priority.upper()
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.since,
            "to": self.until,
            "modality": self.modality,
            "source": self.source,
            "priority": self.priority,
        }


def moment(name: str, text: str | None, zone: tzinfo, end: bool = False) -> datetime | None:
    """A ``from``/``to`` parameter: an ISO date (a whole local day; ``to`` includes it) or an
    ISO date and time (local when it has no offset)."""
    if not text:
        return None
    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(), zone).astimezone(UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{name}={text!r} is not an ISO 8601 date or date-time, e.g. 2026-03-01 or "
            "2026-03-01T08:00:00+01:00"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)).astimezone(UTC)


def make_filters(
    zone: tzinfo,
    since: str | None = None,
    until: str | None = None,
    modality: str | None = None,
    source: str | None = None,
    priority: str | None = None,
) -> Filters:
    end = moment("to", until, zone, end=True) or now()
    start = moment("from", since, zone) or end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise BadRequest("`from` must be before `to`")
    asked = (since, until, modality, source, priority)
    return Filters(start, end, modality or None, source or None, priority or None, asked)


# -- timelines ---------------------------------------------------------------------------------


#: Study id -> (acquisition time, sender) of its first received instance: that instance never
#: changes once recorded, so each process reads it once per study (bounded, then cleared).
_FIRST: WeakKeyDictionary[DocumentStore, dict[str, tuple[datetime | None, str | None]]] = (
    WeakKeyDictionary()
)
FIRST_CACHE = 100_000


def _first_instance(documents: DocumentStore, study_id: str) -> tuple[datetime | None, str | None]:
    """(acquired, source) of the study's first received instance (``study_id, received_at``
    index, one row)."""
    cache = _FIRST.setdefault(documents, {})
    known = cache.get(study_id)
    if known is not None:
        return known
    cursor = (
        documents.collection("instances")
        .find({"study_id": study_id})
        .sort("received_at", 1)
        .limit(1)
    )
    first = next(iter(cursor), None)
    if first is None:
        return None, None  # not cached: the instance may be recorded in a moment
    if len(cache) >= FIRST_CACHE:
        cache.clear()
    cache[study_id] = facts = (acquired_at(first), first.get("source"))
    return facts


def acquired_at(instance: Document) -> datetime | None:
    """When the instance was acquired: its receipt less the lag measured then, if plausible."""
    lag, received = instance.get(ACQUIRED_TO_RECEIVED), instance.get("received_at")
    if (
        isinstance(lag, int | float)
        and isinstance(received, datetime)
        and LAG_RANGE[0] <= lag <= LAG_RANGE[1]
    ):
        return received - timedelta(seconds=lag)
    return None


def ris_rows_of(documents: DocumentStore, studies: list[Document]) -> dict[str, Document]:
    """Study id -> its RIS row: de-identified study UID -> the study summary's (pseudonymous)
    AccessionNumber -> the row imported under that pseudonym (two ``_id $in`` reads)."""
    uids = {
        (s.get("deid") or {}).get("study_uid"): s["_id"]
        for s in studies
        if (s.get("deid") or {}).get("study_uid")
    }
    if not uids:
        return {}
    accession_of = {}
    for summary in documents.collection(STUDY_SUMMARIES).find({"_id": {"$in": list(uids)}}):
        accession = (summary.get("attributes") or {}).get("AccessionNumber")
        if accession:
            accession_of[str(accession)] = uids[summary["_id"]]
    if not accession_of:
        return {}
    rows = documents.collection(RIS_ROWS).find({"_id": {"$in": list(accession_of)}})
    return {accession_of[row["_id"]]: row for row in rows}


def timeline_of(documents: DocumentStore, study: Document, row: Document | None) -> Timeline:
    """One study's timeline: its events, the acquisition measured at receipt, its RIS row."""
    extra: dict[str, datetime] = {}
    acquired, sender = _first_instance(documents, study["_id"])
    if acquired is not None:
        extra["acquired"] = acquired
    for stage, key in (
        ("ordered", "ordered_at"),
        ("exam_complete", "exam_complete_at"),
        ("final_report", "final_report_at"),
    ):
        if row and isinstance(row.get(key), datetime):
            extra[stage] = row[key]
    analysis = study.get("analysis") or {}
    risk = ((analysis.get("risk") or {}).get("category")) or "pending"
    modality = study.get("modality") or (row or {}).get("modality") or "unknown"
    return Timeline(
        study=study["_id"],
        stages=intervals.timeline_from_events(study["_id"], study.get("events", []), extra),
        modality=str(modality),
        priority=str((row or {}).get("priority") or "unknown"),
        risk=str(risk),
        source=str(study.get("source") or sender or "unknown"),
        state=str(study.get("state", "")),
        failed=study.get("state") == "failed",
    )


#: Studies whose RIS rows are looked up in one query.
BATCH = 500
#: RIS rows written per transaction of the embedded engine (other writers wait this long).
WRITE_BATCH = 1000
#: An exam complete in the RIS this long without de-identified images is stuck.
AWAITING_AFTER = 3600.0
STUCK_LIMIT = 100
#: Flagged rows listed in an import's report itself.
REPORT_ROWS = 1000


def timelines(ctx: Context, filters: Filters, joined: set[str] | None = None) -> list[Timeline]:
    """The timelines of studies received in the filter's range that pass its filters
    (``joined`` collects the ids of the RIS rows they joined)."""
    ensure_indexes(ctx.documents)
    cursor = (
        ctx.documents.collection("studies")
        .find({"created_at": {"$gte": filters.since, "$lt": filters.until}})
        .sort("created_at", 1)
    )
    found: list[Timeline] = []
    batch: list[Document] = []
    for study in [*cursor, None]:
        if study is not None:
            batch.append(study)
            if len(batch) < BATCH:
                continue
        rows = ris_rows_of(ctx.documents, batch)
        if joined is not None:
            joined.update(row["_id"] for row in rows.values())
        found += [timeline_of(ctx.documents, s, rows.get(s["_id"])) for s in batch]
        batch = []
    return [t for t in found if filters.admits(t)]


def report(ctx: Context, filters: Filters) -> dict[str, Any]:
    """``GET /api/tat``: the figures, cuts, trend, stuck studies and the last import, from the
    stored facts (:mod:`.facts`, refreshed first); reused while no fact changed, and for
    ``tat_report_ttl_s`` seconds after (recomputed meanwhile in the background)."""
    ensure_indexes(ctx.documents)
    generation = facts.refresh(ctx)
    key = filters.key or tuple(sorted(filters.as_dict().items()))
    memo = facts.memo_get(ctx, key, generation)
    if memo is not None:
        answer, current = memo
        if not current:
            facts.recompute_later(ctx, key, lambda: _compute(ctx, filters, key, generation))
        answer["stale"] = not current
        return dict(answer)
    return _compute(ctx, filters, key, generation)


def _compute(
    ctx: Context, filters: Filters, key: tuple[Any, ...], generation: int
) -> dict[str, Any]:
    chosen = facts.facts_in(ctx, filters)
    joined = facts.joined_ris(ctx, filters)
    at = now()
    answer = intervals.analyse(chosen, ctx.settings.site_timezone, at)
    answer["stuck"] = sorted(
        answer["stuck"] + awaiting_images(ctx, filters, joined), key=lambda s: -s["waiting_s"]
    )[:STUCK_LIMIT]
    answer["filters"] = filters.as_dict()
    answer["last_import"] = last_import(ctx)
    answer["choices"] = {
        "modality": sorted({t.modality for t in chosen}),
        "source": sorted({t.source for t in chosen}),
        "priority": ["STAT", "URGENT", "ROUTINE", *AI_RISKS],
    }
    answer["kpis"]["reader_agreement"] = agreement.reader_agreement(
        ctx.documents, [t.study for t in chosen]
    )
    answer["computed_at"] = at
    if not any(filters.key):  # the department-wide figures, for Prometheus and Grafana
        for name, figures in {**answer["intervals"], **answer["end_to_end"]}.items():
            for figure in ("p50", "p90"):
                if figures.get(figure) is not None:
                    TAT_SECONDS.labels(name, figure).set(figures[figure])
    facts.memo_put(ctx, key, generation, answer)
    answer["stale"] = False
    return answer


def awaiting_images(ctx: Context, filters: Filters, joined: set[str]) -> list[dict[str, Any]]:
    """RIS exams complete in the range for over :data:`AWAITING_AFTER` whose images have not
    reached a de-identified study: stuck before Radpipe (listed by accession pseudonym)."""
    if filters.source:
        return []  # the RIS does not say which modality sent what
    rows = ctx.documents.collection(RIS_ROWS).find(
        {"exam_complete_at": {"$gte": filters.since, "$lt": filters.until}}
    )
    summaries = ctx.documents.collection(STUDY_SUMMARIES)
    at = now()
    found = []
    for row in rows:
        waiting = (at - row["exam_complete_at"]).total_seconds()
        if row["_id"] in joined or waiting <= AWAITING_AFTER:
            continue
        item = Timeline(
            f"ris:{row['_id']}",
            {},
            modality=str(row.get("modality") or "unknown"),
            priority=str(row.get("priority") or "unknown"),
            risk="pending",
        )
        if not filters.admits(item):
            continue
        if summaries.find_one({"attributes.AccessionNumber": row["_id"]}) is not None:
            continue  # the study arrived, outside the range
        found.append(
            {
                "study": item.study,
                "stage": "exam_complete",
                "waiting_s": round(waiting, 1),
                "limit_s": AWAITING_AFTER,
                "modality": item.modality,
                "priority": item.priority,
                "risk": item.risk,
            }
        )
    return found


# -- RIS import --------------------------------------------------------------------------------


def import_ris(
    ctx: Context, data: bytes, by: str, mapping: dict[str, str] | None = None
) -> tuple[dict[str, Any], bool]:
    """Import a RIS CSV export; returns (the data-quality report, whether it was new).

    The file's SHA-256 names the import: the same file again changes nothing and answers the
    first report. The raw file goes to its own bucket; clean rows are upserted under their
    accession pseudonym; flagged rows are kept aside with their reasons; the import record,
    written last, is the commit point (a crash before it leaves a re-import to finish).
    """
    ensure_indexes(ctx.documents)
    digest = hashlib.sha256(data).hexdigest()
    imports = ctx.documents.collection(IMPORTS)
    existing = imports.find_one({"_id": digest})
    if existing is not None:
        return _public_import(existing), False
    zone = ctx.settings.site_timezone
    secret = pseudonym_key(ctx.settings)
    parsed = ris.parse(data, lambda value: accession_pseudonym(secret, value), zone, now(), mapping)
    bucket = ris_bucket(ctx)
    ctx.objects.ensure_bucket(bucket)
    ctx.objects.put(bucket, f"{digest}.csv", data, "text/csv")
    summaries = ctx.documents.collection(STUDY_SUMMARIES)
    rows = ctx.documents.collection(RIS_ROWS)
    matched = 0
    for start in range(0, len(parsed.clean), WRITE_BATCH):
        chunk = parsed.clean[start : start + WRITE_BATCH]
        wanted = {"attributes.AccessionNumber": {"$in": [row.accession for row in chunk]}}
        found = list(summaries.find(wanted))
        known = {(s.get("attributes") or {}).get("AccessionNumber") for s in found}
        matched += sum(row.accession in known for row in chunk)
        joined_studies = [str(s["study_id"]) for s in found if s.get("study_id")]
        with ctx.documents.exclusive():  # one transaction per batch on the embedded engine
            for row in chunk:
                rows.update_one(
                    {"_id": row.accession},
                    {
                        "$set": {
                            "modality": row.modality,
                            "priority": row.priority,
                            **row.times,
                            "import_id": digest,
                            "line": row.line,
                        }
                    },
                    upsert=True,
                )
        facts.mark_stale(ctx.documents, joined_studies)  # their facts take the RIS times
    facts.clear_memo(ctx.documents)
    flagged = ctx.documents.collection(RIS_FLAGGED)
    for start in range(0, len(parsed.flagged), WRITE_BATCH):
        with ctx.documents.exclusive():
            for row in parsed.flagged[start : start + WRITE_BATCH]:
                flagged.update_one(
                    {"_id": f"{digest}:{row.line}"},
                    {"$set": {**row.as_dict(), "import_id": digest}},
                    upsert=True,
                )
    reasons: dict[str, int] = {}
    for row in parsed.flagged:
        for reason in row.reasons:
            kind = re.sub(r" '.*'$", "", reason.split(":")[0].split(" (")[0])
            reasons[kind] = reasons.get(kind, 0) + 1
    record = {
        "_id": digest,
        "at": now(),
        "by": by,
        "bytes": len(data),
        "object": f"{bucket}/{digest}.csv",
        "rows": parsed.rows,
        "clean": len(parsed.clean),
        "flagged": len(parsed.flagged),
        "matched": matched,
        "mapping": parsed.mapping.as_dict(),
        "reasons": reasons,
        # The report holds the first flagged rows (a document stays far below MongoDB's
        # 16 MiB); every one is in RIS_FLAGGED (``GET /api/tat/imports/{id}/flagged``).
        "flagged_rows": [row.as_dict() for row in parsed.flagged[:REPORT_ROWS]],
        "flagged_rows_truncated": len(parsed.flagged) > REPORT_ROWS,
    }
    try:
        imports.insert_one(record)
    except DuplicateKeyError:  # the same file imported at the same time: one record wins
        return _public_import(imports.find_one({"_id": digest})), False
    log.info("tat.import", rows=parsed.rows, clean=len(parsed.clean), flagged=len(parsed.flagged))
    return _public_import(imports.find_one({"_id": digest}) or record), True  # as stored


def _public_import(record: Document) -> dict[str, Any]:
    return {("id" if k == "_id" else k): v for k, v in record.items()}


def last_import(ctx: Context) -> dict[str, Any] | None:
    ensure_indexes(ctx.documents)
    for record in ctx.documents.collection(IMPORTS).find({}).sort("at", -1).limit(1):
        return _public_import(record)
    return None


def get_import(ctx: Context, import_id: str) -> dict[str, Any]:
    record = ctx.documents.collection(IMPORTS).find_one({"_id": import_id})
    if record is None:
        raise NotFound(f"no RIS import {import_id}; GET /api/tat/imports/latest for the last")
    return _public_import(record)


def flagged_rows(ctx: Context, import_id: str, offset: int, limit: int) -> dict[str, Any]:
    """A page of an import's flagged rows, in file order (the ``import_id, line`` index)."""
    get_import(ctx, import_id)
    query = {"import_id": import_id}
    flagged = ctx.documents.collection(RIS_FLAGGED)
    page = flagged.find(query).sort([("import_id", 1), ("line", 1)]).skip(offset).limit(limit)
    return {
        "total": flagged.count_documents(query),
        "offset": offset,
        "rows": [{k: v for k, v in row.items() if k not in ("_id", "import_id")} for row in page],
    }
