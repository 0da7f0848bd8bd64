"""The embedded document store: JSON documents in SQLite (WAL), queried through indexes.

Each collection is one table ``(id TEXT PRIMARY KEY, doc TEXT)`` in one database file. A filter,
sort, skip and limit are translated into one SQL statement over ``json_extract(doc, '$.path')``
expressions, and :meth:`SqliteCollection.create_index` creates expression indexes on exactly
those expressions, so SQLite answers the worklist, state and open-alert queries from an index
(``tests/integration/test_sqlite_store.py`` checks the plans). Nothing reads a whole collection
unless the caller asks for it.

Concurrency across the processes of ``radpipe up`` (DESIGN 5): WAL mode gives every read a
snapshot without any lock, so readers never wait behind writers and writers never wait behind
readers. Every write is a read-modify-write inside ``BEGIN IMMEDIATE`` (the database's single
writer lock, waited for up to ``busy_timeout``), so concurrent updates of the same document are
serialised and none is lost.

Values: JSON types as they are; ``datetime`` is stored as a string ``"\\x01D"`` + UTC ISO 8601
with milliseconds (fixed width; BSON keeps milliseconds too), which sorts and compares
chronologically in SQL and is decoded back to a tz-aware UTC ``datetime`` (as ``pymongo`` with
``tz_aware=True`` returns them).

The pymongo subset supported is what ``services/`` uses, and nothing else is accepted silently:

* filters: equality on scalars (``None`` matches null or missing), ``$in``, ``$nin``, ``$ne``,
  ``$exists``, ``$gt``/``$gte``/``$lt``/``$lte``, ``$regex`` only anchored (``^...$``) and of
  literals, ``.`` and ``.*`` (DICOM wildcards; the literal prefix is an index range, the rest a
  ``GLOB``), dotted paths. A filter value that is a list or
  a document, and equality against array elements, raise :class:`UnsupportedQuery`.
* updates: ``$set``, ``$setOnInsert``, ``$unset``, ``$inc``, ``$push`` and ``$addToSet`` (both
  with ``$each``), dotted paths; upserts seed the new document from the filter's equalities.
* ``find`` cursors with ``sort``/``skip``/``limit``; ``find_one_and_update`` with ``sort``,
  ``upsert`` and ``return_document``; ``count_documents``; ``create_index`` (``unique``, ``name``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from .ports import Collection, Document
from .sqlquery import (
    UnsupportedQuery,
    apply_update,
    dumps,
    loads,
    order_by,
    scalar,
    seed,
    sort_keys,
    where,
)

__all__ = ["SqliteCollection", "SqliteCursor", "SqliteDocumentStore", "UnsupportedQuery"]

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_BUSY_TIMEOUT_MS = 60_000


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsertOneResult:
    inserted_id: Any
    acknowledged: bool = True


@dataclass(frozen=True)
class UpdateResult:
    matched_count: int
    modified_count: int
    upserted_id: Any = None
    acknowledged: bool = True


@dataclass(frozen=True)
class DeleteResult:
    deleted_count: int
    acknowledged: bool = True


# -- engine ------------------------------------------------------------------------------------


class SqliteCursor:
    """A deferred query: ``sort``/``skip``/``limit`` become SQL, run once when iterated."""

    def __init__(self, collection: SqliteCollection, filter: Mapping[str, Any] | None) -> None:
        self._collection = collection
        self._filter = filter or {}
        self._sort: list[tuple[str, int]] = []
        self._skip = 0
        self._limit = 0

    def sort(self, key_or_list: Any, direction: Any = None) -> SqliteCursor:
        self._sort = sort_keys(key_or_list, direction)
        return self

    def skip(self, skip: int) -> SqliteCursor:
        self._skip = int(skip)
        return self

    def limit(self, limit: int) -> SqliteCursor:
        self._limit = int(limit)
        return self

    def sql(self) -> tuple[str, list[Any]]:
        clause, params = where(self._filter)
        sql = f"SELECT doc FROM {self._collection.table} WHERE {clause}"
        if self._sort:
            sql += f" ORDER BY {order_by(self._sort)}"
        if self._limit or self._skip:
            sql += " LIMIT ? OFFSET ?"
            params += [self._limit or -1, self._skip]
        return sql, params

    def __iter__(self) -> Iterator[Document]:
        sql, params = self.sql()
        rows = self._collection.store.connection().execute(sql, params).fetchall()
        return iter([loads(row[0]) for row in rows])


class SqliteCollection:
    def __init__(self, store: SqliteDocumentStore, name: str) -> None:
        if not _NAME.match(name):
            raise UnsupportedQuery(f"collection name {name!r}: letters, digits and _ only")
        self.store = store
        self.name = name
        self.table = f'"docs_{name}"'
        store.ensure_table(self.table)

    # reads (snapshot, no lock)

    def find(self, filter: Mapping[str, Any] | None = None, *args: Any, **kw: Any) -> SqliteCursor:
        if args or set(kw) - {"sort", "skip", "limit"}:
            raise UnsupportedQuery("find(): projections and options other than sort/skip/limit")
        cursor = SqliteCursor(self, filter)
        if kw.get("sort"):
            cursor.sort(kw["sort"])
        return cursor.skip(kw.get("skip", 0)).limit(kw.get("limit", 0))

    def find_one(self, filter: Mapping[str, Any] | None = None, *args: Any, **kw: Any) -> Any:
        for doc in self.find(filter, *args, **kw).limit(1):
            return doc
        return None

    def count_documents(self, filter: Mapping[str, Any]) -> int:
        clause, params = where(filter)
        sql = f"SELECT count(*) FROM {self.table}" + ("" if clause == "1" else f" WHERE {clause}")
        return int(self.store.connection().execute(sql, params).fetchone()[0])

    def explain(self, cursor_or_filter: SqliteCursor | Mapping[str, Any]) -> list[str]:
        """``EXPLAIN QUERY PLAN`` details of a cursor's query (or a count)."""
        if isinstance(cursor_or_filter, SqliteCursor):
            sql, params = cursor_or_filter.sql()
        else:
            clause, params = where(cursor_or_filter)
            sql = f"SELECT count(*) FROM {self.table}" + (
                "" if clause == "1" else f" WHERE {clause}"
            )
        rows = self.store.connection().execute("EXPLAIN QUERY PLAN " + sql, params)
        return [str(row[3]) for row in rows]

    # writes (BEGIN IMMEDIATE: read-modify-write under the single writer lock)

    def insert_one(self, document: Document) -> InsertOneResult:
        if "_id" not in document:
            document["_id"] = str(ObjectId())  # pymongo, too, adds the id to the caller's dict
        with self.store.write() as db:
            self._insert(db, document)
        return InsertOneResult(document["_id"])

    def _insert(self, db: sqlite3.Connection, doc: Document) -> None:
        key = scalar(doc["_id"], "_id")
        try:
            db.execute(f"INSERT INTO {self.table} (id, doc) VALUES (?, ?)", (key, dumps(doc)))
        except sqlite3.IntegrityError as exc:
            raise DuplicateKeyError(f"E11000 duplicate key in {self.name}: {exc}") from exc

    def _first(
        self, db: sqlite3.Connection, filter: Mapping[str, Any], sort: Any = None
    ) -> tuple[int, str] | None:
        """(rowid, JSON text) of the first document matching."""
        clause, params = where(filter)
        sql = f"SELECT rowid, doc FROM {self.table} WHERE {clause}"
        if sort:
            sql += f" ORDER BY {order_by(sort_keys(sort))}"
        row = db.execute(sql + " LIMIT 1", params).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _modify(
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any],
        *,
        upsert: bool,
        sort: Any = None,
    ) -> tuple[Document | None, Document | None, Any]:
        """(before, after, upserted id) of one atomic update."""
        if not update or not all(str(op).startswith("$") for op in update):
            raise UnsupportedQuery("updates must use operators ($set, $inc, ...), not a document")
        with self.store.write() as db:
            found = self._first(db, filter, sort)
            if found is None:
                if not upsert:
                    return None, None, None
                doc = seed(filter)
                apply_update(doc, update, inserting=True)
                doc.setdefault("_id", str(ObjectId()))
                self._insert(db, doc)
                return None, doc, doc["_id"]
            rowid, text = found
            after = loads(text)
            apply_update(after, update, inserting=False)
            written = dumps(after)
            if written != text:
                try:
                    db.execute(f"UPDATE {self.table} SET doc = ? WHERE rowid = ?", (written, rowid))
                except sqlite3.IntegrityError as exc:  # a unique index
                    raise DuplicateKeyError(f"E11000 duplicate key in {self.name}: {exc}") from exc
            return loads(text), after, None

    def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False
    ) -> UpdateResult:
        before, after, upserted = self._modify(filter, update, upsert=upsert)
        if upserted is not None:
            return UpdateResult(0, 0, upserted)
        return UpdateResult(int(before is not None), int(before != after))

    def find_one_and_update(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], *args: Any, **kw: Any
    ) -> Any:
        if args or set(kw) - {"upsert", "return_document", "sort"}:
            raise UnsupportedQuery(
                "find_one_and_update(): only upsert, return_document and sort are supported"
            )
        before, after, _ = self._modify(
            filter, update, upsert=bool(kw.get("upsert")), sort=kw.get("sort")
        )
        return after if kw.get("return_document") else before

    def delete_one(self, filter: Mapping[str, Any]) -> DeleteResult:
        with self.store.write() as db:
            found = self._first(db, filter)
            if found is None:
                return DeleteResult(0)
            db.execute(f"DELETE FROM {self.table} WHERE rowid = ?", (found[0],))
        return DeleteResult(1)

    def create_index(self, keys: Any, **kw: Any) -> str:
        """An expression index on the fields' ``json_extract`` (what queries compare)."""
        if set(kw) - {"unique", "name", "background"}:
            raise UnsupportedQuery(f"create_index(): options {sorted(kw)} are not supported")
        fields = sort_keys(keys)
        name = kw.get("name") or "_".join(f"{f}_{d}" for f, d in fields)
        index = f"ix_{self.name}_" + re.sub(r"[^A-Za-z0-9_]", "_", name)
        unique = "UNIQUE " if kw.get("unique") else ""
        with self.store.write() as db:
            db.execute(
                f'CREATE {unique}INDEX IF NOT EXISTS "{index}" ON {self.table} ({order_by(fields)})'
            )
        return name


