"""The bus against a real Redis: queues, lengths, a clear failure when it is down, and the
stage wrapper's retries and dead letters in a real worker process (never Celery's eager mode,
which skips late acknowledgement, redelivery and the retry messages themselves)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from radpipe.common.bus import QUEUES, STAGES, CeleryDispatcher, make_celery
from radpipe.common.context import Context, build_context
from radpipe.common.queues import DeliveryLedger, drop_shared_bindings
from radpipe.common.settings import Settings

from ..conftest import RecordingDispatcher
from ..dicom import ct_series
from ..servers import free_port, radpipe_env, stop
from ..unit.test_bus import published_by_exchange_and_key
from .test_poison import ingest

#: A fresh high-entropy secret (the settings refuse placeholders and weak keys).
SECRET = secrets.token_hex(32)


def dispatcher(broker_url: str) -> CeleryDispatcher:
    settings = Settings(secret_key=SECRET, broker_url=broker_url)  # type: ignore[arg-type]
    return CeleryDispatcher(make_celery(settings), settings)


def _db_nobody_uses(redis_url: str) -> str:
    """A database of the session's Redis that no client (a worker another test left) is on:
    a consumer there would take the message this test counts."""
    import redis

    client = redis.Redis.from_url(redis_url)
    busy = {int(c.get("db", 0)) for c in client.client_list()}
    client.close()
    free = [db for db in range(1, 16) if db not in busy]
    return redis_url.rsplit("/", 1)[0] + f"/{secrets.choice(free)}"


def test_send_puts_one_message_on_the_stage_queue(redis_url: str) -> None:
    url = _db_nobody_uses(redis_url)
    bus = dispatcher(url)
    bus.ping()
    before = bus.queue_lengths()
    bus.send("deid", "study-a")
    bus.send("notify", "study-a")
    after = bus.queue_lengths()
    assert after["deid"] == before["deid"] + 1
    assert after["notify"] == before["notify"] + 1
    assert after["inference-cpu"] == before["inference-cpu"]
    assert set(STAGES) == {"stable", "deid", "inference", "notify", "export"}


def test_ping_fails_when_the_broker_is_down() -> None:
    bus = dispatcher(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(Exception, match=r"(?i)connect|refused"):
        bus.ping()


def test_each_queue_is_bound_to_its_own_exchange_and_key_in_redis(redis_url: str) -> None:
    """A message published by exchange and routing key (not by queue name) reaches one queue:
    the Redis bindings that the workers declare route each exchange to its own queue only."""
    url = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    held = published_by_exchange_and_key(url)
    assert held == {name: [name] for name in QUEUES}
    bindings = redis.Redis.from_url(url).smembers("_kombu.binding.deid")
    assert {str(b, "utf-8").split("\x06\x16")[-1] for b in bindings} == {"deid"}  # type: ignore[arg-type]


def test_bindings_left_by_the_shared_exchange_are_dropped(redis_url: str) -> None:
    """A broker that ran Radpipe 0.1.0 has every queue bound to exchange ``deid`` with key
    ``deid``; a worker start removes those bindings, so a deid task reaches its queue only."""
    url = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    with Connection(url) as connection:
        channel = connection.channel()
        for name in QUEUES:  # the 0.1.0 topology: Queue(name) with Celery's defaults
            Queue(name, Exchange("deid", type="direct"), routing_key="deid")(channel).declare()
        channel.close()
    settings = Settings(secret_key=SECRET, broker_url=url)  # type: ignore[arg-type]
    assert drop_shared_bindings(make_celery(settings)) == 2 * (len(QUEUES) - 1)
    assert published_by_exchange_and_key(url) == {name: [name] for name in QUEUES}
    assert drop_shared_bindings(make_celery(settings)) == 0


@dataclass
class StageWorker:
    """A ``tests.integration.bus_worker`` process, its broker and the stores it writes."""

    ctx: Context
    celery: Celery
    calls: Path
    log: Path
    process: subprocess.Popen[bytes]

    def send(self, task: str, study_id: str) -> None:
        self.celery.send_task(
            task, args=[study_id], queue="deid", exchange="deid", routing_key="deid"
        )

    def calls_for(self, study_id: str) -> int:
        return self.calls.read_text().split().count(study_id)

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.log.read_text()[-4000:]}")


@pytest.fixture
def stage_worker(tmp_path: Path, redis_url: str) -> Iterator[StageWorker]:
    broker = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    # Other tests leave messages behind. This process remembers the bindings it declared
    # (kombu keeps them per transport class), so after the flush only the worker declares
    # them again: nothing is sent before it is ready.
    redis.Redis.from_url(broker).flushdb()
    settings = Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,  # type: ignore[arg-type]
        broker_url=broker,
    )
    ctx = build_context(settings, tasks=RecordingDispatcher())
    calls, log = tmp_path / "calls", tmp_path / "worker.log"
    calls.touch()
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(settings.data_dir),
        RADPIPE_SECRET_KEY=SECRET,
        RADPIPE_BROKER_URL=broker,
        BUS_CALLS=str(calls),
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.bus_worker"],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        worker = StageWorker(ctx, make_celery(settings), calls, log, process)
        worker.wait_for(lambda: "ready." in log.read_text(), "the worker to be ready")
        yield worker
    finally:
        stop(process, grace=10)
        ctx.documents.close()


def test_pipeline_error_fails_the_study_without_retry(stage_worker: StageWorker) -> None:
    ctx = stage_worker.ctx
    study_id = ingest(ctx, ct_series()[:1])
    stage_worker.send("radpipe.test.permanent", study_id)
    study = stage_worker.wait_for(
        lambda: (s := ctx.studies.get(study_id))["state"] == "failed" and s, "the failure"
    )
    time.sleep(1.0)  # a retry would have run by now
    assert stage_worker.calls_for(study_id) == 1
    assert study["failure"]["stage"] == "inference"
    assert study["failure"]["reason"] == "the series cannot form a volume: 2 slices"
    assert study["failure"]["attempts"] == 1
    # Nothing is deleted: the raw instance stays for a re-run once the cause is fixed.
    assert ctx.objects.exists(ctx.buckets["raw"], ctx.studies.instances_of(study_id)[0]["raw_key"])
    entries = DeliveryLedger(stage_worker.celery).dead_letters()
    assert [(e["task"], e["study_id"], e["reason"]) for e in entries] == [
        ("radpipe.test.permanent", study_id, "the series cannot form a volume: 2 slices")
    ]


def test_unexpected_error_is_retried_then_dead_lettered_without_its_text(
    stage_worker: StageWorker,
) -> None:
    ctx = stage_worker.ctx
    study_id = ingest(ctx, ct_series()[:1])
    stage_worker.send("radpipe.test.flaky", study_id)
    study = stage_worker.wait_for(
        lambda: (s := ctx.studies.get(study_id))["state"] == "failed" and s, "the dead letter"
    )
    assert stage_worker.calls_for(study_id) == 3  # first try and two retries (1 s, 2 s)
    assert study["failure"] == {
        **study["failure"],
        "stage": "deid",
        "attempts": 3,
        "reason": "gave up after 3 attempts: ValueError: unexpected error",
    }
    assert "Doe" not in str(study)
    # The worker's own retry lines and Celery's say so, without the exception's text.
    lines = stage_worker.log.read_text()
    assert lines.count('"event": "stage.retry"') == 2
    assert "Retry in 1s" in lines and "Retry in 2s" in lines
    assert '"cause": "retries-spent"' in lines
    assert "Doe" not in lines and "Jane" not in lines


def test_a_side_stage_that_gives_up_leaves_the_study_state_alone(
    stage_worker: StageWorker,
) -> None:
    ctx = stage_worker.ctx
    study_id = ingest(ctx, ct_series()[:1])
    stage_worker.send("radpipe.test.export", study_id)
    event = stage_worker.wait_for(
        lambda: next(
            (e for e in ctx.studies.get(study_id)["events"] if e["type"] == "export.failed"),
            None,
        ),
        "the export.failed event",
    )
    assert event["detail"] == {"reason": "export destination refused the objects", "attempts": 1}
    assert ctx.studies.get(study_id)["state"] == "received"
    assert stage_worker.calls_for(study_id) == 1


def test_celery_failure_lines_carry_no_task_argument_or_exception_text(
    stage_worker: StageWorker,
) -> None:
    """Celery's own "raised unexpected" line (exception repr, traceback, args in the record)
    passes the PHI filter installed on Celery's loggers."""
    stage_worker.celery.send_task(
        "radpipe.test.unwrapped",
        args=["study-x", "Doe^Jane"],
        queue="deid",
        exchange="deid",
        routing_key="deid",
    )
    stage_worker.wait_for(lambda: "raised unexpected" in stage_worker.log.read_text(), "Celery")
    lines = [json.loads(line) for line in stage_worker.log.read_text().splitlines()]
    (failure,) = [line for line in lines if "raised unexpected" in str(line["event"])]
    assert failure["logger"] == "celery.app.trace" and failure["level"] == "error"
    assert str(failure["event"]).endswith("raised unexpected: ValueError([redacted])")
    assert failure["error"] == "ValueError"
    assert (
        failure["error_message"]
        == "Invalid value for VR PN: [redacted] of [redacted] born [redacted]"
    )
    assert str(failure["error_at"]).endswith("in unwrapped")
    text = stage_worker.log.read_text()
    assert "Doe" not in text and "7731904" not in text and "19700101" not in text
    assert "Traceback" not in text


