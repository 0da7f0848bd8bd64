"""Document store adapters: MongoDB through ``pymongo``, and an embedded engine on disk.

The embedded engine is ``litemongo`` (mongomock collections kept in SQLite). On its own it
loses updates when several processes write the same document (each process evaluates the
update in memory, then writes the whole document back). :class:`EmbeddedDocumentStore`
therefore serialises every operation through an exclusive ``flock`` on one lock file, which
makes each pymongo call atomic across the API and worker processes of ``radpipe up``
(``tests/integration/test_docstore_concurrency.py`` proves it).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymongo

from .ports import Collection, Document, DocumentStore
from .settings import Settings


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


def make_document_store(settings: Settings) -> DocumentStore:
    """MongoDB when ``RADPIPE_MONGO_URL`` is set, else the embedded engine in the data dir."""
    if settings.mongo_url:
        return MongoDocumentStore(settings.mongo_url, settings.mongo_database)
    return EmbeddedDocumentStore(settings.data_dir / "documents", settings.mongo_database)
