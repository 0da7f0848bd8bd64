"""Start `radpipe up` for a benchmark and create a token for it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from radpipe.stack import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def start_up(
    data: Path, env: dict[str, str], role: str, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """(process, base URL, token) of a `radpipe up` keeping its data in ``data``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port), "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb") if log else subprocess.DEVNULL,
        cwd=ROOT,
    )
    wait_for_port(port, 180)  # a busy machine takes minutes to import the app
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "radpipe.cli",
            "token",
            "create",
            "--role",
            role,
            "--name",
            "bench",
        ],
        env={**env, "RADPIPE_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return process, f"http://127.0.0.1:{port}", created.stdout.splitlines()[-1]


def _tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process below it."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(root: int, timeout: float = 180.0, busy_below: float = 0.05) -> None:
    """Wait until ``radpipe up`` and its workers have finished starting (imports, model load).

    A benchmark measures the steady state: the inference worker importing torch would otherwise
    compete with the first rounds for the two cores.
    """
    deadline = time.monotonic() + timeout
    previous = _tree_cpu_seconds(root)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        current = _tree_cpu_seconds(root)
        if current - previous < busy_below:
            return
        previous = current
