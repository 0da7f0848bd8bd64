"""Alert timers across real processes: two notify workers (Celery, real Redis), one killed with
SIGKILL between send and acknowledgement, the broker restarted. No alert is lost, none is
paged twice, every deadline still fires, and acknowledgement stops the pages.

A notify task the surviving worker had prefetched when the broker went away waits in the
broker's unacked set for the visibility timeout (15 min); the sweeper's backstop
(``NOTIFY_BACKSTOP``) decides its alert within seconds instead (once CI waited 60 s for it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from radpipe.common.alerts import alerts_of
from radpipe.common.context import build_context
from radpipe.common.settings import Settings
from radpipe.notify.service import acknowledge, list_alerts

from ..conftest import TEST_SECRET
from ..servers import radpipe_env, redis_binary, restartable_port, stop, wait_for_port
from ..unit.test_alerts import analysed
from ..webhook import webhook_receiver

WEBHOOK_SECRET = "integration-webhook-secret-0123"
DEADLINE = 6.0


@contextmanager
def restartable_redis(folder: Path, port: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Redis with an append-only file on a fixed port; the list holds the running process."""
    command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--appendonly", "yes", "--save", ""]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return process

    folder.mkdir(parents=True, exist_ok=True)
    running = [start()]
    try:
        yield running  # the test replaces running[0] when it restarts the server
    finally:
        stop(running[0])


def wait_for(predicate, timeout: float, what: str, logs: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log"))
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def test_sigkilled_worker_and_restarted_broker_lose_no_alert_and_page_none_twice(
    tmp_path: Path,
) -> None:
    port = restartable_port()  # the broker is restarted on it
    logs = tmp_path / "logs"
    logs.mkdir()
    with (
        restartable_redis(tmp_path / "redis", port) as redis,
        webhook_receiver(secret=WEBHOOK_SECRET.encode()) as receiver,
    ):
        env = radpipe_env(
            RADPIPE_DATA_DIR=str(tmp_path / "data"),
            RADPIPE_SECRET_KEY=TEST_SECRET,
            RADPIPE_BROKER_URL=f"redis://127.0.0.1:{port}/0",
            RADPIPE_ALERT_WEBHOOK_URL=receiver.url,
            RADPIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            RADPIPE_ACK_TIMEOUT_SECONDS=str(DEADLINE),
            RADPIPE_ALERT_SWEEP_SECONDS="0.2",
            RADPIPE_ALERT_LEASE_SECONDS="3",
        )
        settings = Settings(
            data_dir=tmp_path / "data",
            secret_key=TEST_SECRET,  # type: ignore[arg-type]
            broker_url=env["RADPIPE_BROKER_URL"],
        )
        ctx = build_context(settings)
        workers: dict[str, subprocess.Popen[bytes]] = {}

        def start_worker(name: str) -> None:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            workers[name] = subprocess.Popen(
                [sys.executable, "-m", "radpipe.cli", "worker", "notify", "--pool", "solo"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def pages(study: str) -> list[int]:
            return [p["page"] for p in list(receiver.posts) if p["study_id"] == study]

        try:
            start_worker("a")
            start_worker("b")
            first = [f"w{n}" for n in range(6)]
            for study in first:
                analysed(ctx, study, 0.9)
                ctx.tasks.send("notify", study)
            wait_for(lambda: all(pages(s) == [1] for s in first), 60, "first pages", logs)
            # Delivery is at least once per page and target (a kill between the receiver's
            # answer and the record repeats the post): the kill waits until page 1 is recorded.
            wait_for(
                lambda: all(a["page_done"] for a in alerts_of(ctx.documents).find({})),
                60,
                "first pages recorded",
                logs,
            )

            # Between send and acknowledgement: worker a dies hard, the broker restarts, and
            # two more studies are queued while only worker b is up.
            os.kill(workers["a"].pid, signal.SIGKILL)
            workers["a"].wait(10)
            later = ["w6", "w7"]
            for study in later:
                analysed(ctx, study, 0.9)
                ctx.tasks.send("notify", study)
            redis[0].send_signal(signal.SIGTERM)  # a clean stop writes the append-only file
            redis[0].wait(10)
            redis[0] = subprocess.Popen(
                redis[0].args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_for_port(port)
            start_worker("a")  # as a supervisor would

            everyone = first + later
            acked = everyone[::2]
            acked_at: dict[str, float] = {}

            def acknowledge_second_pages() -> bool:
                # Each acknowledged as soon as its second page lands, a deadline before its
                # third: the studies queued across the broker restart page later than the
                # first six, and waiting for all of them once let w0's third page go out
                # before its acknowledgement (CI, 2026-12-04).
                for study in acked:
                    if study not in acked_at and len(pages(study)) >= 2:
                        acknowledge(ctx, f"{study}-v1", "dr-oncall", "seen")
                        acked_at[study] = time.monotonic()
                return len(acked_at) == len(acked) and all(len(pages(s)) >= 2 for s in everyone)

            wait_for(acknowledge_second_pages, 60, "re-pages", logs)
            unacked = [s for s in everyone if s not in acked]
            wait_for(lambda: all(len(pages(s)) >= 3 for s in unacked), 60, "third pages", logs)
            time.sleep(max(0.0, max(acked_at.values()) + 2 * DEADLINE + 1 - time.monotonic()))
        finally:
            for process in workers.values():
                stop(process, grace=10)

        assert receiver.rejected == 0  # every post carried a valid signature
        deliveries = [h["X-Radpipe-Delivery"] for h in receiver.headers]
        assert len(deliveries) == len(set(deliveries)), "a page was delivered twice"
        for study in everyone:
            got = pages(study)
            assert got == list(range(1, len(got) + 1)), (study, got)  # none lost or repeated
        for study in acked:
            assert len(pages(study)) == 2, study  # acknowledgement stopped the pages
        for alert in list_alerts(ctx):
            events = [h["type"] for h in alert["history"]]
            if "alert.acknowledged" in events:  # nothing paged after it
                assert "alert.re-paged" not in events[events.index("alert.acknowledged") :]
        # Each re-page fired at its deadline (the sweeper runs every 0.2 s).
        for alert in list_alerts(ctx):
            repaged = [h for h in alert["history"] if h["type"] == "alert.re-paged"]
            assert repaged, alert["_id"]
            opened = alert["history"][0]["at"]
            slack = (repaged[0]["at"] - opened).total_seconds() - DEADLINE
            assert 0 <= slack < 5, (alert["_id"], slack)
        ctx.documents.close()