class SqliteDocumentStore:
    """One SQLite database file in WAL mode, one connection per thread (and per process)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path.resolve()
        self._writers_lock = self.path.with_name(self.path.name + ".writers.lock")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._queues: list[Any] = []
        self._guard = threading.Lock()
        self._pid = os.getpid()
        self._tables: set[str] = set()
        self._collections: dict[str, SqliteCollection] = {}
        self.connection()  # creates the file and switches it to WAL (kept by the file)

    def connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():  # a forked child must not use its parent's connections
            self._local = threading.local()
            self._connections = []
            self._queues = []
            self._pid = os.getpid()
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=60
            )
            db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
            self._local.depth = 0
            # One handle per thread: flock excludes open files, not processes.
            self._local.queue = open(self._writers_lock, "a+b")  # noqa: SIM115 - kept open
            with self._guard:
                self._connections.append(db)
                self._queues.append(self._local.queue)
        return db

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one."""
        db = self.connection()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield db
            finally:
                self._local.depth -= 1
            return
        # Writers queue on a file lock first: the kernel wakes the next one as soon as it is
        # released, where SQLite's busy handler would poll with sleeps of up to 100 ms.
        # Readers never take it.
        queue = self._local.queue
        fcntl.flock(queue, fcntl.LOCK_EX)
        try:
            db.execute("BEGIN IMMEDIATE")
            self._local.depth = 1
            try:
                yield db
            except BaseException:
                self._local.depth = 0
                db.execute("ROLLBACK")
                raise
            self._local.depth = 0
            db.execute("COMMIT")
        finally:
            fcntl.flock(queue, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Group writes into one transaction (atomic, and one commit instead of many).

        Only writers wait for it; readers in other processes keep reading their snapshot.
        """
        with self.write():
            yield

    def ensure_table(self, table: str) -> None:
        if table in self._tables:
            return
        exists = self.connection().execute(  # a read: no writer's lock for known tables
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table.strip('"'),)
        )
        if exists.fetchone() is not None:
            self._tables.add(table)
            return
        with self.write() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id PRIMARY KEY NOT NULL, doc TEXT)")
        self._tables.add(table)

    def collection(self, name: str) -> Collection:
        if name not in self._collections:
            self._collections[name] = SqliteCollection(self, name)
        return self._collections[name]

    def collection_names(self) -> list[str]:
        rows = self.connection().execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB 'docs_*'"
        )
        return sorted(str(row[0])[5:] for row in rows)

    def ping(self) -> None:
        self.connection().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._guard:
            for db in self._connections:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    db.close()
            self._connections.clear()
            for queue in self._queues:
                queue.close()
            self._queues.clear()
        self._local = threading.local()
