"""Celery adapter for the notify worker (queue ``notify``), and its alert sweeper."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready

from radpipe.common.bus import app, stage_task
from radpipe.common.context import Context
from radpipe.common.logging import get_logger
from radpipe.common.settings import get_settings

from . import service, sweeper

celery = app()
log = get_logger("radpipe.notify")


def _notify(ctx: Context, study_id: str) -> None:
    service.notify_study(ctx, study_id)


run = stage_task(celery, "radpipe.notify.run", "notify")(_notify)


@worker_ready.connect(weak=False)
def _start_sweeper(**_: Any) -> None:
    """Every notify worker drives the alert timers (claims keep several of them apart)."""
    settings = get_settings()
    if settings.alert_webhook_url is not None and settings.webhook_secret is None:
        log.warning(
            "alert.webhook-unsigned",
            advice="set RADPIPE_WEBHOOK_SECRET so receivers can verify alert posts",
        )
    sweeper.start(settings.alert_sweep_seconds)
