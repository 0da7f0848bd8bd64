"""Indexing a study's instances in one call writes the same documents as one call each."""

from __future__ import annotations

from pathlib import Path

import pytest

from radpipe.common.dicomindex import (
    INDEX,
    SERIES_SUMMARIES,
    STUDY_SUMMARIES,
    add_all_to_index,
    add_to_index,
    index_document,
)
from radpipe.common.ports import DocumentStore

from ..dicom import ct_series, read
from ..servers import document_store


def everything(documents: DocumentStore) -> dict[str, list[dict[str, object]]]:
    return {
        name: sorted(documents.collection(name).find({}), key=lambda d: str(d["_id"]))
        for name in (INDEX, STUDY_SUMMARIES, SERIES_SUMMARIES)
    }


@pytest.mark.parametrize("engine", ["sqlite", "litemongo"])
def test_one_batch_indexes_and_summarises_as_one_call_per_instance(
    engine: str, tmp_path: Path
) -> None:
    series = ct_series()
    first, second = series[:3], ct_series(seed=9)[:2]
    other_series = []
    for data in series[3:5]:  # same study, another series and modality
        ds = read(data)
        ds.SeriesInstanceUID, ds.Modality = ds.SeriesInstanceUID + ".9", "OT"
        other_series.append(ds)
    datasets = [read(d) for d in first] + other_series + [read(d) for d in second]
    entries = [
        index_document(ds, f"study-{ds.StudyInstanceUID[-4:]}", f"k/{n}.dcm", "t-deid")
        for n, ds in enumerate(datasets)
    ]
    one_by_one = document_store(engine, tmp_path / "a", "the index")
    batched = document_store(engine, tmp_path / "b", "the index")
    add_to_index(one_by_one, entries[0])  # one already indexed: counted once in both
    add_to_index(batched, entries[0])
    for entry in entries:
        add_to_index(one_by_one, entry)
    add_all_to_index(batched, entries)
    expected = everything(one_by_one)
    assert everything(batched) == expected
    assert len(expected[STUDY_SUMMARIES]) == 2 and len(expected[SERIES_SUMMARIES]) == 3
    assert sum(s["by_bucket"]["t-deid"]["instances"] for s in expected[STUDY_SUMMARIES]) == 7
