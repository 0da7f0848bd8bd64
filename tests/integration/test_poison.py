"""Poison work across real processes: a study whose de-identification kills its worker process
(SIGKILL from outside, as the kernel's OOM killer sends it) is delivered at most
``RADPIPE_MAX_DELIVERIES`` times, then dead-lettered with its reason, the study failed and the
admins paged by the notify worker; the same deid worker then serves a healthy study."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from radpipe.common.alerts import alerts_of
from radpipe.common.context import Context, build_context
from radpipe.common.queues import CeleryDispatcher, DeliveryLedger, make_celery
from radpipe.common.settings import Settings
from radpipe.ingest.multipart import Part
from radpipe.ingest.service import store_parts

from ..conftest import RecordingDispatcher
from ..dicom import ct_series
from ..servers import radpipe_env, stop

#: A fresh high-entropy secret (the settings refuse placeholders and weak keys).
SECRET = secrets.token_hex(32)

MAX_DELIVERIES = 3


def ingest(ctx: Context, series: list[bytes]) -> str:
    """Store a series through the ingest service; returns the new study's id."""
    before = {s["_id"] for s in ctx.studies.studies.find({})}
    result = store_parts(ctx, [Part.from_bytes("application/dicom", d) for d in series], None)
    assert not result.failed
    (study_id,) = {s["_id"] for s in ctx.studies.studies.find({})} - before
    return str(study_id)


def ready(log: Path) -> bool:
    return "ready." in log.read_text()


def paged(ctx: Context, study_id: str) -> dict[str, Any] | None:
    """The study's pipeline alert once its opening is recorded (the page went out)."""
    alert = alerts_of(ctx.documents).find_one({"kind": "pipeline", "study_id": study_id})
    opened = alert is not None and any(h["type"] == "alert.opened" for h in alert["history"])
    return alert if opened else None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log"))
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_task_that_kills_its_worker_is_dead_lettered_after_n_deliveries(
    tmp_path: Path, redis_url: str, pool: str
) -> None:
    """prefork (``radpipe worker``'s default): the pool process running the task is killed and
    the worker's main process hands the message back at once (``task_reject_on_worker_lost``).
    solo (``radpipe up``): the whole worker is killed, the test restarts it as the supervisor
    does, and the broker redelivers the unacknowledged message after the visibility timeout."""
    logs = tmp_path / "logs"
    logs.mkdir()
    broker = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    redis.Redis.from_url(broker).flushdb()  # other tests leave tasks and dead letters behind
    settings = Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,  # type: ignore[arg-type]
        broker_url=broker,
        study_stable_seconds=0.2,
        max_deliveries=MAX_DELIVERIES,
    )
    # Ingest queues nothing here; the test sends each study's stability check once, itself.
    ctx = build_context(settings, tasks=RecordingDispatcher())
    sender = CeleryDispatcher(make_celery(settings), settings)
    poison = ingest(ctx, ct_series(seed=31)[:2])
    healthy = ingest(ctx, ct_series(seed=32)[:2])
    starts = tmp_path / "starts"
    starts.touch()
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(settings.data_dir),
        RADPIPE_SECRET_KEY=SECRET,
        RADPIPE_BROKER_URL=broker,
        RADPIPE_STUDY_STABLE_SECONDS="0.2",
        RADPIPE_MAX_DELIVERIES=str(MAX_DELIVERIES),
        RADPIPE_ALERT_SWEEP_SECONDS="0.2",
        RADPIPE_BROKER_VISIBILITY_TIMEOUT="3",
        POISON_STUDIES=poison,
        POISON_STARTS=str(starts),
    )
    root = Path(__file__).resolve().parents[2]

    def spawn(name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        return subprocess.Popen(
            [sys.executable, *argv], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT
        )

    deid = spawn("deid", "-m", "tests.integration.poison_worker", pool)
    restarts = 0
    notify = spawn("notify", "-m", "radpipe.cli", "worker", "notify", "--pool", "solo")
    killed: list[int] = []
    try:
        for name in ("deid", "notify"):  # each declares its queue's binding when ready
            wait_for(partial(ready, logs / f"{name}.log"), 60, f"{name} ready", logs)
        sender.send("stable", poison)

        def failed_after_killing() -> bool:
            nonlocal deid, restarts
            for pid in map(int, starts.read_text().split()):
                if pid not in killed:  # a process is running the poison: it "runs out of
                    os.kill(pid, signal.SIGKILL)  # memory" the way the kernel ends it
                    killed.append(pid)
            if deid.poll() is not None:  # solo: the worker itself died; restart it
                deid = spawn("deid", "-m", "tests.integration.poison_worker", pool)
                restarts += 1
            return ctx.studies.get(poison)["state"] == "failed"

        wait_for(failed_after_killing, 180, "the poison study to be dead-lettered", logs)
        alert = wait_for(partial(paged, ctx, poison), 30, "the pipeline alert", logs)

        # The worker is still up and serves the next study with the real de-identifier.
        sender.send("stable", healthy)
        wait_for(
            lambda: ctx.studies.get(healthy)["state"] == "deidentified",
            60,
            "the healthy study to be de-identified",
            logs,
        )
        assert deid.poll() is None, "the deid worker crashed"
    finally:
        stop(deid, grace=10)
        stop(notify, grace=10)

    # At most N deliveries ran the task, each one killed; the next one did not run it.
    assert len(killed) == MAX_DELIVERIES
    assert restarts == (MAX_DELIVERIES if pool == "solo" else 0)
    assert starts.read_text().split() == [str(pid) for pid in killed]
    study = ctx.studies.get(poison)
    assert study["failure"]["stage"] == "deid"
    assert "worker died 3 times" in study["failure"]["reason"]
    assert "RADPIPE_MAX_DELIVERIES" in study["failure"]["reason"]
    events = [e for e in study["events"] if e["type"] != "stable"]
    assert [e["type"] for e in events[:4]] == [
        "received",
        "deid.redelivered",
        "deid.redelivered",
        "failed",
    ]
    assert [e["detail"]["delivery"] for e in events[1:3]] == [2, 3]
    assert events[3]["detail"] == {"stage": "deid"}
    # The dead-letter entry names the task, the study and the reason (no DICOM values).
    entries = DeliveryLedger(make_celery(settings)).dead_letters()
    assert [(e["task"], e["study_id"], e["stage"]) for e in entries] == [
        ("radpipe.deid.run", poison, "deid")
    ]
    assert entries[0]["reason"] == study["failure"]["reason"]
    assert sender.dead_letter_count() == 1  # the radpipe_dead_letters gauge
    # The admins were paged with the stage and the reason.
    assert alert["rule"] == "pipeline-failed" and alert["stage"] == "deid"
    assert "worker died 3 times" in alert["summary"]
    # The healthy study took one delivery and no redelivery.
    healthy_events = [e["type"] for e in ctx.studies.get(healthy)["events"]]
    assert "deid.redelivered" not in healthy_events and "deidentified" in healthy_events
    ctx.documents.close()
