"""Document store adapters: MongoDB through ``pymongo``, and the embedded engines on disk.

The embedded default is :class:`~radpipe.common.sqlitedocs.SqliteDocumentStore` (JSON documents
in one SQLite file in WAL mode, queried through expression indexes). A data dir written by the
earlier embedded engine is converted once when the store is opened (:func:`migrate_litemongo`),
keeping the old files as a backup.

The earlier engine, :class:`EmbeddedDocumentStore`, stays importable for that migration and for
``bench/store.py``. It is ``litemongo`` (mongomock collections kept in SQLite): every query reads
and copies the whole collection, so it does not scale past a few thousand studies. On its own it
loses updates when several processes write the same document (each process evaluates the
update in memory, then writes the whole document back). :class:`EmbeddedDocumentStore`
therefore serialises every operation through an exclusive ``flock`` on one lock file, which
makes each pymongo call atomic across the API and worker processes of ``radpipe up``
(``tests/integration/test_docstore_concurrency.py`` proves it).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymongo

from .logging import get_logger
from .ports import Collection, Document, DocumentStore
from .settings import Settings
from .sqlitedocs import SqliteCollection as _SqliteCollection
from .sqlitedocs import SqliteDocumentStore

log = get_logger("radpipe.docstore")


class MongoDocumentStore:
    def __init__(self, url: str, database: str) -> None:
        self.client: pymongo.MongoClient[Document] = pymongo.MongoClient(
            url, serverSelectionTimeoutMS=5000, tz_aware=True
        )
        self.db = self.client[database]

    def collection(self, name: str) -> Collection:
        return self.db[name]

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def ping(self) -> None:
        self.client.admin.command("ping")

    def close(self) -> None:
        self.client.close()


class _FileLock:
    """An exclusive lock held across processes (``flock``) and threads (``RLock``)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._handle = open(path, "a+b")  # noqa: SIM115 - held for the store's lifetime

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                fcntl.flock(self._handle, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self._handle.close()


class _LockedCursor:
    """Defers ``sort``/``skip``/``limit`` and runs the query under the lock when iterated."""

    def __init__(self, cursor: Any, lock: _FileLock) -> None:
        self._cursor = cursor
        self._lock = lock

    def sort(self, key_or_list: Any, direction: Any = None) -> _LockedCursor:
        if direction is None:
            self._cursor = self._cursor.sort(key_or_list)
        else:
            self._cursor = self._cursor.sort(key_or_list, direction)
        return self

    def skip(self, skip: int) -> _LockedCursor:
        self._cursor = self._cursor.skip(skip)
        return self

    def limit(self, limit: int) -> _LockedCursor:
        self._cursor = self._cursor.limit(limit)
        return self

    def __iter__(self) -> Iterator[Document]:
        with self._lock.held():
            documents = list(self._cursor)
        return iter(documents)


class _LockedCollection:
    def __init__(self, name: str, store: EmbeddedDocumentStore) -> None:
        self._name = name
        self._store = store
        self._lock = store.lock

    def _call(self, method: str, *args: Any, **kw: Any) -> Any:
        with self._lock.held():
            return getattr(self._store.database()[self._name], method)(*args, **kw)

    def insert_one(self, document: Document) -> Any:
        return self._call("insert_one", document)

    def find_one(self, filter: Mapping[str, Any] | None = None, *args: Any, **kw: Any) -> Any:
        return self._call("find_one", filter, *args, **kw)

    def find(self, filter: Mapping[str, Any] | None = None, *args: Any, **kw: Any) -> Any:
        cursor = self._store.database()[self._name].find(filter, *args, **kw)
        return _LockedCursor(cursor, self._lock)

    def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False
    ) -> Any:
        return self._call("update_one", filter, update, upsert=upsert)

    def find_one_and_update(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], *args: Any, **kw: Any
    ) -> Any:
        return self._call("find_one_and_update", filter, update, *args, **kw)

    def count_documents(self, filter: Mapping[str, Any]) -> int:
        return int(self._call("count_documents", filter))

    def delete_one(self, filter: Mapping[str, Any]) -> Any:
        return self._call("delete_one", filter)

    def create_index(self, keys: Any, **kw: Any) -> Any:
        return self._call("create_index", keys, **kw)


