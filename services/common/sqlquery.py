"""Translation of the pymongo subset into SQL over JSON documents, for ``sqlitedocs``.

Values (datetimes as sortable strings), filters (``WHERE`` over ``json_extract``), sort keys
(``ORDER BY``, the same expressions that ``create_index`` indexes) and update operators
(applied to a decoded document). Anything outside the subset raises :class:`UnsupportedQuery`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from .ports import Document

_DATE_PREFIX = "\x01D"
_DATE_LENGTH = len(_DATE_PREFIX) + len("2026-01-01T00:00:00.000Z")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


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


def scalar(value: Any, where: str) -> Any:
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
        # json_extract yields 1/0 for true/false (what an index on the field holds): the
        # equality uses the index, json_type tells a boolean from the number.
        kind = "true" if value else "false"
        return f"{expr} = {int(value)} AND json_type(doc, '$.{field}') = '{kind}'"
    params.append(scalar(value, field))
    return f"{expr} = ?"


def _membership(field: str, expr: str, values: Any, params: list[Any], negate: bool) -> str:
    if not isinstance(values, list | tuple | set | frozenset):
        raise UnsupportedQuery(f"{field}: $in and $nin take a list")
    values = list(values)
    wants_null = any(v is None for v in values)
    if any(isinstance(v, bool) for v in values):
        raise UnsupportedQuery(f"{field}: $in of booleans is not supported")
    scalars = [scalar(v, field) for v in values if v is not None]
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


#: The ``$regex`` forms accepted: anchored at both ends, of literal characters (escaped where
#: special), ``.`` and ``.*`` (what a DICOM wildcard ``?``/``*`` becomes), and ``(?>.*?...)``
#: atomic groups of those (the linear form ``qido`` writes for a ``*`` between segments).
_ATOM = r"(?:\\[^A-Za-z0-9]|\.(?!\*)|[^\\^$.|?*+()\[\]{}])"
_ANCHORED = re.compile(rf"\^((?:{_ATOM}|\.\*|\(\?>\.\*\?{_ATOM}*\))*)\$", re.DOTALL)
_TOKEN = re.compile(r"\(\?>\.\*\?|\)|\\.|\.\*|\.|.", re.DOTALL)
_GLOB_ATOM = {"*": "[*]", "?": "[?]", "[": "[[]"}


def _regex(field: str, expr: str, pattern: Any, params: list[Any]) -> str:
    """An anchored pattern as an index-usable range over its literal prefix, then ``GLOB``
    (case-sensitive, as ``$regex`` without options). SQLite's ``GLOB`` gives up on a star as
    soon as a later one has run out of text, so it never backtracks exponentially."""
    found = _ANCHORED.fullmatch(pattern) if isinstance(pattern, str) else None
    if found is None:
        raise UnsupportedQuery(
            f"{field}: $regex is supported only as ^...$ of literal characters, . and .* "
            f"(a DICOM wildcard), and (?>.*?...) groups of them, not {pattern!r}"
        )
    glob, prefix, literal = [], [], True
    for token in _TOKEN.findall(found.group(1)):
        if token == ")":
            continue
        if token in (".*", ".", "(?>.*?"):
            glob.append("?" if token == "." else "*")
            literal = False
            continue
        char = token[-1]
        glob.append(_GLOB_ATOM.get(char, char))
        if literal:
            prefix.append(char)
    parts = [f"typeof({expr}) = 'text'"]
    if prefix:
        low = "".join(prefix)
        parts.append(f"{expr} >= ?")
        params.append(low)
        if ord(low[-1]) < 0x10FFFF:  # UTF-8 text compares in code point order
            parts.append(f"{expr} < ?")
            params.append(low[:-1] + chr(ord(low[-1]) + 1))
    parts.append(f"{expr} GLOB ?")
    params.append("".join(glob))
    return " AND ".join(parts)


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
        elif op == "$regex":
            parts.append(_regex(field, expr, value, params))
        elif op in _RANGE:
            if value is None:
                raise UnsupportedQuery(f"{field}: {op} None is not supported")
            params.append(scalar(value, field))
            parts.append(f"{expr} {_RANGE[op]} ? AND {_type_guard(expr, value)}")
        else:
            raise UnsupportedQuery(
                f"{field}: operator {op} is not supported by the embedded store (supported: "
                "$in $nin $ne $exists $gt $gte $lt $lte, $regex anchored)"
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


def seed(filter: Mapping[str, Any]) -> Document:
    """An upserted document starts with the filter's plain equalities (as in MongoDB)."""
    doc: Document = {}
    for field, spec in filter.items():
        if isinstance(spec, Mapping) and any(str(k).startswith("$") for k in spec):
            continue
        node, leaf = _parent(doc, field, create=True)
        node[leaf] = spec
    return doc
