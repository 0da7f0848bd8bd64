"""A study outside the model's validated input (issue 15: a model must not page for studies
unlike those it was measured on). The demo bundle declares slice thickness 0.6-3.0 mm; a
5 mm reconstruction is analysed and shown, marked on the study page and in the API, and its
alert is opened silenced: nobody is paged unless the alert configuration asks for it. Real
demo bundle, embedded stores, the stages called as the workers call them."""

from __future__ import annotations

from fastapi.testclient import TestClient
from pydantic import AnyHttpUrl

from radpipe.common.context import Context
from radpipe.common.studies import StudyState
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.inference.stage import analyze_study
from radpipe.notify.service import OUTSIDE_VALIDATED_INPUT, list_alerts, notify_study

from ..webhook import webhook_receiver
from .test_inference_results import deidentified


def _study(ctx: Context, client: TestClient, token: str, seed: int, thickness: float) -> str:
    slices = round(150 / thickness)
    phantom = make_phantom(
        seed, nodules=[22.0], shape=(slices, 256, 256), spacing=(thickness, 1.2, 1.2)
    )
    study_id = deidentified(ctx, client, token, phantom_to_datasets(phantom))
    analyze_study(ctx, study_id)
    return study_id


def test_thick_slices_are_analysed_shown_as_outside_and_page_nobody(
    ctx: Context, client: TestClient, tokens: dict[str, str]
) -> None:
    thick = _study(ctx, client, tokens["modality"], 406, 5.0)
    thin = _study(ctx, client, tokens["modality"], 405, 2.0)
    scope = ctx.studies.get(thick)["analysis"]["input_scope"]
    assert scope == {
        "within": False,
        "measured": {"slice_thickness_mm": 5.0},
        "validated": {"slice_thickness_mm": [0.6, 3.0]},
        "reasons": ["slice thickness 5 mm is outside the 0.6-3 mm this model was validated on"],
    }
    assert ctx.studies.get(thin)["analysis"]["input_scope"]["within"] is True
    for study_id in (thick, thin):  # both analysed and found the 22 mm nodule
        analysis = ctx.studies.get(study_id)["analysis"]
        assert analysis["risk"]["score"] >= ctx.settings.risk_threshold, study_id

    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, thick)
        notify_study(ctx, thin)
    assert [p["study_id"] for p in receiver.posts] == [thin]  # the thick study paged nobody
    [silenced] = list_alerts(ctx, study_id=thick)
    assert silenced["silenced"] == OUTSIDE_VALIDATED_INPUT and silenced["next_page_at"] is None
    assert ctx.studies.get(thick)["state"] == StudyState.ALERTED  # on the worklist as flagged
    [event] = [e for e in ctx.studies.get(thick)["events"] if e["type"] == "alert.silenced"]
    assert event["detail"]["reasons"] == scope["reasons"]
    assert list_alerts(ctx, study_id=thin)[0]["silenced"] is None

    reader = {"Authorization": f"Bearer {tokens['radiologist']}"}
    public = client.get(f"/api/studies/{thick}", headers=reader).json()
    assert public["input_scope"]["within"] is False
    page = client.get(f"/studies/{thick}", headers=reader).text
    assert 'id="outside-validated-input"' in page and "slice thickness 5 mm" in page
    page = client.get(f"/studies/{thin}", headers=reader).text
    assert 'id="outside-validated-input"' not in page


def test_the_alert_configuration_can_page_outside_the_validated_input(
    ctx: Context, client: TestClient, tokens: dict[str, str]
) -> None:
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    answer = client.put(
        "/api/alerts/config", json={"page_outside_validated_input": True}, headers=admin
    )
    assert answer.status_code == 200 and answer.json()["page_outside_validated_input"] is True
    thick = _study(ctx, client, tokens["modality"], 406, 5.0)
    with webhook_receiver() as receiver:
        ctx.settings.alert_webhook_url = AnyHttpUrl(receiver.url)
        notify_study(ctx, thick)
    assert [p["study_id"] for p in receiver.posts] == [thick]
    assert list_alerts(ctx, study_id=thick)[0]["silenced"] is None
