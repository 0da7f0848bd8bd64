"""The alert does not wait for the result objects (issue 15, latency): the inference stage
records the findings and hands the study to ``notify`` first, then writes SEG, SR and key
images; a worker lost in between leaves ``outputs_pending``, which the redelivered task
finishes. Real demo bundle, embedded stores, the stage called as the worker calls it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from radpipe.common.context import Context
from radpipe.common.studies import StudyState
from radpipe.demo import make_phantom, phantom_to_datasets
from radpipe.inference import stage
from radpipe.inference.stage import analyze_study

from .test_inference_results import deidentified


def _phantom_study(ctx: Context, client: TestClient, tokens: dict[str, str]) -> str:
    phantom = make_phantom(101, nodules=[12.0], shape=(60, 256, 256), spacing=(2.0, 1.2, 1.2))
    return deidentified(ctx, client, tokens["modality"], phantom_to_datasets(phantom))


def test_notify_is_handed_the_study_before_any_result_object_is_stored(
    ctx: Context, client: TestClient, tokens: dict[str, str]
) -> None:
    study_id = _phantom_study(ctx, client, tokens)
    seen: list[tuple[str, Any]] = []
    put = ctx.objects.put

    def recording_put(bucket: str, key: str, *args: Any, **kwargs: Any) -> Any:
        if bucket == ctx.buckets["results"]:
            state = ctx.studies.get(study_id)
            seen.append(("put", (state["state"], state["analysis"]["outputs_pending"])))
        return put(bucket, key, *args, **kwargs)

    ctx.objects.put = recording_put  # type: ignore[method-assign]
    sent_before = len(ctx.tasks.sent)  # type: ignore[attr-defined]
    try:
        analyze_study(ctx, study_id)
    finally:
        ctx.objects.put = put  # type: ignore[method-assign]
    sent = [s for s, sid, _ in ctx.tasks.sent[sent_before:] if sid == study_id]  # type: ignore[attr-defined]
    assert sent == ["notify", "export"]
    # Every result object was stored while the study already said analyzed, outputs pending:
    # the notify stage could alert on it.
    assert seen and all(state == ("analyzed", True) for _, state in seen)
    analysis = ctx.studies.get(study_id)["analysis"]
    assert analysis["outputs_pending"] is False
    assert sorted(o["kind"] for o in analysis["outputs"]) == ["key-image", "png", "seg", "sr"]
    assert analysis["timings"]["write"] > 0
    # Provenance names both stages of the demo bundle: the candidate classifier's weights too.
    second = analysis["model"]["candidate_classifier"]
    assert len(second["sha256"]) == 64 and second["threshold"] == 0.05


def test_a_worker_lost_after_the_alert_hand_off_is_finished_by_the_redelivery(
    ctx: Context, client: TestClient, tokens: dict[str, str], monkeypatch: Any
) -> None:
    study_id = _phantom_study(ctx, client, tokens)

    class Lost(Exception):
        pass

    def die(*args: Any, **kwargs: Any) -> Any:
        raise Lost  # the worker process dies while building the result objects

    with monkeypatch.context() as patch:
        patch.setattr(stage, "_store_results", die)
        try:
            analyze_study(ctx, study_id)
        except Lost:
            pass
        else:  # pragma: no cover - the test's own premise
            raise AssertionError("the stage did not reach the result objects")
    study = ctx.studies.get(study_id)
    assert study["state"] == StudyState.ANALYZED
    assert study["analysis"]["outputs_pending"] is True and study["analysis"]["outputs"] == []
    assert sorted(ctx.objects.list(ctx.buckets["results"], f"{study_id}/")) == []
    reader = {"Authorization": f"Bearer {tokens['radiologist']}"}
    public = client.get(f"/api/studies/{study_id}", headers=reader).json()
    assert public["results_pending"] is True and len(public["findings"]) == 1
    page = client.get(f"/studies/{study_id}", headers=reader).text
    assert 'id="results-pending"' in page and 'id="overlay-toggle"' not in page

    # The notify stage alerts meanwhile; then the task is delivered again.
    ctx.studies.transition(study_id, StudyState.ALERTED, detail={"alert_id": "x"})
    sent_before = len(ctx.tasks.sent)  # type: ignore[attr-defined]
    analyze_study(ctx, study_id)
    study = ctx.studies.get(study_id)
    assert study["state"] == StudyState.ALERTED  # not moved back
    assert study["analysis"]["outputs_pending"] is False
    kinds = sorted(o["kind"] for o in study["analysis"]["outputs"])
    assert kinds == ["key-image", "png", "seg", "sr"]
    stored = sorted(ctx.objects.list(ctx.buckets["results"], f"{study_id}/"))
    assert len(stored) == len(study["analysis"]["outputs"])
    sent = [s for s, sid, _ in ctx.tasks.sent[sent_before:] if sid == study_id]  # type: ignore[attr-defined]
    assert sent == ["export"]  # alerted already: no second notify hand-off
    assert client.get(f"/api/studies/{study_id}", headers=reader).json()["results_pending"] is False
    page = client.get(f"/studies/{study_id}", headers=reader).text
    assert 'id="results-pending"' not in page and 'id="overlay-toggle"' in page
    events = [e["type"] for e in study["events"]]
    assert events.count("analyzed") == 1

    # Delivered once more: nothing pending, nothing written twice.
    analyze_study(ctx, study_id)
    assert sorted(ctx.objects.list(ctx.buckets["results"], f"{study_id}/")) == stored
