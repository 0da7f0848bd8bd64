"""Worker metrics across real processes: a notify worker started with
``RADPIPE_WORKER_METRICS_PORT`` serves ``radpipe_stage_seconds`` for the task it ran, and with
``RADPIPE_QUEUE_METRICS=notify`` the queue lengths, which the API's ``/metrics`` then leaves out."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import urllib.request
from functools import partial
from pathlib import Path

import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from radpipe.common.auth import AuthService
from radpipe.common.context import build_context
from radpipe.common.queues import CeleryDispatcher, make_celery
from radpipe.common.settings import Settings

from ..conftest import RecordingDispatcher
from ..dicom import ct_series
from ..servers import radpipe_env, stop
from .test_poison import SECRET, ingest, ready, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        sample.name: [(s.labels, s.value) for s in family.samples if s.name == sample.name]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_notify_worker_serves_its_stage_durations_and_the_queue_lengths(
    tmp_path: Path, redis_url: str
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    broker = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    redis.Redis.from_url(broker).flushdb()
    settings = Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,  # type: ignore[arg-type]
        broker_url=broker,
        queue_metrics="notify",
    )
    ctx = build_context(settings, tasks=RecordingDispatcher())
    study = ingest(ctx, ct_series(seed=41)[:2])
    port = free_port()
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(settings.data_dir),
        RADPIPE_SECRET_KEY=SECRET,
        RADPIPE_BROKER_URL=broker,
        RADPIPE_WORKER_METRICS_PORT=str(port),
        RADPIPE_QUEUE_METRICS="notify",
    )
    root = Path(__file__).resolve().parents[2]
    log = open(logs / "notify.log", "ab")  # noqa: SIM115 - handed to the child
    worker = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "worker", "notify", "--pool", "solo"],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(partial(ready, logs / "notify.log"), 60, "notify ready", logs)
        before = scrape(port)
        assert before["radpipe_queue_length"] == [
            ({"queue": q}, 0.0)
            for q in sorted(("deid", "inference-cpu", "inference-gpu", "notify", "export"))
        ]
        sender = CeleryDispatcher(make_celery(settings), settings)
        sender.send("notify", study)

        def observed() -> float:
            counts = dict(
                (labels.get("stage"), value)
                for labels, value in scrape(port).get("radpipe_stage_seconds_count", [])
            )
            return counts.get("notify", 0.0)

        assert wait_for(observed, 60, "a notify task observed", logs) == 1.0
        assert f'"port": {port}' in (logs / "notify.log").read_text()
    finally:
        stop(worker)
        log.close()
    # The API no longer reports the queues (the notify worker does, once per deployment).
    from radpipe.app import build_app

    token = AuthService(ctx.documents).create_token("ops", "manager")
    with TestClient(build_app(ctx, ["portal"])) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert "radpipe_queue_length{" not in text
    ctx.documents.close()
