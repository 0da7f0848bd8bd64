"""The periodic sweeper: handles due alert timers and pipeline checks every
``RADPIPE_ALERT_SWEEP_SECONDS``, in a thread of every notify worker process.

This stands in for Celery beat (which ``radpipe up`` does not run): each notify worker runs
one, and their claims are atomic (``paging.claim``), so several workers never page an alert
twice. Timers are fields of the alert documents, so a restarted worker or broker loses none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from radpipe.common.context import Context, get_context
from radpipe.common.logging import get_logger

from .paging import sweep

log = get_logger("radpipe.notify.sweeper")


def run_forever(
    stop: threading.Event, interval: float, context: Callable[[], Context] = get_context
) -> None:
    log.info("sweeper.start", interval_s=interval)
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


def start(interval: float) -> threading.Event:
    """Start the sweeper thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever, args=(stop, interval), name="alert-sweeper", daemon=True
    )
    thread.start()
    return stop
