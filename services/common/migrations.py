"""The store's schema version and the data migrations run at start (ordered, idempotent).

Every release that changes the shape of stored documents adds one :class:`Migration` at the end
of :data:`MIGRATIONS`; its number is the schema version the store is at once it ran. Each step
is idempotent and writes its own marker in the ``migrations`` collection when done (so a step
interrupted before its marker runs again, with the same result), and :func:`run_migrations`
records the version reached in the ``schema`` document of that collection::

    {"_id": "schema", "version": 3, "radpipe": "0.1.0", "at": ...}

A store whose recorded version is newer than this code's :data:`SCHEMA_VERSION` was written by
a later release: the process refuses to start (:class:`SchemaTooNew`) rather than write
documents that release would misread; the fix is to run that release, or restore a backup
taken before the upgrade (docs/backup.md).

Steps that need a key (re-wrapping the vault) are skipped by a keyless process (the inference
worker); the version then stays below the last step until a process with the key starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from .dicomindex import ensure_summaries
from .logging import get_logger
from .ports import DocumentStore
from .studies import MIGRATIONS as COLLECTION
from .studies import StudyRepository

log = get_logger("radpipe.migrations")

#: The ``_id`` of the document holding the store's schema version.
SCHEMA_ID = "schema"


class SchemaTooNew(RuntimeError):
    """The store was written by a later release than this one."""


@dataclass(frozen=True)
class Migration:
    """One upgrade step: ``marker`` is its document in ``migrations`` (written by ``apply``
    when it finished); ``version`` the schema version reached once it ran."""

    version: int
    marker: str
    description: str
    apply: Callable[[DocumentStore, Any], object]
    #: Needs the vault key: a keyless process skips it.
    needs_key: bool = False


def _summaries(documents: DocumentStore, vault: Any) -> object:
    ensure_summaries(documents)
    return None


def _sources(documents: DocumentStore, vault: Any) -> object:
    return StudyRepository(documents).backfill_sources()


def _rewrap(documents: DocumentStore, vault: Any) -> object:
    return vault.rewrap_legacy()


#: Every step, oldest first; append only (a released step's number and marker never change).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "dicom_summaries_v1", "QIDO-RS summaries of index entries", _summaries),
    Migration(2, "study-source-v1", "each study's sender (source, sources)", _sources),
    Migration(3, "vault-keys-per-purpose-v1", "vault entries under the vault key", _rewrap, True),
)

#: The schema version this code writes and reads.
SCHEMA_VERSION = MIGRATIONS[-1].version


def radpipe_version() -> str:
    try:
        return metadata.version("radpipe")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree, not installed
        return "unknown"


def schema_version(documents: DocumentStore) -> int:
    """The version recorded in the store: 0 for a store that predates versions, or an empty
    one."""
    doc = documents.collection(COLLECTION).find_one({"_id": SCHEMA_ID})
    return int(doc["version"]) if doc else 0


def check_schema(documents: DocumentStore) -> int:
    """The recorded version, refusing a store newer than this code."""
    version = schema_version(documents)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the data store is at schema version {version}, written by a later Radpipe "
            f"release; this one ({radpipe_version()}) knows versions up to {SCHEMA_VERSION}: "
            "run that release, or restore a backup taken before the upgrade (docs/backup.md)"
        )
    return version


def run_migrations(
    documents: DocumentStore,
    vault: Any = None,
    steps: tuple[Migration, ...] = MIGRATIONS,
) -> int:
    """Run every step not yet marked done, in order, and record the schema version reached
    (the last step of the unbroken run of done steps). ``vault`` is the process's
    :class:`~radpipe.common.vault.Vault`, or None in a keyless process (steps that need the key
    are then left for a process with it). Safe to run in several processes at once: each step
    is idempotent. Returns the version recorded."""
    check_schema(documents)
    done = documents.collection(COLLECTION)
    reached = 0
    for step in steps:
        if done.find_one({"_id": step.marker}) is None:
            if step.needs_key and vault is None:
                log.info("migration.deferred", step=step.marker, reason="keyless process")
                break
            result = step.apply(documents, vault)
            done.update_one(  # the step writes it; kept here too for steps that do not
                {"_id": step.marker}, {"$setOnInsert": {"done": datetime.now(UTC)}}, upsert=True
            )
            log.info("migration.done", step=step.marker, version=step.version, result=result)
        reached = step.version
    # Only ever raised (never lowered by a keyless process or an older step list): the
    # document is created at 0, then moved up conditionally, atomically.
    done.update_one({"_id": SCHEMA_ID}, {"$setOnInsert": {"version": 0}}, upsert=True)
    done.update_one(
        {"_id": SCHEMA_ID, "version": {"$lt": reached}},
        {"$set": {"version": reached, "radpipe": radpipe_version(), "at": datetime.now(UTC)}},
    )
    return schema_version(documents)
