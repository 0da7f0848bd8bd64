"""The per-process wiring of adapters: settings, stores, dispatcher, repositories.

API processes build one at start-up; worker processes build one lazily in each worker child
(after Celery forks), so no connection or file lock is shared across a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from . import blinding
from .alerts import ensure_alert_indexes
from .docstore import make_document_store
from .objectstore import bucket_names, make_object_store
from .ports import DocumentStore, ObjectStore, TaskDispatcher
from .queues import CeleryDispatcher, make_celery
from .settings import Settings, get_settings
from .studies import StudyRepository
from .vault import Vault


@dataclass
class Context:
    settings: Settings
    objects: ObjectStore
    documents: DocumentStore
    tasks: TaskDispatcher
    buckets: dict[str, str] = field(default_factory=dict)

    @cached_property
    def studies(self) -> StudyRepository:
        return StudyRepository(self.documents)

    @cached_property
    def vault(self) -> Vault:
        return Vault(self.documents, self.settings.secret)


def build_context(settings: Settings, tasks: TaskDispatcher | None = None) -> Context:
    documents = make_document_store(settings)
    context = Context(
        settings=settings,
        objects=make_object_store(settings),
        documents=documents,
        tasks=tasks or CeleryDispatcher(make_celery(settings), settings),
        buckets=bucket_names(settings),
    )
    context.studies.ensure_indexes()
    ensure_alert_indexes(documents)
    blinding.ensure_indexes(documents)
    return context


_context: Context | None = None
_context_pid: int | None = None


def get_context() -> Context:
    """This process's context (rebuilt in a forked child)."""
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        _context = build_context(get_settings())
        _context_pid = os.getpid()
    return _context
