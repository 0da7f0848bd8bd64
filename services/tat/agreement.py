"""The reader-agreement KPI of the TAT page: how often residents' reads agree with the AI and
with the attending on finding presence, over the studies of the report, with Cohen's kappa
(the same measure as the portal's per-resident page, ``radpipe.portal.agreement``).

The attending's side is the signed report's verified findings (when someone other than the
resident signed), else the latest read of another radiologist, as in the portal. Aggregates
only: no resident or reader is named (managers see no identities).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from radpipe.common import blinding
from radpipe.common.ports import Document, DocumentStore

#: Study ids whose reads are looked up in one query (the ``study_id, by`` index).
BATCH = 500


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa (Cohen 1960) of two raters' yes/no answers; None when undefined."""
    from radpipe.portal.agreement import cohen_kappa as kappa

    value = kappa(pairs)
    return round(value, 4) if isinstance(value, float) else None


def _attending(study: Document, reads: list[Document], resident: str) -> bool | None:
    """Finding presence by the attending for a resident's read, or None without one."""
    signed = study.get("signed")
    ai_findings = (study.get("analysis") or {}).get("findings") or []
    if study.get("state") == "signed" and signed and signed.get("by") != resident:
        verified = [
            v for v in signed.get("findings") or [] if 0 < v.get("finding", 0) <= len(ai_findings)
        ]
        return bool(verified)
    others = [r for r in reads if r.get("role") == "radiologist" and r.get("by") != resident]
    if not others:
        return None
    return bool(max(others, key=lambda r: r["at"]).get("finding_present"))


def reader_agreement(documents: DocumentStore, study_ids: Iterable[str]) -> dict[str, Any]:
    """Residents' presence agreement with the AI and the attending over these studies."""
    ids = list(study_ids)
    pairs: dict[str, list[tuple[bool, bool]]] = {"ai": [], "attending": []}
    reads_n, residents = 0, set()
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        by_study: dict[str, list[Document]] = defaultdict(list)
        for read in documents.collection(blinding.READS).find({"study_id": {"$in": chunk}}):
            by_study[read["study_id"]].append(read)
        if not by_study:
            continue
        studies = {
            s["_id"]: s
            for s in documents.collection("studies").find({"_id": {"$in": list(by_study)}})
        }
        for study_id, reads in by_study.items():
            study = studies.get(study_id)
            if study is None:
                continue
            for read in reads:
                if read.get("role") != "resident":
                    continue
                reads_n += 1
                residents.add(read.get("by"))
                present = bool(read.get("finding_present"))
                analysis = study.get("analysis")
                if analysis:
                    pairs["ai"].append((present, bool(analysis.get("findings"))))
                attending = _attending(study, reads, str(read.get("by")))
                if attending is not None:
                    pairs["attending"].append((present, attending))
    return {
        "resident_reads": reads_n,
        "residents": len(residents),
        **{
            side: {
                "pairs": len(p),
                "agreement": round(sum(a == b for a, b in p) / len(p), 4) if p else None,
                "kappa": cohen_kappa(p),
            }
            for side, p in pairs.items()
        },
    }
