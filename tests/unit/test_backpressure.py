"""The intake guard's rules: limits per queue, the reading cache, the low-water mark."""

from __future__ import annotations

from pathlib import Path

from radpipe.common.settings import Settings
from radpipe.ingest.backpressure import Backpressure, store_root

from ..conftest import TEST_SECRET


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, secret_key=TEST_SECRET, **values)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_queue_lengths_are_read_once_per_period_and_limits_apply_per_queue(
    tmp_path: Path,
) -> None:
    reads: list[int] = []
    lengths = {"deid": 5, "inference-gpu": 3}

    def read() -> dict[str, int]:
        reads.append(1)
        return dict(lengths)

    clock = Clock()
    guard = Backpressure(
        settings(tmp_path, queue_limit=10, queue_limits={"inference-gpu": 2}), read, clock
    )
    refusal = guard.queue_refusal()
    assert refusal is not None and "inference-gpu queue holds 3 tasks" in refusal.detail
    assert refusal.retry_after == 30
    lengths["inference-gpu"] = 0
    clock.now = 1.9  # within RADPIPE_QUEUE_CHECK_SECONDS (2 s): the cached reading answers
    assert guard.queue_refusal() is not None and len(reads) == 1
    clock.now = 2.0
    assert guard.queue_refusal() is None and len(reads) == 2


def test_an_unreadable_broker_does_not_stop_intake(tmp_path: Path) -> None:
    def broken() -> dict[str, int]:
        raise ConnectionError("broker down")

    assert Backpressure(settings(tmp_path, queue_limit=1), broken).refusal() is None


def test_a_limit_of_zero_is_no_limit(tmp_path: Path) -> None:
    guard = Backpressure(settings(tmp_path, queue_limit=0), lambda: {"deid": 10**6})
    assert guard.queue_refusal() is None


def test_the_low_water_mark_is_the_larger_of_bytes_and_percent(tmp_path: Path) -> None:
    guard = Backpressure(
        settings(tmp_path, disk_low_water_bytes=100, disk_low_water_percent=10.0), None
    )
    assert guard.low_water(10_000) == 1000 and guard.low_water(500) == 100
    everything = Backpressure(settings(tmp_path, disk_low_water_percent=100.0), None)
    refusal = everything.disk_refusal()
    assert refusal is not None and refusal.reason == "disk"
    assert "RADPIPE_DISK_LOW_WATER_BYTES" in refusal.body()["detail"]  # type: ignore[operator]


def test_remote_stores_have_no_local_disk_to_watch(tmp_path: Path) -> None:
    remote = settings(
        tmp_path / "not" / "yet",
        mongo_url="mongodb://db",
        s3_endpoint="http://s3:8333",
        s3_access_key="a",
        s3_secret_key="b",
    )
    assert store_root(remote) is None
    assert store_root(settings(tmp_path / "not" / "yet")) == tmp_path.resolve()
