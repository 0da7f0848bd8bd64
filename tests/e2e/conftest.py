"""Start Radpipe's services as separate processes against a real Redis and S3 server."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ..servers import S3Server, free_port, radpipe_env, require_tool, stop, wait_for_port
from ..webhook import Receiver, webhook_receiver

SECRET = "bb4f6030d95e1d62801d69500926fc91350970035cf1f2d98d6e12ed2aac8a61"  # 256 bits


@dataclass
class Stack:
    env: dict[str, str]
    ingest_url: str
    portal_url: str
    webhook: Receiver
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def radpipe(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "radpipe.cli", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return result.stdout

    def token(self, role: str) -> str:
        return self.radpipe(
            "token", "create", "--role", role, "--name", f"e2e-{role}"
        ).splitlines()[-1]

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def _spawn(stack: Stack, name: str, *args: str) -> None:
    log = open(stack.logs / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
    stack.processes[name] = subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", *args],
        env=stack.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, s3: S3Server) -> Iterator[Stack]:
    ingest_port, portal_port = free_port(), free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    with webhook_receiver() as receiver:
        env = radpipe_env(
            **{
                "RADPIPE_DATA_DIR": str(tmp_path / "data"),
                "RADPIPE_SECRET_KEY": SECRET,
                "RADPIPE_BROKER_URL": redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}",
                "RADPIPE_S3_ENDPOINT": s3.endpoint,
                "RADPIPE_S3_ACCESS_KEY": s3.access_key,
                "RADPIPE_S3_SECRET_KEY": s3.secret_key,
                "RADPIPE_BUCKET_PREFIX": "e2e" + secrets.token_hex(4),
                "RADPIPE_PUBLIC_URL": f"http://127.0.0.1:{portal_port}",
                "RADPIPE_STUDY_STABLE_SECONDS": "2",
                "RADPIPE_ALERT_WEBHOOK_URL": receiver.url,
                "RADPIPE_INFERENCE_THREADS": "2",
                "RADPIPE_TASK_MAX_RETRIES": "2",
            }
        )
        stack = Stack(
            env,
            f"http://127.0.0.1:{ingest_port}",
            f"http://127.0.0.1:{portal_port}",
            receiver,
            logs,
        )
        _spawn(stack, "ingest", "serve", "ingest", "--port", str(ingest_port))
        _spawn(stack, "portal", "serve", "portal", "--port", str(portal_port))
        for stage in ("deid", "inference", "notify"):
            _spawn(stack, f"worker-{stage}", "worker", stage, "--pool", "solo")
        try:
            wait_for_port(ingest_port, 60)
            wait_for_port(portal_port, 60)
            for url in (stack.ingest_url, stack.portal_url):
                assert httpx.get(url + "/readyz", timeout=10).status_code == 200
            yield stack
        finally:
            for process in stack.processes.values():
                stop(process, grace=10)


def wait_until(predicate, timeout: float, stack: Stack, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1.0)
    pytest.fail(f"timed out waiting for {what}\n{stack.log_tail()}")


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Debian Chromium driven by Playwright (one browser per test)."""
    from .test_portal_browser import ARTIFACTS, CHROMIUM_FLAGS

    chromium = require_tool("chromium", "apt-get install chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()
