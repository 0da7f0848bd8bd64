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
from .identity import study_id_for
from .keys import Purpose
from .migrations import run_migrations
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
    _study_keys: dict[str, bytes] = field(default_factory=dict, repr=False)

    @cached_property
    def studies(self) -> StudyRepository:
        return StudyRepository(self.documents)

    @cached_property
    def vault(self) -> Vault:
        settings = self.settings
        return Vault(self.documents, settings.key(Purpose.VAULT), settings.master_secret)

    @property
    def pseudonym_key(self) -> bytes:
        """``Purpose.PSEUDONYMS``'s key: study ids, UIDs and pseudonyms of new studies."""
        return self.settings.key(Purpose.PSEUDONYMS)

    @property
    def date_key(self) -> bytes:
        """``Purpose.DATES``'s key: the per-patient date offsets of new studies."""
        return self.settings.key(Purpose.DATES)

    def study_key(self, source_study_uid: str) -> bytes:
        """The key a study's id, instance keys and de-identified UIDs are derived with from
        its original Study Instance UID: ``Purpose.PSEUDONYMS``'s key, or, for a study first
        stored before keys per purpose (under the master secret itself), the master, so a
        re-sent instance still joins the study it belongs to (docs/operations.md, Upgrades).
        """
        key = self.pseudonym_key
        known = self._study_keys.get(source_study_uid)
        if known is not None:
            return known
        if self.studies.find(study_id_for(key, source_study_uid)) is None:
            legacy = self.settings.master_secret
            if self.studies.find(study_id_for(legacy, source_study_uid)) is None:
                return key  # a new study: nothing to remember until it is stored
            key = legacy
        if len(self._study_keys) >= 4096:
            self._study_keys.clear()
        self._study_keys[source_study_uid] = key
        return key


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
    # The schema version and the data migrations not yet run (a store written by a later
    # release is refused); a keyless process leaves the vault's re-wrap to one with the key.
    run_migrations(documents, None if settings.keyless else context.vault)
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
