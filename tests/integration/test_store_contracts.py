"""One contract suite for every object-store and document-store adapter available.

S3 runs against a real SeaweedFS server; MongoDB runs when RADPIPE_TEST_MONGO_URL is set. The
document contract covers every query and update operator ``services/`` uses, on the embedded
default (SQLite), the earlier embedded engine (litemongo, kept for migration) and MongoDB.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from radpipe.common.docstore import EmbeddedDocumentStore
from radpipe.common.errors import NotFound
from radpipe.common.objectstore import FolderObjectStore, S3ObjectStore
from radpipe.common.ports import DocumentStore, ObjectStore

from ..servers import DOCUMENT_ENGINES, S3Server, document_store


@pytest.fixture(params=["folder", "s3"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, str]]:
    bucket = "rp-" + secrets.token_hex(6)  # each test isolated by its own bucket
    store: ObjectStore
    if request.param == "folder":
        store = FolderObjectStore(tmp_path / "objects")
    else:
        s3: S3Server = request.getfixturevalue("s3")
        store = S3ObjectStore(s3.endpoint, s3.access_key, s3.secret_key)
    store.ensure_bucket(bucket)
    yield store, bucket


@pytest.fixture(params=DOCUMENT_ENGINES)
def documents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    store = document_store(request.param, tmp_path, "the document contract")
    yield store
    store.close()


def test_object_roundtrip_list_delete(objects: tuple[ObjectStore, str]) -> None:
    store, bucket = objects
    store.put(bucket, "a/b/one.dcm", b"\x00DICM\xff" * 100, "application/dicom")
    store.put(bucket, "a/two.dcm", b"two")
    store.put(bucket, "c/three.dcm", b"three")
    assert store.get(bucket, "a/b/one.dcm") == b"\x00DICM\xff" * 100
    assert store.exists(bucket, "a/two.dcm") and not store.exists(bucket, "a/none.dcm")
    assert sorted(store.list(bucket, "a/")) == ["a/b/one.dcm", "a/two.dcm"]
    store.put(bucket, "a/two.dcm", b"replaced")
    assert store.get(bucket, "a/two.dcm") == b"replaced"
    store.delete(bucket, "a/two.dcm")
    assert sorted(store.list(bucket)) == ["a/b/one.dcm", "c/three.dcm"]
    store.ping()


def test_put_file_streams_exactly_length_bytes(objects: tuple[ObjectStore, str]) -> None:
    import io

    store, bucket = objects
    payload = bytes(range(256)) * 5000
    store.put_file(bucket, "big/one.dcm", io.BytesIO(payload), len(payload), "application/dicom")
    assert store.get(bucket, "big/one.dcm") == payload


class _Writes:
    """A binary file that keeps what was written and the size of each write."""

    def __init__(self) -> None:
        self.data, self.sizes = bytearray(), []

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        self.sizes.append(len(chunk))
        return len(chunk)


def test_copy_to_streams_the_object_in_chunks(objects: tuple[ObjectStore, str]) -> None:
    import io

    from radpipe.common.objectstore import CHUNK

    store, bucket = objects
    payload = secrets.token_bytes(3 * CHUNK + 12345)  # a large multi-frame, in small
    store.put_file(bucket, "mf/one.dcm", io.BytesIO(payload), len(payload))
    out = _Writes()
    assert store.copy_to(bucket, "mf/one.dcm", out) == len(payload)  # type: ignore[arg-type]
    assert bytes(out.data) == payload
    assert len(out.sizes) >= 4 and max(out.sizes) <= CHUNK  # never held whole


def test_missing_object_raises_not_found(objects: tuple[ObjectStore, str]) -> None:
    store, bucket = objects
    with pytest.raises(NotFound, match="does not exist"):
        store.get(bucket, "missing.dcm")
    out = _Writes()
    with pytest.raises(NotFound, match="does not exist"):
        store.copy_to(bucket, "missing.dcm", out)  # type: ignore[arg-type]
    assert out.sizes == []


def test_s3_refuses_wrong_credentials(s3: S3Server) -> None:
    from minio.error import S3Error

    bad = S3ObjectStore(s3.endpoint, s3.access_key, "wrong-secret")
    with pytest.raises(S3Error):
        bad.ensure_bucket("rp-" + secrets.token_hex(6))


def test_documents_crud_and_atomic_updates(documents: DocumentStore) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    col.insert_one({"_id": "s1", "state": "received", "n": 0, "events": []})
    col.insert_one({"_id": "s2", "state": "stable", "n": 5, "events": []})
    moved = col.find_one_and_update(
        {"_id": "s1", "state": {"$in": ["received"]}},
        {"$set": {"state": "stable"}, "$inc": {"n": 2}, "$push": {"events": {"type": "stable"}}},
        return_document=ReturnDocument.AFTER,
    )
    assert (
        moved["state"] == "stable" and moved["n"] == 2 and moved["events"] == [{"type": "stable"}]
    )
    again = col.find_one_and_update(
        {"_id": "s1", "state": {"$in": ["received"]}}, {"$set": {"state": "x"}}
    )
    assert again is None  # the guard makes transitions idempotent
    col.update_one({"_id": "s3"}, {"$setOnInsert": {"state": "received", "n": 9}}, upsert=True)
    assert col.count_documents({"state": "stable"}) == 2
    assert [d["_id"] for d in col.find({}).sort("n", -1).skip(1).limit(1)] == ["s2"]
    assert col.find_one({"_id": "s3"})["n"] == 9
    col.delete_one({"_id": "s3"})
    assert col.find_one({"_id": "s3"}) is None
    col.create_index("state")
    documents.ping()


def test_first_writer_creates_its_bucket(objects: tuple[ObjectStore, str]) -> None:
    store, _ = objects
    bucket = "rp-new-" + secrets.token_hex(4)
    assert list(store.list(bucket)) == []
    store.put(bucket, "k.dcm", b"data")
    assert store.get(bucket, "k.dcm") == b"data"


def _ids(cursor: object) -> list[str]:
    return [d["_id"] for d in cursor]  # type: ignore[attr-defined]


def test_documents_datetimes_round_trip_aware_compare_and_sort(documents: DocumentStore) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    base = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)  # BSON keeps milliseconds
    plus_two = timezone(timedelta(hours=2))
    col.insert_one({"_id": "late", "at": base + timedelta(days=1)})
    col.insert_one({"_id": "early", "at": (base - timedelta(hours=1)).astimezone(plus_two)})
    col.insert_one({"_id": "mid", "at": base, "nested": {"at": base}})
    col.insert_one({"_id": "text", "at": "2026-03-01"})
    mid = col.find_one({"_id": "mid"})
    assert mid["at"] == base and mid["at"].tzinfo is not None and mid["nested"]["at"] == base
    assert col.find_one({"_id": "early"})["at"] == base - timedelta(hours=1)
    assert col.find_one({"at": base})["_id"] == "mid"
    assert _ids(col.find({"at": {"$gte": base}}).sort("at", 1)) == ["mid", "late"]
    assert _ids(col.find({"at": {"$lt": base}})) == ["early"]  # a string is not a date
    dated = {"at": {"$gt": base - timedelta(days=9)}}
    assert _ids(col.find(dated).sort("at", -1)) == ["late", "mid", "early"]


def test_documents_null_matches_missing_and_membership(documents: DocumentStore) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    col.insert_one({"_id": "a", "ack": None, "state": "received"})
    col.insert_one({"_id": "b", "state": "stable"})
    col.insert_one({"_id": "c", "ack": "who", "state": "signed", "flag": True})
    col.insert_one({"_id": "d", "ack": "", "state": "failed", "flag": 1})
    assert sorted(_ids(col.find({"ack": None}))) == ["a", "b"]
    assert sorted(_ids(col.find({"ack": {"$ne": None}}))) == ["c", "d"]
    assert sorted(_ids(col.find({"state": {"$ne": "stable"}}))) == ["a", "c", "d"]
    assert sorted(_ids(col.find({"ack": {"$ne": "who"}}))) == ["a", "b", "d"]
    assert sorted(_ids(col.find({"ack": {"$exists": True}}))) == ["a", "c", "d"]
    assert _ids(col.find({"ack": {"$exists": False}})) == ["b"]
    assert sorted(_ids(col.find({"state": {"$in": ["stable", "signed"]}}))) == ["b", "c"]
    assert sorted(_ids(col.find({"ack": {"$in": [None, "who"]}}))) == ["a", "b", "c"]
    assert sorted(_ids(col.find({"state": {"$nin": ["stable", "signed"]}}))) == ["a", "d"]
    if not isinstance(documents, EmbeddedDocumentStore):  # mongomock: True == 1
        assert _ids(col.find({"flag": True})) == ["c"]  # true is not 1
    assert col.count_documents({"ack": None, "state": "received"}) == 1
    assert col.count_documents({}) == 4


def test_documents_ranges_stay_within_a_type(documents: DocumentStore) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    for key, value in (("n1", 1), ("n2", 2.5), ("n3", 10), ("s", "5"), ("z", None)):
        col.insert_one({"_id": key, "v": value})
    assert sorted(_ids(col.find({"v": {"$gt": 1}}))) == ["n2", "n3"]
    assert sorted(_ids(col.find({"v": {"$gte": 1, "$lt": 10}}))) == ["n1", "n2"]
    assert _ids(col.find({"v": {"$lte": 1}})) == ["n1"]
    assert _ids(col.find({"v": {"$gt": "1"}})) == ["s"]


def test_documents_sort_skip_limit_with_missing_last_descending(
    documents: DocumentStore,
) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [("u1", None, 5), ("r5a", 0.5, 3), ("r9", 0.9, 9), ("r5b", 0.5, 1), ("u2", None, 2)]
    for key, score, minutes in rows:
        doc = {"_id": key, "created_at": at + timedelta(minutes=minutes)}
        if score is not None:
            doc["risk_score"] = score
        col.insert_one(doc)
    col.create_index([("risk_score", -1), ("created_at", 1)])
    order = [("risk_score", -1), ("created_at", 1)]
    assert _ids(col.find({}).sort(order)) == ["r9", "r5b", "r5a", "u2", "u1"]
    assert _ids(col.find({}).sort(order).skip(1).limit(2)) == ["r5b", "r5a"]
    assert _ids(col.find({}).sort("_id", -1).limit(2)) == ["u2", "u1"]
    assert _ids(col.find({"risk_score": {"$gte": 0.5}}).sort("created_at", -1)) == [
        "r9",
        "r5a",
        "r5b",
    ]


def test_documents_update_operators_and_upserts(documents: DocumentStore) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    col.update_one(
        {"_id": "s", "kind": "study"},
        {
            "$setOnInsert": {"created": 1, "events": []},
            "$set": {"progress.pacs": ["a"], "top": "x"},
            "$inc": {"count": 2},
        },
        upsert=True,
    )
    doc = col.find_one({"_id": "s"})
    assert doc == {
        "_id": "s",
        "kind": "study",
        "created": 1,
        "events": [],
        "progress": {"pacs": ["a"]},
        "top": "x",
        "count": 2,
    }
    col.update_one(
        {"_id": "s"},
        {
            "$setOnInsert": {"created": 2},
            "$addToSet": {"progress.pacs": {"$each": ["a", "b", "b"]}, "done": {"$each": ["k"]}},
            "$push": {"events": {"$each": [{"n": 1}, {"n": 1}]}},
            "$inc": {"count": -1, "fresh": 1},
            "$unset": {"top": ""},
        },
    )
    doc = col.find_one({"_id": "s"})
    assert doc["created"] == 1 and "top" not in doc
    if not isinstance(documents, EmbeddedDocumentStore):  # mongomock keeps $each's repeats
        assert doc["progress"] == {"pacs": ["a", "b"]}
    assert doc["done"] == ["k"]
    assert doc["events"] == [{"n": 1}, {"n": 1}] and (doc["count"], doc["fresh"]) == (1, 1)
    assert col.update_one({"_id": "none"}, {"$set": {"a": 1}}).matched_count == 0
    assert col.find_one({"_id": "none"}) is None
    with pytest.raises(DuplicateKeyError):
        col.insert_one({"_id": "s"})


def test_documents_find_one_and_update_before_after_upsert_sort(
    documents: DocumentStore,
) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    before = col.find_one_and_update(
        {"_id": "i1"},
        {"$setOnInsert": {"study_id": "s", "n": 1}},
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    assert before is None
    again = col.find_one_and_update(
        {"_id": "i1"},
        {"$setOnInsert": {"study_id": "s", "n": 2}},
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    assert again == {"_id": "i1", "study_id": "s", "n": 1}
    col.insert_one({"_id": "i2", "study_id": "s", "n": 5})
    first = col.find_one_and_update(
        {"study_id": "s"},
        {"$set": {"picked": True}},
        sort=[("n", -1)],
        return_document=ReturnDocument.AFTER,
    )
    assert first == {"_id": "i2", "study_id": "s", "n": 5, "picked": True}
    created = col.find_one_and_update(
        {"_id": "i3", "state": "new"},
        {"$inc": {"n": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    assert created == {"_id": "i3", "state": "new", "n": 1}


def test_documents_unique_index_and_generated_ids(documents: DocumentStore) -> None:
    col = documents.collection("c" + secrets.token_hex(4))
    col.create_index("email", unique=True)
    entry = {"email": "a@example.org", "at": datetime(2026, 1, 1, tzinfo=UTC)}
    inserted = col.insert_one(entry)
    assert entry["_id"] == inserted.inserted_id  # the caller's dict gets its id, as in pymongo
    assert col.find_one({"_id": entry["_id"]})["email"] == "a@example.org"
    col.insert_one({"email": "b@example.org"})
    with pytest.raises(DuplicateKeyError):
        col.insert_one({"email": "a@example.org"})
    with pytest.raises(DuplicateKeyError):
        col.update_one({"email": "b@example.org"}, {"$set": {"email": "a@example.org"}})
    assert col.count_documents({}) == 2


def test_documents_anchored_regex_is_a_case_sensitive_wildcard(documents: DocumentStore) -> None:
    """``$regex`` as QIDO-RS wildcards use it: ``^...$`` of literals, ``.`` and ``.*``."""
    col = documents.collection("c" + secrets.token_hex(4))
    names = {
        "a": "DOE^JOHN",
        "b": "DOE^JANE",
        "c": "DOEX",
        "d": "ROE^JOHN",
        "e": "DOE*STAR",
        "f": "doe^john",
        "g": "DO[E]",
    }
    for key, name in names.items():
        col.insert_one({"_id": key, "p": {"name": name}})
    col.insert_one({"_id": "n", "p": {"name": 7}})
    col.insert_one({"_id": "m"})
    col.create_index("p.name")

    def ids(pattern: str) -> list[str]:
        return sorted(_ids(col.find({"p.name": {"$regex": pattern}})))

    assert ids(r"^DOE\^.*$") == ["a", "b"]
    assert ids(r"^DOE\^J.N.$") == ["b"]
    assert ids(r"^.*JOHN$") == ["a", "d"]
    assert ids(r"^DOE.*$") == ["a", "b", "c", "e"]  # case-sensitive: not "doe^john"
    assert ids(r"^DOE\*.*$") == ["e"]  # an escaped * is a literal
    assert ids(r"^DO\[E\]$") == ["g"]
    assert ids(r"^DOE$") == []
    assert ids(r"^.*$") == sorted(names)  # only strings, never a number or a missing field
    assert sorted(_ids(col.find({"p.name": {"$regex": r"^DOE.*$"}, "_id": {"$ne": "c"}}))) == [
        "a",
        "b",
        "e",
    ]


def test_studies_keep_their_sender_and_the_worklist_filters_by_it(
    documents: DocumentStore,
) -> None:
    """``source`` from the first receipt (``$setOnInsert``), every sender in ``sources``
    (``$addToSet``); the worklist's source filter in the worklist order, from an index; studies
    recorded before the field existed get it from their instances, once."""
    from radpipe.common.migrations import run_migrations
    from radpipe.common.sqlitedocs import SqliteDocumentStore
    from radpipe.common.studies import MIGRATIONS, WORKLIST_ORDER, StudyRepository

    repo = StudyRepository(documents)
    repo.ensure_indexes()
    run_migrations(documents)  # as at start (the vault step waits for a process with a key)

    def record(study: str, n: int, source: str | None) -> None:
        repo.record_instances(study, [(f"{study}-{n}", {"raw_key": "k", "source": source})], "CT")

    record("a", 1, "CT_ROOM_1")
    record("b", 1, "PACS")
    record("c", 1, None)  # a sender unknown at first
    record("a", 2, "PACS")  # a second sender for the same study
    record("c", 2, "CT_ROOM_1")
    repo.set_fields("b", {"analysis": {"risk": {"score": 0.9, "category": "high"}}})
    a, b, c = (repo.get(s) for s in "abc")
    assert (a["source"], a["sources"]) == ("CT_ROOM_1", ["CT_ROOM_1", "PACS"])
    assert (b["source"], b["sources"]) == ("PACS", ["PACS"])
    assert (c["source"], c["sources"]) == ("CT_ROOM_1", ["CT_ROOM_1"])
    cursor = repo.studies.find({"source": "CT_ROOM_1"}).sort(WORKLIST_ORDER)
    assert _ids(cursor) == ["a", "c"]
    assert _ids(repo.studies.find({"source": "PACS"}).sort(WORKLIST_ORDER)) == ["b"]
    assert repo.studies.count_documents({"source": "PACS", "state": "received"}) == 1
    assert repo.known_sources() == ["CT_ROOM_1", "PACS"]
    if isinstance(documents, SqliteDocumentStore):
        table = repo.studies
        plan = " | ".join(table.explain(table.find({"source": "PACS"}).sort(WORKLIST_ORDER)))  # type: ignore[attr-defined]
        assert "USING INDEX ix_studies_source_1" in plan and "TEMP B-TREE" not in plan, plan

    # A study written before studies kept their sender: filled in at the next start, once.
    repo.studies.insert_one({"_id": "old", "state": "received", "created_at": datetime.now(UTC)})
    repo.instances.insert_one(
        {"_id": "old-1", "study_id": "old", "received_at": datetime.now(UTC), "source": "LEGACY"}
    )
    repo.studies.insert_one({"_id": "older", "state": "received", "created_at": datetime.now(UTC)})
    assert repo.backfill_sources() == 0  # the marker says it ran (on the empty store)
    documents.collection(MIGRATIONS).delete_one({"_id": "study-source-v1"})
    assert repo.backfill_sources(batch=1) == 2
    assert (repo.get("old")["source"], repo.get("old")["sources"]) == ("LEGACY", ["LEGACY"])
    assert repo.get("older")["source"] is None and repo.get("older")["sources"] == []
    assert repo.get("a")["sources"] == ["CT_ROOM_1", "PACS"]  # untouched
    assert _ids(repo.studies.find({"source": "LEGACY"})) == ["old"]
    assert "LEGACY" in repo.known_sources()
    assert repo.backfill_sources() == 0
