"""Residents read first (DESIGN §4): before a resident's read no answer they can get carries the
AI (studies, study, alerts, the result series over QIDO-RS/WADO-RS); then the read's comparison
with the AI and the attending, and the attending's RADPEER score, with exact status codes."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from radpipe.common import masks
from radpipe.common.context import Context
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.notify.service import notify_study
from radpipe.portal.agreement import cohen_kappa
from radpipe.portal.reading import overlap_scores

from .test_inference_results import bearer, run_pipeline


@pytest.fixture
def alerted(ctx: Context, client: TestClient, tokens) -> str:
    phantom = make_phantom(101, nodules=[12.0], shape=(40, 160, 160), spacing=(2.0, 1.2, 1.2))
    study_id = run_pipeline(ctx, client, tokens["modality"], phantom_to_datasets(phantom))
    notify_study(ctx, study_id)
    assert ctx.studies.get(study_id)["state"] == "alerted"
    return study_id


def series_modalities(client: TestClient, token: str, study_uid: str) -> list[str]:
    answer = client.get(
        f"/dicom-web/studies/{study_uid}/series",
        headers={**bearer(token), "Accept": "application/dicom+json"},
    )
    assert answer.status_code == 200, answer.text
    return sorted(s["00080060"]["Value"][0] for s in answer.json())


def test_resident_sees_no_ai_until_the_read_then_the_comparison(
    ctx: Context, client: TestClient, tokens, alerted: str
) -> None:
    study_id, res, rad = alerted, tokens["resident"], tokens["radiologist"]
    study = ctx.studies.get(study_id)
    ai = study["analysis"]
    uid = study["deid"]["study_uid"]
    outputs = {o["kind"]: o for o in ai["outputs"] if o["kind"] != "png"}

    # Before the read: no AI in any answer the resident can get.
    [listed] = client.get("/api/studies", headers=bearer(res)).json()["studies"]
    detail = client.get(f"/api/studies/{study_id}", headers=bearer(res)).json()
    for view in (listed, detail):
        assert view["ai_hidden"] is True and view["state"] == "analyzed"
        assert view["risk"] is None and view["findings"] == [] and view["model"] is None
        assert view["alert"] is None
        text = str(view)
        assert "alert" not in [e["type"][:5] for e in view["events"]]
        for leak in ("score", "high", "diameter", "probability", "finding", "sha256", "alert"):
            assert leak not in text.replace("'findings': []", "").replace("'alert': None", ""), leak
    assert client.get("/api/alerts", headers=bearer(res)).json() == []
    [alert] = client.get("/api/alerts", headers=bearer(rad)).json()
    assert client.get(f"/api/alerts/{alert['id']}", headers=bearer(res)).status_code == 404
    assert client.get("/api/studies?state=alerted", headers=bearer(res)).status_code == 400
    assert client.get("/api/studies?state=analyzed", headers=bearer(res)).json()["total"] == 1
    assert client.get(f"/api/studies/{study_id}/reads", headers=bearer(res)).json() == []
    assert series_modalities(client, res, uid) == ["CT"]
    assert {"CT", "SEG", "SR"} <= set(series_modalities(client, rad, uid))
    for kind in ("seg", "sr"):
        o = outputs[kind]
        path = f"/dicom-web/studies/{uid}/series/{o['series_uid']}"
        assert client.get(f"{path}/metadata", headers=bearer(res)).status_code == 404
        assert client.get(f"{path}/metadata", headers=bearer(rad)).status_code == 200
    page = client.get(f"/studies/{study_id}", headers=bearer(res))
    assert page.status_code == 200 and "Commit read" in page.text
    assert 'id="findings"' not in page.text and "AI risk" not in page.text
    assert '"overlay": false' in page.text
    overlay = f"/api/studies/{study_id}/overlay/{ai['input_sop_uids'][0]}.png"
    assert client.get(overlay, headers=bearer(res)).status_code == 404
    assert client.get(overlay, headers=bearer(rad)).status_code == 200
    assert f"{ai['findings'][0]['diameter_mm']:.1f}" not in page.text
    # The radiologist sees all of it.
    full = client.get(f"/api/studies/{study_id}", headers=bearer(rad)).json()
    assert full["state"] == "alerted" and len(full["findings"]) == len(ai["findings"])

    # Bad reads and the roles that may not read: exact codes.
    reads = f"/api/studies/{study_id}/reads"
    bad = {"finding_present": False, "diameter_mm": 5.0}
    assert client.post(reads, json=bad, headers=bearer(res)).status_code == 400
    assert (
        client.post(reads, json={"finding_present": "maybe"}, headers=bearer(res)).status_code
        == 422
    )
    for role in ("oncall", "manager", "auditor", "admin", "modality"):
        refused = client.post(reads, json={"finding_present": True}, headers=bearer(tokens[role]))
        assert refused.status_code == 403, role
    assert (
        client.post(
            "/api/studies/nope/reads", json={"finding_present": True}, headers=bearer(res)
        ).status_code
        == 404
    )

    # The read, placed on the AI's finding: 201 and the comparison.
    finding = ai["findings"][0]
    z, y, x = finding["center_voxel_zyx"]
    read = {
        "finding_present": True,
        "diameter_mm": round(finding["diameter_mm"] - 1.0, 1),
        "slice": round(z),
        "center_yx": [y, x],
    }
    posted = client.post(reads, json=read, headers=bearer(res))
    assert posted.status_code == 201, posted.text
    versus_ai = posted.json()["comparison"]["ai"]
    assert versus_ai["finding_present_agree"] is True
    assert versus_ai["diameter_difference_mm"] == pytest.approx(-1.0, abs=0.06)
    assert versus_ai["risk_category"] == {"read": "high", "other": "high"}
    assert versus_ai["risk_category_agree"] is True
    assert 0.7 < versus_ai["dice"] <= 1.0 and 0.5 < versus_ai["iou"] <= versus_ai["dice"]
    assert versus_ai["masks"] == {"read": "sphere", "other": "mask"}  # no drawn mask: a sphere
    assert client.post(reads, json=read, headers=bearer(res)).status_code == 409

    # After the read: the AI, the alert and the result series.
    detail = client.get(f"/api/studies/{study_id}", headers=bearer(res)).json()
    assert detail["ai_hidden"] is False and detail["state"] == "alerted"
    assert detail["findings"] and detail["risk"]["category"] == "high"
    assert [a["id"] for a in client.get("/api/alerts", headers=bearer(res)).json()] == [alert["id"]]
    assert {"SEG", "SR"} <= set(series_modalities(client, res, uid))

    # The attending scores the read (RADPEER; a comment from 2b on) and signs.
    [mine] = client.get(reads, headers=bearer(res)).json()
    score = f"{reads}/{mine['id']}/score"
    assert client.post(score, json={"score": "2b"}, headers=bearer(rad)).status_code == 400
    assert client.post(score, json={"score": "4"}, headers=bearer(rad)).status_code == 422
    assert client.post(score, json={"score": "1"}, headers=bearer(res)).status_code == 403
    assert (
        client.post(f"{reads}/nope/score", json={"score": "1"}, headers=bearer(rad)).status_code
        == 404
    )
    scored = client.post(score, json={"score": "2a", "comment": " "}, headers=bearer(rad))
    assert scored.status_code == 200 and scored.json()["score"]["score"] == "2a"
    scored = client.post(
        score, json={"score": "3a", "comment": "size under-called"}, headers=bearer(rad)
    )
    assert scored.status_code == 200 and scored.json()["score"]["comment"] == "size under-called"
    for n in range(1, len(ai["findings"]) + 1):
        body = {"decision": "accept"} if n == 1 else {"decision": "reject", "reason": "fp"}
        decided = client.post(
            f"/api/studies/{study_id}/findings/{n}/decision", json=body, headers=bearer(rad)
        )
        assert decided.status_code == 200
    assert client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad)).status_code == 200
    [mine] = client.get(reads, headers=bearer(res)).json()
    versus = mine["comparison"]["attending"]
    assert versus["by"] == "test-radiologist" and versus["finding_present_agree"] is True
    assert versus["risk_category_agree"] is True and versus["dice"] > 0.7
    assert mine["score"]["score"] == "3a"

    # The resident's agreement page: one read, agreeing with the AI and the attending.
    mine = client.get("/api/residents/test-resident/agreement", headers=bearer(res)).json()
    assert [r["study_id"] for r in mine["reads"]] == [study_id]
    assert mine["pairs"] == {"ai": 1, "attending": 1}
    assert mine["kappa"] == {"ai": "n/a", "attending": "n/a"}  # one answer throughout
    assert mine["weeks"][0]["ai"] == 1.0 and mine["weeks"][0]["attending"] == 1.0
    other = client.get("/api/residents/someone-else/agreement", headers=bearer(res))
    assert other.status_code == 403
    assert (
        client.get("/api/residents/test-resident/agreement", headers=bearer(rad)).status_code == 200
    )
    assert (
        client.get("/api/residents/test-resident/agreement", headers=bearer(tokens["manager"]))
    ).status_code == 403
    page = client.get("/residents/test-resident", headers=bearer(res))
    assert page.status_code == 200 and 'id="kappa"' in page.text and "kappa" in page.text

    actions = [a["action"] for a in ctx.documents.collection("audit").find({"target": study_id})]
    assert "study.read" in actions and "read.score" in actions and "study.view" in actions
    assert "study.overlay" in actions


def test_the_resident_worklist_is_not_in_risk_order(
    ctx: Context, client: TestClient, tokens
) -> None:
    from ..dicom import ct_series
    from ..unit.test_ingest_api import stow

    stow(client, tokens["modality"], ct_series(seed=3)[:2])  # the oldest, no risk yet
    [plain] = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()["studies"]
    phantom = make_phantom(101, nodules=[12.0], shape=(40, 160, 160), spacing=(2.0, 1.2, 1.2))
    risky = run_pipeline(ctx, client, tokens["modality"], phantom_to_datasets(phantom))
    res = client.get("/api/studies", headers=bearer(tokens["resident"])).json()["studies"]
    rad = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()["studies"]
    assert [s["id"] for s in res] == [plain["id"], risky]  # longest waiting first
    assert [s["id"] for s in rad] == [risky, plain["id"]]  # highest AI risk first
    assert all(s["risk"] is None and s["ai_hidden"] for s in res)


def test_overlap_scores() -> None:
    geo = masks.Geometry("1.2.3", 30, 30, 30, (1.0, 1.0, 1.0))
    ball = masks.sphere(geo, (10.0, 10.0, 10.0), 8.0)
    assert overlap_scores({}, {}) == {"dice": "n/a", "iou": "n/a"}
    assert overlap_scores(None, ball) == {"dice": "n/a", "iou": "n/a"}
    assert overlap_scores({}, ball) == {"dice": 0.0, "iou": 0.0}
    assert overlap_scores(ball, ball) == {"dice": 1.0, "iou": 1.0}
    far = masks.sphere(geo, (22.0, 22.0, 22.0), 8.0)
    assert overlap_scores(ball, far) == {"dice": 0.0, "iou": 0.0}
    inner = masks.sphere(geo, (10.0, 10.0, 10.0), 4.0)
    a, b = masks.voxel_count(ball), masks.voxel_count(inner)
    assert overlap_scores(ball, inner) == {
        "dice": round(2 * b / (a + b), 4),
        "iou": round(b / a, 4),
    }


def test_cohen_kappa() -> None:
    t, f = True, False
    assert cohen_kappa([(t, t), (t, f), (f, f), (f, f)]) == 0.5
    assert cohen_kappa([(t, t), (f, f)]) == 1.0
    assert cohen_kappa([(t, f), (f, t)]) == -1.0
    assert cohen_kappa([(t, t), (t, t)]) == "n/a"
    assert cohen_kappa([]) == "n/a"


def box(geometry: dict, slices: range, rows: range, columns: range) -> dict:
    """A box-shaped mask in the wire encoding, written out run by run (one run per row)."""
    width = geometry["shape"][2]
    runs = [v for r in rows for v in (r * width + columns.start, len(columns))]
    return {
        "encoding": "rle-slices-v1",
        "series_uid": geometry["series_uid"],
        "shape": geometry["shape"],
        "slices": {str(k): runs for k in slices},
    }


def ai_mask_from_seg(ctx: Context, study: dict) -> np.ndarray:
    """The AI's mask, read here from its stored SEG (every segment, placed by source slice)."""
    import io

    import pydicom

    seg_key = next(o["key"] for o in study["analysis"]["outputs"] if o["kind"] == "seg")
    ds = pydicom.dcmread(io.BytesIO(ctx.objects.get(ctx.buckets["results"], seg_key)))
    order = [u.split("#")[0] for u in study["analysis"]["input_sop_uids"]]
    frames = ds.pixel_array.reshape(-1, int(ds.Rows), int(ds.Columns))
    dense = np.zeros((len(order), int(ds.Rows), int(ds.Columns)), dtype=bool)
    for i, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        dense[order.index(uid)] |= frames[i] > 0
    return dense


