"""End to end with `radpipe up`: a high-risk study pages a local webhook receiver (signature
verified) and a real SMTP server (STARTTLS); the notify worker is SIGKILLed between send and
acknowledgement and the broker restarted; the deadline still fires (a re-page, once); the
acknowledgement link from the e-mail stops every further page. No PHI in any message."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from dicomweb_client.api import DICOMwebClient

from radpipe.demo import make_phantom, phantom_to_datasets

from ..integration.test_alert_workers import restartable_redis, wait_for
from ..servers import free_port, radpipe_env, stop, wait_for_port
from ..smtp import smtp_server
from ..webhook import webhook_receiver
from .test_up_demo import worker_pid

WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"
DEADLINE = 25.0
PATIENT = {"patient_name": "Alertson^Maria", "patient_id": "MRN-E2E-4417"}


def test_up_pages_until_acknowledged_across_sigkill_and_broker_restart(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    with (
        restartable_redis(tmp_path / "redis", redis_port) as redis,
        webhook_receiver(secret=WEBHOOK_SECRET.encode()) as receiver,
        smtp_server(tmp_path / "smtp") as mailbox,
    ):
        env = radpipe_env(
            RADPIPE_DATA_DIR=str(tmp_path / "data"),
            RADPIPE_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
            RADPIPE_STUDY_STABLE_SECONDS="2",
            RADPIPE_ALERT_WEBHOOK_URL=receiver.url,
            RADPIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            RADPIPE_ACK_TIMEOUT_SECONDS=str(DEADLINE),
            RADPIPE_ALERT_SWEEP_SECONDS="0.5",
            RADPIPE_ALERT_LEASE_SECONDS="5",
            RADPIPE_SMTP_HOST=mailbox.host,
            RADPIPE_SMTP_PORT=str(mailbox.port),
            RADPIPE_SMTP_CA_FILE=str(mailbox.ca_file),
            RADPIPE_ALERT_EMAIL_TO='["oncall@hospital.test"]',
        )
        log_path = tmp_path / "up.log"
        log = log_path.open("wb")
        up = subprocess.Popen(
            [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port), "--http-workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"

        def token(role: str) -> str:
            command = ["token", "create", "--role", role, "--name", f"e2e-{role}"]
            made = subprocess.run(
                [sys.executable, "-m", "radpipe.cli", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return made.stdout.splitlines()[-1]

        try:
            wait_for_port(port, 60)
            notify_pid = worker_pid(up.pid, "notify")
            phantom = make_phantom(
                21, nodules=[14.0], shape=(48, 192, 192), spacing=(2.5, 1.6, 1.6)
            )
            datasets = phantom_to_datasets(phantom, **PATIENT)
            client = DICOMwebClient(
                url=f"{base}/dicom-web", headers={"Authorization": f"Bearer {token('modality')}"}
            )
            client.store_instances(datasets=datasets)
            wait_for(lambda: receiver.posts, 400, "the first page", tmp_path)
            wait_for(lambda: mailbox.messages, 30, "the first e-mail", tmp_path)
            # Delivery is at least once per page and target: a worker killed after a receiver
            # took a message but before it recorded that could send it again (same
            # X-Radpipe-Delivery, docs/security.md). So the kill waits until page 1 is recorded.
            oncall = {"Authorization": f"Bearer {token('oncall')}"}

            def first_page_recorded() -> bool:
                found = httpx.get(f"{base}/api/alerts", headers=oncall, timeout=10).json()
                return bool(found) and bool(found[0]["page_done"])

            wait_for(first_page_recorded, 30, "page 1 recorded as delivered", tmp_path)

            # Between send and acknowledgement: SIGKILL the notify worker, restart the broker.
            os.kill(notify_pid, signal.SIGKILL)
            redis[0].send_signal(signal.SIGTERM)
            redis[0].wait(10)
            redis[0] = subprocess.Popen(
                redis[0].args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_for_port(redis_port)

            wait_for(lambda: len(receiver.posts) >= 2, DEADLINE + 60, "the re-page", tmp_path)
            wait_for(lambda: len(mailbox.messages) >= 2, 30, "the re-page e-mail", tmp_path)
            # The acknowledgement link of the latest e-mail: GET confirms, POST acknowledges.
            body = mailbox.messages[-1].get_payload(decode=True).decode()
            [link] = re.findall(r"Acknowledge: (\S+)", body)
            assert link.startswith(f"{base}/alerts/ack/")
            confirm = httpx.get(link, timeout=10)
            assert confirm.status_code == 200 and "<form" in confirm.text
            done = httpx.post(link, data={"note": "ward told"}, timeout=10)
            assert done.status_code == 200 and "acknowledged" in done.text
            posts, mails = len(receiver.posts), len(mailbox.messages)
            time.sleep(DEADLINE + 5)  # a further deadline passes: no page
            assert (len(receiver.posts), len(mailbox.messages)) == (posts, mails)

            [alert] = httpx.get(f"{base}/api/alerts", headers=oncall, timeout=10).json()
            study = httpx.get(
                f"{base}/api/studies/{alert['study_id']}", headers=oncall, timeout=10
            ).json()
        finally:
            stop(up, grace=20)

        up_log = log_path.read_text()
        assert receiver.rejected == 0  # every post carried a valid signature
        assert [p["page"] for p in receiver.posts] == [1, 2], up_log[-3000:]
        assert [p["repage"] for p in receiver.posts] == [False, True]
        assert mailbox.tls == [True, True]
        assert [m["X-Radpipe-Delivery"].split(":")[1] for m in mailbox.messages] == ["1", "2"]
        assert alert["state"] == "acknowledged" and alert["acknowledged_via"] == "link"
        assert alert["acknowledged_by"] == "link:oncall@hospital.test"
        types = [e["type"] for e in study["events"]]
        for step in ("alert.opened", "alert.sent", "alert.delivered", "alert.re-paged"):
            assert step in types, types
        assert types.count("alert.re-paged") == 1 and types.count("alert.acknowledged") == 1
        sent = [*receiver.raw, *mailbox.raw]
        headers = [str(h) for h in receiver.headers]
        for value in (*PATIENT.values(), "Alertson", "MRN-E2E"):
            assert all(value.encode() not in message for message in sent), value
            assert all(value not in h for h in headers), value
            assert value not in up_log
