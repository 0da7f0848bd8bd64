"""Start `radpipe up` for a benchmark and create a token for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.stack import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def start_up(
    data: Path, env: dict[str, str], role: str, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str, str]:
    """(process, base URL, token) of a `radpipe up` keeping its data in ``data``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port", str(port), "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb") if log else subprocess.DEVNULL,
        cwd=ROOT,
    )
    wait_for_port(port, 60)
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
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