def dice_iou(a: np.ndarray, b: np.ndarray) -> dict:
    inter, total = int((a & b).sum()), int(a.sum() + b.sum())
    return {"dice": round(2 * inter / total, 4), "iou": round(inter / (total - inter), 4)}


def test_drawn_masks_give_exact_dice_and_iou(
    ctx: Context, client: TestClient, tokens, alerted: str
) -> None:
    import math

    from radpipe.common.auth import AuthService

    study_id, res, rad = alerted, tokens["resident"], tokens["radiologist"]
    auth = AuthService(ctx.documents)
    res2, rad2 = auth.create_token("res-2", "resident"), auth.create_token("rad-2", "radiologist")
    study = ctx.studies.get(study_id)
    reads = f"/api/studies/{study_id}/reads"
    # The grid is no AI result: a resident gets it before the read (the AI's masks: 404).
    geometry = client.get(f"/api/studies/{study_id}/geometry", headers=bearer(res)).json()
    assert geometry["shape"] == [40, 160, 160]
    mask_url = f"/api/studies/{study_id}/findings/1/mask"
    assert client.get(mask_url, headers=bearer(res)).status_code == 404

    # Bad masks: 400 naming the fix; no read, nothing stored, the AI still hidden.
    drawn = box(geometry, range(18, 22), range(75, 85), range(70, 80))  # 400 voxels
    bad = [
        ({**drawn, "shape": [40, 160, 159]}, "shape"),
        ({**drawn, "series_uid": "1.2.3"}, "series"),
        ({**drawn, "encoding": "rle"}, "encoding"),
        ({**drawn, "slices": {"18": [100, 5, 103, 5]}}, "before the end"),
        ({**drawn, "slices": {"18": [25_599, 2]}}, "leaves"),
        ({**drawn, "slices": {}}, "empty"),
        ({**drawn, "slices": {}, "empty": True}, "draws it"),  # present, but nothing drawn
    ]
    for mask, says in bad:
        answer = client.post(
            reads, json={"finding_present": True, "mask": mask}, headers=bearer(res)
        )
        assert answer.status_code == 400 and says in answer.json()["detail"], answer.json()
    absent = {"finding_present": False, "mask": drawn}
    answer = client.post(reads, json=absent, headers=bearer(res))
    assert answer.status_code == 400 and "empty" in answer.json()["detail"]
    assert ctx.documents.collection("reads").count_documents({"study_id": study_id}) == 0
    assert list(ctx.objects.list(ctx.buckets["results"], f"{study_id}/reads/")) == []
    assert client.get(f"/api/studies/{study_id}", headers=bearer(res)).json()["ai_hidden"]

    # Two absent reads with explicitly empty masks: Dice and IoU "n/a" between them.
    nothing = {**drawn, "slices": {}, "empty": True}
    posted = client.post(
        reads, json={"finding_present": False, "mask": nothing}, headers=bearer(rad2)
    )
    assert posted.status_code == 201, posted.text
    posted = client.post(
        reads, json={"finding_present": False, "mask": nothing}, headers=bearer(res2)
    )
    assert posted.status_code == 201, posted.text
    versus = posted.json()["comparison"]
    assert versus["attending"]["by"] == "rad-2"
    assert versus["attending"]["dice"] == "n/a" and versus["attending"]["iou"] == "n/a"
    assert versus["attending"]["masks"] == {"read": "mask", "other": "mask"}
    assert versus["ai"]["dice"] == 0.0 and versus["ai"]["iou"] == 0.0

    # The attending edits finding 1's mask to a known box and signs.
    edited = box(geometry, range(18, 22), range(70, 80), range(70, 80))  # 400 voxels
    findings = study["analysis"]["findings"]
    for n in range(1, len(findings) + 1):
        body = (
            {"decision": "edit", "mask": edited}
            if n == 1
            else {"decision": "reject", "reason": "fp"}
        )
        answer = client.post(
            f"/api/studies/{study_id}/findings/{n}/decision", json=body, headers=bearer(rad)
        )
        assert answer.status_code == 200, answer.text
    assert client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad)).status_code == 200

    # The resident's drawn read: half of it on the attending's box.
    posted = client.post(reads, json={"finding_present": True, "mask": drawn}, headers=bearer(res))
    assert posted.status_code == 201, posted.text
    read = posted.json()
    volume = 400 * 2.0 * 1.2 * 1.2
    assert read["diameter_mm"] == pytest.approx((6 * volume / math.pi) ** (1 / 3), abs=0.01)
    assert read["mask"]["voxels"] == 400
    stored = list(ctx.objects.list(ctx.buckets["results"], f"{study_id}/reads/"))
    assert read["mask"]["key"] in stored and len(stored) == 3  # the two empty ones too
    attending = read["comparison"]["attending"]
    assert attending["by"] == "test-radiologist"
    assert (attending["dice"], attending["iou"]) == (0.5, 0.3333)  # 200 shared of 400 + 400
    assert attending["masks"] == {"read": "mask", "other": "mask"}

    # Against the AI: its SEG's voxels, read here independently.
    ai = ai_mask_from_seg(ctx, study)
    mine = np.zeros_like(ai)
    mine[18:22, 75:85, 70:80] = True
    versus_ai = read["comparison"]["ai"]
    assert {k: versus_ai[k] for k in ("dice", "iou")} == dice_iou(mine, ai)
    assert versus_ai["masks"] == {"read": "mask", "other": "mask"}

    # The second resident's empty read against the signed box: 0, not "n/a".
    [second] = [r for r in client.get(reads, headers=bearer(res2)).json() if r["by"] == "res-2"]
    assert second["comparison"]["attending"]["dice"] == 0.0
    page = client.get(f"/studies/{study_id}", headers=bearer(res))
    assert "Dice 0.5 · IoU 0.3333" in page.text and "drawn mask" in page.text


