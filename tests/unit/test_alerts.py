"""Closed-loop alerts with an injected clock: rules and urgency, signed webhooks, re-pages until
acknowledged, acknowledgement links, grouping, silences, retraction, pipeline alerts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import AnyHttpUrl, SecretStr

from radpipe.common.context import Context
from radpipe.common.studies import StudyState, now
from radpipe.notify import paging
from radpipe.notify.channels import Message, slack_body, teams_body
from radpipe.notify.rules import AlertConfig, Rule, decide, on_call
from radpipe.notify.service import acknowledge, list_alerts, notify_study
from radpipe.notify.signing import make_ack_token, read_ack_token, verify_webhook

from ..dicom import PHI
from ..webhook import webhook_receiver

SECRET = b"webhook-secret-0123456789"


def analysed(
    ctx: Context,
    study_id: str,
    score: float,
    diameter: float = 12.0,
    modality: str = "CT",
    bundle: str = "lung_nodule_ct",
    source: str = "ct-1",
) -> None:
    repo = ctx.studies
    repo.record_instance(study_id, f"i-{study_id}", {"raw_key": "k", "source": source}, modality)
    for state in (StudyState.STABLE, StudyState.DEIDENTIFIED):
        repo.transition(study_id, state)
    analysis = {
        "risk": {"score": score, "category": "high" if score >= 0.5 else "low"},
        "findings": [{"diameter_mm": diameter, "probability": 0.9}],
        "model": {"name": bundle, "version": "1"},
    }
    repo.transition(study_id, StudyState.ANALYZED, fields={"analysis": analysis})


def events(ctx: Context, study_id: str) -> list[str]:
    return [e["type"] for e in ctx.studies.get(study_id)["events"]]


def alert_of(ctx: Context, study_id: str) -> dict[str, Any]:
    [alert] = list_alerts(ctx, study_id=study_id)
    return alert


def test_rules_pick_threshold_and_urgency_by_modality_bundle_and_size() -> None:
    config = AlertConfig(
        rules=[
            Rule(name="big-ct", modality="CT", min_diameter_mm=20, urgency=1),
            Rule(name="mr-strict", modality="MR", threshold=0.9, urgency=3),
            Rule(name="other-model", bundle="brain", threshold=0.2, urgency=2),
        ]
    )

    def study(score: float, mm: float, modality: str = "CT", bundle: str = "lung") -> dict:
        analysis = {
            "risk": {"score": score},
            "findings": [{"diameter_mm": mm}],
            "model": {"name": bundle},
        }
        return {"modality": modality, "analysis": analysis}

    assert decide(config, 0.5, study(0.6, 25)).urgency == 1  # type: ignore[union-attr]
    assert decide(config, 0.5, study(0.6, 10)).rule == "default"  # type: ignore[union-attr]
    assert decide(config, 0.5, study(0.8, 10, "MR")) is None  # its own, higher threshold
    assert decide(config, 0.5, study(0.95, 10, "MR")).urgency == 3  # type: ignore[union-attr]
    assert decide(config, 0.5, study(0.3, 5, "US", "brain")).rule == "other-model"  # type: ignore[union-attr]
    assert decide(config, 0.5, study(0.3, 5)) is None


def test_urgency_sets_the_deadline_and_the_override_wins(ctx: Context) -> None:
    ctx.documents.collection("alert_config").update_one(
        {"_id": "config"},
        {"$set": {"rules": [{"name": "crit", "min_diameter_mm": 20, "urgency": 1}]}},
        upsert=True,
    )
    at = now().replace(microsecond=0)
    analysed(ctx, "big", 0.9, diameter=25)
    analysed(ctx, "small", 0.9, diameter=9)
    notify_study(ctx, "big", at)
    notify_study(ctx, "small", at)
    big, small = alert_of(ctx, "big"), alert_of(ctx, "small")
    assert (big["urgency"], big["deadline_at"] - at) == (1, timedelta(minutes=15))
    assert (small["urgency"], small["deadline_at"] - at) == (2, timedelta(hours=4))
    ctx.settings.ack_timeout_seconds = 7
    analysed(ctx, "fast", 0.9, diameter=25)
    notify_study(ctx, "fast", at)
    assert alert_of(ctx, "fast")["deadline_at"] - at == timedelta(seconds=7)


def test_signed_webhook_repages_until_acknowledged_then_stops(ctx: Context) -> None:
    ctx.settings.webhook_secret = SecretStr(SECRET.decode())
    ctx.settings.ack_timeout_seconds = 60
    start = now().replace(microsecond=0)
    analysed(ctx, "s1", 0.9)
    with webhook_receiver(secret=SECRET) as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, "s1", start)
        notify_study(ctx, "s1", start)  # a redelivered task: nothing more
        assert paging.sweep(ctx, start + timedelta(seconds=59)) == 0  # before the deadline
        assert paging.sweep(ctx, start + timedelta(seconds=61)) == 1  # re-page 2
        assert paging.sweep(ctx, start + timedelta(seconds=62)) == 0
        assert paging.sweep(ctx, start + timedelta(seconds=122)) == 1  # re-page 3
        alert = acknowledge(ctx, "s1-v1", "dr-oncall", "seen")
        assert alert["state"] == "acknowledged" and alert["next_page_at"] is None
        assert paging.sweep(ctx, start + timedelta(hours=5)) == 0  # acknowledged: no page
    assert receiver.rejected == 0
    assert [p["attempt"] for p in receiver.posts] == [1, 1, 1]
    assert [(p["page"], p["repage"], p["type"]) for p in receiver.posts] == [
        (1, False, "radpipe.alert"),
        (2, True, "radpipe.re-page"),
        (3, True, "radpipe.re-page"),
    ]
    for body, headers in zip(receiver.raw, receiver.headers, strict=True):
        assert verify_webhook(
            SECRET, body, headers["X-Radpipe-Timestamp"], headers["X-Radpipe-Signature"]
        )
        assert not verify_webhook(
            b"another-secret", body, headers["X-Radpipe-Timestamp"], headers["X-Radpipe-Signature"]
        )
        tampered = body.replace(b'"urgency":2', b'"urgency":3')
        assert not verify_webhook(
            SECRET, tampered, headers["X-Radpipe-Timestamp"], headers["X-Radpipe-Signature"]
        )
        for value in PHI.values():
            assert value.encode() not in body
            assert all(value not in h for h in headers.values())
    assert {p["link"] for p in receiver.posts} == {"http://127.0.0.1:8000/studies/s1"}
    timeline = events(ctx, "s1")
    assert timeline[3:7] == ["analyzed", "alerted", "alert.opened", "alert.sent"]
    assert timeline.count("alert.opened") == 1
    assert timeline.count("alert.re-paged") == 2
    assert timeline.count("alert.delivered") == 3 and timeline.count("alert.sent") == 3
    assert timeline.count("alert.acknowledged") == 1
    history = [h["type"] for h in alert_of(ctx, "s1")["history"]]
    assert history[0] == "alert.opened" and history[-1] == "alert.acknowledged"


def test_failed_deliveries_retry_with_backoff_and_stop_at_the_page_cap(ctx: Context) -> None:
    ctx.settings.ack_timeout_seconds = 100
    ctx.settings.alert_max_pages = 2
    ctx.settings.alert_delivery_attempts = 3
    start = now().replace(microsecond=0)
    analysed(ctx, "s2", 0.9)
    with webhook_receiver() as receiver:
        receiver.status = 500
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, "s2", start)  # attempt 1 fails; retry after 2 s
        assert paging.sweep(ctx, start + timedelta(seconds=1)) == 0
        assert paging.sweep(ctx, start + timedelta(seconds=2)) == 1  # attempt 2; next +4 s
        assert paging.sweep(ctx, start + timedelta(seconds=5)) == 0
        receiver.status = 200
        assert paging.sweep(ctx, start + timedelta(seconds=6)) == 1  # attempt 3 delivered
        assert paging.sweep(ctx, start + timedelta(seconds=101)) == 1  # page 2
        assert paging.sweep(ctx, start + timedelta(seconds=300)) == 1  # cap: exhausted
        assert paging.sweep(ctx, start + timedelta(seconds=900)) == 0
    assert [(p["page"], p["attempt"]) for p in receiver.posts] == [(1, 3), (2, 1)]
    failed = [e for e in ctx.studies.get("s2")["events"] if e["type"] == "alert.failed"]
    assert [e["detail"]["attempt"] for e in failed] == [1, 2]
    alert = alert_of(ctx, "s2")
    assert alert["exhausted"] and alert["state"] == "open"  # still waits for a person
    assert events(ctx, "s2")[-1] == "alert.exhausted"


def test_acknowledgement_link_confirms_on_get_acknowledges_once_on_post(
    client: TestClient, ctx: Context
) -> None:
    analysed(ctx, "s3", 0.9)
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, "s3")
    ack_url = receiver.posts[0]["ack_url"]
    path = ack_url.split("8000", 1)[1]
    page = client.get(path)
    assert page.status_code == 200 and "<form method='post'>" in page.text
    assert alert_of(ctx, "s3")["state"] == "open"  # a GET (a mail scanner) changes nothing
    done = client.post(path, data={"note": "called ward"})
    assert done.status_code == 200 and "acknowledged" in done.text
    alert = alert_of(ctx, "s3")
    assert (alert["acknowledged_by"], alert["acknowledged_via"]) == ("link:webhook", "link")
    assert client.post(path).status_code == 409  # single use
    forged = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    assert client.get(forged).status_code == 400
    expired = make_ack_token(ctx.settings.secret, "s3-v1", "x", now().timestamp() - 1)
    assert client.get(f"/alerts/ack/{expired}").status_code == 400
    with pytest.raises(Exception, match="not valid"):
        read_ack_token(b"another-secret-key-123", path.rsplit("/", 1)[1])


def test_api_ack_close_and_filters(client: TestClient, ctx: Context, tokens: dict) -> None:
    for n, score in enumerate((0.9, 0.95)):
        analysed(ctx, f"f{n}", score)
        notify_study(ctx, f"f{n}")
    oncall = {"Authorization": f"Bearer {tokens['oncall']}"}
    acked = client.post("/api/alerts/f0-v1/ack", json={"note": "seen"}, headers=oncall)
    assert acked.status_code == 200 and acked.json()["state"] == "acknowledged"
    closed = client.post(
        "/api/alerts/f0-v1/close",
        json={"told": "Dr Ward", "method": "phone", "read_back": True},
        headers=oncall,
    )
    assert closed.status_code == 200 and closed.json()["communication"]["read_back"] is True
    assert events(ctx, "f0")[-2:] == ["alert.communicated", "alert.closed"]

    def ids(**params: Any) -> list[str]:
        answer = client.get("/api/alerts", params=params, headers=oncall)
        assert answer.status_code == 200, answer.text
        return [a["id"] for a in answer.json()]

    assert ids(state="closed") == ["f0-v1"]
    assert ids(open=True) == ["f1-v1"]
    assert ids(study="f1") == ["f1-v1"]
    assert ids(urgency=2) == ["f1-v1", "f0-v1"] and ids(urgency=1) == []
    assert ids(since=(now() + timedelta(minutes=1)).isoformat()) == []
    detail = client.get("/api/alerts/f1-v1", headers=oncall).json()
    assert next(h["type"] for h in detail["history"]) == "alert.opened"
    # Every view of alerts by a person is audited (issue 13.6): the list with the ids it showed.
    views = ctx.documents.collection("audit").find({"actor": "test-oncall"})
    seen = [(e["action"], e["target"]) for e in views if e["action"].startswith("alert.")]
    assert ("alert.view", "f1-v1") in seen and ("alert.list", "alerts") in seen
    resident = {"Authorization": f"Bearer {tokens['resident']}"}
    assert client.post("/api/alerts/f1-v1/ack", headers=resident).status_code == 403


def test_config_through_the_api_and_a_toml_file(
    client: TestClient, ctx: Context, tokens: dict, tmp_path: Any
) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(
        '[deadlines]\n1 = 300\n\n[[rules]]\nname = "toml-rule"\nmodality = "CT"\nurgency = 1\n'
    )
    ctx.settings.alert_config = path
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    shown = client.get("/api/alerts/config", headers=admin).json()
    assert shown["rules"][0]["name"] == "toml-rule" and shown["deadlines"]["1"] == 300
    new_rules = {"rules": [{"name": "api-rule", "modality": "MR", "urgency": 3}]}
    put = client.put("/api/alerts/config", json=new_rules, headers=admin)
    assert put.status_code == 200 and put.json()["rules"][0]["name"] == "api-rule"
    assert put.json()["deadlines"]["1"] == 300  # the file's deadlines stay
    oncall = {"Authorization": f"Bearer {tokens['oncall']}"}
    assert client.put("/api/alerts/config", json=new_rules, headers=oncall).status_code == 403


def test_grouping_silences_signed_and_retraction(ctx: Context) -> None:
    start = now().replace(microsecond=0)
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        # A re-analysis of the same study and rule within the window counts into one alert.
        analysed(ctx, "g", 0.9)
        notify_study(ctx, "g", start)
        ctx.studies.record_instance("g", "i-g-late", {"raw_key": "k2"}, "CT")  # version 2
        for state in (StudyState.STABLE, StudyState.DEIDENTIFIED):
            ctx.studies.transition("g", state)
        analysis = {"risk": {"score": 0.92}, "findings": [{"diameter_mm": 13.0}]}
        ctx.studies.transition("g", StudyState.ANALYZED, fields={"analysis": analysis})
        notify_study(ctx, "g", start + timedelta(seconds=5))
        [grouped] = list_alerts(ctx, study_id="g")
        assert grouped["count"] == 2 and grouped["_id"] == "g-v1"
        assert len(receiver.posts) == 1  # counted, not paged again
        # A third analysis under the threshold retracts it and tells whoever was paged.
        ctx.studies.record_instance("g", "i-g-later", {"raw_key": "k3"}, "CT")
        for state in (StudyState.STABLE, StudyState.DEIDENTIFIED):
            ctx.studies.transition("g", state)
        low = {"risk": {"score": 0.1}, "findings": []}
        ctx.studies.transition("g", StudyState.ANALYZED, fields={"analysis": low})
        notify_study(ctx, "g", start + timedelta(seconds=9))
        assert alert_of(ctx, "g")["state"] == "retracted"
        assert receiver.posts[-1]["type"] == "radpipe.retraction"
        assert "alert.retracted" in events(ctx, "g")
        # A silence by sender: opened and shown, never paged.
        ctx.documents.collection("alert_config").update_one(
            {"_id": "config"},
            {
                "$set": {
                    "silences": [
                        {
                            "name": "ct-1 maintenance",
                            "source": "ct-1",
                            "starts_at": (start - timedelta(hours=1)).isoformat(),
                            "ends_at": (start + timedelta(hours=1)).isoformat(),
                        }
                    ]
                }
            },
            upsert=True,
        )
        posts = len(receiver.posts)
        analysed(ctx, "quiet", 0.9)
        notify_study(ctx, "quiet", start)
        assert paging.sweep(ctx, start + timedelta(hours=1)) == 0
        assert len(receiver.posts) == posts
        assert alert_of(ctx, "quiet")["silenced"] == "ct-1 maintenance"
        # A signed study opens no alert; one signed while paging is closed, not re-paged.
        analysed(ctx, "signed", 0.9, source="ct-2")
        ctx.studies.transition("signed", StudyState.SIGNED)
        notify_study(ctx, "signed", start)
        assert list_alerts(ctx, study_id="signed") == []
        ctx.settings.ack_timeout_seconds = 10
        analysed(ctx, "later", 0.9, source="ct-2")
        notify_study(ctx, "later", start)
        ctx.studies.transition("later", StudyState.SIGNED)
        paging.sweep(ctx, start + timedelta(seconds=11))
        assert alert_of(ctx, "later")["state"] == "closed"


def test_on_call_rotation_override_and_escalation_chain(ctx: Context) -> None:
    monday = datetime.fromisoformat("2026-01-05T08:00:00+00:00")
    config = {
        "people": [
            {"name": "ann", "webhook_url": "URL_ANN"},
            {"name": "bob", "webhook_url": "URL_BOB"},
            {"name": "cho", "webhook_url": "URL_CHO"},
        ],
        "schedules": [
            {
                "name": "radiology",
                "rotation": {"people": ["ann", "bob"], "starts_at": monday.isoformat()},
                "overrides": [
                    {
                        "person": "cho",
                        "starts_at": (monday + timedelta(days=3)).isoformat(),
                        "ends_at": (monday + timedelta(days=4)).isoformat(),
                    }
                ],
            }
        ],
        "escalation": [{"schedule": "radiology", "repeat": 2}, {"people": ["cho"]}],
    }
    parsed = AlertConfig.model_validate(config)
    assert on_call(parsed, "radiology", monday + timedelta(hours=1)) == "ann"
    assert on_call(parsed, "radiology", monday + timedelta(days=1, hours=1)) == "bob"
    assert on_call(parsed, "radiology", monday + timedelta(days=3, hours=1)) == "cho"
    with webhook_receiver() as receiver:
        for person in config["people"]:
            person["webhook_url"] = receiver.url + "/" + person["name"]
        ctx.documents.collection("alert_config").update_one(
            {"_id": "config"}, {"$set": config}, upsert=True
        )
        ctx.settings.ack_timeout_seconds = 60
        start = monday + timedelta(hours=2)
        analysed(ctx, "e", 0.9)
        notify_study(ctx, "e", start)
        paging.sweep(ctx, start + timedelta(seconds=61))
        paging.sweep(ctx, start + timedelta(seconds=122))
    assert [h["X-Radpipe-Delivery"].split(":")[1] for h in receiver.headers] == ["1", "2", "3"]
    assert [p["page"] for p in receiver.posts] == [1, 2, 3]
    timeline = events(ctx, "e")
    assert timeline.count("alert.escalated") == 1
    to = [
        e["detail"]["to"] for e in ctx.studies.get("e")["events"] if e["type"] == "alert.delivered"
    ]
    assert to == ["person:ann:webhook", "person:ann:webhook", "person:cho:webhook"]


def test_failed_study_pages_the_admins(ctx: Context) -> None:
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        ctx.studies.record_instance("bad", "i-bad", {"raw_key": "k"}, "CT")
        ctx.studies.fail("bad", "deid", "gave up after 3 attempts: TransientError: store down")
        assert paging.sweep(ctx) == 1
        assert paging.sweep(ctx) == 0  # paged once
    [post] = receiver.posts
    assert post["type"] == "radpipe.pipeline" and "deid" in post["summary"]
    [alert] = list_alerts(ctx, kind="pipeline")
    assert alert["stage"] == "deid" and alert["state"] == "open"
    from radpipe.portal.service import open_alerts

    assert open_alerts(ctx) == []  # the clinical banner shows clinical alerts only


def test_the_sweeper_decides_an_alert_whose_notify_task_never_came(ctx: Context) -> None:
    """A notify task stranded in the broker (or lost with its worker before it was sent) leaves
    the study analyzed: the sweeper decides it after NOTIFY_BACKSTOP, once, and the late task
    changes nothing."""
    from radpipe.common.studies import NOTIFY_BACKSTOP, NOTIFY_DUE

    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        analysed(ctx, "lost", 0.9)
        analysed(ctx, "calm", 0.1)
        analysed(ctx, "read", 0.9)
        ctx.studies.transition("read", StudyState.SIGNED)  # signed before any decision
        start = now()
        assert NOTIFY_DUE not in ctx.studies.get("read")
        paging.sweep(ctx, start + NOTIFY_BACKSTOP / 2)
        assert list_alerts(ctx) == [] and "alert.not-required" not in events(ctx, "calm")
        backstop = start + NOTIFY_BACKSTOP + timedelta(seconds=1)
        paging.sweep(ctx, backstop)
        assert ctx.studies.get("lost")["state"] == StudyState.ALERTED
        assert events(ctx, "calm")[-1] == "alert.not-required"
        for later in (2, 5):  # long after it: decided once
            paging.sweep(ctx, start + NOTIFY_BACKSTOP * later)
        notify_study(ctx, "lost")  # the stranded task, redelivered at last
        notify_study(ctx, "calm")
    [alert] = list_alerts(ctx)
    assert alert["_id"] == "lost-v1" and alert["page"] == 1
    assert abs(alert["created_at"] - backstop) < timedelta(milliseconds=1)  # the store keeps ms
    assert [p["study_id"] for p in receiver.posts] == ["lost"]  # paged once
    assert ctx.studies.get("lost")["state"] == StudyState.ALERTED
    assert events(ctx, "lost").count("alert.opened") == 1
    assert events(ctx, "calm").count("alert.not-required") == 1
    assert ctx.studies.get("calm")["state"] == StudyState.ANALYZED
    for study in ("lost", "calm", "read"):
        assert NOTIFY_DUE not in ctx.studies.get(study), study


def test_the_backstop_reads_only_overdue_studies_through_its_index(ctx: Context) -> None:
    from radpipe.common.studies import NOTIFY_DUE

    studies = ctx.studies.studies
    if not hasattr(studies, "explain"):
        pytest.skip("query plans are checked on the embedded engine")
    due = studies.find({NOTIFY_DUE: {"$lte": now()}}).sort(NOTIFY_DUE, 1).limit(20)
    plan = " | ".join(studies.explain(due))
    assert "TEMP B-TREE" not in plan and "USING" in plan, plan


def test_slack_and_teams_message_formats() -> None:
    message = Message(
        "alert",
        "a-v1:1:alert",
        "[Radpipe] AI alert: ACR category 1, alert a-v1",
        ["1 finding(s); largest 12.0 mm", "Urgency: critical (minutes)"],
        {},
        {"Open study": "https://radpipe/studies/a", "Acknowledge": "https://radpipe/alerts/ack/t"},
    )
    slack = slack_body(message)
    assert slack["text"] == message.subject
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "actions"]
    assert [e["url"] for e in slack["blocks"][2]["elements"]] == list(message.links.values())
    teams = teams_body(message)
    assert teams["type"] == "message"
    [attachment] = teams["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["body"][0]["text"] == message.subject
    assert [a["type"] for a in card["actions"]] == ["Action.OpenUrl", "Action.OpenUrl"]
    json.dumps(slack), json.dumps(teams)  # plain JSON


def test_open_alerts_and_due_timers_are_answered_by_indexes(ctx: Context) -> None:
    from radpipe.common.alerts import alerts_of

    alerts = alerts_of(ctx.documents)
    if not hasattr(alerts, "explain"):
        pytest.skip("query plans are checked on the embedded engine")
    banner = alerts.find({"open": True, "kind": "clinical"}).sort("created_at", -1).limit(50)
    due = alerts.find({"open": True, "next_page_at": {"$lte": now()}}).sort("next_page_at", 1)
    for cursor in (banner, due):
        plan = " | ".join(alerts.explain(cursor))
        steps = plan.split(" | ")
        assert "TEMP B-TREE" not in plan, plan
        assert all("USING" in s for s in steps if s.startswith(("SCAN", "SEARCH"))), plan


def test_a_stage_without_a_live_worker_pages_after_a_grace_period(ctx: Context) -> None:
    from radpipe.notify import pipeline

    pipeline._missing_since.clear()
    start = now()
    live = {"deid", "notify"}  # no inference worker
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        assert pipeline.check_workers(ctx, start, live) == 0
        assert pipeline.check_workers(ctx, start + timedelta(seconds=60), live) == 0
        assert pipeline.check_workers(ctx, start + timedelta(seconds=121), live) == 1
        assert pipeline.check_workers(ctx, start + timedelta(seconds=200), live) == 0  # once
        paging.sweep(ctx, start + timedelta(seconds=201))
        # Back, then gone again: the grace period starts over.
        both = live | {"inference-cpu"}
        assert pipeline.check_workers(ctx, start + timedelta(seconds=300), both) == 0
    [alert] = list_alerts(ctx, kind="pipeline")
    assert alert["stage"] == "inference-cpu" and alert["study_id"] is None
    assert "no live worker consumes queue inference-cpu" in receiver.posts[0]["summary"]
    pipeline._missing_since.clear()


def test_alerts_of_the_earlier_version_are_upgraded_without_paging(ctx: Context) -> None:
    from radpipe.common.alerts import alerts_of, open_alerts, upgrade_legacy_alerts

    legacy = alerts_of(ctx.documents)
    for n, acknowledged in enumerate((None, now())):
        legacy.insert_one(
            {
                "_id": f"old{n}-v1",
                "study_id": f"old{n}",
                "version": 1,
                "summary": "1 finding(s)",
                "created_at": now(),
                "delivered_at": now(),
                "acknowledged_at": acknowledged,
            }
        )
    assert upgrade_legacy_alerts(ctx.documents) == 2
    assert upgrade_legacy_alerts(ctx.documents) == 0
    assert [a["_id"] for a in open_alerts(ctx.documents)] == ["old0-v1"]
    assert alert_of(ctx, "old1")["state"] == "acknowledged"
    assert paging.sweep(ctx, now() + timedelta(days=10)) == 0  # no timer: never re-paged
    assert acknowledge(ctx, "old0-v1", "dr-x")["state"] == "acknowledged"


def test_slack_and_teams_channels_post_their_formats_with_links(ctx: Context) -> None:
    with webhook_receiver() as slack, webhook_receiver() as teams:
        ctx.settings.slack_webhook_url = SecretStr(slack.url)
        ctx.settings.teams_webhook_url = SecretStr(teams.url)
        analysed(ctx, "chat", 0.9)
        notify_study(ctx, "chat")
    [slack_post], [teams_post] = slack.posts, teams.posts
    assert slack_post["text"].startswith("[Radpipe] AI alert: ACR category 2, alert chat-v1")
    buttons = slack_post["blocks"][-1]["elements"]
    assert [b["text"]["text"] for b in buttons] == ["Open study", "Acknowledge"]
    assert "/alerts/ack/" in buttons[1]["url"]
    card = teams_post["attachments"][0]["content"]
    assert [a["title"] for a in card["actions"]] == ["Open study", "Acknowledge"]
    for body in (*slack.raw, *teams.raw):
        for value in PHI.values():
            assert value.encode() not in body
    events_ = ctx.studies.get("chat")["events"]
    delivered = [e["detail"]["to"] for e in events_ if e["type"] == "alert.delivered"]
    assert delivered == ["slack", "teams"]
