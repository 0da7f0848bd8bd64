"""Several processes updating the same study documents at once lose nothing (DESIGN 5), and
on the embedded default a reader never waits behind another process's write transaction."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from radpipe.common.docstore import EmbeddedDocumentStore, open_embedded
from radpipe.common.ports import DocumentStore
from radpipe.common.studies import StudyRepository, StudyState

WRITERS, ROUNDS = 4, 60


def _sqlite(folder: Path) -> DocumentStore:
    return open_embedded(folder, "radpipe")


def _litemongo(folder: Path) -> DocumentStore:
    return EmbeddedDocumentStore(folder, "radpipe")


ENGINES: dict[str, Callable[[Path], DocumentStore]] = {"sqlite": _sqlite, "litemongo": _litemongo}


def _writer(engine: str, folder: str, index: int) -> None:
    repo = StudyRepository(ENGINES[engine](Path(folder)))
    for n in range(ROUNDS):
        repo.studies.update_one(
            {"_id": "shared"}, {"$inc": {"counter": 1}, "$push": {"log": f"{index}-{n}"}}
        )
        repo.add_event("shared", "tick", {"writer": index, "n": n})
        # Every writer races to move the second study; exactly one transition may win.
        repo.transition("race", StudyState.STABLE, detail={"writer": index})


@pytest.mark.parametrize("engine", list(ENGINES))
def test_concurrent_writers_lose_nothing(tmp_path: Path, engine: str) -> None:
    folder = tmp_path / "documents"
    repo = StudyRepository(ENGINES[engine](folder))
    for study_id in ("shared", "race"):
        repo.record_instance(study_id, f"i-{study_id}", {"raw_key": "k"}, "CT")
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_writer, args=(engine, str(folder), i)) for i in range(WRITERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    shared = repo.get("shared")
    assert shared["counter"] == WRITERS * ROUNDS
    assert len(shared["log"]) == WRITERS * ROUNDS
    assert len([e for e in shared["events"] if e["type"] == "tick"]) == WRITERS * ROUNDS
    race = repo.get("race")
    assert race["state"] == "stable"
    assert [e["type"] for e in race["events"]] == ["received", "stable"]


def _hold_write_transaction(folder: str, started: object, seconds: float) -> None:
    store = _sqlite(Path(folder))
    repo = StudyRepository(store)
    with store.exclusive():
        repo.set_fields("s1", {"note": "being written"})
        started.set()  # type: ignore[attr-defined]
        time.sleep(seconds)


def test_reader_is_not_blocked_by_another_process_writing(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    store = _sqlite(folder)
    repo = StudyRepository(store)
    repo.ensure_indexes()
    repo.record_instance("s1", "i1", {"raw_key": "k"}, "CT")
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    writer = context.Process(target=_hold_write_transaction, args=(str(folder), started, 4.0))
    writer.start()
    try:
        assert started.wait(60)
        begin = time.monotonic()
        docs, total = repo.list()
        study = repo.get("s1")
        opened = StudyRepository(_sqlite(folder))  # a process starting now reads at once, too
        assert opened.get("s1")["state"] == "received"
        waited = time.monotonic() - begin
        assert waited < 1.0, f"a read waited {waited:.1f} s behind another process's write"
        assert total == 1 and docs[0]["_id"] == "s1"
        assert "note" not in study  # the snapshot before the uncommitted write
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert repo.get("s1")["note"] == "being written"