def test_every_view_of_a_study_is_audited(
    ctx: Context, client: TestClient, tokens, alerted: str
) -> None:
    study_id, rad, res = alerted, tokens["radiologist"], tokens["resident"]
    study = ctx.studies.get(study_id)
    sop = study["analysis"]["input_sop_uids"][0].split("#")[0]
    views = {
        f"/studies/{study_id}": "study.view",
        f"/api/studies/{study_id}": "study.view",
        f"/api/studies/{study_id}/overlay/{sop}.png": "study.overlay",
        f"/api/studies/{study_id}/findings/1/mask": "study.mask.view",
        f"/api/studies/{study_id}/geometry": "study.geometry.view",
        f"/api/studies/{study_id}/reads": "study.reads.view",
    }
    audit = ctx.documents.collection("audit")
    for url, action in views.items():
        before = audit.count_documents({"action": action, "target": study_id})
        assert client.get(url, headers=bearer(rad)).status_code == 200, url
        after = list(audit.find({"action": action, "target": study_id}))
        assert len(after) == before + 1, url
        assert after[-1]["actor"] == "test-radiologist" and after[-1]["role"] == "radiologist"
    # Lists name the studies they show, and so does a resident's agreement page.
    client.get("/api/studies", headers=bearer(rad))
    [listed] = list(audit.find({"action": "studies.list", "actor": "test-radiologist"}))
    assert study_id in listed["detail"]["ids"]
    posted = client.post(
        f"/api/studies/{study_id}/reads", json={"finding_present": False}, headers=bearer(res)
    )
    assert posted.status_code == 201
    client.get("/residents/test-resident", headers=bearer(res))
    [page] = list(audit.find({"action": "resident.agreement.view", "actor": "test-resident"}))
    assert page["detail"]["ids"] == [study_id]
