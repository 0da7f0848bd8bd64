"""The schema version and the migrations runner, started on a store written as 0.1 wrote it.

The "previous release" data below is written in the shapes that release stored (read from its
code in git history): studies without ``source``/``sources`` (added with ``study-source-v1``),
DICOM index entries without ``folded`` nor the QIDO summaries (``dicom_summaries_v1``), vault
entries sealed with HKDF(master, "radpipe-vault") and no ``key`` field
(``vault-keys-per-purpose-v1``), and no ``schema`` document at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from radpipe.common.context import build_context
from radpipe.common.dicomindex import INDEX, SERIES_SUMMARIES, STUDY_SUMMARIES
from radpipe.common.docstore import make_document_store
from radpipe.common.migrations import (
    MIGRATIONS,
    SCHEMA_ID,
    SCHEMA_VERSION,
    Migration,
    SchemaTooNew,
    run_migrations,
    schema_version,
)
from radpipe.common.ports import DocumentStore
from radpipe.common.settings import Settings
from radpipe.common.studies import MIGRATIONS as COLLECTION
from radpipe.common.vault import COLLECTION as VAULT
from radpipe.common.vault import KEY_ID

from ..conftest import RecordingDispatcher
from .test_keys import put_legacy


def write_previous_release(documents: DocumentStore, master: bytes) -> None:
    """Two studies, their instances, index entries and vault entries as 0.1 stored them."""
    at = datetime(2025, 6, 1, 8, 0, tzinfo=UTC)
    for study, sender in (("s1", "CT_ROOM_1"), ("s2", None)):
        documents.collection("studies").insert_one(
            {
                "_id": study,
                "state": "received",
                "version": 1,
                "created_at": at,
                "updated_at": at,
                "instance_count": 1,
                "events": [{"type": "received", "at": at, "version": 1, "detail": {}}],
                "modality": "CT",
            }
        )
        instance: dict[str, Any] = {"_id": f"{study}-1", "study_id": study, "received_at": at}
        if sender:
            instance["source"] = sender
        documents.collection("instances").insert_one(instance)
        documents.collection(INDEX).insert_one(
            {
                "_id": f"1.2.{study[1]}.1.1",
                "study_id": study,
                "bucket": "radpipe-deid",
                "key": f"{study}/1.dcm",
                "attributes": {
                    "StudyInstanceUID": f"1.2.{study[1]}",
                    "SeriesInstanceUID": f"1.2.{study[1]}.1",
                    "SOPInstanceUID": f"1.2.{study[1]}.1.1",
                    "PatientName": "RP^ANON",
                    "Modality": "CT",
                },
            }
        )
        put_legacy(documents, master, study)


def test_the_previous_release_data_is_migrated_at_start(settings: Settings) -> None:
    documents = make_document_store(settings)
    write_previous_release(documents, settings.master_secret)
    assert schema_version(documents) == 0  # 0.1 recorded none
    documents.close()

    context = build_context(settings, tasks=RecordingDispatcher())
    try:
        docs = context.documents
        schema = docs.collection(COLLECTION).find_one({"_id": SCHEMA_ID})
        assert schema["version"] == SCHEMA_VERSION == 3
        assert schema["radpipe"]
        assert {m.marker for m in MIGRATIONS} <= {
            d["_id"] for d in docs.collection(COLLECTION).find({})
        }
        s1, s2 = context.studies.get("s1"), context.studies.get("s2")
        assert (s1["source"], s1["sources"]) == ("CT_ROOM_1", ["CT_ROOM_1"])
        assert (s2["source"], s2["sources"]) == (None, [])
        assert context.studies.known_sources() == ["CT_ROOM_1"]
        assert docs.collection(STUDY_SUMMARIES).count_documents({}) == 2
        assert docs.collection(SERIES_SUMMARIES).count_documents({}) == 2
        assert all("folded" in e for e in docs.collection(INDEX).find({}))
        entries = list(docs.collection(VAULT).find({}))
        assert [e.get("key") for e in entries] == [KEY_ID, KEY_ID]
        assert context.vault.get("s1") == {"patient_id": "s1"}
        # A second start changes nothing and records the same version.
        before = list(docs.collection("studies").find({}))
        assert run_migrations(docs, context.vault) == SCHEMA_VERSION
        assert list(docs.collection("studies").find({})) == before
    finally:
        context.documents.close()


def test_a_keyless_process_stops_before_the_vault_step(settings: Settings) -> None:
    documents = make_document_store(settings)
    write_previous_release(documents, settings.master_secret)
    documents.close()
    keyless = Settings(data_dir=settings.data_dir, keyless=True)
    context = build_context(keyless, tasks=RecordingDispatcher())
    try:
        assert schema_version(context.documents) == 2  # the vault is still under the old key
        assert context.studies.get("s1")["source"] == "CT_ROOM_1"
        vault = context.documents.collection(VAULT)
        assert all("key" not in e for e in vault.find({}))
    finally:
        context.documents.close()
    keyed = build_context(settings, tasks=RecordingDispatcher())  # a process with the key
    try:
        assert schema_version(keyed.documents) == 3
        # and a keyless one starting afterwards never lowers it
        assert run_migrations(keyed.documents, None) == 3
    finally:
        keyed.documents.close()


def test_steps_run_in_order_once_and_an_interrupted_one_runs_again(
    settings: Settings,
) -> None:
    documents = make_document_store(settings)
    ran: list[str] = []

    flaky = [True]

    def step(name: str) -> Migration:
        def apply(docs: DocumentStore, vault: Any) -> int:
            ran.append(name)
            if name == "b" and flaky and flaky.pop():
                raise ZeroDivisionError("b interrupted before its marker")
            return 1

        return Migration(ord(name) - ord("a") + 1, name, name, apply)

    steps = (step("a"), step("b"), step("c"))
    with pytest.raises(ZeroDivisionError):
        run_migrations(documents, None, steps)
    assert ran == ["a", "b"]
    assert documents.collection(COLLECTION).find_one({"_id": "b"}) is None  # not marked
    assert schema_version(documents) == 0  # nothing recorded past a failed step
    assert run_migrations(documents, None, steps) == 3
    assert ran == ["a", "b", "b", "c"]  # a not again; b again; then c
    assert run_migrations(documents, None, steps) == 3
    assert ran == ["a", "b", "b", "c"]
    documents.close()


def test_a_store_from_a_later_release_is_refused_and_left_alone(settings: Settings) -> None:
    documents = make_document_store(settings)
    documents.collection(COLLECTION).insert_one({"_id": SCHEMA_ID, "version": SCHEMA_VERSION + 1})
    documents.collection("studies").insert_one({"_id": "new", "state": "received"})
    documents.close()
    with pytest.raises(SchemaTooNew, match=r"schema version 4.*docs/backup\.md"):
        build_context(settings, tasks=RecordingDispatcher())
    documents = make_document_store(settings)
    try:
        assert schema_version(documents) == SCHEMA_VERSION + 1
        assert documents.collection(COLLECTION).count_documents({}) == 1  # no step ran
        assert "source" not in documents.collection("studies").find_one({"_id": "new"})
    finally:
        documents.close()
