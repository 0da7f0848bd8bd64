"""End to end: services as processes, a phantom pushed with dicomweb-client, the alert received."""

from __future__ import annotations

import httpx
from dicomweb_client.api import DICOMwebClient

from radpipe.demo import make_phantom, phantom_to_datasets

from .conftest import Stack, wait_until


def push(stack: Stack, token: str, nodules: list[float], seed: int, patient: str) -> str:
    phantom = make_phantom(seed, nodules=nodules, shape=(48, 192, 192), spacing=(2.5, 1.6, 1.6))
    datasets = phantom_to_datasets(phantom, patient_name=f"{patient}^Test", patient_id=patient)
    client = DICOMwebClient(
        url=f"{stack.ingest_url}/dicom-web", headers={"Authorization": f"Bearer {token}"}
    )
    response = client.store_instances(datasets=datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "FailedSOPSequence" not in response
    return str(datasets[0].StudyInstanceUID)


def test_high_risk_study_alerts_once_and_clean_study_does_not(stack: Stack) -> None:
    modality, reader = stack.token("modality"), stack.token("radiologist")
    high_uid = push(stack, modality, [14.0], seed=11, patient="PATHIGH01")
    clean_uid = push(stack, modality, [], seed=12, patient="PATCLEAN02")
    headers = {"Authorization": f"Bearer {reader}"}

    def lookup(uid: str) -> dict:
        response = httpx.get(
            f"{stack.portal_url}/api/studies", params={"source_study_uid": uid}, headers=headers
        )
        studies = response.json()["studies"]
        return studies[0] if studies else {}

    def finished(uid: str):  # type: ignore[no-untyped-def]
        def check():  # type: ignore[no-untyped-def]
            study = lookup(uid)
            done = study.get("state") in ("alerted", "failed") or any(
                e["type"] == "alert.not-required" for e in study.get("events", [])
            )
            return study if done else None

        return check

    high = wait_until(finished(high_uid), 300, stack, "the high-risk study to be alerted")
    clean = wait_until(finished(clean_uid), 300, stack, "the clean study to be analysed")

    assert high["state"] == "alerted", stack.log_tail()
    assert [e["type"] for e in high["events"]][:5] == [
        "received",
        "stable",
        "deidentified",
        "analyzed",
        "alerted",
    ]
    assert high["risk"]["score"] >= 0.5 and high["model"]["sha256"]
    assert abs(max(f["diameter_mm"] for f in high["findings"]) - 14.0) <= 2.0
    # The clean study is analysed and raises no alert (its risk stays under the threshold).
    assert clean["state"] == "analyzed" and clean["alert"] is None
    assert clean["risk"]["score"] < 0.5
    assert all(f["diameter_mm"] < 8.0 for f in clean["findings"])

    posts = stack.webhook.posts
    assert len(posts) == 1 and posts[0]["study_id"] == high["id"]
    assert posts[0]["link"] == f"{stack.portal_url}/studies/{high['id']}"
    for planted in (b"PATHIGH01", b"PATCLEAN02", high_uid.encode()):
        assert planted not in stack.webhook.raw[0]
