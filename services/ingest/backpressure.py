"""Back-pressure at the doors: refuse new instances before a queue or the disk overflows.

Two conditions stop intake, each checked before any byte of a request is stored:

* a stage queue holds more ready tasks than its limit (``RADPIPE_QUEUE_LIMIT``, per queue in
  ``RADPIPE_QUEUE_LIMITS``): the workers are behind, and taking more only lengthens the queue.
  Lengths are read from the broker (one ``LLEN`` per queue) at most once every
  ``RADPIPE_QUEUE_CHECK_SECONDS``, so a burst of requests costs one Redis round trip;
* the filesystem of the embedded stores (``RADPIPE_DATA_DIR``: the document database and the
  object folder) has less free space than ``RADPIPE_DISK_LOW_WATER_BYTES`` (or
  ``RADPIPE_DISK_LOW_WATER_PERCENT`` of its size): a full disk would corrupt nothing (writes are
  atomic) but would fail every study half-way. ``statvfs`` is cheap, so it is read each time and
  intake resumes as soon as space returns.

STOW-RS answers ``503 Service Unavailable`` with ``Retry-After`` (PS3.18 10.5.3 admits 503 for
a store request; RFC 9110 15.6.4 and 10.2.3), the DIMSE door answers C-STORE status ``0xA700``
"Refused: Out of Resources" (PS3.4 B.2.3, Table B.2-1); both senders retry later on their own.
Nothing of a refused request is stored: the check runs before the body is read, and a STOW-RS
request during which the disk crosses the mark is aborted (its objects removed) before 503.
"""

from __future__ import annotations

import shutil
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from radpipe.common.context import Context
from radpipe.common.logging import get_logger
from radpipe.common.settings import Settings

log = get_logger("radpipe.ingest")


@dataclass(frozen=True)
class Refusal:
    """Why intake is refused now, and when to try again (seconds)."""

    reason: Literal["queue", "disk"]
    detail: str
    retry_after: int

    def body(self) -> dict[str, object]:
        """The 503 body: the cause, the fix, and the wait (also in ``Retry-After``)."""
        return {
            "error": "ServiceUnavailable",
            "reason": self.reason,
            "detail": f"{self.detail}; nothing of this request was stored: send it again in "
            f"{self.retry_after} s (Retry-After)",
            "retry_after_seconds": self.retry_after,
        }


def store_root(settings: Settings) -> Path | None:
    """The folder whose filesystem holds the embedded stores, or None when both are remote."""
    if settings.mongo_url is not None and settings.s3_endpoint is not None:
        return None
    path = Path(settings.data_dir).resolve()
    while not path.exists() and path != path.parent:  # not created yet: its filesystem
        path = path.parent
    return path


class Backpressure:
    """The intake guard of one process (see the module docstring).

    ``queue_lengths`` is the dispatcher's reader; a broker that cannot be read does not stop
    intake (``/readyz`` reports it, and storing the study then fails on its own terms).
    """

    def __init__(
        self,
        settings: Settings,
        queue_lengths: Callable[[], dict[str, int]] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._queue_lengths = queue_lengths
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._lengths: dict[str, int] = {}
        self.root = store_root(settings)

    def limit(self, queue: str) -> int:
        """The queue's limit; 0 means none."""
        return self.settings.queue_limits.get(queue, self.settings.queue_limit)

    def lengths(self) -> dict[str, int]:
        """Ready tasks per queue, read at most once per ``queue_check_seconds``."""
        if self._queue_lengths is None:
            return {}
        with self._lock:
            now = self._clock()
            fresh = self._read_at is not None and (
                now - self._read_at < self.settings.queue_check_seconds
            )
            if not fresh:
                try:
                    self._lengths = dict(self._queue_lengths())
                except Exception as exc:  # an unreadable broker is readiness's to report
                    log.warning("backpressure.queues_unreadable", error=type(exc).__name__)
                    self._lengths = {}
                self._read_at = now
            return self._lengths

    def queue_refusal(self) -> Refusal | None:
        for queue, length in sorted(self.lengths().items()):
            limit = self.limit(queue)
            if limit and length > limit:
                log.warning("backpressure.queue_full", queue=queue, length=length, limit=limit)
                return Refusal(
                    "queue",
                    f"the {queue} queue holds {length} tasks, over its limit of {limit} "
                    "(RADPIPE_QUEUE_LIMIT): the workers are behind",
                    self.settings.busy_retry_seconds,
                )
        return None

    def low_water(self, total: int) -> int:
        """Free bytes below which intake stops, for a filesystem of ``total`` bytes."""
        share = int(total * self.settings.disk_low_water_percent / 100)
        return max(self.settings.disk_low_water_bytes, share)

    def disk_refusal(self) -> Refusal | None:
        if self.root is None:
            return None
        usage = shutil.disk_usage(self.root)
        mark = self.low_water(usage.total)
        if usage.free >= mark:
            return None
        log.warning("backpressure.low_on_disk", free=usage.free, low_water=mark)
        return Refusal(
            "disk",
            f"the data folder's filesystem has {usage.free} bytes free, below the low-water "
            f"mark of {mark} (RADPIPE_DISK_LOW_WATER_BYTES/_PERCENT): free space there and "
            "intake resumes by itself",
            self.settings.busy_retry_seconds,
        )

    def refusal(self) -> Refusal | None:
        """The reason to refuse a new request now (the disk first: it is the harder stop)."""
        return self.disk_refusal() or self.queue_refusal()


#: One guard per context (so one cache per process and per app in tests), keyed by identity.
_GUARDS: dict[int, tuple[weakref.ref[Context], Backpressure]] = {}
_GUARDS_LOCK = threading.Lock()


def for_context(ctx: Context) -> Backpressure:
    """This context's guard, built on first use."""
    key = id(ctx)
    with _GUARDS_LOCK:
        entry = _GUARDS.get(key)
        if entry is not None and entry[0]() is ctx:
            return entry[1]
        for stale in [k for k, (ref, _) in _GUARDS.items() if ref() is None]:
            del _GUARDS[stale]
        guard = Backpressure(ctx.settings, getattr(ctx.tasks, "queue_lengths", None))
        _GUARDS[key] = (weakref.ref(ctx), guard)
        return guard


__all__ = ["Backpressure", "Refusal", "for_context", "store_root"]
