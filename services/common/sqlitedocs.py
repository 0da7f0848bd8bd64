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
  ``$exists``, ``$gt``/``$gte``/``$lt``/``$lte``, dotted paths. A filter value that is a list or
  a document, and equality against array elements, raise :class:`UnsupportedQuery`.
* updates: ``$set``, ``$setOnInsert``, ``$unset``, ``$inc``, ``$push`` and ``$addToSet`` (both
  with ``$each``), dotted paths; upserts seed the new document from the filter's equalities.
* ``find`` cursors with ``sort``/``skip``/``limit``; ``find_one_and_update`` with ``sort``,
  ``upsert`` and ``return_document``; ``count_documents``; ``create_index`` (``unique``, ``name``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from .ports import Collection, Document

_DATE_PREFIX = "\x01D"
_DATE_LENGTH = len(_DATE_PREFIX) + len("2026-01-01T00:00:00.000Z")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_BUSY_TIMEOUT_MS = 60_000


class UnsupportedQuery(ValueError):
    """A filter, update or option the embedded engine does not implement (on purpose)."""


# -- values ------------------------------------------------------------------------------------


def encode_date(value: datetime) -> str:
    """A datetime as a string that sorts chronologically; naive means UTC, and milliseconds
    are kept (both as in BSON, so code behaves the same on MongoDB)."""
    if value.tzinfo is not UTC:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return _DATE_PREFIX + value.isoformat(timespec="milliseconds")[:-6] + "Z"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return encode_date(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a document; store JSON values")


def dumps(document: Document) -> str:
    """JSON text; ``default`` encodes datetimes wherever they are (the C encoder walks)."""
    return json.dumps(document, default=_json_default, separators=(",", ":"))


def _restore_list(items: list[Any]) -> None:
    for i, item in enumerate(items):
        kind = type(item)
        if kind is str:
            if item[:2] == _DATE_PREFIX and len(item) == _DATE_LENGTH:
                items[i] = datetime.fromisoformat(item[2:])  # "...Z": tz-aware UTC
        elif kind is list:
            _restore_list(item)


def _restore(obj: dict[str, Any]) -> dict[str, Any]:
    # Called by the C decoder for each object once its members are decoded.
    for key, value in obj.items():
        kind = type(value)
        if kind is str:
            if value[:2] == _DATE_PREFIX and len(value) == _DATE_LENGTH:
                obj[key] = datetime.fromisoformat(value[2:])
        elif kind is list:
            _restore_list(value)
    return obj


_DATE_MARK = json.dumps(_DATE_PREFIX)[1:-1]  # how the prefix is escaped in JSON text


def loads(text: str) -> Document:
    if _DATE_MARK not in text:
        plain: Document = json.loads(text)
        return plain
    restored: Document = json.loads(text, object_hook=_restore)
    return restored


def _scalar(value: Any, where: str) -> Any:
    """A filter operand as the value ``json_extract`` yields for it."""
    if isinstance(value, datetime):
        return encode_date(value)
    if isinstance(value, ObjectId):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    raise UnsupportedQuery(
        f"{where}: the embedded store compares scalars only (str, number, bool, datetime, None), "
        f"not a {type(value).__name__}; query a scalar field or run on MongoDB"
    )


# -- SQL translation ---------------------------------------------------------------------------


def column(field: str) -> str:
    """The SQL expression for a field; the same text in queries and indexes, so they match."""
    if field == "_id":
        return "id"
    if not _FIELD.match(field):
        raise UnsupportedQuery(
            f"field {field!r}: the embedded store accepts names of letters, digits, _ and - "
            "joined by dots"
        )
    return f"json_extract(doc, '$.{field}')"


def _type_guard(expr: str, value: Any) -> str:
    """MongoDB compares only within a type bracket; SQLite orders numbers before all text."""
    if isinstance(value, bool):
        raise UnsupportedQuery("range operators on booleans are not supported")
    if isinstance(value, int | float):
        return f"typeof({expr}) IN ('integer', 'real')"
    if isinstance(value, datetime):
        return f"substr({expr}, 1, 2) = char(1, 68)"
    return f"typeof({expr}) = 'text' AND substr({expr}, 1, 1) != char(1)"


def _equals(field: str, expr: str, value: Any, params: list[Any]) -> str:
    if value is None:
        return f"{expr} IS NULL"
    if isinstance(value, bool):
        if field == "_id":
            raise UnsupportedQuery("a boolean _id is not supported")
        return f"json_type(doc, '$.{field}') = '{'true' if value else 'false'}'"
    params.append(_scalar(value, field))
    return f"{expr} = ?"


def _membership(field: str, expr: str, values: Any, params: list[Any], negate: bool) -> str:
    if not isinstance(values, list | tuple | set | frozenset):
        raise UnsupportedQuery(f"{field}: $in and $nin take a list")
    values = list(values)
    wants_null = any(v is None for v in values)
    if any(isinstance(v, bool) for v in values):
        raise UnsupportedQuery(f"{field}: $in of booleans is not supported")
    scalars = [_scalar(v, field) for v in values if v is not None]
    parts = []
    if scalars:
        params.extend(scalars)
        parts.append(f"{expr} IN ({', '.join('?' * len(scalars))})")
    if wants_null:
        parts.append(f"{expr} IS NULL")
    clause = "(" + " OR ".join(parts) + ")" if parts else "0"
    if not negate:
        return clause
    return f"NOT {clause}" if wants_null else f"({expr} IS NULL OR NOT {clause})"


def _condition(field: str, spec: Any, params: list[Any]) -> str:
    expr = column(field)
    if not (isinstance(spec, Mapping) and spec and all(str(k).startswith("$") for k in spec)):
        if isinstance(spec, Mapping | list | tuple):
            raise UnsupportedQuery(
                f"{field}: equality with a document or list is not supported by the embedded "
                "store; compare scalar fields"
            )
        return _equals(field, expr, spec, params)
    parts: list[str] = []
    for op, value in spec.items():
        if op == "$in":
            parts.append(_membership(field, expr, value, params, negate=False))
        elif op == "$nin":
            parts.append(_membership(field, expr, value, params, negate=True))
        elif op == "$ne":
            if value is None:
                parts.append(f"{expr} IS NOT NULL")
            else:
                parts.append(f"NOT coalesce({_equals(field, expr, value, params)}, 0)")
        elif op == "$exists":
            if field == "_id":
                parts.append("1" if value else "0")
            else:
                present = f"json_type(doc, '$.{field}') IS NOT NULL"
                parts.append(present if value else f"NOT ({present})")
        elif op in _RANGE:
            if value is None:
                raise UnsupportedQuery(f"{field}: {op} None is not supported")
            params.append(_scalar(value, field))
            parts.append(f"{expr} {_RANGE[op]} ? AND {_type_guard(expr, value)}")
        else:
            raise UnsupportedQuery(
                f"{field}: operator {op} is not supported by the embedded store (supported: "
                "$in $nin $ne $exists $gt $gte $lt $lte)"
            )
    return " AND ".join(f"({p})" for p in parts)


def where(filter: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """``WHERE`` clause and parameters for a pymongo filter."""
    params: list[Any] = []
    clauses = []
    for field, spec in (filter or {}).items():
        if field.startswith("$"):
            raise UnsupportedQuery(
                f"top-level {field} is not supported by the embedded store; use field conditions"
            )
        clauses.append(_condition(field, spec, params))
    return (" AND ".join(clauses) if clauses else "1"), params


def sort_keys(key_or_list: Any, direction: Any = None) -> list[tuple[str, int]]:
    if isinstance(key_or_list, str):
        return [(key_or_list, int(direction or 1))]
    return [(str(k), int(d)) for k, d in key_or_list]


def order_by(keys: list[tuple[str, int]]) -> str:
    for _, direction in keys:
        if direction not in (1, -1):
            raise UnsupportedQuery(f"sort direction {direction} is not supported; use 1 or -1")
    return ", ".join(f"{column(f)} {'DESC' if d < 0 else 'ASC'}" for f, d in keys)


# -- updates -----------------------------------------------------------------------------------


def _parent(doc: Document, path: str, create: bool) -> tuple[Any, str]:
    *parents, leaf = path.split(".")
    node: Any = doc
    for part in parents:
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            if not create:
                return None, leaf
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UnsupportedQuery(f"update path {path!r} crosses a non-document value")
        node = child
    return node, leaf


def _each(value: Any) -> list[Any]:
    if isinstance(value, Mapping) and "$each" in value:
        if set(value) != {"$each"}:
            raise UnsupportedQuery("only $each is supported inside $push and $addToSet")
        return list(value["$each"])
    return [value]


def apply_update(doc: Document, update: Mapping[str, Any], inserting: bool) -> None:
    """Apply a pymongo update document in place."""
    for op, fields in update.items():
        if op == "$setOnInsert" and not inserting:
            continue
        if op not in ("$set", "$setOnInsert", "$unset", "$inc", "$push", "$addToSet"):
            raise UnsupportedQuery(
                f"update operator {op} is not supported by the embedded store (supported: "
                "$set $setOnInsert $unset $inc $push $addToSet)"
            )
        for path, value in fields.items():
            if path == "_id" and op != "$setOnInsert" and value != doc.get("_id"):
                raise UnsupportedQuery("the _id of a document cannot change")
            if op == "$unset":
                node, leaf = _parent(doc, path, create=False)
                if isinstance(node, dict):
                    node.pop(leaf, None)
                continue
            node, leaf = _parent(doc, path, create=True)
            if op in ("$set", "$setOnInsert"):
                node[leaf] = value
            elif op == "$inc":
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise UnsupportedQuery(f"$inc {path}: the amount must be a number")
                current = node.get(leaf, 0)
                if not isinstance(current, int | float):
                    raise UnsupportedQuery(f"$inc {path}: the field holds a non-number")
                node[leaf] = current + value
            else:
                items = node.setdefault(leaf, [])
                if not isinstance(items, list):
                    raise UnsupportedQuery(f"{op} {path}: the field holds a non-array")
                for item in _each(value):
                    if op == "$push" or item not in items:
                        items.append(item)


def _seed(filter: Mapping[str, Any]) -> Document:
    """An upserted document starts with the filter's plain equalities (as in MongoDB)."""
    doc: Document = {}
    for field, spec in filter.items():
        if isinstance(spec, Mapping) and any(str(k).startswith("$") for k in spec):
            continue
        node, leaf = _parent(doc, field, create=True)
        node[leaf] = spec
    return doc


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
        doc = dict(document)
        doc.setdefault("_id", str(ObjectId()))
        with self.store.write() as db:
            self._insert(db, doc)
        return InsertOneResult(doc["_id"])

    def _insert(self, db: sqlite3.Connection, doc: Document) -> None:
        key = _scalar(doc["_id"], "_id")
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
                doc = _seed(filter)
                apply_update(doc, update, inserting=True)
                doc.setdefault("_id", str(ObjectId()))
                self._insert(db, doc)
                return None, doc, doc["_id"]
            rowid, text = found
            after = loads(text)
            apply_update(after, update, inserting=False)
            written = dumps(after)
            if written != text:
                db.execute(f"UPDATE {self.table} SET doc = ? WHERE rowid = ?", (written, rowid))
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
