"""Turnaround analytics: interval figures computed by hand, DST in the local cuts, the RIS
import's data-quality report (every defect, exact), idempotent re-import, and the pseudonym
join key being the de-identifier's own AccessionNumber."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pydicom
import pytest

from radpipe.common.context import Context
from radpipe.common.errors import BadRequest
from radpipe.common.tat import accession_pseudonym, acquisition_lag_seconds, pseudonym_key
from radpipe.deid.service import deidentify
from radpipe.tat import export, intervals, ris, service
from radpipe.tat.intervals import Timeline

from ..dicom import PHI, ct_series, read

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- interval arithmetic -----------------------------------------------------------------------


def test_figures_match_a_hand_computation() -> None:
    # sorted 60 120 180 240 600: p50 = 180; p90 rank 3.6 -> 240 + 0.6 * 360 = 456;
    # mean 1200 / 5 = 240; target 200: 240 and 600 breach, 3 of 5 within.
    f = intervals.figures([600, 60, 240, 120, 180], target=200)
    assert (f.count, f.p50, f.p90, f.mean) == (5, 180, pytest.approx(456), 240)
    assert (f.breaches, f.within_target) == (2, pytest.approx(0.6))
    one = intervals.figures([42.0], target=None)
    assert (one.p50, one.p90, one.within_target, one.breaches) == (42.0, 42.0, None, 0)
    assert intervals.figures([], 10).as_dict()["count"] == 0


def test_consecutive_known_stages_skip_the_missing_ones_and_end_to_end() -> None:
    t = Timeline(
        "s1",
        {
            "ordered": at(-120),
            "received": at(0),
            "stable": at(1),
            "analyzed": at(4),
            "signed": at(64),
        },
    )
    assert t.consecutive() == [
        ("ordered→received", 7200.0),
        ("received→stable", 60.0),
        ("stable→analyzed", 180.0),
        ("analyzed→signed", 3600.0),
    ]
    assert dict(t.end_to_end()) == {"order→signed": 184 * 60.0, "received→signed": 3840.0}
    assert t.offsets() == {
        "ordered": 0.0,
        "received": 7200.0,
        "stable": 7260.0,
        "analyzed": 7440.0,
        "signed": 11040.0,
    }


def test_timeline_takes_the_first_event_of_each_known_type() -> None:
    events = [
        {"type": "received", "at": at(0)},
        {"type": "stable", "at": at(1)},
        {"type": "alert.sent", "at": at(2)},
        {"type": "received", "at": at(30)},  # late instances re-opened the study
        {"type": "alert.acknowledged", "at": at(9)},
        {"type": "read", "at": at(20)},
        {"type": "read", "at": at(25)},
    ]
    stages = intervals.timeline_from_events("s", events, {"acquired": at(-5)})
    assert stages == {
        "received": at(0),
        "stable": at(1),
        "acknowledged": at(9),
        "read": at(20),
        "acquired": at(-5),
    }


def _fleet() -> list[Timeline]:
    """Three studies whose figures are known: received->stable 60/120/600 s, stable->analyzed
    30/30/30 s, one alert acknowledged after 300 s, one read out of order."""
    a = Timeline(
        "a",
        {
            "received": at(0),
            "stable": at(1),
            "analyzed": at(1.5),
            "alerted": at(2),
            "acknowledged": at(7),
            "signed": at(60),
        },
        modality="CT",
        priority="STAT",
        risk="high",
        source="ct1",
    )
    b = Timeline(
        "b",
        {"received": at(10), "stable": at(12), "analyzed": at(12.5)},
        modality="CT",
        priority="ROUTINE",
        risk="low",
        source="ct1",
    )
    c = Timeline(
        "c",
        {"received": at(20), "stable": at(30), "analyzed": at(30.5), "read": at(25)},
        modality="MR",
        risk="none",
        source="mr1",
    )
    return [a, b, c]


def test_analyse_figures_bottleneck_cuts_stuck_and_kpis() -> None:
    report = intervals.analyse(_fleet(), UTC, NOW)
    assert report["studies"] == 3
    stable = report["intervals"]["received→stable"]
    assert (stable["count"], stable["p50"], stable["p90"], stable["breaches"]) == (3, 120, 504, 1)
    assert report["intervals"]["analyzed→read"]["out_of_order"] == 1  # read before analysis
    assert report["intervals"]["analyzed→read"]["count"] == 0
    assert report["bottleneck"] == "acknowledged→signed"  # p90 53 min, the longest
    assert report["end_to_end"]["AI flag→acknowledged"]["p50"] == 300
    assert report["cuts"]["modality"]["CT"]["studies"] == 2
    assert report["cuts"]["priority"]["STAT"]["intervals"]["received→signed"]["p50"] == 3600
    assert report["cuts"]["source"]["mr1"]["studies"] == 1
    assert [s["study"] for s in report["stuck"]] == ["b", "c"]  # waiting since 2 March
    assert report["stuck"][0]["stage"] == "analyzed"
    kpis = report["kpis"]
    assert kpis["ai_positive_rate"] == pytest.approx(1 / 3)
    assert (kpis["alert_ack_p50_s"], kpis["failed_rate"]) == (300, 0)
    assert kpis["studies_per_day"] == {"2026-03-02": {"CT": 2, "MR": 1}}
    assert report["daily"][0]["studies"] == 3


def test_hour_of_day_and_weekday_follow_the_site_zone_through_dst() -> None:
    # Spring forward, New York, 8 March 2026: 02:00 EST becomes 03:00 EDT.
    spring = [
        Timeline(str(i), {"received": datetime(2026, 3, 8, h, 30, tzinfo=UTC)})
        for i, h in enumerate((6, 7))
    ]
    hours = intervals.arrivals_by_hour(spring, NEW_YORK)
    assert (hours[1], hours[2], hours[3]) == (1, 0, 1)
    # Fall back, 1 November 2026: 01:30 happens twice (EDT, then EST).
    fall = [
        Timeline(str(i), {"received": datetime(2026, 11, 1, h, 30, tzinfo=UTC)})
        for i, h in enumerate((5, 6))
    ]
    assert intervals.arrivals_by_hour(fall, NEW_YORK)[1] == 2
    report = intervals.analyse(spring + fall, NEW_YORK, NOW)
    assert report["cuts"]["hour"]["01"]["studies"] == 3 and "02" not in report["cuts"]["hour"]
    # 03:00 UTC on Monday 2 March is Sunday evening in New York.
    late = Timeline("x", {"received": datetime(2026, 3, 2, 3, 0, tzinfo=UTC)})
    assert list(intervals.analyse([late], NEW_YORK, NOW)["cuts"]["weekday"]) == ["Sun"]
    assert list(intervals.analyse([late], UTC, NOW)["cuts"]["weekday"]) == ["Mon"]


def test_ris_local_times_are_read_in_the_site_zone_with_dst() -> None:
    assert ris.parse_time("2026-03-08 03:30", NEW_YORK) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert ris.parse_time("2026-03-07 03:30", NEW_YORK) == datetime(2026, 3, 7, 8, 30, tzinfo=UTC)
    # The repeated hour reads as the first (daylight) one; an explicit offset wins.
    assert ris.parse_time("2026-11-01 01:30", NEW_YORK) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert ris.parse_time("2026-11-01T01:30-05:00", NEW_YORK) == datetime(
        2026, 11, 1, 6, 30, tzinfo=UTC
    )
    assert ris.parse_time("03/01/2026 2:05 PM", UTC) == datetime(2026, 3, 1, 14, 5, tzinfo=UTC)
    assert ris.parse_time("01.03.2026 14:05", UTC) == datetime(2026, 3, 1, 14, 5, tzinfo=UTC)
    assert ris.parse_time("202603011405", UTC) == datetime(2026, 3, 1, 14, 5, tzinfo=UTC)
    assert ris.parse_time("yesterday", UTC) is None


# -- acquisition lag and the join key ----------------------------------------------------------


def test_acquisition_lag_is_measured_in_the_right_zone() -> None:
    received = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    ds = pydicom.Dataset()
    ds.AcquisitionDateTime = "20260302095000+0000"
    assert acquisition_lag_seconds(ds, received, NEW_YORK) == 5 * 3600 + 600
    ds = pydicom.Dataset()
    ds.AcquisitionDate, ds.AcquisitionTime = "20260302", "095000.5"  # local (EST, UTC-5)
    assert acquisition_lag_seconds(ds, received, NEW_YORK) == pytest.approx(599.5)
    ds.TimezoneOffsetFromUTC = "+0100"
    assert acquisition_lag_seconds(ds, received, NEW_YORK) == pytest.approx(6 * 3600 + 599.5)
    assert acquisition_lag_seconds(pydicom.Dataset(), received, UTC) is None
    bad = pydicom.Dataset()
    with warnings.catch_warnings():  # pydicom warns (or not, per its validation settings)
        warnings.simplefilter("ignore")
        bad.StudyDate = "2026-03-02"  # not a DA: nothing is guessed
    assert acquisition_lag_seconds(bad, received, UTC) is None


def test_accession_pseudonym_is_what_the_deidentifier_writes() -> None:
    secret = b"4c1d9a7e5b3f2a1c0e9d8c7b6a5f4e3d"
    clean = deidentify(read(ct_series()[0]), secret)
    assert str(clean.AccessionNumber) == accession_pseudonym(secret, PHI["accession"])
    assert accession_pseudonym(secret, f"  {PHI['accession']} ") == clean.AccessionNumber
    assert PHI["accession"] not in accession_pseudonym(secret, PHI["accession"])
    assert accession_pseudonym(secret, "") == ""


# -- RIS CSV -----------------------------------------------------------------------------------

DIRTY = (
    "Acc #;Modality;Priority;Order Date/Time;Exam Completed;Report Finalized;Patient Age\n"
    "ACC-1;CT;STAT;2026-03-01 08:00;2026-03-01 08:40;2026-03-01 09:30;54\n"
    "ACC-2;mr;R;2026-03-01 09:00;2026-03-01 10:10;;061Y\n"
    "ACC-3;CT;ROUTINE;;2026-03-01 10:00;2026-03-01 11:00;40\n"
    "ACC-4;CT;ROUTINE;31/02/2026 25:00;2026-03-01 10:00;;40\n"
    "ACC-5;CT;ROUTINE;2026-03-01 12:00;2026-03-01 11:00;2026-03-01 13:00;40\n"
    "ACC-1;CT;STAT;2026-03-01 08:00;2026-03-01 08:40;2026-03-01 09:30;54\n"
    "ACC-6;CT;ROUTINE;2026-03-01 08:00;2026-03-01 09:00;2027-01-01 00:00;40\n"
    "ACC-7;XYZ;ROUTINE;2026-03-01 08:00;2026-03-01 09:00;;40\n"
    "ACC-8;CT;ROUTINE;2026-03-01 08:00;2026-03-01 09:00;;187\n"
    ";CT;ROUTINE;2026-03-01 08:00;2026-03-01 09:00;;40\n"
    "\n"
    "ACC-9;US;A;2026-03-01 08:00;2026-03-01 08:30;2026-03-01 08:45;3M\n"
)


def parse_dirty(**kw: object) -> ris.Parsed:
    return ris.parse(DIRTY.encode(), lambda a: "P-" + a, UTC, NOW, **kw)  # type: ignore[arg-type]


def test_the_dirty_export_gives_an_exact_data_quality_report() -> None:
    parsed = parse_dirty()
    assert parsed.rows == 11  # the blank line is not a row
    assert parsed.mapping.as_dict() == {
        "columns": {
            "accession": "Acc #",
            "modality": "Modality",
            "priority": "Priority",
            "ordered_at": "Order Date/Time",
            "exam_complete_at": "Exam Completed",
            "final_report_at": "Report Finalized",
            "age": "Patient Age",
        },
        "ignored": [],
    }
    assert {r.line: r.reasons for r in parsed.flagged} == {
        4: ["missing order time"],
        5: ["unparseable order time"],
        6: ["out of order: exam complete time before order time"],
        7: ["duplicate accession (first on line 2)"],
        8: ["final report time in the future"],
        9: ["unknown modality 'XYZ'"],
        10: ["impossible age"],
        11: ["missing accession number"],
    }
    assert [r.line for r in parsed.clean] == [2, 3, 13]
    first, second, third = parsed.clean
    assert (first.accession, first.priority, first.modality) == ("P-ACC-1", "STAT", "CT")
    assert (second.modality, second.priority, second.times["final_report_at"]) == (
        "MR",
        "ROUTINE",
        None,
    )
    assert third.priority == "URGENT"
    assert first.times["exam_complete_at"] == datetime(2026, 3, 1, 8, 40, tzinfo=UTC)
    assert len(parsed.clean) + len(parsed.flagged) == parsed.rows  # nothing dropped


def test_column_mapping_override_and_a_missing_column_names_the_fix() -> None:
    data = b"Exam,When ordered,Done\nX1,2026-03-01 08:00,2026-03-01 09:00\n"
    with pytest.raises(BadRequest, match="no column for accession, ordered_at, exam_complete_at"):
        ris.parse(data, str, UTC, NOW)
    parsed = ris.parse(
        data,
        str,
        UTC,
        NOW,
        override={"accession": "Exam", "ordered_at": "When ordered", "exam_complete_at": "Done"},
    )
    assert [(r.accession, r.reasons) for r in parsed.clean] == [("X1", [])]
    with pytest.raises(BadRequest, match="no column 'Nope'"):
        ris.parse(data, str, UTC, NOW, override={"accession": "Nope"})
    with pytest.raises(BadRequest, match="empty"):
        ris.parse(b"  \n", str, UTC, NOW)


# -- import against the stores -----------------------------------------------------------------


def _snapshot(ctx: Context) -> dict[str, list[dict]]:
    return {
        name: sorted((d for d in ctx.documents.collection(name).find({})), key=lambda d: d["_id"])
        for name in (service.RIS_ROWS, service.RIS_FLAGGED, service.IMPORTS)
    }


def test_import_keeps_flagged_rows_aside_and_reimport_changes_nothing(ctx: Context) -> None:
    report, new = service.import_ris(ctx, DIRTY.encode(), "manager-1")
    assert new and (report["rows"], report["clean"], report["flagged"]) == (11, 3, 8)
    assert report["reasons"]["unknown modality"] == 1
    assert [r["line"] for r in report["flagged_rows"]] == [4, 5, 6, 7, 8, 9, 10, 11]
    assert report["flagged_rows_truncated"] is False
    page = service.flagged_rows(ctx, report["id"], offset=2, limit=3)
    assert page["total"] == 8 and [r["line"] for r in page["rows"]] == [6, 7, 8]
    assert page["rows"][0]["reasons"] == ["out of order: exam complete time before order time"]
    before = _snapshot(ctx)
    assert len(before[service.RIS_ROWS]) == 3 and len(before[service.RIS_FLAGGED]) == 8
    stored = b"".join(str(d).encode() for docs in before.values() for d in docs)
    assert b"ACC-" not in stored  # accession numbers only as pseudonyms
    secret = pseudonym_key(ctx.settings)
    assert {d["_id"] for d in before[service.RIS_ROWS]} == {
        accession_pseudonym(secret, a) for a in ("ACC-1", "ACC-2", "ACC-9")
    }
    bucket = service.ris_bucket(ctx)
    assert list(ctx.objects.list(bucket)) == [f"{report['id']}.csv"]
    assert ctx.objects.get(bucket, f"{report['id']}.csv") == DIRTY.encode()

    again, new = service.import_ris(ctx, DIRTY.encode(), "manager-2")
    assert not new and again == report
    assert _snapshot(ctx) == before
    assert list(ctx.objects.list(bucket)) == [f"{report['id']}.csv"]
    assert service.last_import(ctx) == report


def test_an_unreadable_file_is_refused_and_nothing_is_stored(ctx: Context) -> None:
    with pytest.raises(BadRequest, match="no column for"):
        service.import_ris(ctx, b"foo,bar\n1,2\n", "manager-1")
    assert _snapshot(ctx) == {service.RIS_ROWS: [], service.RIS_FLAGGED: [], service.IMPORTS: []}
    ctx.objects.ensure_bucket(service.ris_bucket(ctx))
    assert list(ctx.objects.list(service.ris_bucket(ctx))) == []


def test_csv_export_has_a_column_per_stage_in_seconds_since_the_first_event() -> None:
    text = export.to_csv(_fleet()[:1], timezone(timedelta(hours=1)))
    header, row = text.splitlines()
    columns = dict(zip(header.split(","), row.split(","), strict=True))
    assert columns["study"] == "a" and columns["arrival_hour"] == "9"
    assert columns["arrival_weekday"] == "Mon"
    assert (columns["received_s"], columns["stable_s"], columns["signed_s"]) == (
        "0.000",
        "60.000",
        "3600.000",
    )
    assert columns["ordered_s"] == ""
    assert "2026" not in text  # no date of any event


def test_an_exam_complete_without_images_is_listed_as_stuck(ctx: Context) -> None:
    now = datetime.now(UTC)
    csv = (
        "Accession,Modality,Priority,Order Time,Exam Complete\n"
        f"WAIT-1,CT,STAT,{now - timedelta(hours=4):%Y-%m-%d %H:%M},"
        f"{now - timedelta(hours=3):%Y-%m-%d %H:%M}\n"
        f"SOON-2,MR,ROUTINE,{now - timedelta(hours=1):%Y-%m-%d %H:%M},"
        f"{now - timedelta(minutes=20):%Y-%m-%d %H:%M}\n"
    )
    service.import_ris(ctx, csv.encode(), "manager-1")
    answer = service.report(ctx, service.make_filters(UTC))
    pseudonym = accession_pseudonym(pseudonym_key(ctx.settings), "WAIT-1")
    assert [(s["study"], s["stage"], s["priority"]) for s in answer["stuck"]] == [
        (f"ris:{pseudonym}", "exam_complete", "STAT")
    ]
    assert 3 * 3600 - 120 < answer["stuck"][0]["waiting_s"] < 3 * 3600 + 120
    assert answer["studies"] == 0  # RIS rows alone are not studies in the figures
    mr_only = service.report(ctx, service.make_filters(UTC, modality="MR"))
    assert mr_only["stuck"] == []
