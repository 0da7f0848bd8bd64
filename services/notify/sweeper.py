"""The periodic sweeper: handles due alert timers and pipeline checks every
``RADPIPE_ALERT_SWEEP_SECONDS``, in a thread of every notify worker process; beside it, a
thread that watches the stages' workers and one that keeps the TAT facts current.

This stands in for Celery beat (which ``radpipe up`` does not run): each notify worker runs
one, and their claims are atomic (``paging.claim``), so several workers never page an alert
twice. Timers are fields of the alert documents, so a restarted worker or broker loses none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from radpipe.common.alerts import upgrade_legacy_alerts
from radpipe.common.context import Context, get_context
from radpipe.common.logging import get_logger
from radpipe.common.studies import now

from .paging import sweep
from .pipeline import check_workers

#: How often the sweeper asks the broker which queues have a live consumer.
WORKER_CHECK_SECONDS = 30.0
#: How often the TAT facts are brought up to date (the first time as the worker starts).
TAT_REFRESH_SECONDS = 60.0

log = get_logger("radpipe.notify.sweeper")


def run_forever(
    stop: threading.Event, interval: float, context: Callable[[], Context] = get_context
) -> None:
    log.info("sweeper.start", interval_s=interval)
    try:
        upgraded = upgrade_legacy_alerts(context().documents)
    except Exception:
        log.error("alerts.upgrade-failed", exc_info=True)  # retried at the next start
    else:
        if upgraded:
            log.info("alerts.upgraded", alerts=upgraded)
    while not stop.wait(interval):
        try:
            handled = sweep(context())
        except Exception:
            # The loop is the alert timers' only driver: a store or channel error in one turn
            # (logged with its traceback) must not end paging for the life of the worker.
            log.error("sweeper.failed", exc_info=True)
            continue
        if handled:
            log.info("sweeper.handled", alerts=handled)


def watch_workers(
    stop: threading.Event, interval: float, context: Callable[[], Context] = get_context
) -> None:
    """Page when a stage has no live worker (its own thread: a broadcast waits a second)."""
    while not stop.wait(interval):
        try:
            check_workers(context(), now(), live_queues())
        except Exception:
            # As above: a broker briefly away must not end the watch.
            log.error("sweeper.worker-check-failed", exc_info=True)


def refresh_tat_facts(
    stop: threading.Event, interval: float, context: Callable[[], Context] = get_context
) -> None:
    """Keep the TAT facts current (``radpipe.tat.facts``) so that a manager's ``GET /api/tat``
    only refreshes what changed since the last minute: the first refresh on a store builds
    every fact (50 s at 100,000 studies), here, as the worker starts, not in the request."""
    from radpipe.tat import facts

    while True:
        try:
            facts.refresh(context())
        except Exception:
            # Facts are refreshed by each TAT request anyway: this is a head start, tried
            # again next time (logged with its traceback).
            log.error("sweeper.tat-refresh-failed", exc_info=True)
        if stop.wait(interval):
            return


def live_queues() -> set[str]:
    """Queues some worker consumes now: those with a current heartbeat (a thread in every
    worker, so a worker busy with a long task counts), and those whose workers answer a
    remote-control broadcast within a second (workers that do not beat)."""
    from radpipe.common.bus import app
    from radpipe.common.queues import beating_queues

    celery = app()
    live = beating_queues(celery)
    # A connection of its own, closed after: a pooled one keeps the reply queue's BRPOP pending
    # and kombu's after-fork cleanup in a pool child forked later would wait on it forever.
    with celery.connection_for_write() as connection:
        replies = celery.control.inspect(timeout=1.0, connection=connection).active_queues() or {}
    return live | {queue["name"] for queues in replies.values() for queue in queues}


def start(interval: float) -> threading.Event:
    """Start the sweeper thread; set the returned event to stop it."""
    stop = threading.Event()
    for target, name, every in (
        (run_forever, "alert-sweeper", interval),
        (watch_workers, "worker-watch", WORKER_CHECK_SECONDS),
        (refresh_tat_facts, "tat-facts", TAT_REFRESH_SECONDS),
    ):
        threading.Thread(target=target, args=(stop, every), name=name, daemon=True).start()
    return stop
