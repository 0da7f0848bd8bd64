"""Object store adapters: S3/MinIO through the ``minio`` SDK, and a plain folder.

Bucket names come from :func:`bucket_names`; only ingest and deid ever touch ``raw``.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from minio import Minio
from minio.error import S3Error

from .errors import NotFound, TransientError
from .ports import ObjectStore
from .settings import Settings

RAW, DEID, RESULTS = "raw", "deid", "results"
#: Prefix of the folder store's files being written (never an object key's last part).
TEMP_PREFIX = ".tmp-"
#: Bytes per read and write when an object is streamed.
CHUNK = 1024 * 1024


def bucket_names(settings: Settings) -> dict[str, str]:
    """Logical bucket -> real bucket name, e.g. ``raw`` -> ``radpipe-raw``."""
    return {name: f"{settings.bucket_prefix}-{name}" for name in (RAW, DEID, RESULTS)}


class FolderObjectStore:
    """Objects as files under ``root/bucket/key``; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        #: Each bucket's folder, resolved once (a study's reads and writes each checked it).
        self._buckets: dict[str, Path] = {}

    def _path(self, bucket: str, key: str) -> Path:
        folder = self._buckets.get(bucket)
        if folder is None:
            folder = self._buckets[bucket] = (self.root / bucket).resolve()
        path = (folder / key).resolve()
        if not path.is_relative_to(folder):
            raise ValueError(f"object key escapes its bucket: {key!r}")
        return path

    def ensure_bucket(self, bucket: str) -> None:
        (self.root / bucket).mkdir(parents=True, exist_ok=True)

    def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.put_file(bucket, key, io.BytesIO(data), len(data), content_type)

    def put_file(
        self,
        bucket: str,
        key: str,
        file: BinaryIO,
        length: int,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write to a temp file beside the object, sync it, then rename it over the key.

        A reader sees the old object or the whole new one, never part of one: a process killed
        mid-write leaves only a ``.tmp-`` file, which :meth:`list` and keys never show (and
        :meth:`sweep_temp` removes). The sync before the rename, and of the folder after it,
        keeps a power cut from leaving a renamed but empty file.
        """
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                shutil.copyfileobj(file, handle, CHUNK)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove temp files left by writers that died mid-write; returns how many."""
        cutoff, removed = time.time() - older_than, 0
        for path in self.root.rglob(TEMP_PREFIX + "*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer finished or another sweep took it
                continue
        return removed

    def get(self, bucket: str, key: str) -> bytes:
        try:
            return self._path(bucket, key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {bucket}/{key} does not exist") from None

    def copy_to(self, bucket: str, key: str, file: BinaryIO) -> int:
        try:
            source = self._path(bucket, key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"object {bucket}/{key} does not exist") from None
        with source:
            shutil.copyfileobj(source, file, CHUNK)
            return source.tell()

    def exists(self, bucket: str, key: str) -> bool:
        path = self._path(bucket, key)
        return path.is_file() and not path.name.startswith(TEMP_PREFIX)

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        base = self.root / bucket
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(TEMP_PREFIX):
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise TransientError(f"object folder {self.root} is missing")


class S3ObjectStore:
    """MinIO or any S3 server, through the ``minio`` SDK.

    Writes are atomic on the server's side: an object appears only when its PUT (or, above the
    SDK's part size, its multipart upload's completion) succeeds, whole and checked, so a
    writer killed mid-upload leaves nothing visible (an unfinished multipart upload is removed
    by the bucket's lifecycle rule or ``mc admin``, and is never listed as an object).
    """

    def __init__(
        self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"
    ) -> None:
        parts = urlsplit(endpoint)
        self.client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,
        )

    def ensure_bucket(self, bucket: str) -> None:
        if not self.client.bucket_exists(bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as exc:  # another process created it first
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.put_file(bucket, key, io.BytesIO(data), len(data), content_type)

    def put_file(
        self,
        bucket: str,
        key: str,
        file: BinaryIO,
        length: int,
        content_type: str = "application/octet-stream",
    ) -> None:
        start = file.tell()
        try:
            self.client.put_object(bucket, key, file, length, content_type=content_type)
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise
            # Buckets are created by their first writer, so each service needs rights only on
            # the buckets it uses (ingest: raw; deid: raw and deid; inference: deid, results).
            self.ensure_bucket(bucket)
            file.seek(start)
            self.client.put_object(bucket, key, file, length, content_type=content_type)

    @contextmanager
    def _response(self, bucket: str, key: str) -> Iterator[Any]:
        """The object's HTTP response, closed and its connection returned after use."""
        try:
            response = self.client.get_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                raise NotFound(f"object {bucket}/{key} does not exist") from None
            raise
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    def get(self, bucket: str, key: str) -> bytes:
        with self._response(bucket, key) as response:
            data: bytes = response.read()
            return data

    def copy_to(self, bucket: str, key: str, file: BinaryIO) -> int:
        size = 0
        with self._response(bucket, key) as response:
            for chunk in response.stream(CHUNK):
                file.write(chunk)
                size += len(chunk)
        return size

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                return False
            raise
        return True

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        try:
            for obj in self.client.list_objects(bucket, prefix=prefix, recursive=True):
                if obj.object_name is not None:
                    yield obj.object_name
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise

    def delete(self, bucket: str, key: str) -> None:
        self.client.remove_object(bucket, key)

    def ping(self) -> None:
        try:
            self.client.list_buckets()
        except Exception as exc:  # any transport error means "not ready"
            raise TransientError(f"S3 endpoint unreachable: {type(exc).__name__}") from exc


def make_object_store(settings: Settings) -> ObjectStore:
    """S3 when ``RADPIPE_S3_ENDPOINT`` is set, else a folder under ``RADPIPE_DATA_DIR``.

    No bucket is touched here: a service never needs rights on buckets it does not use.
    """
    if settings.s3_endpoint is not None:
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else ""
        return S3ObjectStore(
            str(settings.s3_endpoint), settings.s3_access_key or "", secret, settings.s3_region
        )
    return FolderObjectStore(settings.data_dir / "objects")
