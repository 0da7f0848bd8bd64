"""Task dispatch against a real Redis: queues, lengths, and a clear failure when it is down."""

from __future__ import annotations

import secrets

import pytest

from radpipe.common.bus import STAGES, CeleryDispatcher, make_celery
from radpipe.common.settings import Settings

from ..servers import free_port


def dispatcher(broker_url: str) -> CeleryDispatcher:
    settings = Settings(secret_key="x" * 32, broker_url=broker_url)  # type: ignore[arg-type]
    return CeleryDispatcher(make_celery(settings), settings)


def test_send_puts_one_message_on_the_stage_queue(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    bus = dispatcher(url)
    bus.ping()
    before = bus.queue_lengths()
    bus.send("deid", "study-a")
    bus.send("notify", "study-a")
    after = bus.queue_lengths()
    assert after["deid"] == before["deid"] + 1
    assert after["notify"] == before["notify"] + 1
    assert after["inference-cpu"] == before["inference-cpu"]
    assert set(STAGES) == {"stable", "deid", "inference", "notify", "export"}


def test_ping_fails_when_the_broker_is_down() -> None:
    bus = dispatcher(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(Exception, match=r"(?i)connect|refused"):
        bus.ping()
