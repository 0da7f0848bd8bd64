"""Back-pressure for real: a Redis queue nobody consumes, and a small filesystem filled up.

The queue case runs against a real Redis with no worker on the queue (a stopped worker): the
stability checks pile up in ``deid``; past ``RADPIPE_QUEUE_LIMIT`` STOW-RS answers 503 with
Retry-After and stores nothing, and takes studies again once the queue drains. The disk case
mounts a 20 MiB tmpfs as the data dir (root only), fills it below the low-water mark, and
checks STOW-RS 503 and C-STORE 0xA700 with nothing stored, then that intake resumes by itself
when the space returns.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from radpipe.common.auth import AuthService
from radpipe.common.context import Context, build_context
from radpipe.common.identity import study_id_for
from radpipe.common.mime import encode_multipart
from radpipe.common.settings import Settings, get_settings

from ..conftest import TEST_SECRET, RecordingDispatcher
from ..dicom import ct_series, read
from ..servers import free_port
from ..servers import small_disk as tmpfs

MiB = 1024**2
#: A Redis database of its own, so other tests' queues never count here.
REDIS_DB = 13


def make_settings(data_dir: Path, **values: object) -> Settings:
    get_settings.cache_clear()
    return Settings(
        data_dir=data_dir,
        secret_key=TEST_SECRET,  # type: ignore[arg-type]
        bucket_prefix="t" + secrets.token_hex(4),
        study_stable_seconds=3600,
        busy_retry_seconds=17,
        **values,  # type: ignore[arg-type]
    )


def stow(client: TestClient, token: str, payloads: list[bytes]):  # type: ignore[no-untyped-def]
    body, content_type = encode_multipart(payloads)
    return client.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    )


def stored(ctx: Context) -> tuple[int, int]:
    """(raw objects, study records) held now."""
    objects = sum(1 for _ in ctx.objects.list(ctx.buckets["raw"]))
    return objects, ctx.studies.studies.count_documents({})


def app_client(ctx: Context) -> tuple[TestClient, str]:
    from radpipe.app import build_app

    token = AuthService(ctx.documents).create_token("ct-scanner", "modality")
    return TestClient(build_app(ctx, ["ingest"])), token


def assert_busy(response, reason: str, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "17"
    body = response.json()
    assert body["reason"] == reason and body["retry_after_seconds"] == 17
    assert "nothing of this request was stored" in body["detail"]
    for word in words:
        assert word in body["detail"]


@pytest.fixture
def broker(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def test_a_queue_over_its_limit_answers_503_and_stores_nothing(broker: str, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data", broker_url=broker, queue_limit=2, queue_check_seconds=0
    )
    ctx = build_context(settings)  # the real Celery dispatcher; no worker consumes ``deid``
    client, token = app_client(ctx)
    with client:
        for seed in (1, 2, 3):  # three studies: three stability checks waiting in ``deid``
            assert stow(client, token, ct_series(seed)[:2]).status_code == 200
        assert redis.Redis.from_url(broker).llen("deid") == 3
        before = stored(ctx)
        refused = stow(client, token, ct_series(4)[:2])
        assert_busy(refused, "queue", "deid queue holds 3 tasks", "limit of 2", "QUEUE_LIMIT")
        assert stored(ctx) == before == (6, 3)
        uid = read(ct_series(4)[0]).StudyInstanceUID
        assert ctx.studies.find(study_id_for(ctx.study_key(uid), uid)) is None

        redis.Redis.from_url(broker).delete("deid")  # the workers caught up
        assert stow(client, token, ct_series(4)[:2]).status_code == 200
        assert stored(ctx) == (8, 4)
    ctx.documents.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs: the data dir on a filesystem the test can really fill."""
    with tmpfs(tmp_path / "disk", 20) as mount:
        yield mount


def fill_to(path: Path, filler: Path, free_bytes: int) -> None:
    """Write ``filler`` until ``path``'s filesystem has about ``free_bytes`` free."""
    stat = os.statvfs(path)
    size = stat.f_bavail * stat.f_frsize - free_bytes
    with filler.open("ab") as file:
        file.write(b"\0" * max(size, 0))


def c_store(port: int, payload: bytes) -> int:
    """One C-STORE from a pynetdicom SCU; the status the SCP answered."""
    from pynetdicom import AE

    ds = read(payload)
    ae = AE(ae_title="CT_SCANNER")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="RADPIPE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def test_below_the_disk_low_water_mark_intake_stops_and_resumes_by_itself(
    small_disk: Path,
) -> None:
    from radpipe.ingest.dimse import start_scp

    settings = make_settings(small_disk / "data", disk_low_water_bytes=8 * MiB)
    settings.dimse_port = free_port()
    ctx = build_context(settings, tasks=RecordingDispatcher())
    server = start_scp(ctx, "127.0.0.1")
    client, token = app_client(ctx)
    filler = small_disk / "filler"
    series = ct_series(21)
    try:
        with client:
            fill_to(small_disk, filler, 6 * MiB)  # below the mark of 8 MiB
            refused = stow(client, token, series[:4])
            assert_busy(refused, "disk", "below the low-water mark", "DISK_LOW_WATER")
            assert c_store(settings.dimse_port, series[4]) == 0xA700
            assert stored(ctx) == (0, 0)

            filler.unlink()  # space returns: no restart, the next request is taken
            assert stow(client, token, series[:4]).status_code == 200
            assert c_store(settings.dimse_port, series[4]) == 0x0000
            assert stored(ctx) == (5, 1)
    finally:
        server.shutdown()
        ctx.documents.close()


def test_a_request_during_which_the_disk_crosses_the_mark_is_undone(small_disk: Path) -> None:
    settings = make_settings(small_disk / "data", disk_low_water_bytes=8 * MiB)
    ctx = build_context(settings, tasks=RecordingDispatcher())
    client, token = app_client(ctx)
    series = ct_series(22)
    part = len(series[0])
    try:
        with client:
            # Room for about three instances above the mark: the fourth finds the disk low.
            fill_to(small_disk, small_disk / "filler", 8 * MiB + 3 * part + part // 2)
            refused = stow(client, token, series)
            assert_busy(refused, "disk", "below the low-water mark")
            assert stored(ctx) == (0, 0)  # the instances already written were removed
    finally:
        ctx.documents.close()
