"""QIDO-RS in the document store: every adapter answers each search as the reference matching
(``qido.matches`` over every instance entry, aggregated in Python) does, page and cap included;
summaries written before they existed are built once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from radpipe.common.dicomindex import (
    INDEX,
    STUDY_SUMMARIES,
    add_to_index,
    ensure_summaries,
    folded,
)
from radpipe.common.errors import NotFound
from radpipe.common.ports import DocumentStore
from radpipe.common.sqlitedocs import SqliteDocumentStore
from radpipe.common.studies import StudyRepository
from radpipe.ingest import qido

from ..servers import DOCUMENT_ENGINES, document_store

DEID, RESULTS = "t-deid", "t-results"


@pytest.fixture(params=DOCUMENT_ENGINES)
def documents(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentStore]:
    store = document_store(request.param, tmp_path, "QIDO-RS")
    StudyRepository(store).ensure_indexes()
    yield store
    store.close()


STUDIES = [  # (study uid, patient name, patient id, date, time, accession, series)
    ("1.2.1", "Doe^John", "RP001", "20240105", "101500", "A100", [("CT", 2), ("SR", 1)]),
    ("1.2.2", "DOE^JANE", "RP002", "20240110", "083000.5", "A200", [("MR", 3)]),
    ("1.2.3", "ROE^JOHN", "RP013", "20231231", "2359", "B300", [("CT", 1), ("CT", 2)]),
    ("1.2.4", "Smith^Ann", "XP004", None, None, "A400", [("US", 1)]),
    ("1.2.5", "DOE*STAR", "RP005", "20240201", "120000", "A500", [("CT", 2)]),
]


def _entries() -> list[dict[str, Any]]:
    out = []
    for study, name, pid, date, time, accession, series in STUDIES:
        for s_index, (modality, count) in enumerate(series, 1):
            series_uid = f"{study}.{s_index}"
            for number in range(1, count + 1):
                attributes: dict[str, Any] = {
                    "StudyInstanceUID": study,
                    "SeriesInstanceUID": series_uid,
                    "SOPInstanceUID": f"{series_uid}.{number}",
                    "PatientName": name,
                    "PatientID": pid,
                    "AccessionNumber": accession,
                    "Modality": modality,
                    "SeriesNumber": s_index,
                    "InstanceNumber": number,
                    "StudyDate": date,
                    "StudyTime": time,
                }
                out.append(
                    {
                        "_id": f"{series_uid}.{number}",
                        "study_id": "s" + study,
                        "bucket": RESULTS if modality == "SR" else DEID,
                        "key": f"{study}/{series_uid}/{number}.dcm",
                        "attributes": {k: v for k, v in attributes.items() if v is not None},
                    }
                )
    return out


def _reference(query: qido.Query, study: str | None = None) -> list[dict[str, Any]]:
    """The search as the pre-store implementation answered it: every entry read, aggregated,
    matched with ``qido.matches`` and paged in Python."""
    entries = [e for e in _entries() if study in (None, e["attributes"]["StudyInstanceUID"])]
    key = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}.get(query.level)
    rows: list[dict[str, Any]] = []
    if key is None:
        rows = [dict(e["attributes"]) for e in entries]
    else:
        groups: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            groups.setdefault(entry["attributes"][key], []).append(entry["attributes"])
        for members in groups.values():
            row = dict(members[0])
            if query.level == "study":
                row["ModalitiesInStudy"] = sorted({m["Modality"] for m in members})
                row["NumberOfStudyRelatedSeries"] = len({m["SeriesInstanceUID"] for m in members})
                row["NumberOfStudyRelatedInstances"] = len(members)
            else:
                row["NumberOfSeriesRelatedInstances"] = len(members)
            rows.append(row)
    for keyword, wanted in query.filters.items():
        target = "Modality" if keyword == "ModalitiesInStudy" else keyword
        rows = [r for r in rows if qido.matches(target, wanted, r.get(keyword))]
    rows.sort(
        key=lambda r: (
            r.get("StudyDate") or "",
            r.get("SeriesNumber", 0) if query.level != "study" else 0,
            r.get("InstanceNumber", 0) if query.level == "instance" else 0,
            r[qido._OWN_UID[query.level]],
        )
    )
    rows = rows[query.offset :]
    return rows if query.limit is None else rows[: query.limit]


SEARCHES = [
    ("study", ""),
    ("study", "PatientName=doe*"),  # wildcards are case-insensitive
    ("study", "PatientName=*JOHN"),
    ("study", "PatientName=D?E^J*"),
    ("study", "PatientName=doe^john"),  # person names too
    ("study", "PatientName=DOE*STAR"),  # * matches the literal * as well
    ("study", "PatientID=RP00?"),
    ("study", "PatientID=RP001"),
    ("study", "PatientID=rp001"),  # other VRs are case-sensitive when exact
    ("study", "AccessionNumber=A*&PatientID=RP*"),
    ("study", "StudyInstanceUID=1.2.1%5C1.2.3,1.2.9"),
    ("study", "StudyDate=20240101-20240131"),
    ("study", "StudyDate=-20240105"),
    ("study", "StudyDate=20240105"),
    ("study", "StudyTime=1000-1015"),
    ("study", "StudyTime=-0830"),
    ("study", "ModalitiesInStudy=CT"),
    ("study", "ModalitiesInStudy=C*"),  # the rare form, matched after reading
    ("study", "ModalitiesInStudy=SR&PatientName=*"),
    ("study", "limit=2&offset=1"),
    ("study", "PatientName=*&limit=0"),
    ("series", ""),
    ("series", "Modality=CT"),
    ("series", "Modality=ct"),
    ("series", "SeriesNumber=2"),
    ("series", "StudyInstanceUID=1.2.3&SeriesNumber=1"),
    ("series", "SeriesInstanceUID=1.2.1.2,1.2.5.1&limit=1"),
    ("series", "NumberOfSeriesRelatedInstances=2"),
    ("instance", "SOPInstanceUID=1.2.3.2.1%5C1.2.1.1.2"),
    ("instance", "InstanceNumber=2&Modality=CT"),
    ("instance", "offset=9&limit=3"),
]


def _query(level: str, text: str) -> qido.Query:
    from urllib.parse import parse_qsl

    return qido.parse_query(level, parse_qsl(text, keep_blank_values=True))


def test_every_adapter_answers_searches_as_the_reference(documents: DocumentStore) -> None:
    for entry in _entries():
        add_to_index(documents, entry)
    add_to_index(documents, _entries()[0])  # indexed again: counted once
    for level, text in SEARCHES:
        query = _query(level, text)
        rows, truncated = qido.find(documents, query)
        assert rows == _reference(query), (level, text)
        assert not truncated
    scoped = _query("series", "Modality=CT")
    assert qido.find(documents, scoped, "1.2.3")[0] == _reference(scoped, "1.2.3")
    instances = _query("instance", "")
    found = qido.find(documents, instances, "1.2.1", "1.2.1.1")[0]
    assert [r["SOPInstanceUID"] for r in found] == ["1.2.1.1.1", "1.2.1.1.2"]


def test_results_of_an_unread_study_are_hidden_from_its_counts_and_series(
    documents: DocumentStore,
) -> None:
    for entry in _entries():
        add_to_index(documents, entry)
    hidden = {"s1.2.1"}

    def find(level: str, text: str) -> list[dict[str, Any]]:
        visibility = {"hide_results": lambda ids: ids & hidden, "results_bucket": RESULTS}
        return qido.find(documents, _query(level, text), **visibility)[0]  # type: ignore[arg-type]

    study = find("study", "StudyInstanceUID=1.2.1")[0]
    assert study["ModalitiesInStudy"] == ["CT"]
    assert (study["NumberOfStudyRelatedSeries"], study["NumberOfStudyRelatedInstances"]) == (1, 2)
    assert find("study", "ModalitiesInStudy=SR") == []
    assert [r["Modality"] for r in find("series", "StudyInstanceUID=1.2.1")] == ["CT"]
    assert find("instance", "Modality=SR") == []
    with pytest.raises(NotFound):  # as if the result series did not exist
        qido.find(
            documents,
            _query("instance", ""),
            "1.2.1",
            "1.2.1.2",
            hide_results=lambda ids: ids & hidden,
            results_bucket=RESULTS,
        )
    hidden.clear()  # read: the result series is back
    assert [r["Modality"] for r in find("series", "StudyInstanceUID=1.2.1")] == ["CT", "SR"]


def test_the_cap_cuts_a_search_and_says_so(
    documents: DocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for entry in _entries():
        add_to_index(documents, entry)
    monkeypatch.setattr(qido, "MAX_RESULTS", 3)
    rows, truncated = qido.find(documents, _query("study", ""))
    assert len(rows) == 3 and truncated  # no limit: the server maximum, and more exist
    rows, truncated = qido.find(documents, _query("study", "limit=10&offset=3"))
    assert len(rows) == 2 and not truncated  # the rest: nothing more
    rows, truncated = qido.find(documents, _query("study", "limit=2"))
    assert len(rows) == 2 and not truncated  # the client's own limit is no truncation


def test_index_entries_written_before_the_summaries_get_them_once(
    documents: DocumentStore,
) -> None:
    index = documents.collection(INDEX)
    for entry in _entries():
        index.insert_one(entry)  # as the earlier version wrote them: no summaries, no folded
    documents.collection("migrations").delete_one({"_id": "dicom_summaries_v1"})
    ensure_summaries(documents, batch=4)  # the index read four entries at a time
    ensure_summaries(documents)  # the second start finds them built
    assert documents.collection(STUDY_SUMMARIES).count_documents({}) == len(STUDIES)
    documents.collection("migrations").delete_one({"_id": "dicom_summaries_v1"})
    ensure_summaries(documents, batch=5)  # interrupted before its mark: run again, same sums
    assert index.find_one({"_id": "1.2.1.1.1"})["folded"] == folded(_entries()[0]["attributes"])
    for level, text in SEARCHES:
        query = _query(level, text)
        assert qido.find(documents, query)[0] == _reference(query), (level, text)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("PatientName", "ANON^RP0001"),
        ("PatientName", "Yamada^Tarou=山田^太郎"),  # groups: through pydicom
        ("PatientName", ["A^B", "C^D"]),
        ("PatientName", None),
        ("StudyDate", "20240105"),
        ("StudyTime", "083000.5"),
        ("Modality", "CT"),
        ("Modality", "CT\\SEG"),  # a backslash splits the value: through pydicom
        ("ModalitiesInStudy", ["CT", "SR"]),
        ("StudyInstanceUID", "1.2.3"),
        ("SeriesNumber", 3),
        ("SeriesNumber", None),
        ("NumberOfStudyRelatedInstances", 0),
        ("Rows", 512),
        ("SliceThickness", 1.25),
        ("AccessionNumber", ""),
        ("RetrieveURL", "http://h/dicom-web/studies/1.2"),
    ],
)
def test_results_are_rendered_as_pydicom_renders_them(keyword: str, value: Any) -> None:
    import pydicom

    ds = pydicom.Dataset()
    setattr(ds, keyword, value)
    [(tag, expected)] = ds.to_json_dict().items()
    assert qido.json_attribute(keyword, value) == (tag, expected)


def _index_some(args: tuple[str, list[dict[str, Any]]]) -> None:
    store = SqliteDocumentStore(Path(args[0]))
    for entry in args[1]:
        add_to_index(store, entry)
    store.close()


def test_processes_indexing_one_study_at_once_count_each_instance_once(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "radpipe.sqlite3"
    StudyRepository(SqliteDocumentStore(path)).ensure_indexes()
    entries = []
    for number in range(60):
        entry = _entries()[0]
        uid = f"1.2.1.1.{100 + number}"
        entry["_id"] = entry["attributes"]["SOPInstanceUID"] = uid
        entry["attributes"]["SeriesInstanceUID"] = f"1.2.1.{number % 3}"
        entries.append(entry)
    # Four processes, each indexing half of them (so every entry is indexed twice).
    work = [(str(path), entries[i::2]) for i in range(2)] * 2
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_index_some, work)
    store = SqliteDocumentStore(path)
    [study] = qido.find(store, _query("study", ""))[0]
    assert study["NumberOfStudyRelatedInstances"] == 60
    assert study["NumberOfStudyRelatedSeries"] == 3
    series = qido.find(store, _query("series", ""))[0]
    assert [s["NumberOfSeriesRelatedInstances"] for s in series] == [20, 20, 20]
