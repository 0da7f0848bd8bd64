"""Each pipeline stage on its own: embedded stores, a recording dispatcher, real files."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from pydantic import AnyHttpUrl

from radpipe.common.context import Context
from radpipe.common.errors import PipelineError
from radpipe.common.identity import study_id_for
from radpipe.common.studies import now
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable
from radpipe.ingest.multipart import Part
from radpipe.ingest.service import store_parts
from radpipe.notify.service import notify_study

from ..dicom import PHI, ct_series, read, to_bytes
from ..webhook import webhook_receiver


def ingest(ctx: Context, series: list[bytes], source: str | None = None) -> str:
    parts = [Part.from_bytes("application/dicom", data) for data in series]
    result = store_parts(ctx, parts, None, source)
    assert not result.failed
    return study_id_for(ctx.pseudonym_key, str(read(series[0]).StudyInstanceUID))


def test_stability_waits_for_quiet_then_hands_on_once(ctx: Context) -> None:
    study_id = ingest(ctx, ct_series()[:3])
    arrived = ctx.studies.get(study_id)["last_instance_at"]
    check_stable(ctx, study_id, clock=lambda: arrived)  # too early: re-armed for the quiet time
    stage, sid, countdown = ctx.tasks.sent[-1]  # type: ignore[attr-defined]
    assert (stage, sid, countdown) == ("stable", study_id, 0.5)
    assert ctx.studies.get(study_id)["state"] == "received"
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    # A duplicate delivery re-sends the hand-off, with no second event.
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    assert ctx.tasks.sent[-2:] == [("deid", study_id, None)] * 2  # type: ignore[attr-defined]
    events = [e["type"] for e in ctx.studies.get(study_id)["events"]]
    assert events == ["received", "stable"]


def test_twenty_requests_to_one_study_queue_one_stability_check(ctx: Context) -> None:
    series = ct_series(seed=23)  # 16 instances, 4 of them sent twice: 20 STOW requests
    for n in range(20):
        ingest(ctx, [series[n % len(series)]])
    study_id = study_id_for(ctx.pseudonym_key, str(read(series[0]).StudyInstanceUID))
    assert ctx.tasks.sent == [("stable", study_id, 0.5)]  # type: ignore[attr-defined]
    # The one pending check re-arms itself for the time left after the last instance...
    last = ctx.studies.get(study_id)["last_instance_at"]
    check_stable(ctx, study_id, clock=lambda: last + timedelta(seconds=0.2))
    assert ctx.tasks.sent[-1] == ("stable", study_id, pytest.approx(0.3))  # type: ignore[attr-defined]
    ingest(ctx, series[:1])  # ...and a re-sent instance meanwhile queues nothing more
    assert len(ctx.tasks.sent) == 2  # type: ignore[attr-defined]
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    assert ctx.studies.get(study_id)["state"] == "stable"


def test_a_lost_stability_check_is_replaced_by_the_next_instance(ctx: Context) -> None:
    series = ct_series(seed=24)
    study_id = ingest(ctx, series[:1])
    ctx.tasks.sent.clear()  # type: ignore[attr-defined]  # the broker lost the check
    ingest(ctx, series[1:2])  # still pending (due + grace not passed): nothing queued
    assert ctx.tasks.sent == []  # type: ignore[attr-defined]
    past = now() - timedelta(seconds=1)
    ctx.studies.studies.update_one({"_id": study_id}, {"$set": {"stable_check_until": past}})
    ingest(ctx, series[2:3])  # its time has passed: this instance queues a new check
    assert ctx.tasks.sent == [("stable", study_id, 0.5)]  # type: ignore[attr-defined]


def after_quiet_time(ctx: Context) -> Callable[[], datetime]:
    """A clock just past the study's quiet time: stability is decided without sleeping."""
    ahead = timedelta(seconds=ctx.settings.study_stable_seconds + 0.001)
    return lambda: now() + ahead


def stable_study(ctx: Context, series: list[bytes], source: str | None = None) -> str:
    study_id = ingest(ctx, series, source)
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    return study_id


