"""Several processes updating the same study documents at once lose nothing (DESIGN 5)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from radpipe.common.docstore import EmbeddedDocumentStore
from radpipe.common.studies import StudyRepository, StudyState

WRITERS, ROUNDS = 4, 60


def _writer(folder: str, index: int) -> None:
    repo = StudyRepository(EmbeddedDocumentStore(Path(folder), "radpipe"))
    for n in range(ROUNDS):
        repo.studies.update_one(
            {"_id": "shared"}, {"$inc": {"counter": 1}, "$push": {"log": f"{index}-{n}"}}
        )
        repo.add_event("shared", "tick", {"writer": index, "n": n})
        # Every writer races to move the second study; exactly one transition may win.
        repo.transition("race", StudyState.STABLE, detail={"writer": index})


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    repo = StudyRepository(EmbeddedDocumentStore(folder, "radpipe"))
    for study_id in ("shared", "race"):
        repo.record_instance(study_id, f"i-{study_id}", {"raw_key": "k"}, "CT")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(folder), i)) for i in range(WRITERS)]
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
