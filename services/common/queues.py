"""The broker side of the message bus: queue topology, the Celery app, the sender, the worker.

One queue per stage, each bound to a direct exchange of its own name with its own name as the
routing key, so a message sent by exchange and routing key reaches exactly one queue (with a
shared exchange and key, as Celery's defaults give queues declared by name alone, it would
reach every queue). Services send work to each other by task *name* through
:class:`CeleryDispatcher`, never by importing each other's modules.

This module knows nothing of the per-process :class:`~radpipe.common.context.Context` (the
context uses the dispatcher; the task wrapper in ``bus.py`` uses both), so the dependency
runs one way.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import warnings
from typing import Any

from celery import Celery
from celery.exceptions import SecurityWarning
from celery.signals import after_setup_logger, after_setup_task_logger, worker_ready
from kombu import Exchange, Queue

from .gpu import cuda_present
from .logging import get_logger, secure_handlers
from .settings import Settings

log = get_logger("radpipe.bus")

QUEUES = ("deid", "inference-cpu", "inference-gpu", "notify", "export")

#: stage name -> (task name, queue). ``inference`` goes to :func:`inference_queue`.
STAGES: dict[str, tuple[str, str]] = {
    "stable": ("radpipe.deid.check_stable", "deid"),
    "deid": ("radpipe.deid.run", "deid"),
    "inference": ("radpipe.inference.run", "inference-cpu"),
    "notify": ("radpipe.notify.run", "notify"),
    "export": ("radpipe.export.run", "export"),
}


def inference_queue(settings: Settings) -> str:
    """The queue deid hands studies to and an inference worker consumes unless told otherwise:
    ``RADPIPE_INFERENCE_QUEUE``, or where it is unset the queue of the device
    ``inference_device`` gives on this host (``auto``: ``inference-gpu`` where torch sees
    CUDA). Every process of one host reads the same answer, so a GPU workstation's
    ``radpipe up`` does not hand studies to a queue its own inference worker never reads."""
    if settings.inference_queue is not None:
        return settings.inference_queue
    return _device_queue(settings.inference_device)


@functools.cache
def _device_queue(device: str) -> str:
    if device == "cpu":
        return "inference-cpu"
    if device.startswith("cuda"):
        return "inference-gpu"  # a host without one: the worker refuses to start, naming it
    return "inference-gpu" if cuda_present() else "inference-cpu"


#: The only content type workers accept; no pickle, so a message cannot run code when loaded.
ACCEPT_CONTENT = ["json"]


def task_queues() -> list[Queue]:
    """Each queue on its own direct exchange, with its own name as the routing key."""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]


def make_celery(settings: Settings) -> Celery:
    app = Celery("radpipe", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_queues=task_queues(),
        task_default_queue="deid",
        task_default_exchange="deid",
        task_default_exchange_type="direct",
        task_default_routing_key="deid",
        task_acks_late=True,  # a task killed mid-run is redelivered, not lost
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=ACCEPT_CONTENT,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # Redelivery of unacknowledged tasks after a broker restart or a killed worker: kombu
        # looks for them every ``unacked_restore_interval`` seconds (the throttle of 1 makes
        # each look a real one) and restores those older than the visibility timeout.
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": max(1, min(10, settings.broker_visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
        },
        task_default_retry_delay=2,
    )
    return app


class CeleryDispatcher:
    def __init__(self, celery: Celery, settings: Settings) -> None:
        self._celery = celery
        self._settings = settings

    def send(self, stage: str, study_id: str, *, countdown: float | None = None) -> None:
        """Publish the stage's task to its queue's own exchange, with the queue's routing key."""
        name, queue = STAGES[stage]
        if stage == "inference":
            queue = inference_queue(self._settings)
        self._celery.send_task(
            name,
            args=[study_id],
            queue=queue,
            exchange=queue,
            routing_key=queue,
            countdown=countdown,
        )

    def ping(self) -> None:
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)

    def dead_letter_count(self) -> int:
        """Entries on the dead-letter list (the newest ``DEAD_LETTER_KEEP`` are kept)."""
        with self._celery.connection_for_read() as connection:
            client = getattr(connection.default_channel, "client", None)
            return int(client.llen(DEAD_LETTER_KEY)) if client is not None else 0

    def queue_lengths(self) -> dict[str, int]:
        """Ready messages per queue (the Redis transport keeps each queue as a list)."""
        with self._celery.connection_for_read() as connection:
            channel = connection.default_channel
            return {
                queue: int(channel.client.llen(queue)) if hasattr(channel, "client") else 0
                for queue in QUEUES
            }


