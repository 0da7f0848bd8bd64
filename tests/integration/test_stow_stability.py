"""A study is not declared stable while a long STOW-RS request is still uploading it.

Real processes: ``radpipe serve ingest`` over HTTP and a deid worker (Celery, real Redis)
running the stability check, over the embedded stores in one data folder. A request's parts are
recorded only once its body is complete, so a slow request to a study an earlier request armed
would outlast the quiet time; ingest moves ``last_instance_at`` while it is still receiving.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from radpipe.common.context import build_context
from radpipe.common.identity import study_id_for
from radpipe.common.mime import encode_multipart
from radpipe.common.settings import Settings

from ..conftest import TEST_SECRET
from ..dicom import ct_series, read
from ..servers import free_port, radpipe_env, stop, wait_for_port

QUIET = 1.0


def wait_for(predicate, timeout: float, what: str, logs: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log"))
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@pytest.fixture
def ingest(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, str, Settings, Path]]:
    """(base URL, modality token, settings, logs) of an ingest server and a deid worker."""
    logs = tmp_path / "logs"
    logs.mkdir()
    broker = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    env = radpipe_env(
        RADPIPE_DATA_DIR=str(tmp_path / "data"),
        RADPIPE_SECRET_KEY=TEST_SECRET,
        RADPIPE_BROKER_URL=broker,
        RADPIPE_STUDY_STABLE_SECONDS=str(QUIET),
    )
    port = free_port()
    processes = []
    for name, args in (
        ("ingest", ["serve", "ingest", "--port", str(port)]),
        ("deid", ["worker", "deid", "--pool", "solo"]),
    ):
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child
        command = [sys.executable, "-m", "radpipe.cli", *args]
        processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        wait_for_port(port, 120)
        create = ["token", "create", "--role", "modality", "--name", "slow-modality"]
        token = subprocess.run(
            [sys.executable, "-m", "radpipe.cli", *create],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[-1]
        settings = Settings(
            data_dir=tmp_path / "data",
            secret_key=TEST_SECRET,  # type: ignore[arg-type]
            broker_url=broker,
            study_stable_seconds=QUIET,
        )
        yield f"http://127.0.0.1:{port}", token, settings, logs
    finally:
        for process in processes:
            stop(process, grace=10)


def stow(url: str, token: str, content: bytes | Iterator[bytes], content_type: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    response = httpx.post(f"{url}/dicom-web/studies", content=content, headers=headers, timeout=60)
    return response.status_code


def test_a_study_is_not_stable_while_a_slow_long_request_still_uploads_it(
    ingest: tuple[str, str, Settings, Path],
) -> None:
    url, token, settings, logs = ingest
    ctx = build_context(settings)

    def state(study_id: str) -> str | None:
        study = ctx.studies.find(study_id)
        return None if study is None or study["state"] == "received" else study["state"]

    # The worker runs stability checks before the test relies on its timing.
    warm = ct_series(seed=8)[:1]
    assert stow(url, token, *encode_multipart(warm)) == 200
    warm_id = study_id_for(ctx.pseudonym_key, str(read(warm[0]).StudyInstanceUID))
    wait_for(lambda: state(warm_id), 120, "the deid worker's first stability check", logs)

    series = ct_series()
    study_id = study_id_for(ctx.pseudonym_key, str(read(series[0]).StudyInstanceUID))
    assert stow(url, token, *encode_multipart(series[:1])) == 200  # arms the check: QUIET s
    body, content_type = encode_multipart(series[1:])
    pieces = 20
    size = -(-len(body) // pieces)

    def slowly() -> Iterator[bytes]:  # ~4 quiet times, a piece every 0.2 s
        for start in range(0, len(body), size):
            time.sleep(0.2)
            yield body[start : start + size]

    assert stow(url, token, slowly(), content_type) == 200
    ended = datetime.now(UTC)
    wait_for(lambda: state(study_id), 60, "the study to go stable", logs)

    study = ctx.studies.get(study_id)
    events = [e for e in study["events"] if e["type"] in ("received", "stable")]
    assert [e["type"] for e in events] == ["received", "stable"], "re-opened mid-upload"
    assert study["version"] == 1
    assert study["instance_count"] == len(series)
    stable_at = events[1]["at"]
    stable_at = stable_at if stable_at.tzinfo else stable_at.replace(tzinfo=UTC)
    assert (stable_at - ended).total_seconds() > 0.5 * QUIET  # quiet time after the end
