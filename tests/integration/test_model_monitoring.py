"""Model monitoring end to end: a phantom analysed by the real demo bundle records its input
statistics; decisions and the sign-off posted through the API move the model's figures in
``GET /api/monitoring`` and the Prometheus gauges; admins and managers see the page, clinical
roles do not. The store's side runs on every document-store adapter (MongoDB when
RADPIPE_TEST_MONGO_URL is set)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from radpipe.common import drift, monitoring
from radpipe.common.context import Context
from radpipe.common.settings import Settings
from radpipe.common.studies import now
from radpipe.demo import make_phantom, phantom_to_datasets

from ..servers import DOCUMENT_ENGINES, document_store
from .test_inference_results import bearer, run_pipeline


def _gauges(client: TestClient, token: str, key: str) -> dict[str, float]:
    """The model gauges of one model version (``name`` or ``name:decision`` -> value)."""
    answer = client.get("/metrics", headers=bearer(token))
    assert answer.status_code == 200
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.labels.get("model") != key:
                continue
            suffix = sample.labels.get("decision") or sample.labels.get("feature")
            found[sample.name + (f":{suffix}" if suffix else "")] = sample.value
    return found


def test_decisions_through_the_api_move_the_figures_and_the_metrics(
    ctx: Context, client: TestClient, tokens: dict[str, str]
) -> None:
    phantom = make_phantom(101, nodules=[12.0, 14.0], shape=(40, 160, 160), spacing=(2.0, 1.2, 1.2))
    study_id = run_pipeline(ctx, client, tokens["modality"], phantom_to_datasets(phantom))
    study = ctx.studies.get(study_id)
    n = len(study["analysis"]["findings"])
    assert n >= 2  # one kept, the others rejected: a false positive at least
    key = monitoring.model_key(study["analysis"]["model"])
    admin, rad = tokens["admin"], tokens["radiologist"]

    # Clinical roles are refused; admin and manager read aggregates only.
    assert client.get("/api/monitoring", headers=bearer(rad)).status_code == 403
    assert client.get("/api/monitoring", headers=bearer(tokens["manager"])).status_code == 200
    answer = client.get("/api/monitoring", headers=bearer(admin))
    assert answer.status_code == 200
    [model] = answer.json()["models"]
    assert model["model"] == key and model["studies"] == 1 and model["decided"] == 0
    assert model["ppv"] is None and model["false_positives_per_study"] is None
    inputs = model["inputs"]
    assert inputs["window"] == 1 and inputs["has_reference"]
    assert set(inputs["drift"]) == set(drift.FEATURES)  # the shipped reference_stats.json
    edges = inputs["edges"]["pixel_spacing_mm"]
    spacing_bin = int(drift.bin_counts([1.2], edges).argmax())
    assert inputs["observed"]["pixel_spacing_mm"][spacing_bin] == 1.0
    thickness = inputs["edges"]["slice_thickness_mm"]  # the phantom's 2 mm slices
    assert (
        inputs["observed"]["slice_thickness_mm"][int(drift.bin_counts([2.0], thickness).argmax())]
        == 1.0
    )
    assert study_id not in answer.text  # no study is named

    # Finding 1 rejected, then accepted (the last decision counts); the others rejected.
    def decide(number: int, body: dict) -> None:
        url = f"/api/studies/{study_id}/findings/{number}/decision"
        assert client.post(url, json=body, headers=bearer(rad)).status_code == 200

    decide(1, {"decision": "reject", "reason": "vessel"})
    assert client.get("/api/monitoring", headers=bearer(admin)).json()["models"][0][
        "decisions"
    ] == {
        "accept": 0,
        "edit": 0,
        "reject": 1,
    }
    decide(1, {"decision": "accept"})
    for number in range(2, n + 1):
        decide(number, {"decision": "reject", "reason": "not a nodule"})
    [model] = client.get("/api/monitoring", headers=bearer(admin)).json()["models"]
    assert model["decisions"] == {"accept": 1, "edit": 0, "reject": n - 1}
    assert model["ppv"] == pytest.approx(1 / n) and model["acceptance_rate"] == pytest.approx(1 / n)
    assert model["recent"]["decided"] == n

    assert client.post(f"/api/studies/{study_id}/sign", headers=bearer(rad)).status_code == 200
    [model] = client.get("/api/monitoring", headers=bearer(admin)).json()["models"]
    assert model["signed_studies"] == 1
    assert model["false_positives_per_study"] == pytest.approx(n - 1)

    gauges = _gauges(client, admin, key)
    assert gauges["radpipe_model_ppv"] == pytest.approx(1 / n)
    assert gauges["radpipe_model_acceptance_rate"] == pytest.approx(1 / n)
    assert gauges["radpipe_model_false_positives_per_study"] == pytest.approx(n - 1)
    assert gauges["radpipe_model_decisions:reject"] == n - 1
    assert gauges["radpipe_model_studies"] == 1
    assert gauges["radpipe_model_drift_psi:slice_thickness_mm"] == pytest.approx(
        model["inputs"]["drift"]["slice_thickness_mm"]["psi"]
    )

    # The page and its vendored chart library, for admins; nothing for a radiologist.
    page = client.get("/monitoring", headers=bearer(admin))
    assert page.status_code == 200 and "/monitoring/assets/monitoring.js" in page.text
    asset = client.get("/monitoring/assets/uPlot.iife.min.js", headers=bearer(admin))
    assert asset.status_code == 200 and "uPlot" in asset.text
    assert client.get("/monitoring/assets/nope.js", headers=bearer(admin)).status_code == 404
    assert client.get("/monitoring", headers=bearer(rad)).status_code == 403


@pytest.mark.parametrize("engine", DOCUMENT_ENGINES)
def test_the_monitoring_queries_and_updates_on_every_document_store(
    engine: str, settings: Settings, tmp_path
) -> None:
    documents = document_store(engine, tmp_path, "model monitoring")
    try:
        settings.monitor_min_studies = 3
        model = {"name": "m", "version": "1", "sha256": "ef" * 32}
        key = monitoring.model_key(model)
        reference = {
            "features": {
                "slice_thickness_mm": {
                    "edges": drift.SLICE_THICKNESS_EDGES,
                    "proportions": [0, 1.0] + [0] * 8,
                }
            }
        }
        for i in range(3):
            stats = {"pixel_spacing_mm": 0.7, "slice_thickness_mm": 5.0, "hu": []}
            assert monitoring.record_inference(documents, f"s{i}", 1, model, stats, reference)
        assert not monitoring.record_inference(documents, "s0", 1, model, stats, reference)
        for n, kind in enumerate(["reject", "edit", "accept", "reject"], start=1):
            decision = {"finding": min(n, 3), "decision": kind, "at": now(), "model": model}
            monitoring.record_decision(documents, "s0", 1, decision)  # finding 3: accept, reject
        monitoring.record_signed(documents, "s0", 1, model, findings=3, rejected=2)
        monitoring.record_signed(documents, "s0", 1, model, findings=3, rejected=2)
        [figures] = monitoring.summaries(documents, settings)
        assert figures["studies"] == 3 and figures["inputs"]["window"] == 3
        assert figures["decisions"] == {"accept": 0, "edit": 1, "reject": 2}
        assert figures["ppv"] == pytest.approx(1 / 3) and figures["recent"]["decided"] == 3
        assert figures["false_positives_per_study"] == 2.0
        assert figures["inputs"]["drift"]["slice_thickness_mm"]["outside"] == 1.0
        assert figures["conditions"]["drift"]["active"]
        assert monitoring.set_condition(documents, key, "drift", True) == 1
        assert monitoring.set_condition(documents, key, "drift", True) is None  # held already
        assert monitoring.set_condition(documents, key, "drift", False) is None
        assert monitoring.set_condition(documents, key, "drift", True) == 2
        assert monitoring.episode(monitoring.stats_of(documents, key) or {}, "drift") == 2
    finally:
        documents.close()
