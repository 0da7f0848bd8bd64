"""The stage wrapper: permanent failures dead-letter at once, others after their retries."""

from __future__ import annotations

import pytest
from celery import Celery

from radpipe.common import bus
from radpipe.common.context import Context
from radpipe.common.errors import PipelineError

from ..dicom import ct_series
from .test_stages import ingest


@pytest.fixture
def eager(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> Celery:
    monkeypatch.setattr(bus, "get_context", lambda: ctx)
    app = Celery("test")
    app.conf.task_always_eager = True
    return app


def test_pipeline_error_fails_the_study_without_retry(eager: Celery, ctx: Context) -> None:
    study_id = ingest(ctx, ct_series()[:1])
    calls = []

    def stage(_: Context, sid: str) -> None:
        calls.append(sid)
        raise PipelineError("the series cannot form a volume: 2 slices")

    task = bus.stage_task(eager, "t.permanent", "inference", max_retries=3)(stage)
    task.apply(args=[study_id])
    study = ctx.studies.get(study_id)
    assert calls == [study_id]
    assert study["state"] == "failed"
    assert study["failure"]["stage"] == "inference"
    assert study["failure"]["reason"] == "the series cannot form a volume: 2 slices"
    assert ctx.objects.exists(ctx.buckets["raw"], ctx.studies.instances_of(study_id)[0]["raw_key"])


def test_unexpected_error_is_retried_then_dead_lettered_without_its_text(
    eager: Celery, ctx: Context
) -> None:
    study_id = ingest(ctx, ct_series()[:1])
    calls = []

    def stage(_: Context, sid: str) -> None:
        calls.append(sid)
        raise ValueError("Doe^Jane is not a number")  # library text may quote DICOM values

    task = bus.stage_task(eager, "t.flaky", "deid", max_retries=2)(stage)
    task.apply(args=[study_id])
    study = ctx.studies.get(study_id)
    assert len(calls) == 3  # first try and two retries
    assert study["state"] == "failed"
    assert study["failure"] == {
        **study["failure"],
        "stage": "deid",
        "attempts": 3,
        "reason": "gave up after 3 attempts: ValueError: unexpected error",
    }
    assert "Doe" not in str(study)


def test_a_side_stage_that_gives_up_leaves_the_study_state_alone(
    eager: Celery, ctx: Context
) -> None:
    study_id = ingest(ctx, ct_series()[:1])

    def stage(_: Context, sid: str) -> None:
        raise PipelineError("export destination refused the objects")

    task = bus.stage_task(eager, "t.export", "export", max_retries=0, fails_study=False)(stage)
    task.apply(args=[study_id])
    study = ctx.studies.get(study_id)
    assert study["state"] == "received"
    assert study["events"][-1]["type"] == "export.failed"
    assert study["events"][-1]["detail"]["reason"] == "export destination refused the objects"
