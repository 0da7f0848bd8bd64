"""Task dispatch against a real Redis: queues, lengths, and a clear failure when it is down."""

from __future__ import annotations

import secrets

import pytest
import redis
from kombu import Connection, Exchange, Queue

from radpipe.common.bus import QUEUES, STAGES, CeleryDispatcher, make_celery
from radpipe.common.queues import drop_shared_bindings
from radpipe.common.settings import Settings

from ..servers import free_port
from ..unit.test_bus import published_by_exchange_and_key


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


def test_each_queue_is_bound_to_its_own_exchange_and_key_in_redis(redis_url: str) -> None:
    """A message published by exchange and routing key (not by queue name) reaches one queue:
    the Redis bindings that the workers declare route each exchange to its own queue only."""
    url = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    held = published_by_exchange_and_key(url)
    assert held == {name: [name] for name in QUEUES}
    bindings = redis.Redis.from_url(url).smembers("_kombu.binding.deid")
    assert {b.decode().split("\x06\x16")[-1] for b in bindings} == {"deid"}


def test_bindings_left_by_the_shared_exchange_are_dropped(redis_url: str) -> None:
    """A broker that ran Radpipe 0.1.0 has every queue bound to exchange ``deid`` with key
    ``deid``; a worker start removes those bindings, so a deid task reaches its queue only."""
    url = redis_url.rsplit("/", 1)[0] + f"/{secrets.randbelow(15) + 1}"
    with Connection(url) as connection:
        channel = connection.channel()
        for name in QUEUES:  # the 0.1.0 topology: Queue(name) with Celery's defaults
            Queue(name, Exchange("deid", type="direct"), routing_key="deid")(channel).declare()
        channel.close()
    settings = Settings(secret_key="x" * 32, broker_url=url)  # type: ignore[arg-type]
    assert drop_shared_bindings(make_celery(settings)) == 2 * (len(QUEUES) - 1)
    assert published_by_exchange_and_key(url) == {name: [name] for name in QUEUES}
    assert drop_shared_bindings(make_celery(settings)) == 0