class EmbeddedDocumentStore:
    """``litemongo`` on disk under ``folder``, safe for several processes and threads at once.

    SQLite connections are bound to the thread that opened them, so each thread gets its own
    client; the file lock orders all of them.
    """

    def __init__(self, folder: Path, database: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder.resolve()
        self.database_name = database
        self.lock = _FileLock(folder / ".radpipe-write.lock")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._collections: dict[str, _LockedCollection] = {}

    def database(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import litemongo  # imported here: only the embedded mode needs it

            with self.lock.held():
                client = litemongo.connect(str(self.folder), tz_aware=True)
            self._local.client = client
            self._clients.append(client)
        return client[self.database_name]

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self.lock.held()

    def collection(self, name: str) -> Collection:
        if name not in self._collections:
            self._collections[name] = _LockedCollection(name, self)
        return self._collections[name]

    def ping(self) -> None:
        self.collection("_ping").count_documents({})

    def close(self) -> None:
        for client in self._clients:
            # A client opened by another thread cannot be closed here; it is freed with it.
            with contextlib.suppress(sqlite3.ProgrammingError):
                client.close()
        self._clients.clear()
        self.lock.close()


#: Class name kept for code that still names the earlier engine.
LitemongoDocumentStore = EmbeddedDocumentStore


def _denormalise(collection: str, doc: Document) -> Document:
    """Top-level fields the new indexes need, derived from what the old documents hold."""
    if collection == "studies":
        from .studies import with_sort_fields  # the study record owns its sort fields

        return with_sort_fields(doc)
    return doc


def migrate_litemongo(folder: Path, database: str, target: Path) -> bool:
    """Convert ``folder/database`` (litemongo) into the SQLite file ``target``, once.

    Several processes may open the store at once: a file lock lets one convert while the
    others wait. The new file is written aside and renamed into place, then the old folder is
    moved to ``<database>.litemongo-backup`` (a crash in between is finished on the next open).
    Returns whether anything was converted.
    """
    old = folder / database
    if not old.is_dir():
        return False
    with open(folder / ".radpipe-migrate.lock", "a+b") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not old.is_dir():
            return False  # another process converted it while this one waited
        converted = False
        if not target.exists():
            _convert(folder, database, target)
            converted = True
        backup = folder / f"{database}.litemongo-backup"
        if backup.exists():
            backup = backup.with_name(f"{backup.name}-{int(time.time())}")
        shutil.move(str(old), backup)
        log.info("docstore.migrated", source=str(old), target=str(target), backup=str(backup))
        return converted


def _convert(folder: Path, database: str, target: Path) -> None:
    from rich.console import Console
    from rich.progress import Progress

    partial = target.with_name(target.name + ".migrating")
    for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    source = EmbeddedDocumentStore(folder, database)
    fresh = SqliteDocumentStore(partial)
    console = Console(stderr=True)
    try:
        names = [n for n in sorted(source.database().list_collection_names()) if n != "_ping"]
        with Progress(console=console, disable=not sys.stderr.isatty()) as progress:
            for name in names:
                old = source.collection(name)
                total = old.count_documents({})
                task = progress.add_task(f"converting {name}", total=total)
                log.info("docstore.migrating", collection=name, documents=total)
                new = fresh.collection(name)
                assert isinstance(new, _SqliteCollection)
                with fresh.write() as db:
                    for doc in old.find({}):
                        new._insert(db, _denormalise(name, doc))
                        progress.advance(task)
    finally:
        fresh.close()
        source.close()
    checkpoint = sqlite3.connect(partial)
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.close()
    for suffix in ("-wal", "-shm", ".writers.lock"):
        partial.with_name(partial.name + suffix).unlink(missing_ok=True)
    partial.rename(target)


def open_embedded(folder: Path, database: str) -> SqliteDocumentStore:
    """The embedded store in ``folder``, converting an earlier engine's data first."""
    target = folder / f"{database}.sqlite3"
    folder.mkdir(parents=True, exist_ok=True)
    migrate_litemongo(folder, database, target)
    return SqliteDocumentStore(target)


def make_document_store(settings: Settings) -> DocumentStore:
    """MongoDB when ``RADPIPE_MONGO_URL`` is set, else the embedded engine in the data dir."""
    if settings.mongo_url:
        return MongoDocumentStore(settings.mongo_url, settings.mongo_database)
    return open_embedded(settings.data_dir / "documents", settings.mongo_database)
