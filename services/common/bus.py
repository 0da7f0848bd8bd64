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
from datetime import UTC, datetime

from celery import Celery, Task

from .context import Context, get_context
from .errors import PipelineError, RadpipeError, TransientError
from .logging import get_logger
from .queues import (
    QUEUES,
    STAGES,
    CeleryDispatcher,
    DeliveryLedger,
    make_celery,
    run_worker,
    worker_argv,
)
from .settings import get_settings

__all__ = [
    "QUEUES",
    "STAGES",
    "CeleryDispatcher",
    "DeliveryLedger",
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
    max_deliveries: int | None = None,
) -> Callable[[Callable[[Context, str], None]], Task]:
    """Wrap ``fn(ctx, study_id)`` as an idempotent Celery task with retries and dead letters.

    A stage that ``fails_study`` ends the study ``failed`` when it gives up; a side stage
    (export) records a ``<stage>.failed`` event instead and leaves the clinical state alone.
    Every give-up is also appended to the broker's dead-letter list (:class:`DeliveryLedger`).

    Poison work is contained: each start of an attempt is counted in the broker before ``fn``
    runs. A worker that dies running it (the OOM killer, SIGKILL) leaves the message
    unacknowledged, and Celery redelivers it (``task_reject_on_worker_lost``); a redelivery is
    a ``<stage>.redelivered`` event on the timeline, and the delivery after
    ``RADPIPE_MAX_DELIVERIES`` dead-letters the task without running it, so a task that kills
    its worker kills it at most that many times. A failed attempt that will be tried again is a
    ``<stage>.retried`` event (the attempt that failed, the error's type, the wait).
    """
    settings = get_settings()
    retries = settings.task_max_retries if max_retries is None else max_retries
    deliveries = settings.max_deliveries if max_deliveries is None else max_deliveries
    ledger = DeliveryLedger(celery)

    def give_up(ctx: Context, task: Task, study_id: str, reason: str, attempts: int) -> None:
        ledger.dead_letter(
            {
                "task": name,
                "task_id": task.request.id,
                "study_id": study_id,
                "stage": stage,
                "reason": reason[:500],
                "attempts": attempts,
                "at": datetime.now(UTC).isoformat(),
            }
        )
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
            task_id = self.request.id or f"local-{study_id}"
            delivery = ledger.delivered(task_id, self.request.retries)
            try:
                run_attempt(self, ctx, study_id, delivery)
            finally:  # not reached when the worker dies: the count stays for the redelivery
                ledger.settled(task_id, self.request.retries)

        def run_attempt(self: Task, ctx: Context, study_id: str, delivery: int) -> None:
            attempt = self.request.retries + 1
            if delivery > deliveries:
                lost = delivery - 1
                log.error(
                    "stage.dead-letter",
                    stage=stage,
                    study_id=study_id,
                    task_id=self.request.id,
                    cause="worker-lost",
                    deliveries=lost,
                )
                reason = (
                    f"the worker died {lost} times running this task (killed, or out of "
                    f"memory); dead-lettered after {deliveries} deliveries "
                    "(RADPIPE_MAX_DELIVERIES) instead of being delivered again"
                )
                give_up(ctx, self, study_id, reason, attempt)
                return
            if delivery > 1:
                log.warning(
                    "stage.redelivered",
                    stage=stage,
                    study_id=study_id,
                    task_id=self.request.id,
                    delivery=delivery,
                )
                ctx.studies.add_event(
                    study_id,
                    f"{stage}.redelivered",
                    {"delivery": delivery, "attempt": attempt, "max_deliveries": deliveries},
                )
            try:
                fn(ctx, study_id)
            except PipelineError as exc:
                log.warning("stage.failed", stage=stage, study_id=study_id, reason=exc.message)
                give_up(ctx, self, study_id, exc.message, attempt)
            except Exception as exc:  # retried, then dead-lettered with its reason
                # Only our own messages are known to be free of DICOM values; a library's
                # exception text could quote one, so it is reduced to its type.
                detail = exc.message if isinstance(exc, RadpipeError) else "unexpected error"
                reason = f"{type(exc).__name__}: {detail}"
                if self.request.retries >= retries:
                    log.error(
                        "stage.dead-letter",
                        stage=stage,
                        study_id=study_id,
                        task_id=self.request.id,
                        cause="retries-spent",
                        exc_info=True,  # type, scrubbed message, innermost frame
                    )
                    reason = f"gave up after {attempt} attempts: {reason}"
                    give_up(ctx, self, study_id, reason, attempt)
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
                try:  # the timeline says it; a store that fails here must not lose the retry
                    ctx.studies.add_event(
                        study_id,
                        f"{stage}.retried",
                        {
                            "attempt": attempt,
                            "next_attempt": attempt + 1,
                            "delay": delay,
                            "error": type(exc).__name__,
                        },
                    )
                except Exception:
                    log.warning("stage.retried-unrecorded", stage=stage, study_id=study_id)
                # ``exc`` is not handed to Celery: its retry line would print the text.
                raise self.retry(countdown=delay) from None

        return run

    return decorate
