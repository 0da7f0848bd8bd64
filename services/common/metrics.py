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

TAT_SECONDS = Gauge(
    "radpipe_tat_seconds",
    "Turnaround interval figures (p50, p90) of the last GET /api/tat without filters",
    ["interval", "figure"],
)

DEAD_LETTERS = Gauge(
    "radpipe_dead_letters",
    "Tasks dead-lettered: retries spent, a permanent failure, or a worker that died running them "
    "RADPIPE_MAX_DELIVERIES times (the newest 10,000 are kept)",
)

#: Model monitoring (docs/monitoring.md), one series per model version.
_MODEL = ["model", "name", "version", "sha256"]
MODEL_ACCEPTANCE = Gauge(
    "radpipe_model_acceptance_rate",
    "Findings the readers accepted unchanged over all findings decided",
    _MODEL,
)
MODEL_PPV = Gauge(
    "radpipe_model_ppv", "Reader PPV: findings accepted or edited over all decided", _MODEL
)
MODEL_RECENT_PPV = Gauge(
    "radpipe_model_recent_ppv",
    "Reader PPV over the last RADPIPE_MONITOR_PPV_WINDOW decisions (what pages)",
    _MODEL,
)
MODEL_FP_PER_STUDY = Gauge(
    "radpipe_model_false_positives_per_study",
    "Findings rejected in signed studies over the signed studies",
    _MODEL,
)
MODEL_DECISIONS = Gauge(
    "radpipe_model_decisions", "Findings decided by the readers", [*_MODEL, "decision"]
)
MODEL_STUDIES = Gauge("radpipe_model_studies", "Studies the model analysed", _MODEL)
MODEL_DRIFT = Gauge(
    "radpipe_model_drift_psi",
    "Population stability index of an input feature over the rolling window vs the bundle's "
    "training data",
    [*_MODEL, "feature"],
)
MODEL_DRIFT_KS = Gauge(
    "radpipe_model_drift_ks",
    "Kolmogorov-Smirnov statistic of an input feature over the rolling window vs the bundle's "
    "training data",
    [*_MODEL, "feature"],
)

MODEL_DRIFT_OUTSIDE = Gauge(
    "radpipe_model_drift_outside",
    "Share of the rolling window of an input feature where the training data has under 1 %",
    [*_MODEL, "feature"],
)


def refresh_model_gauges(ctx: Context) -> None:
    """Set the model gauges from ``model_stats`` (a handful of documents per scrape)."""
    from .monitoring import summaries

    for figures in summaries(ctx.documents, ctx.settings):
        labels = (
            figures["model"],
            str(figures["name"]),
            str(figures["version"]),
            str(figures["sha256"]),
        )
        for gauge, value in (
            (MODEL_ACCEPTANCE, figures["acceptance_rate"]),
            (MODEL_PPV, figures["ppv"]),
            (MODEL_RECENT_PPV, figures["recent"]["ppv"]),
            (MODEL_FP_PER_STUDY, figures["false_positives_per_study"]),
            (MODEL_STUDIES, figures["studies"]),
        ):
            if value is not None:
                gauge.labels(*labels).set(value)
        for decision, count in figures["decisions"].items():
            MODEL_DECISIONS.labels(*labels, decision).set(count)
        for feature, stat in figures["inputs"]["drift"].items():
            MODEL_DRIFT.labels(*labels, feature).set(stat["psi"])
            MODEL_DRIFT_KS.labels(*labels, feature).set(stat["ks"])
            MODEL_DRIFT_OUTSIDE.labels(*labels, feature).set(stat["outside"])


def refresh_gauges(ctx: Context) -> None:
    from .studies import StudyState

    for state in StudyState:
        STUDIES.labels(str(state)).set(ctx.studies.studies.count_documents({"state": str(state)}))
    if ctx.settings.queue_metrics == "api":  # else the notify worker exports them (once)
        for queue, length in ctx.tasks.queue_lengths().items():
            QUEUE_LENGTH.labels(queue).set(length)
    else:
        QUEUE_LENGTH.clear()  # no stale series left from an earlier setting in this process
    dead_letter_count = getattr(ctx.tasks, "dead_letter_count", None)  # brokers that keep one
    if dead_letter_count is not None:
        DEAD_LETTERS.set(dead_letter_count())
    refresh_model_gauges(ctx)
