"""Celery adapter for the inference worker (queue ``inference-cpu`` or ``inference-gpu``)."""

from __future__ import annotations

from radpipe.common.bus import app, stage_task

from . import stage

celery = app()

run = stage_task(celery, "radpipe.inference.run", "inference")(stage.analyze_study)