def test_deid_stage_writes_clean_objects_vault_and_event(ctx: Context) -> None:
    series = ct_series()
    study_id = stable_study(ctx, series)
    deidentify_study(ctx, study_id)
    study = ctx.studies.get(study_id)
    assert study["state"] == "deidentified"
    keys = list(ctx.objects.list(ctx.buckets["deid"]))
    assert len(keys) == len(series)
    for key in keys:
        data = ctx.objects.get(ctx.buckets["deid"], key)
        assert PHI["patient_id"].encode() not in data and b"Doe^Jane" not in data
        assert str(read(series[0]).StudyInstanceUID).encode() not in data
    assert ctx.tasks.sent[-1] == ("inference", study_id, None)  # type: ignore[attr-defined]
    identity = ctx.vault.get(study_id)
    assert identity["patient_id"] == PHI["patient_id"]
    assert identity["study_instance_uid"] == str(read(series[0]).StudyInstanceUID)
    # Every de-identified UID a result can reference maps back to its original.
    first = read(series[0])
    clean = read(ctx.objects.get(ctx.buckets["deid"], keys[0]))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert identity["uid_map"][str(clean[keyword].value)] == str(first[keyword].value)
    assert len(identity["uid_map"]) == len(series) + 3
    # The vault stores ciphertext only.
    entry = ctx.documents.collection("vault").find_one({"_id": study_id})
    assert PHI["patient_id"] not in str(entry)


def test_deid_stage_fails_an_unreadable_instance_and_goes_on_with_the_rest(ctx: Context) -> None:
    series = ct_series()[:2]
    study_id = stable_study(ctx, series)
    broken, good = ctx.studies.instances_of(study_id)
    ctx.objects.put(ctx.buckets["raw"], broken["raw_key"], b"corrupted on disk")
    deidentify_study(ctx, study_id)
    study = ctx.studies.get(study_id)
    assert study["state"] == "deidentified"
    event = study["events"][-1]
    assert event["detail"]["instances"] == 1 and event["detail"]["excluded"] == 1
    assert list(event["detail"]["reasons"]) == [
        "failed: cannot parse stored instance: InvalidDicomError"
    ]
    records = {i["_id"]: i for i in ctx.studies.instances_of(study_id)}
    assert records[broken["_id"]]["deid"]["status"] == "failed"
    assert records[good["_id"]]["deid"]["status"] == "done"
    assert ctx.objects.get(ctx.buckets["raw"], broken["raw_key"]) == b"corrupted on disk"
    assert len(list(ctx.objects.list(ctx.buckets["deid"]))) == 1


def test_deid_stage_fails_the_study_when_no_instance_is_usable(ctx: Context) -> None:
    study_id = stable_study(ctx, ct_series()[:2])
    for instance in ctx.studies.instances_of(study_id):
        ctx.objects.put(ctx.buckets["raw"], instance["raw_key"], b"corrupted on disk")
    with pytest.raises(PipelineError, match=r"no instance could be de-identified \(2 x failed"):
        deidentify_study(ctx, study_id)
    assert list(ctx.objects.list(ctx.buckets["deid"])) == []


def test_deid_stage_quarantines_burned_in_instances_and_keeps_them_raw_only(
    ctx: Context,
) -> None:
    series = ct_series()[:3]
    burned = read(series[2])
    burned.BurnedInAnnotation = "YES"
    series[2] = to_bytes(burned)
    study_id = stable_study(ctx, series)
    deidentify_study(ctx, study_id)
    records = ctx.studies.instances_of(study_id)
    statuses = sorted(r["deid"]["status"] for r in records)
    assert statuses == ["done", "done", "quarantined"]
    [held] = [r for r in records if r["deid"]["status"] == "quarantined"]
    assert "BurnedInAnnotation is YES" in held["deid"]["reason"]
    assert ctx.objects.get(ctx.buckets["raw"], held["raw_key"]) == series[2]
    assert len(list(ctx.objects.list(ctx.buckets["deid"]))) == 2
    detail = ctx.studies.get(study_id)["events"][-1]["detail"]
    assert detail["excluded"] == 1 and detail["instances"] == 2


