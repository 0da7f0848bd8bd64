"""Celery adapter for the export worker (queue ``export``): results back to the PACS."""

from __future__ import annotations

from radpipe.common.bus import app, stage_task

from . import export

celery = app()

run = stage_task(celery, "radpipe.export.run", "export", fails_study=False)(export.export_study)
