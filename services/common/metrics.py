"""Prometheus metrics; gauges about studies and queues are computed at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .context import Context

INSTANCES_RECEIVED = Counter(
    "radpipe_instances_received_total", "DICOM instances received", ["outcome"]
)
STAGE_SECONDS = Histogram(
    "radpipe_stage_seconds",
    "Time spent in a pipeline stage",
    ["stage"],
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
STUDIES = Gauge("radpipe_studies", "Studies by state", ["state"])
QUEUE_LENGTH = Gauge(
    "radpipe_queue_length", "Tasks waiting in a stage's queue (autoscaling input)", ["queue"]
)

DEAD_LETTERS = Gauge(
    "radpipe_dead_letters",
    "Tasks dead-lettered: retries spent, a permanent failure, or a worker that died running them "
    "RADPIPE_MAX_DELIVERIES times (the newest 10,000 are kept)",
)


def refresh_gauges(ctx: Context) -> None:
    from .studies import StudyState

    for state in StudyState:
        STUDIES.labels(str(state)).set(ctx.studies.studies.count_documents({"state": str(state)}))
    for queue, length in ctx.tasks.queue_lengths().items():
        QUEUE_LENGTH.labels(queue).set(length)
    dead_letter_count = getattr(ctx.tasks, "dead_letter_count", None)  # brokers that keep one
    if dead_letter_count is not None:
        DEAD_LETTERS.set(dead_letter_count())
