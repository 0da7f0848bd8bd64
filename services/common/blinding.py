"""Residents read first: until a resident has posted a read of a study, nothing the resident can
reach carries the study's AI result (findings, risk, alerts, the SEG/SR/key-image series).

Every service that answers a resident asks here (the portal, the alert routes, DICOMweb), so
the rule is one function, and the reads it looks at are one collection, ``reads``, indexed by
study and reader.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .auth import Principal
from .ports import DocumentStore

READS = "reads"
#: The roles who read before they see the AI.
BLINDED_ROLES = frozenset({"resident"})
#: A resident's worklist: longest waiting first (the AI-risk order would tell the risk).
RESIDENT_ORDER = [("created_at", 1)]


def ensure_indexes(documents: DocumentStore) -> None:
    documents.collection(READS).create_index([("study_id", 1), ("by", 1)])
    documents.collection(READS).create_index([("by", 1), ("at", 1)])
    studies = documents.collection("studies")
    studies.create_index(RESIDENT_ORDER)
    studies.create_index([("state", 1), *RESIDENT_ORDER])


def is_blinded(viewer: Principal) -> bool:
    return viewer.role in BLINDED_ROLES


def studies_read(documents: DocumentStore, viewer: Principal, study_ids: Iterable[str]) -> set[str]:
    """Which of ``study_ids`` ``viewer`` has posted a read of (one indexed query)."""
    ids = sorted(set(study_ids))
    if not ids:
        return set()
    found = documents.collection(READS).find({"by": viewer.name, "study_id": {"$in": ids}})
    return {doc["study_id"] for doc in found}


def sees_ai(documents: DocumentStore, viewer: Principal, study_id: str) -> bool:
    """Whether ``viewer`` may see the AI result of ``study_id`` now."""
    return not is_blinded(viewer) or bool(studies_read(documents, viewer, [study_id]))


def hidden_studies(
    documents: DocumentStore, viewer: Principal, study_ids: Iterable[str]
) -> set[str]:
    """The studies among ``study_ids`` whose AI result ``viewer`` may not see yet."""
    ids = set(study_ids)
    if not is_blinded(viewer):
        return set()
    return ids - studies_read(documents, viewer, ids)


def visible_entries(
    documents: DocumentStore, results: str, viewer: Principal, entries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """DICOM index entries less the result objects (in bucket ``results``) of studies
    ``viewer`` has not read yet; the de-identified images stay."""
    ai = {e["study_id"] for e in entries if e.get("bucket") == results}
    hidden = hidden_studies(documents, viewer, ai)
    if not hidden:
        return entries
    return [e for e in entries if not (e.get("bucket") == results and e["study_id"] in hidden)]
