"""Celery adapters for the deid worker (queue ``deid``); the logic lives elsewhere."""

from __future__ import annotations

from radpipe.common.bus import app, stage_task

from . import service, stability

celery = app()

check_stable = stage_task(celery, "radpipe.deid.check_stable", "stable")(stability.check_stable)
run = stage_task(celery, "radpipe.deid.run", "deid")(service.deidentify_study)
