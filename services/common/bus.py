"""Celery tasks for the stages: late acks, retries with backoff, dead letters.

Tasks carry study ids only. A stage is a plain function ``fn(ctx, study_id)``; :func:`stage_task`
wraps it as a Celery task that retries transient failures with exponential backoff and, once
retries are spent or the failure is permanent, records the study as ``failed`` with the stage and
reason (the dead-letter state the portal shows). The queues, the Celery app and the sender live in
``queues.py``; this module is the worker side, the one place that needs both the queues and the
per-process context (``bus -> context -> queues``, never back).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery, Task

from .context import Context, get_context
from .errors import PipelineError, RadpipeError, TransientError
from .logging import get_logger
from .queues import QUEUES, STAGES, CeleryDispatcher, make_celery, run_worker, worker_argv
from .settings import get_settings

__all__ = [
    "QUEUES",
    "STAGES",
    "CeleryDispatcher",
    "app",
    "make_celery",
    "run_worker",
    "stage_task",
    "worker_argv",
]

log = get_logger("radpipe.bus")

celery_app: Celery | None = None


def app() -> Celery:
    """The process-wide Celery app, built from settings on first use."""
    global celery_app
    if celery_app is None:
        celery_app = make_celery(get_settings())
    return celery_app


def stage_task(
    celery: Celery,
    name: str,
    stage: str,
    max_retries: int | None = None,
    *,
    fails_study: bool = True,
) -> Callable[[Callable[[Context, str], None]], Task]:
    """Wrap ``fn(ctx, study_id)`` as an idempotent Celery task with retries and dead letters.

    A stage that ``fails_study`` ends the study ``failed`` when it gives up; a side stage
    (export) records a ``<stage>.failed`` event instead and leaves the clinical state alone.
    """
    retries = get_settings().task_max_retries if max_retries is None else max_retries

    def give_up(ctx: Context, study_id: str, reason: str, attempts: int) -> None:
        if fails_study:
            ctx.studies.fail(study_id, stage, reason, attempts=attempts)
        else:
            ctx.studies.add_event(
                study_id, f"{stage}.failed", {"reason": reason[:500], "attempts": attempts}
            )

    def decorate(fn: Callable[[Context, str], None]) -> Task:
        @celery.task(name=name, bind=True, max_retries=retries, acks_late=True)
        def run(self: Task, study_id: str) -> None:
            ctx = get_context()
            attempt = self.request.retries + 1
            try:
                fn(ctx, study_id)
            except PipelineError as exc:
                log.warning("stage.failed", stage=stage, study_id=study_id, reason=exc.message)
                give_up(ctx, study_id, exc.message, attempt)
            except Exception as exc:  # retried, then dead-lettered with its reason
                # Only our own messages are known to be free of DICOM values; a library's
                # exception text could quote one, so it is reduced to its type.
                detail = exc.message if isinstance(exc, RadpipeError) else "unexpected error"
                reason = f"{type(exc).__name__}: {detail}"
                if self.request.retries >= retries:
                    log.error("stage.dead-letter", stage=stage, study_id=study_id, exc_info=True)
                    give_up(ctx, study_id, f"gave up after {attempt} attempts: {reason}", attempt)
                    return
                delay = min(2**self.request.retries, 60)
                transient = isinstance(exc, TransientError)
                log.warning(
                    "stage.retry",
                    stage=stage,
                    study_id=study_id,
                    attempt=attempt,
                    delay=delay,
                    transient=transient,
                    error=type(exc).__name__,
                )
                raise self.retry(exc=exc, countdown=delay) from exc

        return run

    return decorate
