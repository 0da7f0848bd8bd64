"""The reader-agreement KPI: residents' presence agreement with the AI and the attending, with
Cohen's kappa computed by hand, over the report's studies only, naming no reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from radpipe.common import blinding
from radpipe.common.context import Context
from radpipe.tat import agreement, service

FINDING = {"diameter_mm": 8.0}


def _seed(ctx: Context) -> None:
    at = datetime.now(UTC) - timedelta(hours=2)
    studies = ctx.documents.collection("studies")
    reads = ctx.documents.collection(blinding.READS)

    def study(sid: str, findings: list, modality: str = "CT", **extra: object) -> None:
        studies.insert_one(
            {
                "_id": sid,
                "state": extra.pop("state", "analyzed"),
                "version": 1,
                "created_at": at,
                "updated_at": at,
                "modality": modality,
                "analysis": {"findings": findings, "risk": {"category": "low"}},
                "events": [{"type": "received", "at": at, "version": 1, "detail": {}}],
                **extra,
            }
        )

    def read(sid: str, by: str, role: str, present: bool) -> None:
        reads.insert_one(
            {
                "_id": f"{sid}:{by}",
                "study_id": sid,
                "by": by,
                "role": role,
                "at": at,
                "finding_present": present,
            }
        )

    # s1: AI yes, signed by the attending with the finding verified: resident yes.
    study("s1", [FINDING], state="signed", signed={"by": "att", "findings": [{"finding": 1}]})
    read("s1", "res-a", "resident", True)
    # s2: AI no, a radiologist read no: resident yes.
    study("s2", [])
    read("s2", "rad-1", "radiologist", False)
    read("s2", "res-a", "resident", True)
    # s3: AI yes, no attending: resident yes.
    study("s3", [FINDING])
    read("s3", "res-b", "resident", True)
    # s4 (MR): AI no, a radiologist read no: resident no.
    study("s4", [], modality="MR")
    read("s4", "rad-1", "radiologist", False)
    read("s4", "res-b", "resident", False)


def test_agreement_and_kappa_match_the_hand_computation(ctx: Context) -> None:
    _seed(ctx)
    got = agreement.reader_agreement(ctx.documents, ["s1", "s2", "s3", "s4"])
    assert (got["resident_reads"], got["residents"]) == (4, 2)
    # vs AI: (T,T) (T,F) (T,T) (F,F): p_o 3/4, p_e .75*.5 + .25*.5 = .5, kappa .5
    assert got["ai"] == {"pairs": 4, "agreement": 0.75, "kappa": 0.5}
    # vs attending: (T,T) (T,F) (F,F): p_o 2/3, p_e 2/9 + 2/9, kappa (2/9) / (5/9) = .4
    assert got["attending"] == {"pairs": 3, "agreement": pytest.approx(0.6667), "kappa": 0.4}
    assert "res-a" not in str(got) and "att" not in str(got).replace("attending", "")


def test_the_tat_report_carries_the_kpi_for_its_filtered_studies(ctx: Context) -> None:
    _seed(ctx)
    everything = service.report(ctx, service.make_filters(UTC))["kpis"]["reader_agreement"]
    assert everything["resident_reads"] == 4 and everything["ai"]["kappa"] == 0.5
    ct = service.report(ctx, service.make_filters(UTC, modality="CT"))["kpis"]["reader_agreement"]
    assert ct["resident_reads"] == 3 and ct["ai"] == {
        "pairs": 3,
        "agreement": pytest.approx(0.6667),
        "kappa": 0.0,
    }
    assert agreement.reader_agreement(ctx.documents, []) == {
        "resident_reads": 0,
        "residents": 0,
        "ai": {"pairs": 0, "agreement": None, "kappa": None},
        "attending": {"pairs": 0, "agreement": None, "kappa": None},
    }
