"""`radpipe up` starts its inference worker without keys (issue 13.4): no RADPIPE_SECRET_KEY and
no object-store credentials in its environment, RADPIPE_KEYLESS set; the pipeline still
completes (`radpipe demo` shows its alert) and the other workers keep the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from ..servers import free_port, radpipe_env, stop, wait_for_port
from .test_up_demo import worker_pid


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def test_the_inference_worker_of_radpipe_up_holds_no_key(tmp_path: Path) -> None:
    port = free_port()
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(tmp_path / "data"),
        RADPIPE_STUDY_STABLE_SECONDS="2",
        # What a user may have exported for a remote S3: never handed to the inference worker.
        RADPIPE_WEBHOOK_SECRET="a-webhook-signing-key-" + "9f2c41d7a8e3b605",
    )
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port), "--http-workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["ready"] is True
        master = (tmp_path / "data" / "secret.key").read_text().strip()
        inference = environ(worker_pid(up.pid, "inference"))
        assert "RADPIPE_SECRET_KEY" not in inference
        assert inference["RADPIPE_KEYLESS"] == "true"
        assert not any(key.startswith("RADPIPE_S3_") for key in inference)
        assert "RADPIPE_WEBHOOK_SECRET" not in inference
        assert master not in "\0".join(inference.values())
        deid = environ(worker_pid(up.pid, "deid"))
        assert deid["RADPIPE_SECRET_KEY"] == master and "RADPIPE_KEYLESS" not in deid
        demo = subprocess.run(
            [sys.executable, "-m", "radpipe.cli", "demo", "--url", f"http://127.0.0.1:{port}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
            check=False,
        )
        up_log = (tmp_path / "up.log").read_text()
        assert demo.returncode == 0, demo.stdout + demo.stderr + up_log
        assert ": alerted, risk high" in demo.stdout, demo.stdout
        assert ": analyzed, risk none" in demo.stdout, demo.stdout
        assert '"event": "worker.restart"' not in up_log  # the keyless worker never failed
    finally:
        stop(up, grace=20)
