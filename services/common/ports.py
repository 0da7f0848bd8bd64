"""Ports to the outside world: object store, document store and task dispatch.

Adapters live in ``objectstore.py``, ``docstore.py`` (with ``sqlitedocs.py``) and ``bus.py``;
services depend only on these protocols, so tests and deployments swap adapters freely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, Protocol

Document = dict[str, Any]


class ObjectStore(Protocol):
    """Buckets of immutable objects (MinIO/S3 in production, a folder for ``radpipe up``)."""

    def ensure_bucket(self, bucket: str) -> None: ...

    def put(self, bucket: str, key: str, data: bytes, content_type: str = ...) -> None: ...

    def put_file(
        self, bucket: str, key: str, file: BinaryIO, length: int, content_type: str = ...
    ) -> None:
        """Store ``length`` bytes read from ``file`` (streamed, never loaded whole)."""
        ...

    def get(self, bucket: str, key: str) -> bytes:
        """Raises ``NotFound`` when the object does not exist."""
        ...

    def copy_to(self, bucket: str, key: str, file: BinaryIO) -> int:
        """Write the object into ``file`` in chunks (never loaded whole); returns its size.
        Raises ``NotFound`` when the object does not exist."""
        ...

    def exists(self, bucket: str, key: str) -> bool: ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]: ...

    def delete(self, bucket: str, key: str) -> None: ...

    def ping(self) -> None:
        """Raises when the store cannot be reached."""
        ...


class Cursor(Protocol):
    def sort(self, key_or_list: Any, direction: Any = ...) -> Cursor: ...

    def skip(self, skip: int) -> Cursor: ...

    def limit(self, limit: int) -> Cursor: ...

    def __iter__(self) -> Iterator[Document]: ...


class Collection(Protocol):
    """The pymongo ``Collection`` subset that both MongoDB and the embedded engine support."""

    def insert_one(self, document: Document) -> Any: ...

    def find_one(self, filter: Mapping[str, Any] | None = ..., *args: Any, **kw: Any) -> Any: ...

    def find(self, filter: Mapping[str, Any] | None = ..., *args: Any, **kw: Any) -> Any: ...

    def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = ...
    ) -> Any: ...

    def find_one_and_update(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], *args: Any, **kw: Any
    ) -> Any: ...

    def count_documents(self, filter: Mapping[str, Any]) -> int: ...

    def delete_one(self, filter: Mapping[str, Any]) -> Any: ...

    def create_index(self, keys: Any, **kw: Any) -> Any: ...


class DocumentStore(Protocol):
    def collection(self, name: str) -> Collection: ...

    def exclusive(self) -> AbstractContextManager[None]:
        """Run a group of calls without other writers in between (no-op where each call is
        already atomic, as in MongoDB; the embedded engine makes the group one transaction,
        which readers in other processes never wait for)."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class TaskDispatcher(Protocol):
    """Hands a study on to a pipeline stage. Tasks carry ids, never payloads."""

    def send(self, stage: str, study_id: str, *, countdown: float | None = None) -> None: ...

    def ping(self) -> None: ...

    def queue_lengths(self) -> dict[str, int]:
        """Tasks waiting per queue (for metrics and autoscaling)."""
        ...
