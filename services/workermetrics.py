"""Prometheus metrics served by the workers themselves (``RADPIPE_WORKER_METRICS_PORT``).

The API process is scraped at ``/metrics``; the workers run the stages, so their stage durations
(``radpipe_stage_seconds``, one observation per task, labelled by stage) live in the worker
processes and are served there, by ``prometheus_client.start_http_server``. A worker binds the
first free port from ``RADPIPE_WORKER_METRICS_PORT`` up to :data:`PORT_SPAN` above it (several
workers share a host under ``radpipe up``; each logs ``worker.metrics`` with its port); with the
prefork pool each pool process serves its own from its first task. 0 turns it off.

It lives outside ``radpipe.common`` (the worker runtime, above it): ``common.queues.run_worker``
imports it lazily, and ``common.metrics`` -> ``common.context`` -> ``common.queues`` must not
lead back to ``common``.

Queue lengths are a property of the broker, not of a process: with
``RADPIPE_QUEUE_METRICS=notify`` only the notify workers' main processes export
``radpipe_queue_length`` (read at scrape time) and the API's ``/metrics`` leaves it out, so a
deployment with N HTTP replicas does not report each queue N times.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_ready
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from radpipe.common.logging import get_logger
from radpipe.common.metrics import QUEUE_LENGTH, STAGE_SECONDS
from radpipe.common.settings import Settings, get_settings

log = get_logger("radpipe.metrics")

#: Ports tried above ``RADPIPE_WORKER_METRICS_PORT`` (one per worker process on a host).
PORT_SPAN = 32

_lock = threading.Lock()
_served: dict[int, int] = {}  # pid -> port served by that process
_clocks: dict[str, float] = {}  # task id -> perf_counter at its start


def stage_of(task_name: str) -> str:
    """``radpipe.deid.run`` -> ``deid`` (the stage label of ``radpipe_stage_seconds``)."""
    parts = task_name.split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "radpipe" else task_name


def serve(first_port: int, addr: str = "0.0.0.0") -> int:
    """Serve this process's registry on the first free port from ``first_port``; returns it."""
    with _lock:
        pid = os.getpid()
        if pid in _served:
            return _served[pid]
        for port in range(first_port, first_port + PORT_SPAN):
            try:
                start_http_server(port, addr=addr)
            except OSError:
                continue
            _served[pid] = port
            log.info("worker.metrics", port=port, pid=pid)
            return port
    raise RuntimeError(
        f"no free port for worker metrics in {first_port}-{first_port + PORT_SPAN - 1}; "
        "set RADPIPE_WORKER_METRICS_PORT to a free range (0 turns worker metrics off)"
    )


class QueueLengths(Collector):
    """``radpipe_queue_length`` read from the broker at scrape time."""

    def __init__(self, celery: Celery, settings: Settings) -> None:
        self._celery, self._settings = celery, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from radpipe.common.queues import CeleryDispatcher

        family = GaugeMetricFamily(
            "radpipe_queue_length",
            "Tasks waiting in a stage's queue (autoscaling input)",
            labels=["queue"],
        )
        try:
            lengths = CeleryDispatcher(self._celery, self._settings).queue_lengths()
        except Exception:  # a broker away must not fail the whole scrape
            log.error("worker.queue-metrics-failed", exc_info=True)
            lengths = {}
        for queue, length in sorted(lengths.items()):
            family.add_metric([queue], length)
        yield family


def start_from_env(celery: Celery, queue: str) -> None:
    """``run_worker``'s hook: nothing (not even the settings read) unless
    ``RADPIPE_WORKER_METRICS_PORT`` is set to a port."""
    if (os.environ.get("RADPIPE_WORKER_METRICS_PORT") or "0").strip() != "0":
        start(celery, queue, get_settings())


def start(celery: Celery, queue: str, settings: Settings) -> None:
    """Observe every task's duration and serve the metrics."""
    port = settings.worker_metrics_port
    if not port:
        return

    def started(task_id: str | None = None, **_: Any) -> None:
        serve(port)  # a prefork pool process serves its own registry from its first task
        if task_id:
            _clocks[task_id] = time.perf_counter()

    def finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        begun = _clocks.pop(task_id or "", None)
        if begun is not None and task is not None:
            STAGE_SECONDS.labels(stage_of(str(task.name))).observe(time.perf_counter() - begun)

    def ready(**_: Any) -> None:
        serve(port)
        if queue == "notify" and settings.queue_metrics == "notify":
            with contextlib.suppress(KeyError):  # the API's gauge: this reads the broker
                REGISTRY.unregister(QUEUE_LENGTH)
            REGISTRY.register(QueueLengths(celery, settings))

    task_prerun.connect(started, weak=False)
    task_postrun.connect(finished, weak=False)
    worker_ready.connect(ready, weak=False)
