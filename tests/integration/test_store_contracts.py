"""One contract suite for every object-store and document-store adapter available.

S3 runs against a real SeaweedFS server; MongoDB runs when RADPIPE_TEST_MONGO_URL is set.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import ReturnDocument

from radpipe.common.docstore import EmbeddedDocumentStore, MongoDocumentStore
from radpipe.common.errors import NotFound
from radpipe.common.objectstore import FolderObjectStore, S3ObjectStore
from radpipe.common.ports import DocumentStore, ObjectStore

from ..servers import S3Server

MONGO_URL = os.environ.get("RADPIPE_TEST_MONGO_URL")


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


@pytest.fixture(params=["embedded", "mongodb"])
def documents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    store: DocumentStore
    if request.param == "embedded":
        store = EmbeddedDocumentStore(tmp_path / "documents", "radpipe")
    else:
        if not MONGO_URL:
            pytest.skip("set RADPIPE_TEST_MONGO_URL to run the document contract on MongoDB")
        store = MongoDocumentStore(MONGO_URL, "radpipe_test_" + secrets.token_hex(4))
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


def test_missing_object_raises_not_found(objects: tuple[ObjectStore, str]) -> None:
    store, bucket = objects
    with pytest.raises(NotFound, match="does not exist"):
        store.get(bucket, "missing.dcm")


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
