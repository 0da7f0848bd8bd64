"""The README's front door: `radpipe up`, then `radpipe demo` shows the alert.

The inference worker is killed first: the supervisor must restart it and the demo still finish.
`radpipe up` prints its own summary and JSON log lines, nothing else (no Celery banners or
warnings); with `--dimse-port`, dcmtk's storescu works with its default called AE title.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from ..dicom import ct_series
from ..servers import free_port, radpipe_env, require_tool, start_up, stop, wait_for_port

#: Text of Celery's worker banner and of its superuser warning.
CELERY_NOISE = (
    "-------------- ",
    "[queues]",
    "[tasks]",
    "[config]",
    "superuser",
    "SecurityWarning",
)


def assert_quiet(output: str, summary_lines: int) -> None:
    """The summary ``radpipe up`` prints, then structured (JSON) log lines only."""
    for noise in CELERY_NOISE:
        assert noise not in output, f"{noise!r} in the output of radpipe up:\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    summary = [line for line in lines if not line.startswith("{")]
    assert summary[0].startswith("Radpipe is up: "), output
    assert all(line.startswith("  ") for line in summary[1:]), output
    assert len(summary) == summary_lines, output
    for line in lines:
        if line.startswith("{"):
            assert {"ts", "level", "logger", "event"} <= set(json.loads(line)), line


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
    env = radpipe_env(RADPIPE_DATA_DIR=str(tmp_path / "data"), RADPIPE_STUDY_STABLE_SECONDS="2")
    up = start_up(env, port, tmp_path / "up.log")
    try:
        wait_for_port(port, 60)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["ready"] is True
        for stage in ("deid", "inference", "notify", "export"):
            worker_pid(up.pid, stage)
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
        # The demo pushed as a modality and read as a radiologist, with its own two tokens.
        listed = subprocess.run(
            [sys.executable, "-m", "radpipe.cli", "token", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()[1:]
        assert sorted((row.split()[0], row.split()[1]) for row in listed) == [
            ("demo-modality", "modality"),
            ("demo-radiologist", "radiologist"),
        ]
        assert "stored, 0 failed" in output
        assert ": alerted, risk high" in output, output
        assert ": analyzed, risk none" in output, output
        alert_lines = [line for line in output.splitlines() if line.startswith("ALERT ")]
        assert len(alert_lines) == 1 and "/studies/" in alert_lines[0]
        up_log = (tmp_path / "up.log").read_text()
        login = next(line for line in up_log.splitlines() if "portal login:" in line)
        assert "radiologist / " in login and "admin / " in login  # a reader and an admin
        assert "Demo^Patient" not in up_log and "DEMO0000" not in up_log  # no PHI in logs
        assert_quiet(up_log, summary_lines=5)  # up, STOW-RS, device, login, try it; no more
        device = (
            "GPU (queue inference-gpu)"
            if torch.cuda.is_available()
            else "CPU (queue inference-cpu)"
        )
        assert f"  inference on the {device}" in up_log.splitlines()
        assert '"event": "worker.restart"' in up_log  # the supervisor's own line, as JSON
    finally:
        stop(up, grace=20)


def test_up_with_dimse_port_takes_storescu_with_its_default_called_ae(tmp_path: Path) -> None:
    storescu = "/usr/bin/storescu"  # pynetdicom's own storescu shadows dcmtk's in the venv
    if not Path(storescu).exists():
        require_tool(storescu, "apt-get install dcmtk")
    port, dimse_port = free_port(), free_port()
    env = radpipe_env(RADPIPE_DATA_DIR=str(tmp_path / "data"), RADPIPE_STUDY_STABLE_SECONDS="600")
    log = (tmp_path / "up.log").open("wb")
    command = ["up", "--port", str(port), "--dimse-port", str(dimse_port), "--http-workers", "1"]
    up = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", *command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60)
        wait_for_port(dimse_port, 10)
        for stage in ("deid", "inference", "notify", "export"):
            worker_pid(up.pid, stage)
        files = []
        for index, data in enumerate(ct_series(seed=41)[:3]):
            files.append(tmp_path / f"{index}.dcm")
            files[-1].write_bytes(data)
        # No -aet/-aec: storescu calls ANY-SCP as STORESCU, as a PACS admin's first try does.
        store = subprocess.run(
            [storescu, "127.0.0.1", str(dimse_port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert store.returncode == 0, store.stderr
        assert "Rejected" not in store.stderr, store.stderr
        token_create = ["token", "create", "--role", "radiologist", "--name", "dimse-check"]
        made = subprocess.run(
            [sys.executable, "-m", "radpipe.cli", *token_create],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        headers = {"Authorization": f"Bearer {made.stdout.splitlines()[-1]}"}
        studies = httpx.get(f"http://127.0.0.1:{port}/api/studies", headers=headers).json()
        assert [s["instance_count"] for s in studies["studies"]] == [3], studies
        time.sleep(1.0)  # the workers' ready lines
        up_log = (tmp_path / "up.log").read_text()
        assert_quiet(up_log, summary_lines=6)  # ... and the DIMSE line
        assert f"DIMSE C-STORE SCP: RADPIPE@127.0.0.1:{dimse_port}" in up_log
    finally:
        stop(up, grace=20)
