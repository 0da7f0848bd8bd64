"""Celery adapter for the notify worker (queue ``notify``)."""

from __future__ import annotations

from radpipe.common.bus import app, stage_task

from . import service

celery = app()

run = stage_task(celery, "radpipe.notify.run", "notify")(service.notify_study)