#: Redis keys of the delivery ledger (beside kombu's own keys in the broker's database).
DELIVERIES_KEY = "radpipe.deliveries.{task_id}.{retries}"
DEAD_LETTER_KEY = "radpipe.dead-letter"
#: A delivery count outlives any redelivery (kombu restores an unacknowledged message after the
#: visibility timeout, 900 s), and the dead-letter list keeps the newest entries only.
DELIVERIES_TTL = 24 * 3600
DEAD_LETTER_KEEP = 10_000


class DeliveryLedger:
    """How often a task attempt was delivered, and the dead-letter list, kept in the broker.

    Celery's Redis transport keeps no delivery count: a message whose worker died (the kernel's
    OOM killer, SIGKILL) is redelivered with nothing to tell it from the first delivery, so a
    task that kills its worker would do so forever. The task wrapper counts each start here
    (``INCR`` on a key per task id and retry, with an expiry) before it runs anything, and
    dead-letters the attempt once the count passes ``RADPIPE_MAX_DELIVERIES``. A retry is a new
    message with the same task id, so the retry number is part of the key. Transports without a
    Redis client (the in-memory one) count in this process.
    """

    def __init__(self, celery: Celery) -> None:
        self._celery = celery
        self._local: dict[str, int] = {}
        self._local_dead: list[str] = []

    def _client(self, connection: Any) -> Any:
        return getattr(connection.default_channel, "client", None)

    def delivered(self, task_id: str, retries: int) -> int:
        """Count one more delivery of this attempt; returns the count, 1 for the first."""
        key = DELIVERIES_KEY.format(task_id=task_id, retries=retries)
        with self._celery.connection_for_write() as connection:
            client = self._client(connection)
            if client is None:
                self._local[key] = self._local.get(key, 0) + 1
                return self._local[key]
            pipe = client.pipeline()
            pipe.incr(key)
            pipe.expire(key, DELIVERIES_TTL)
            count, _ = pipe.execute()
            return int(count)

    def settled(self, task_id: str, retries: int) -> None:
        """The attempt ran to its end (done, retried or dead-lettered): forget its count."""
        key = DELIVERIES_KEY.format(task_id=task_id, retries=retries)
        with self._celery.connection_for_write() as connection:
            client = self._client(connection)
            if client is None:
                self._local.pop(key, None)
            else:
                client.delete(key)

    def dead_letter(self, entry: dict[str, Any]) -> None:
        """Append an entry (ids, stage, reason, counts; never DICOM values) to the list."""
        text = json.dumps(entry, default=str)
        with self._celery.connection_for_write() as connection:
            client = self._client(connection)
            if client is None:
                self._local_dead.insert(0, text)
                return
            pipe = client.pipeline()
            pipe.lpush(DEAD_LETTER_KEY, text)
            pipe.ltrim(DEAD_LETTER_KEY, 0, DEAD_LETTER_KEEP - 1)
            pipe.execute()

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead-letter entries first."""
        with self._celery.connection_for_read() as connection:
            client = self._client(connection)
            raw = (
                self._local_dead[:limit]
                if client is None
                else client.lrange(DEAD_LETTER_KEY, 0, limit - 1)
            )
        return [json.loads(item) for item in raw]


def drop_shared_bindings(celery: Celery) -> int:
    """Unbind every queue but ``deid`` from exchange ``deid``, key ``deid``; returns how many.

    Radpipe 0.1.0 declared its queues by name alone, so Celery bound all of them to its default
    exchange and key (``deid``). A broker that ran it keeps those bindings (the Redis transport
    keeps them in a set per exchange, persisted with the broker's data) and would copy every
    ``deid`` and ``stable`` task into every queue, where workers drop it as unregistered.
    kombu's Redis channel cannot unbind (its ``queue_unbind`` edits a copy of the set), so the
    members are removed from the transport's own binding sets. Other transports: nothing to do.
    """
    with celery.connection_for_write() as connection:
        if connection.transport.driver_type != "redis":
            return 0
        channel = connection.default_channel
        stale = [channel.sep.join(["deid", "", name]) for name in QUEUES if name != "deid"]
        keys = (channel.keyprefix_queue % "deid", channel.keyprefix_binding_permanent % "deid")
        return sum(int(channel.client.srem(key, *stale)) for key in keys)


def worker_argv(queue: str, concurrency: int, pool: str) -> list[str]:
    """``celery worker`` arguments: ``--quiet`` drops the banner; the JSON logs say the rest."""
    return [
        "--quiet",
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


#: A worker's heartbeat in the broker: one key per worker process, renewed every
#: ``HEARTBEAT_SECONDS`` by a thread of its own, gone ``HEARTBEAT_TTL`` after the process died.
ALIVE_KEY = "radpipe.worker-alive:{queue}:{worker}"
HEARTBEAT_SECONDS, HEARTBEAT_TTL = 10.0, 45


def _redis(connection: Any) -> Any:
    return getattr(connection.default_channel, "client", None)


def beat(celery: Celery, queue: str, worker: str) -> None:
    """Renew this worker's heartbeat key once."""
    with celery.connection_for_write() as connection:
        client = _redis(connection)
        if client is not None:
            client.set(ALIVE_KEY.format(queue=queue, worker=worker), "1", ex=HEARTBEAT_TTL)


def start_heartbeat(celery: Celery, queue: str) -> threading.Event:
    """Beat from a daemon thread until the returned event is set.

    Celery's remote-control ping is answered by the worker's own loop, which a solo-pool
    worker busy with a long task (an inference on CPU) does not run: the ping alone would call a
    busy worker dead. This thread keeps beating while the task runs."""
    stop = threading.Event()
    worker = f"{os.getpid()}@{socket.gethostname()}"

    def run() -> None:
        while True:
            try:
                beat(celery, queue, worker)
            except Exception as exc:  # a broker briefly away: the next beat tries again
                log.warning("worker.heartbeat-failed", queue=queue, error=type(exc).__name__)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    threading.Thread(target=run, name="worker-heartbeat", daemon=True).start()
    return stop


def beating_queues(celery: Celery) -> set[str]:
    """Queues with at least one worker whose heartbeat is current."""
    with celery.connection_for_read() as connection:
        client = _redis(connection)
        if client is None:
            return set()
        keys = client.scan_iter(match=ALIVE_KEY.format(queue="*", worker="*"), count=500)
        return {(k.decode() if isinstance(k, bytes) else k).split(":")[1] for k in keys}


def run_worker(
    celery: Celery, queue: str, concurrency: int, pool: str, *, warn_root: bool = True
) -> None:
    """Run a Celery worker on ``queue`` with structured logs only (no banner, no stray warnings).

    Celery refuses to run as root when it accepts pickle (a message could run code as root)
    and otherwise prints a multi-line ``SecurityWarning`` to stderr. Radpipe's workers accept
    JSON only, so that hazard does not exist; running as root is still worth saying once, as a
    structured log line (``warn_root``; ``radpipe up`` says it once for all its workers).
    """
    if "pickle" in celery.conf.accept_content:  # the reasoning above would no longer hold
        raise RuntimeError("Radpipe workers accept JSON only; remove pickle from accept_content")
    warnings.filterwarnings(
        "ignore", message="You're running the worker with superuser", category=SecurityWarning
    )
    if warn_root and os.geteuid() == 0:
        log.warning("worker.root", queue=queue, advice="run workers as an unprivileged user")

    def unbind_when_connected(**_: object) -> None:  # the broker may come up after the worker
        dropped = drop_shared_bindings(celery)
        if dropped:
            log.info("worker.unbound", exchange="deid", routing_key="deid", bindings=dropped)

    worker_ready.connect(unbind_when_connected, weak=False)
    worker_ready.connect(lambda **_: start_heartbeat(celery, queue), weak=False)
    # Celery adds handlers of its own (the task logger's, the multiprocessing one): each gets
    # the PHI filter and the JSON formatter, so its retry and failure lines are scrubbed too.
    after_setup_logger.connect(secure_handlers, weak=False)
    after_setup_task_logger.connect(secure_handlers, weak=False)
    from radpipe.workermetrics import start_from_env  # the worker runtime, above common

    start_from_env(celery, queue)  # RADPIPE_WORKER_METRICS_PORT
    log.info("worker.start", queue=queue, concurrency=concurrency, pool=pool)
    celery.worker_main(worker_argv(queue, concurrency, pool))
