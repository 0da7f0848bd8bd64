"""The embedded default engine: its queries use indexes, it refuses what it does not implement,
and it converts a data dir written by the earlier engine (litemongo) once."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from radpipe.common.alerts import NEWEST_FIRST, OPEN_QUERY, ensure_alert_indexes
from radpipe.common.docstore import EmbeddedDocumentStore, make_document_store, open_embedded
from radpipe.common.settings import Settings
from radpipe.common.sqlitedocs import SqliteCollection, SqliteDocumentStore, UnsupportedQuery
from radpipe.common.studies import WORKLIST_ORDER, StudyRepository


@pytest.fixture
def store(tmp_path: Path) -> SqliteDocumentStore:
    documents = SqliteDocumentStore(tmp_path / "radpipe.sqlite3")
    StudyRepository(documents).ensure_indexes()
    ensure_alert_indexes(documents)
    return documents


def _plan(collection: object, query: object) -> str:
    assert isinstance(collection, SqliteCollection)
    return " | ".join(collection.explain(query))  # type: ignore[arg-type]


def _indexed(plan: str) -> bool:
    """Every table access goes through an index and nothing is sorted after reading."""
    steps = plan.split(" | ")
    return "TEMP B-TREE" not in plan and all(
        "USING" in step for step in steps if step.startswith(("SCAN", "SEARCH"))
    )


def test_product_queries_are_answered_by_indexes(store: SqliteDocumentStore) -> None:
    repo = StudyRepository(store)
    studies, alerts, instances = repo.studies, repo.alerts, repo.instances
    worklist = studies.find({}).sort(WORKLIST_ORDER).skip(100).limit(50)
    by_state = studies.find({"state": "alerted"}).sort(WORKLIST_ORDER).limit(50)
    open_alerts = alerts.find(OPEN_QUERY).sort(NEWEST_FIRST).limit(100)
    banner = alerts.find({**OPEN_QUERY, "kind": "clinical"}).sort(NEWEST_FIRST).limit(50)
    due = alerts.find({**OPEN_QUERY, "next_page_at": {"$lte": datetime.now(UTC)}})
    all_alerts = alerts.find({}).sort(NEWEST_FIRST).limit(100)
    plans = {
        "worklist": _plan(studies, worklist),
        "worklist by state": _plan(studies, by_state),
        "count by state": _plan(studies, {"state": "alerted"}),
        "count all": _plan(studies, {}),
        "open alerts": _plan(alerts, open_alerts),
        "open alerts banner": _plan(alerts, banner),
        "due alert timers": _plan(alerts, due),
        "alerts": _plan(alerts, all_alerts),
        "study by id": _plan(studies, studies.find({"_id": "s1"})),
        "instances of a study": _plan(
            instances, instances.find({"study_id": "s1"}).sort("received_at", 1)
        ),
        "WADO-RS series": _plan(
            repo.dicom_index,
            repo.dicom_index.find(
                {"attributes.StudyInstanceUID": "1.2", "attributes.SeriesInstanceUID": "1.2.3"}
            ),
        ),
    }
    for name, plan in plans.items():
        assert _indexed(plan), f"{name}: {plan}"
    flagged = store.collection("flagged")
    flagged.create_index([("open", 1), ("created_at", -1)])
    flagged.insert_one({"_id": "t", "open": True})
    flagged.insert_one({"_id": "one", "open": 1})
    open_first = flagged.find({"open": True}).sort("created_at", -1).limit(5)
    assert _indexed(_plan(flagged, open_first)) and [d["_id"] for d in open_first] == ["t"]
    assert "risk_score" in plans["worklist"] and "state" in plans["worklist by state"]
    assert "open" in plans["open alerts"] and "next_page_at" in plans["due alert timers"]


def _searched(plan: str) -> bool:
    """Every table access goes through an index (a sort of what an index found is allowed:
    the rows of one study, or those a selective key matched)."""
    steps = plan.split(" | ")
    return all("USING" in step for step in steps if step.startswith(("SCAN", "SEARCH")))


@pytest.mark.parametrize(
    ("level", "search", "scope", "plan"),
    [
        ("study", "limit=101", (), "SCAN ix_dicom_studies_attributes_StudyDate"),
        ("study", "ModalitiesInStudy=CT&limit=101", (), "SCAN ix_dicom_studies_attributes_Study"),
        ("study", "StudyDate=20240101-20240131", (), "SEARCH ix_dicom_studies_attributes_StudyD"),
        ("study", "PatientName=doe*", (), "SEARCH ix_dicom_studies_folded_PatientName"),
        ("study", "PatientName=doe^john", (), "SEARCH ix_dicom_studies_folded_PatientName"),
        ("study", "PatientID=RP001", (), "SEARCH ix_dicom_studies_attributes_PatientID"),
        ("study", "PatientID=RP00*", (), "SEARCH ix_dicom_studies_folded_PatientID"),
        ("study", "AccessionNumber=A1*", (), "SEARCH ix_dicom_studies_folded_AccessionNumber"),
        ("study", "StudyInstanceUID=1.2.3,1.2.4", (), "SEARCH sqlite_autoindex_docs_dicom_stud"),
        ("series", "limit=101", (), "SCAN ix_dicom_series_attributes_StudyDate"),
        ("series", "", ("1.2.3",), "SEARCH ix_dicom_series_attributes_StudyInstanceUID"),
        ("series", "Modality=CT&limit=101", (), "SEARCH ix_dicom_series_attributes_Modality"),
        ("instance", "", ("1.2.3", "1.2.3.4"), "SEARCH ix_dicom_index_attributes_SeriesInst"),
        ("instance", "", ("1.2.3",), "SEARCH ix_dicom_index_attributes_StudyInstanceUID"),
        ("instance", "limit=101", (), "SCAN ix_dicom_index_attributes_StudyDate"),
    ],
)
def test_qido_searches_are_answered_by_indexes(
    store: SqliteDocumentStore, level: str, search: str, scope: tuple[str, ...], plan: str
) -> None:
    """Each QIDO-RS search's store query, study and series level from their summaries; an
    unfiltered or modality search walks the result order's index and stops at the limit."""
    from urllib.parse import parse_qsl

    from radpipe.ingest import qido

    query = qido.parse_query(level, parse_qsl(search, keep_blank_values=True))
    filter, residual = qido.store_filter(query, *scope)
    assert residual == {}
    collection = store.collection(qido._COLLECTION[level])
    cursor = collection.find(filter).sort(qido.ORDER[level]).limit(101)
    found = _plan(collection, cursor)
    assert _searched(found), found
    assert found.replace(f"docs_{collection.name} USING INDEX ", "").startswith(plan), found
    if plan.startswith("SCAN") or "Modality" in plan:
        assert "TEMP B-TREE" not in found  # in result order: reading stops at the limit