def test_deid_stage_applies_the_profile_of_the_sending_source(ctx: Context, tmp_path) -> None:
    profile = tmp_path / "profiles.toml"
    profile.write_text(
        '[sources.ct-room-2]\noptions = ["rtn_long_full_dates", "clean_desc"]\n'
        "clean_pixel_regions = [[0, 0, 16, 16]]\n"
    )
    ctx.settings.deid_profile = profile
    series = ct_series()[:2]
    burned = read(series[1])
    burned.BurnedInAnnotation = "YES"
    series[1] = to_bytes(burned)
    study_id = stable_study(ctx, series, source="ct-room-2")
    deidentify_study(ctx, study_id)
    outputs = [
        read(ctx.objects.get(ctx.buckets["deid"], k)) for k in ctx.objects.list(ctx.buckets["deid"])
    ]
    assert len(outputs) == 2  # the burned-in one was cleaned by the source's regions
    assert {ds.StudyDate for ds in outputs} == {read(series[0]).StudyDate}  # full dates kept
    assert {ds.LongitudinalTemporalInformationModified for ds in outputs} == {"UNMODIFIED"}
    cleaned = next(
        ds
        for ds in outputs
        if "113101" in [c.CodeValue for c in ds.DeidentificationMethodCodeSequence]
    )
    assert (cleaned.pixel_array[:16, :16] == 0).all()
    # Another source (or none) gets the default profile: dates shifted.
    other = stable_study(ctx, ct_series(seed=8)[:1])
    deidentify_study(ctx, other)
    uid = ctx.studies.get(other)["deid"]["study_uid"]
    [key] = [k for k in ctx.objects.list(ctx.buckets["deid"]) if k.startswith(uid)]
    assert (
        read(ctx.objects.get(ctx.buckets["deid"], key)).LongitudinalTemporalInformationModified
        == "MODIFIED"
    )


def analyzed(ctx: Context, score: float) -> str:
    study_id = stable_study(ctx, ct_series()[:2])
    deidentify_study(ctx, study_id)
    analysis = {
        "findings": [{"diameter_mm": 14.2, "volume_mm3": 1500.0, "probability": 0.9}],
        "risk": {"score": score, "category": "high" if score >= 0.5 else "low", "rule": "test"},
    }
    ctx.studies.transition(study_id, "analyzed", fields={"analysis": analysis})  # type: ignore[arg-type]
    return study_id


def test_notify_posts_one_alert_without_phi(ctx: Context) -> None:
    study_id = analyzed(ctx, 0.8)
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, study_id)
        notify_study(ctx, study_id)  # redelivered: no second post
    assert len(receiver.posts) == 1
    post = receiver.posts[0]
    assert post["study_id"] == study_id and post["risk"]["score"] == 0.8
    assert post["link"].endswith(f"/studies/{study_id}")
    for value in PHI.values():
        assert value.encode() not in receiver.raw[0]
    study = ctx.studies.get(study_id)
    assert study["state"] == "alerted"
    assert study["alert"]["channel"] == "webhook"


def test_notify_below_threshold_sends_nothing(ctx: Context) -> None:
    study_id = analyzed(ctx, 0.2)
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, study_id)
    assert receiver.posts == []
    study = ctx.studies.get(study_id)
    assert study["state"] == "analyzed"
    assert study["events"][-1]["type"] == "alert.not-required"


def test_unreachable_webhook_is_recorded_retried_and_alert_not_marked_delivered(
    ctx: Context,
) -> None:
    study_id = analyzed(ctx, 0.9)
    with webhook_receiver() as receiver:
        receiver.status = 503
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, study_id)
    alert = ctx.documents.collection("alerts").find_one({"study_id": study_id})
    assert alert["delivered_at"] is None and alert["attempt"] == 1 and not alert["page_done"]
    # The next attempt is due after the first backoff delay, long before the deadline.
    assert alert["next_page_at"] < alert["deadline_at"]
    failed = [e for e in ctx.studies.get(study_id)["events"] if e["type"] == "alert.failed"]
    assert [e["detail"]["reason"] for e in failed] == ["answered HTTP 503"]
    assert ctx.studies.get(study_id)["state"] == "alerted"  # open in the portal meanwhile


