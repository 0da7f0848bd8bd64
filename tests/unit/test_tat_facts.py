"""TAT facts (``tat_facts``): the report is computed from stored per-study rows, refreshed
incrementally when a study changes state or gains an event, and after a RIS import joins it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from radpipe.common.context import Context
from radpipe.common.dicomindex import STUDY_SUMMARIES
from radpipe.common.studies import StudyRepository, StudyState
from radpipe.common.tat import accession_pseudonym, pseudonym_key
from radpipe.tat import facts, service


def _study(ctx: Context, study_id: str, minutes_ago: float = 30) -> StudyRepository:
    repo = StudyRepository(ctx.documents)
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    ctx.documents.collection("studies").insert_one(
        {
            "_id": study_id,
            "state": "received",
            "version": 1,
            "created_at": at,
            "updated_at": at,
            "modality": "CT",
            "source": "ct1",
            "deid": {"study_uid": f"2.25.{len(study_id)}"},
            "events": [{"type": "received", "at": at, "version": 1, "detail": {}}],
        }
    )
    return repo


def test_the_report_follows_state_changes_and_events_through_the_facts(ctx: Context) -> None:
    ctx.settings.tat_report_ttl_s = 0
    repo = _study(ctx, "s1")
    first = service.report(ctx, service.make_filters(UTC))
    assert first["studies"] == 1 and first["intervals"] == {}
    fact = ctx.documents.collection(facts.FACTS).find_one({"_id": "s1"})
    assert fact is not None and fact["modality"] == "CT" and fact["offsets"] == {"received": 0.0}
    assert "events" not in fact  # the fact holds what the report needs, not the study

    repo.transition("s1", StudyState.STABLE)
    second = service.report(ctx, service.make_filters(UTC))
    assert second["intervals"]["received→stable"]["count"] == 1

    repo.add_event("s1", "alert.acknowledged", {})  # not a state change: events_at
    third = service.report(ctx, service.make_filters(UTC))
    assert third["intervals"]["stable→acknowledged"]["count"] == 1
    stored = ctx.documents.collection(facts.FACTS).find_one({"_id": "s1"})
    assert stored is not None and set(stored["stages"]) == {"received", "stable", "acknowledged"}


def test_an_unchanged_store_answers_the_memoized_report_and_refresh_writes_nothing(
    ctx: Context,
) -> None:
    _study(ctx, "s1")
    generation = facts.refresh(ctx)
    assert facts.refresh(ctx) == generation  # nothing changed: no fact written
    answer = service.report(ctx, service.make_filters(UTC))
    ctx.documents.collection(facts.FACTS).delete_one({"_id": "s1"})  # behind the memo's back
    assert service.report(ctx, service.make_filters(UTC))["studies"] == answer["studies"] == 1


def test_a_ris_import_rebuilds_the_facts_of_the_studies_it_joins(ctx: Context) -> None:
    ctx.settings.tat_report_ttl_s = 0
    _study(ctx, "s1", minutes_ago=60)
    key = pseudonym_key(ctx.settings)
    ctx.documents.collection(STUDY_SUMMARIES).insert_one(
        {
            "_id": "2.25.2",
            "study_id": "s1",
            "attributes": {"AccessionNumber": accession_pseudonym(key, "ACC-1")},
        }
    )
    assert service.report(ctx, service.make_filters(UTC))["studies"] == 1
    order = datetime.now(UTC) - timedelta(hours=3)
    csv = (
        "Accession,Modality,Priority,Order Time,Exam Complete\n"
        f"ACC-1,CT,STAT,{order:%Y-%m-%d %H:%M},{order + timedelta(hours=1):%Y-%m-%d %H:%M}\n"
    )
    report, _ = service.import_ris(ctx, csv.encode(), "manager-1")
    assert report["matched"] == 1
    answer = service.report(ctx, service.make_filters(UTC, priority="STAT"))
    assert answer["studies"] == 1 and answer["intervals"]["ordered→exam_complete"]["count"] == 1
    fact = ctx.documents.collection(facts.FACTS).find_one({"_id": "s1"})
    assert fact is not None and fact["priority"] == "STAT"
    assert fact["ris"] == accession_pseudonym(key, "ACC-1")
    assert list(ctx.documents.collection(facts.STALE).find({})) == []


def test_the_notify_worker_keeps_the_facts_current_before_anyone_asks(ctx: Context) -> None:
    """The notify worker's thread builds the facts as it starts and refreshes them on its
    interval: a manager's first GET /api/tat does not pay for every study."""
    import threading
    import time

    from radpipe.notify.sweeper import refresh_tat_facts

    repo = _study(ctx, "s1")
    stop = threading.Event()
    worker = threading.Thread(target=refresh_tat_facts, args=(stop, 0.05, lambda: ctx))
    worker.start()
    stored = ctx.documents.collection(facts.FACTS)
    try:
        deadline = time.monotonic() + 20
        while stored.find_one({"_id": "s1"}) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stored.find_one({"_id": "s1"}) is not None  # built at start
        repo.transition("s1", StudyState.STABLE)
        while time.monotonic() < deadline:
            fact = stored.find_one({"_id": "s1"})
            if fact is not None and "stable" in fact["stages"]:
                break
            time.sleep(0.02)
        fact = stored.find_one({"_id": "s1"})
        assert fact is not None and set(fact["stages"]) == {"received", "stable"}  # refreshed
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()  # stops when told
