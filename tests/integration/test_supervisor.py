"""``radpipe up``'s supervisor, with real processes: each child's command line names it; a child
SIGKILLed is started again after a backoff that doubles with each death in a row (capped) and
falls back once the child has run a healthy period; a child that keeps dying is reported on
``radpipe up``'s output and by ``/readyz`` until it runs again; the embedded broker, killed,
comes back on its port with the work it held."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from radpipe.stack import CRASH_LOOP, SUPERVISOR_STATE, Supervisor, worker_problems

from ..e2e.test_up_demo import children
from ..servers import free_port, radpipe_env, stop, wait_for_port


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-6000:]}")


def events(log: Path, name: str) -> list[dict[str, Any]]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    return [entry for entry in map(json.loads, lines) if entry["event"] == name]


def worker_of(up: int, stage: str) -> int | None:
    for pid, cmdline in children(up).items():
        if f"-m radpipe worker {stage} " in cmdline:
            return pid
    return None


def test_radpipe_up_names_restarts_with_backoff_and_reports_a_crash_loop(tmp_path: Path) -> None:
    port = free_port()
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(tmp_path / "data"),
        RADPIPE_SUPERVISOR_BACKOFF_MAX_SECONDS="4",
        RADPIPE_SUPERVISOR_HEALTHY_SECONDS="15",
    )
    log_path = tmp_path / "up.log"
    with log_path.open("wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "radpipe", "up", "--port", str(port), "--http-workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 90)
        # Every child's command line names it: `radpipe worker <stage>`, and the broker.
        for stage in ("deid", "inference", "notify", "export"):
            wait_for(partial(worker_of, up.pid, stage), 30, f"the {stage} worker", log_path)
        named = children(up.pid).values()
        assert sum("valkey-server" in cmdline for cmdline in named) == 1
        assert all("radpipe worker" in c or "valkey-server" in c for c in named), named
        ready = httpx.get(f"{base}/readyz", timeout=10).json()
        assert ready["ready"] is True and ready["checks"]["workers"] == "ok"

        # Killed five times in a row: waits of 1, 2, 4, 4, 4 s (capped), then a crash loop.
        pids: list[int] = []
        for _ in range(CRASH_LOOP):
            pid = wait_for(
                lambda: (p := worker_of(up.pid, "inference")) not in (*pids, None) and p,
                60,
                "the inference worker restarted",
                log_path,
            )
            pids.append(pid)
            os.kill(pid, signal.SIGKILL)
        died = wait_for(
            lambda: len(found := events(log_path, "worker.died")) == CRASH_LOOP and found,
            30,
            "five deaths logged",
            log_path,
        )
        assert [d["restart_in"] for d in died] == [1.0, 2.0, 4.0, 4.0, 4.0]
        assert {d["worker"] for d in died} == {"inference"}
        assert died[0]["exit"] == "killed by SIGKILL" and died[-1]["failures_in_a_row"] == 5
        assert "the inference worker keeps dying (5 times in a row" in log_path.read_text()
        assert events(log_path, "worker.crash-loop")[0]["worker"] == "inference"
        answer = httpx.get(f"{base}/readyz", timeout=10)
        assert answer.status_code == 503
        assert answer.json()["checks"]["workers"].startswith("inference: keeps dying (5 times")
        state = json.loads((tmp_path / "data" / SUPERVISOR_STATE).read_text())
        assert state["workers"]["inference"]["state"] == "crash-looping"
        assert state["workers"]["deid"] == {
            "pid": worker_of(up.pid, "deid"),
            "state": "running",
            "restarts": 0,
            "failures_in_a_row": 0,
            "last_exit": "",
        }

        # It is restarted still, and after a healthy period it is ready again.
        wait_for(lambda: worker_of(up.pid, "inference"), 30, "the last restart", log_path)
        wait_for(
            lambda: httpx.get(f"{base}/readyz", timeout=10).status_code == 200,
            60,
            "readiness after a healthy period",
            log_path,
        )
        assert events(log_path, "worker.healthy")[0]["worker"] == "inference"
        assert "radpipe up: the inference worker runs again" in log_path.read_text()
        # The next death waits the first step again.
        os.kill(worker_of(up.pid, "inference") or 0, signal.SIGKILL)
        wait_for(lambda: len(events(log_path, "worker.died")) == 6, 30, "death 6", log_path)
        assert events(log_path, "worker.died")[-1]["restart_in"] == 1.0

        # The broker, killed, is started again on its port.
        [broker] = [p for p, c in children(up.pid).items() if "valkey-server" in c]
        os.kill(broker, signal.SIGKILL)
        wait_for(
            lambda: any("valkey-server" in c for p, c in children(up.pid).items() if p != broker),
            30,
            "the broker restarted",
            log_path,
        )
        wait_for(
            lambda: httpx.get(f"{base}/readyz", timeout=10).json()["checks"]["broker"] == "ok",
            30,
            "the broker reachable again",
            log_path,
        )
        assert any(e["worker"] == "broker" for e in events(log_path, "worker.restart"))
    finally:
        stop(up, grace=20)
    assert up.returncode is not None
    # Nothing is left running: radpipe up stopped its workers and its broker.
    assert worker_problems(tmp_path / "data") == {}


def test_a_child_that_exits_at_once_backs_off_and_is_reported(tmp_path: Path) -> None:
    """The supervisor alone, with a child that fails on start: doubling waits, capped."""
    command = [sys.executable, "-c", "import sys; sys.exit(3)"]
    supervisor = Supervisor(
        {}, state_dir=tmp_path, backoff_seconds=0.2, backoff_max_seconds=0.8, healthy_seconds=30
    )
    supervisor.adopt("flaky", subprocess.Popen(command), command)
    started = time.monotonic()
    while time.monotonic() - started < 30 and supervisor.children["flaky"].restarts < 6:
        supervisor.tend()
        time.sleep(0.02)
    child = supervisor.children["flaky"]
    assert child.restarts == 6 and child.last_exit == "exit code 3"
    assert child.crash_looping
    supervisor.write_state()
    # A state file whose supervisor is this process (alive): the crash loop is reported.
    assert worker_problems(tmp_path) == {
        "flaky": "keeps dying (6 times in a row, last: exit code 3); see the output of radpipe up"
    }
    # Waits 0.2, 0.4, 0.8, 0.8, 0.8 s between the six starts: at least 3 s in all.
    assert time.monotonic() - started >= 0.2 + 0.4 + 0.8 * 3
    supervisor.stop()
    # At start it sweeps the temp files that killed writers left in the folder object store.
    left = tmp_path / "objects" / "radpipe-raw" / "s" / ".tmp-killed"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"half")
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    supervisor.sweep_objects()
    assert not left.exists()
    # A state file left by a supervisor that is gone is ignored.
    state = json.loads((tmp_path / SUPERVISOR_STATE).read_text())
    state["pid"] = 2**22 + 1
    (tmp_path / SUPERVISOR_STATE).write_text(json.dumps(state))
    assert worker_problems(tmp_path) == {}