def test_alert_list_and_acknowledgement_over_the_api(client, ctx: Context, tokens) -> None:  # type: ignore[no-untyped-def]
    study_id = analyzed(ctx, 0.9)
    notify_study(ctx, study_id)  # no webhook configured: the portal is the channel
    auth = {"Authorization": f"Bearer {tokens['oncall']}"}
    alerts = client.get("/api/alerts", headers=auth).json()
    assert [a["study_id"] for a in alerts] == [study_id]
    assert alerts[0]["acknowledged_at"] is None and alerts[0]["channel"] == "portal"
    alert_id = alerts[0]["id"]
    refused = client.post(
        f"/api/alerts/{alert_id}/ack", headers={"Authorization": f"Bearer {tokens['manager']}"}
    )
    assert refused.status_code == 403
    acked = client.post(f"/api/alerts/{alert_id}/ack", json={"note": "told Dr X"}, headers=auth)
    assert acked.status_code == 200 and acked.json()["acknowledged_by"] == "test-oncall"
    again = client.post(
        f"/api/alerts/{alert_id}/ack", headers={"Authorization": f"Bearer {tokens['radiologist']}"}
    )
    assert again.json()["acknowledged_by"] == "test-oncall"  # the first acknowledgement stands
    events = [e["type"] for e in ctx.studies.get(study_id)["events"]]
    assert events.count("alert.acknowledged") == 1
    assert client.get("/api/alerts?open=true", headers=auth).json() == []
    assert client.post("/api/alerts/nope/ack", headers=auth).status_code == 404


def test_instances_without_preamble_are_stored_as_sent_and_deidentified(ctx: Context) -> None:
    """dicomweb-client sends the File Meta Information without the 128-byte preamble."""
    series = [data[132:] for data in ct_series()[:3]]
    assert not series[0].startswith(b"\x00" * 128)
    study_id = ingest(ctx, series)
    stored = {
        ctx.objects.get(ctx.buckets["raw"], i["raw_key"])
        for i in ctx.studies.instances_of(study_id)
    }
    assert stored == set(series)  # byte for byte as received
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    deidentify_study(ctx, study_id)
    assert ctx.studies.get(study_id)["state"] == "deidentified"


def test_late_instance_reopens_the_study_as_a_new_version(client, ctx: Context, tokens) -> None:  # type: ignore[no-untyped-def]
    series = ct_series(seed=41)
    study_id = ingest(ctx, series[:4])
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    deidentify_study(ctx, study_id)
    analysis = {"findings": [], "risk": {"score": 0.1, "category": "none", "rule": "v1"}}
    ctx.studies.transition(study_id, "analyzed", fields={"analysis": analysis})  # type: ignore[arg-type]
    ctx.tasks.sent.clear()  # type: ignore[attr-defined]
    ingest(ctx, series[4:6])  # late instances
    assert ctx.tasks.sent == [("stable", study_id, 0.5)]  # type: ignore[attr-defined]
    study = ctx.studies.get(study_id)
    assert (study["state"], study["version"], study["instance_count"]) == ("received", 2, 6)
    assert study["history"][0]["version"] == 1
    assert study["history"][0]["analysis"]["risk"]["rule"] == "v1"
    check_stable(
        ctx, study_id, clock=after_quiet_time(ctx)
    )  # the pipeline fires again, once, for version 2
    assert ctx.studies.get(study_id)["state"] == "stable"
    types = [(e["type"], e["version"]) for e in ctx.studies.get(study_id)["events"]]
    assert types[-2:] == [("received", 2), ("stable", 2)]
    shown = client.get(
        f"/api/studies/{study_id}", headers={"Authorization": f"Bearer {tokens['radiologist']}"}
    ).json()
    assert shown["version"] == 2 and shown["superseded"][0]["analysis"]["risk"]["rule"] == "v1"
    ingest(ctx, series[4:6])  # a re-send of the same instances does not re-open it again
    assert ctx.studies.get(study_id)["version"] == 2
