"""No PHI in any log line or metric: the planted-PHI corpus and the odd files pushed through
every service running as its own process, with a forced failure in the deid worker whose
exception text and pydicom warning quote the patient's values; every line of every process's
log and every ``/metrics`` answer is scanned for every planted value (docs/security.md, Logs)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from radpipe.common.context import build_context
from radpipe.common.settings import Settings

from ..phi import ODD_PLANTED, generate_corpus, generate_odd_files, scan_bytes
from ..servers import free_port, radpipe_env, stop, wait_for_port

SECRET = secrets.token_hex(32)
BOUNDARY = "radpipe-phi-logs"
FINAL = ("failed", "analyzed", "alerted")


def multipart(parts: list[bytes]) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"".join(head + part + b"\r\n" for part in parts) + f"--{BOUNDARY}--\r\n".encode()


def scanned_forms(data: bytes) -> bytes:
    """The bytes as written, plus each JSON line decoded (``\\u00fc`` escapes back to UTF-8)."""
    decoded = []
    for line in data.splitlines():
        try:
            decoded.append(json.dumps(json.loads(line), ensure_ascii=False).encode())
        except ValueError:
            continue
    return data + b"\n" + b"\n".join(decoded)


def test_no_planted_value_reaches_a_log_line_or_a_metric(tmp_path: Path, redis_url: str) -> None:
    corpus = generate_corpus(
        tmp_path / "corpus", patients=2, studies_per_patient=1, series_per_study=1, seed=5
    )
    odd = generate_odd_files(tmp_path / "odd")
    planted = {
        **{key: set(values) for key, values in corpus.planted.items()},
        **{f"odd-{key}": set(values) for key, values in ODD_PLANTED.items()},
    }
    fault_patient = sorted(corpus.patients)[0]
    logs = tmp_path / "logs"
    logs.mkdir()
    ingest_port, portal_port = free_port(), free_port()
    broker = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    redis.Redis.from_url(broker).flushdb()  # other tests leave tasks behind
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(tmp_path / "data"),
        RADPIPE_SECRET_KEY=SECRET,
        RADPIPE_BROKER_URL=broker,
        RADPIPE_STUDY_STABLE_SECONDS="1",
        RADPIPE_TASK_MAX_RETRIES="2",
        RADPIPE_INFERENCE_THREADS="2",
        RADPIPE_ALERT_SWEEP_SECONDS="0.5",
        RADPIPE_LOG_LEVEL="DEBUG",  # the most a process writes
        FAULT_PATIENT_ID=fault_patient,
    )
    root = Path(__file__).resolve().parents[2]
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, *argv: str) -> None:
        with open(logs / f"{name}.log", "wb") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, *argv], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT
            )

    def radpipe(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "radpipe.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    spawn("ingest", "-m", "radpipe.cli", "serve", "ingest", "--port", str(ingest_port))
    spawn("portal", "-m", "radpipe.cli", "serve", "portal", "--port", str(portal_port))
    spawn("deid", "-m", "tests.e2e.fault_worker")
    for stage in ("inference", "notify"):
        spawn(stage, "-m", "radpipe.cli", "worker", stage, "--pool", "solo")
    settings = Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,  # type: ignore[arg-type]
        broker_url=env["RADPIPE_BROKER_URL"],
    )
    ctx = build_context(settings)
    try:
        wait_for_port(ingest_port, 60)
        wait_for_port(portal_port, 60)
        modality = radpipe("token", "create", "--role", "modality", "--name", "phi-modality")
        admin = radpipe("token", "create", "--role", "admin", "--name", "phi-admin")
        modality, admin = modality.splitlines()[-1], admin.splitlines()[-1]
        parts = [f.path.read_bytes() for f in corpus.files] + [p.read_bytes() for p in odd.values()]
        answer = httpx.post(
            f"http://127.0.0.1:{ingest_port}/dicom-web/studies",
            content=multipart(parts),
            headers={
                "Authorization": f"Bearer {modality}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                "Accept": "application/dicom+json",
            },
            timeout=120,
        )
        assert answer.status_code == 202, answer.text[:500]  # some parts refused, some stored

        def settled() -> bool:
            studies = list(ctx.studies.studies.find({}))
            return bool(studies) and all(
                s["state"] in FINAL
                or any(e["type"] == "alert.not-required" for e in s.get("events", []))
                for s in studies
            )

        deadline = time.monotonic() + 300
        while not settled():
            assert time.monotonic() < deadline, "\n".join(
                p.read_text(errors="replace")[-2000:] for p in logs.glob("*.log")
            )
            time.sleep(1)
        time.sleep(2)  # the notify sweeper pages the failed studies
        metrics = b""
        for port in (ingest_port, portal_port):
            response = httpx.get(
                f"http://127.0.0.1:{port}/metrics",
                headers={"Authorization": f"Bearer {admin}"},
                timeout=30,
            )
            assert response.status_code == 200
            metrics += response.content
    finally:
        for process in processes.values():
            stop(process, grace=10)

    reasons = [s["failure"]["reason"] for s in ctx.studies.studies.find({"state": "failed"})]
    # The fault patient's one study was retried, then dead-lettered with the type only.
    faulted = [r for r in reasons if "ValueError" in r]
    assert faulted == ["gave up after 3 attempts: ValueError: unexpected error"]
    deid_log = (logs / "deid.log").read_text()
    lines = [json.loads(line) for line in deid_log.splitlines() if line.startswith("{")]
    # The failure path really ran: retries, the dead letter with the error, pydicom's warning.
    assert sum(1 for line in lines if line["event"] == "stage.retry") == 2
    dead = [line for line in lines if line.get("cause") == "retries-spent"]
    assert len(dead) == 1 and all(line["error"] == "ValueError" for line in dead)
    assert all("[redacted]" in str(line["error_message"]) for line in dead)
    assert any(line["logger"] in ("py.warnings", "pydicom") for line in lines)
    assert any("Retry in" in str(line["event"]) for line in lines)  # Celery's own retry line

    leaks: dict[str, list[str]] = {}
    for path in sorted(logs.glob("*.log")):
        assert path.stat().st_size > 0, path.name
        if found := scan_bytes(scanned_forms(path.read_bytes()), planted):
            leaks[path.name] = found
    if found := scan_bytes(metrics, planted):
        leaks["/metrics"] = found
    assert leaks == {}
    ctx.documents.close()
