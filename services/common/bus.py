"""Task dispatch over Celery and Redis: one queue per stage, late acks, retries, dead letters.

Tasks carry study ids only. A stage is a plain function ``fn(ctx, study_id)``; :func:`stage_task`
wraps it as a Celery task that retries transient failures with exponential backoff and, once
retries are spent or the failure is permanent, records the study as ``failed`` with the stage and
reason (the dead-letter state the portal shows). Services send work to each other by task
*name* through :class:`CeleryDispatcher`, never by importing each other's modules.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery, Task
from kombu import Queue

from .context import Context, get_context
from .errors import PipelineError, RadpipeError, TransientError
from .logging import get_logger
from .settings import Settings, get_settings

log = get_logger("radpipe.bus")

QUEUES = ("deid", "inference-cpu", "inference-gpu", "notify", "export")

#: stage name -> (task name, queue). ``inference`` goes to ``settings.inference_queue``.
STAGES: dict[str, tuple[str, str]] = {
    "stable": ("radpipe.deid.check_stable", "deid"),
    "deid": ("radpipe.deid.run", "deid"),
    "inference": ("radpipe.inference.run", "inference-cpu"),
    "notify": ("radpipe.notify.run", "notify"),
    "export": ("radpipe.export.run", "export"),
}


def make_celery(settings: Settings) -> Celery:
    app = Celery("radpipe", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="deid",
        task_acks_late=True,  # a task killed mid-run is redelivered, not lost
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Redelivery of unacknowledged tasks after a broker restart or a killed worker.
        broker_transport_options={"visibility_timeout": 900},
        task_default_retry_delay=2,
    )
    return app


celery_app: Celery | None = None


def app() -> Celery:
    """The process-wide Celery app, built from settings on first use."""
    global celery_app
    if celery_app is None:
        celery_app = make_celery(get_settings())
    return celery_app


class CeleryDispatcher:
    def __init__(self, celery: Celery, settings: Settings) -> None:
        self._celery = celery
        self._settings = settings

    def send(self, stage: str, study_id: str, *, countdown: float | None = None) -> None:
        name, queue = STAGES[stage]
        if stage == "inference":
            queue = self._settings.inference_queue
        self._celery.send_task(name, args=[study_id], queue=queue, countdown=countdown)

    def ping(self) -> None:
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def queue_lengths(self) -> dict[str, int]:
        """Ready messages per queue (the Redis transport keeps each queue as a list)."""
        with self._celery.connection_for_read() as connection:
            channel = connection.default_channel
            return {
                queue: int(channel.client.llen(queue)) if hasattr(channel, "client") else 0
                for queue in QUEUES
            }


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


def worker_argv(queue: str, concurrency: int, pool: str) -> list[str]:
    return [
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--hostname",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]
