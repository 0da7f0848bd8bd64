"""The queue topology, quiet workers, and the one-way imports of the common library.

The stage wrapper's retries, dead letters and redelivery limit need a real worker and broker:
they are tested in tests/integration/test_bus.py and test_poison.py, never in eager mode."""

from __future__ import annotations

import ast
import os
import secrets
import warnings
from pathlib import Path

import pytest
from celery.exceptions import SecurityWarning
from celery.platforms import check_privileges
from kombu import Connection, Producer

from radpipe.common import bus, queues
from radpipe.common.settings import Settings

#: A fresh high-entropy secret (the settings refuse placeholders and weak keys).
SECRET = secrets.token_hex(32)


def test_each_queue_has_its_own_exchange_and_routing_key() -> None:
    celery = queues.make_celery(Settings(secret_key=SECRET))  # type: ignore[arg-type]
    declared = {q.name: q for q in celery.conf.task_queues}
    assert set(declared) == set(queues.QUEUES)
    for name, queue in declared.items():
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (
            name,
            "direct",
            name,
        )
    # What the worker binds (Celery fills in defaults for queues declared by name alone).
    for name, queue in celery.amqp.queues.items():
        assert (queue.exchange.name, queue.routing_key) == (name, name)


def test_the_delivery_ledger_counts_each_attempt_apart_and_forgets_it_when_settled() -> None:
    """The counting logic only (kombu's in-memory transport has no Redis client, so the ledger
    counts in this process); redelivery itself is tested with real workers in
    tests/integration/test_poison.py."""
    ledger = queues.DeliveryLedger(
        queues.make_celery(Settings(secret_key=SECRET, broker_url="memory://"))
    )  # type: ignore[arg-type]
    assert [ledger.delivered("task-a", 0) for _ in range(3)] == [1, 2, 3]
    assert ledger.delivered("task-a", 1) == 1  # a retry is a new attempt with the same id
    assert ledger.delivered("task-b", 0) == 1
    ledger.settled("task-a", 0)
    assert ledger.delivered("task-a", 0) == 1
    ledger.dead_letter({"task": "radpipe.deid.run", "study_id": "s1", "reason": "r1"})
    ledger.dead_letter({"task": "radpipe.deid.run", "study_id": "s2", "reason": "r2"})
    assert [e["study_id"] for e in ledger.dead_letters()] == ["s2", "s1"]


def published_by_exchange_and_key(broker_url: str) -> dict[str, list[str]]:
    """Publish one message per queue by exchange + routing key only; what each queue holds."""
    celery = queues.make_celery(Settings(secret_key=SECRET, broker_url=broker_url))  # type: ignore[arg-type]
    held: dict[str, list[str]] = {}
    with Connection(broker_url) as connection:
        channel = connection.channel()
        # The queues as a worker binds them (Celery fills in defaults for bare names).
        bound = [queue(channel) for queue in celery.amqp.queues.values()]
        for queue in bound:
            queue.declare()
            queue.purge()
        producer = Producer(channel)
        for queue in bound:
            producer.publish(
                {"for": queue.name}, exchange=queue.exchange, routing_key=queue.routing_key
            )
        for queue in bound:
            held[queue.name] = []
            while (message := queue.get(no_ack=True)) is not None:
                held[queue.name].append(message.payload["for"])
        channel.close()
    return held


def test_a_message_sent_by_exchange_and_key_reaches_only_its_queue() -> None:
    # kombu's in-memory transport routes through exchanges exactly as its Redis transport does.
    held = published_by_exchange_and_key("memory://")
    assert held == {name: [name] for name in queues.QUEUES}


def test_the_dispatcher_publishes_to_the_queue_exchange_and_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(secret_key=SECRET, inference_queue="inference-gpu")  # type: ignore[arg-type]
    celery = queues.make_celery(settings)
    sent: list[dict[str, object]] = []
    monkeypatch.setattr(celery, "send_task", lambda name, **options: sent.append(options))
    queues.CeleryDispatcher(celery, settings).send("inference", "study-a", countdown=3)
    assert sent[0]["queue"] == sent[0]["exchange"] == sent[0]["routing_key"] == "inference-gpu"
    assert sent[0]["args"] == ["study-a"] and sent[0]["countdown"] == 3


def test_workers_start_without_banner_or_superuser_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    celery = queues.make_celery(Settings(secret_key=SECRET))  # type: ignore[arg-type]
    seen: list[list[str]] = []
    caught: list[warnings.WarningMessage] = []

    def worker_main(argv: list[str]) -> None:
        seen.append(argv)
        with warnings.catch_warnings(record=True) as records:
            monkeypatch.setattr(os, "geteuid", lambda: 0)  # as root, as on these machines
            check_privileges(celery.conf.accept_content)  # what celery.apps.worker calls
        caught.extend(records)

    monkeypatch.setattr(celery, "worker_main", worker_main)
    with warnings.catch_warnings():
        queues.run_worker(celery, "deid", 1, "solo", warn_root=False)
    argv = seen[0]
    assert argv.index("--quiet") < argv.index("worker")  # celery's global option: no banner
    assert argv[argv.index("--queues") + 1] == "deid"
    assert not [w for w in caught if issubclass(w.category, SecurityWarning)]


def test_workers_refuse_pickle() -> None:
    celery = queues.make_celery(Settings(secret_key=SECRET))  # type: ignore[arg-type]
    celery.conf.accept_content = ["json", "pickle"]
    with pytest.raises(RuntimeError, match="JSON only"):
        queues.run_worker(celery, "deid", 1, "solo")


def import_graph(package: Path, prefix: str) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports, lazy (in-function) imports included."""
    names = {f"{prefix}.{p.stem}": p for p in package.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level == 1:
                    module = f"{prefix}.{module}" if module else prefix
                candidates = [module, *(f"{module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            found |= {c for c in candidates if c in names and c != name}
        graph[name] = found
    return graph


def test_the_common_library_has_no_import_cycle() -> None:
    """bus -> context -> queues, never back: no module of ``common`` imports itself in a
    circle, not even lazily inside a function."""
    graph = import_graph(Path(bus.__file__).parent, "radpipe.common")
    assert "radpipe.common.bus" not in graph["radpipe.common.context"]

    def walk(module: str, path: list[str]) -> None:
        for nxt in graph[module]:
            assert nxt not in path, "import cycle: " + " -> ".join([*path, nxt])
            walk(nxt, [*path, nxt])

    for module in graph:
        walk(module, [module])
