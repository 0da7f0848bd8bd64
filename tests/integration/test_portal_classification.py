"""A classification bundle's result in the portal (issue 15): a tiny zoo classification bundle
(tests/zoo_bundles.py) analyses a study through the real inference stage; the study page, the
worklist and the study API show the class it selected, the scores, the alert threshold and the
model, and a resident sees none of it before the read."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

from radpipe.common.context import Context
from radpipe.demo import make_phantom, phantom_to_datasets

from ..zoo_bundles import classification_bundle
from .test_inference_results import bearer, run_pipeline


def test_the_study_page_and_worklist_show_a_classification_result(
    ctx: Context, client: TestClient, tokens: dict[str, str], tmp_path: Path
) -> None:
    root = classification_bundle(tmp_path / "models" / "cls", routing=False)
    # Head CTs to this bundle (the demo bundle keeps the chest); it pages on its class score.
    rules = [{"modality": ["CT"], "body_part": ["HEAD"], "min_instances": 3}]
    (root / "radpipe.json").write_text(json.dumps({"routing": rules, "risk": "max_score"}))
    ctx.settings.models_dir = tmp_path / "models"
    phantom = make_phantom(44, nodules=[12.0], shape=(24, 64, 64), spacing=(2.5, 3.0, 3.0))
    datasets = phantom_to_datasets(phantom, patient_name="CLS^ONE", patient_id="C1")
    for ds in datasets:
        ds.BodyPartExamined = "HEAD"
    study_id = run_pipeline(ctx, client, tokens["modality"], datasets)

    analysis = ctx.studies.get(study_id)["analysis"]
    assert analysis["model"]["name"] == "tiny_cls" and analysis["kind"] == "classification"
    scores = {c["name"]: c["probability"] for c in analysis["classification"]}
    [chosen] = [c for c in analysis["classification"] if c["selected"]]
    threshold = analysis["risk_threshold"]

    rad = bearer(tokens["radiologist"])
    detail = client.get(f"/api/studies/{study_id}", headers=rad).json()
    shown = detail["classification"]
    assert shown["label"] == chosen["name"] and shown["score"] == chosen["probability"]
    assert {c["name"]: c["probability"] for c in shown["classes"]} == scores
    assert shown["threshold"] == threshold and (shown["model"], shown["version"]) == (
        "tiny_cls",
        "0.1.0",
    )
    risk = analysis["risk"]["score"]
    assert abs(risk - scores["nodule"]) < 1e-4  # max_score: the non-background class's score
    assert shown["risk_score"] == risk and shown["above_threshold"] == (risk >= threshold)

    page = client.get(f"/studies/{study_id}", headers=rad)
    assert page.status_code == 200
    text = re.sub(r"\s+", " ", page.text)
    label = f'<span class="classification-label">{chosen["name"]}</span>'
    assert f"{label} · score {chosen['probability']:.3f}" in text
    assert f"· alert threshold {threshold:.2f} (risk score {risk:.2f}," in text
    assert "· by tiny_cls 0.1.0" in text
    for name, probability in scores.items():
        assert f'<tr data-class="{name}"><td>{name}</td><td>{probability:.3f}</td>' in text
    assert 'id="findings"' not in text  # no finding table for a classification

    worklist = re.sub(r"\s+", " ", client.get("/", headers=rad).text)
    expected = f'<span class="classification muted">{chosen["name"]} {chosen["probability"]:.2f}'
    assert expected in worklist

    # A resident sees no AI result before the read: neither the API nor the pages tell it.
    res = bearer(tokens["resident"])
    assert client.get(f"/api/studies/{study_id}", headers=res).json()["classification"] is None
    assert 'id="classification"' not in client.get(f"/studies/{study_id}", headers=res).text
    assert 'class="classification' not in client.get("/", headers=res).text