def test_unsupported_queries_and_updates_are_refused_clearly(store: SqliteDocumentStore) -> None:
    col = store.collection("things")
    col.insert_one({"_id": "a", "tags": ["x"], "n": 1})
    refused = [
        lambda: list(col.find({"n": {"$regex": "1"}})),  # only ^...$ is accepted
        lambda: list(col.find({"n": {"$regex": "^a+$"}})),
        lambda: list(col.find({"n": {"$regex": r"^\d$"}})),
        lambda: list(col.find({"n": {"$regex": "^a.*$", "$options": "i"}})),
        lambda: list(col.find({"$or": [{"n": 1}]})),
        lambda: list(col.find({"tags": ["x"]})),
        lambda: list(col.find({"n": 1}, {"n": 1})),
        lambda: list(col.find({"bad name": 1})),
        lambda: col.update_one({"_id": "a"}, {"$pull": {"tags": "x"}}),
        lambda: col.update_one({"_id": "a"}, {"n": 2}),
        lambda: col.update_one({"_id": "a"}, {"$inc": {"tags": 1}}),
        lambda: col.create_index("n", partialFilterExpression={"n": 1}),
    ]
    for attempt in refused:
        with pytest.raises(UnsupportedQuery):
            attempt()
    assert col.find_one({"_id": "a"}) == {"_id": "a", "tags": ["x"], "n": 1}


def test_a_failed_update_leaves_the_document_and_the_lock(store: SqliteDocumentStore) -> None:
    col = store.collection("things")
    col.insert_one({"_id": "a", "n": 1})
    with pytest.raises(UnsupportedQuery):
        col.update_one({"_id": "a"}, {"$set": {"n": 2}, "$rename": {"n": "m"}})
    assert col.find_one({"_id": "a"})["n"] == 1
    col.update_one({"_id": "a"}, {"$inc": {"n": 1}})  # the writer lock was released
    assert col.find_one({"_id": "a"})["n"] == 2


def _write_old_data_dir(folder: Path, studies: int) -> None:
    old = EmbeddedDocumentStore(folder, "radpipe")
    repo = StudyRepository(old)
    at = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    for n in range(studies):
        repo.studies.insert_one(
            {
                "_id": f"s{n}",
                "state": "analyzed" if n % 2 else "received",
                "created_at": at + timedelta(minutes=n),
                "updated_at": at + timedelta(minutes=n),
                "events": [{"type": "received", "at": at, "version": 1, "detail": {}}],
                **({"analysis": {"risk": {"score": n / 100}}} if n % 2 else {}),
            }
        )
    old.collection("alerts").insert_one(
        {"_id": "s1-v1", "study_id": "s1", "created_at": at, "acknowledged_at": None}
    )
    old.collection("users").insert_one({"_id": "admin", "role": "admin", "created_at": at})
    old.close()


def test_a_litemongo_data_dir_is_converted_once_with_a_backup(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "documents"
    _write_old_data_dir(folder, 30)
    settings = Settings(data_dir=tmp_path / "data", all_in_one=True)
    store = make_document_store(settings)
    assert isinstance(store, SqliteDocumentStore)
    repo = StudyRepository(store)
    repo.ensure_indexes()
    docs, total = repo.list(limit=5)
    assert total == 30
    assert [d["_id"] for d in docs] == ["s29", "s27", "s25", "s23", "s21"]  # risk backfilled
    assert docs[0]["created_at"] == datetime(2026, 5, 1, 8, 29, tzinfo=UTC)
    assert store.collection("alerts").find_one({"acknowledged_at": None})["_id"] == "s1-v1"
    assert store.collection("users").find_one({"_id": "admin"})["role"] == "admin"
    backup = folder / "radpipe.litemongo-backup"
    assert not (folder / "radpipe").exists() and (backup / "studies").is_file()
    repo.set_fields("s0", {"note": "written after"})
    store.close()
    again = open_embedded(folder, "radpipe")  # opening again converts nothing
    assert again.collection("studies").find_one({"_id": "s0"})["note"] == "written after"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        backup.name,
        "radpipe.sqlite3",
        "radpipe.sqlite3-shm",
        "radpipe.sqlite3-wal",
        "radpipe.sqlite3.writers.lock",
    ]
    again.close()


def _open_and_count(folder: str) -> int:
    return open_embedded(Path(folder), "radpipe").collection("studies").count_documents({})


def test_processes_opening_at_once_convert_once(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    _write_old_data_dir(folder, 40)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        counts = pool.map(_open_and_count, [str(folder)] * 3)
    assert counts == [40, 40, 40]
    assert [p.name for p in folder.iterdir() if "backup" in p.name] == ["radpipe.litemongo-backup"]
