"""The README's front door: `radpipe up`, then `radpipe demo` shows the alert.

The inference worker is killed first: the supervisor must restart it and the demo still finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..servers import free_port, stop, wait_for_port


def children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def worker_pid(up_pid: int, stage: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, cmdline in children(up_pid).items():
            if f"worker {stage}" in cmdline:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no {stage} worker under radpipe up")


def test_up_then_demo_shows_the_alert(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADPIPE_")}
    env.update(RADPIPE_DATA_DIR=str(tmp_path / "data"), RADPIPE_STUDY_STABLE_SECONDS="2")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["ready"] is True
        killed = worker_pid(up.pid, "inference")
        os.kill(killed, signal.SIGKILL)
        restarted = worker_pid(up.pid, "inference")
        while restarted == killed:
            time.sleep(0.2)
            restarted = worker_pid(up.pid, "inference")
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "radpipe.cli",
                "demo",
                "--url",
                f"http://127.0.0.1:{port}",
                "--wait",
                "400",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=500,
            check=False,
        )
        output = demo.stdout
        assert demo.returncode == 0, demo.stderr + (tmp_path / "up.log").read_text()
        assert "stored, 0 failed" in output
        assert ": alerted, risk high" in output, output
        assert ": analyzed, risk none" in output, output
        alert_lines = [line for line in output.splitlines() if line.startswith("ALERT ")]
        assert len(alert_lines) == 1 and "/studies/" in alert_lines[0]
        up_log = (tmp_path / "up.log").read_text()
        assert "portal login: admin / " in up_log
        assert "Demo^Patient" not in up_log and "DEMO0000" not in up_log  # no PHI in logs
    finally:
        stop(up, grace=20)