def test_a_worker_busy_with_a_long_task_still_counts_as_live(stage_worker: StageWorker) -> None:
    """The solo worker cannot answer Celery's ping while a task runs; its heartbeat thread
    keeps its queue live, so the sweeper pages no one about a busy (not dead) stage."""
    from radpipe.common.queues import beating_queues

    assert "deid" in beating_queues(stage_worker.celery)
    stage_worker.send("radpipe.test.busy", "busy-1")
    stage_worker.wait_for(lambda: stage_worker.calls_for("busy-1"), "the long task to start")
    # A connection of its own, closed after: a pooled one would keep the reply queue's BRPOP
    # pending, and kombu's after-fork cleanup in a later forked process would wait on it.
    with stage_worker.celery.connection_for_write() as connection:
        inspect = stage_worker.celery.control.inspect(timeout=1.0, connection=connection)
        assert (inspect.active_queues() or {}) == {}  # busy: the broadcast goes unanswered
    assert "deid" in beating_queues(stage_worker.celery)
    stage_worker.process.kill()
    stage_worker.process.wait()
    # The key of a dead worker expires: nothing renews it.
    broker = redis.Redis.from_url(stage_worker.celery.conf.broker_url)
    [key] = broker.scan_iter("radpipe.worker-alive:*")
    assert 0 < broker.ttl(key) <= 45
