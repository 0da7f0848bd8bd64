"""``radpipe backup DIR`` / ``radpipe restore DIR``: the all-in-one mode's data, whole.

A backup holds everything a data dir needs to serve its studies again (docs/backup.md):

- ``documents/<database>.sqlite3``: the embedded document store (studies, the DICOM index,
  alerts, audit, users and tokens, and the re-identification vault), copied with SQLite's
  online backup API, so a running ``radpipe up`` keeps working meanwhile and the copy is one
  consistent snapshot;
- ``objects/<raw|deid|results>/<key>``: every object, read through the object store port (the
  data dir's folder, or the S3 server ``RADPIPE_S3_ENDPOINT`` names), by logical bucket; the
  documents name each object's real bucket, so a restore writes into the same bucket names
  (the same ``RADPIPE_BUCKET_PREFIX``), which must be empty;
- ``secret.key``: the data dir's master secret, when the key came from it (without it the vault
  and every pseudonym are lost); a key from ``RADPIPE_SECRET_KEY`` is not written, and the
  manifest says so;
- ``manifest.json``: the SHA-256 and size of each file, the store's schema version and the
  Radpipe version that wrote it. :func:`restore` checks all of it before writing anything.

The documents are copied before the objects: objects are written before the documents that
name them and never changed, so every object a copied document names is in the copy.

A backup holds PHI and the key that opens the vault: the folder is created mode 0700, its files
0600; keep it as encrypted and as guarded as the data dir itself.

MongoDB deployments (compose, Kubernetes) are backed up with ``mongodump`` and ``mc mirror``
(docs/backup.md); this command refuses them rather than copy half a deployment.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from .common.audit import AuditLog
from .common.digest import file_sha256
from .common.docstore import open_embedded
from .common.migrations import SCHEMA_ID, SCHEMA_VERSION, radpipe_version
from .common.objectstore import bucket_names, make_object_store
from .common.ports import ObjectStore
from .common.secret import DEFAULT_SECRET_KEY, LOCAL_SECRET_FILE
from .common.settings import Settings
from .common.studies import MIGRATIONS

MANIFEST = "manifest.json"
FORMAT = "radpipe-backup"
FORMAT_VERSION = 1


class BackupError(RuntimeError):
    """A backup or restore that cannot be done as asked; the message says what to do."""


@dataclass(frozen=True)
class Summary:
    """What a backup or restore copied."""

    path: Path
    files: int
    objects: int
    schema_version: int


def _database_file(settings: Settings) -> Path:
    return settings.data_dir / "documents" / f"{settings.mongo_database}.sqlite3"


def _embedded_only(settings: Settings, verb: str) -> None:
    if settings.mongo_url:
        raise BackupError(
            f"RADPIPE_MONGO_URL is set: radpipe {verb} covers the all-in-one mode's embedded "
            "store only; back MongoDB up with mongodump/mongorestore and the buckets with "
            "mc mirror (docs/backup.md)"
        )


def _schema_of(database: Path) -> int:
    """The schema version recorded in an embedded store file (0 when none is)."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        row = db.execute(
            f'SELECT doc FROM "docs_{MIGRATIONS}" WHERE id = ?', (SCHEMA_ID,)
        ).fetchone()
    except sqlite3.OperationalError:  # no migrations table: a store that predates them
        return 0
    finally:
        db.close()
    return int(json.loads(row[0])["version"]) if row else 0


def _snapshot(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite file ``source`` (online backup API), as one
    self-contained file (rollback journal, no WAL beside it), checked for integrity."""
    src = sqlite3.connect(source, timeout=60)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        (result,) = dst.execute("PRAGMA integrity_check").fetchone()
        if result != "ok":
            raise BackupError(f"the copy of {source} fails SQLite's integrity check: {result}")
    finally:
        dst.close()
        src.close()


def _private_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)


def _audit(settings: Settings, actor: str, action: str, target: str, **detail: object) -> None:
    """An entry in the data dir's own audit log (a backup holds PHI and the vault)."""
    documents = open_embedded(settings.data_dir / "documents", settings.mongo_database)
    try:
        AuditLog(documents).append(actor, "admin", action, target, detail)
    finally:
        documents.close()


def backup(settings: Settings, destination: Path, actor: str = "cli") -> Summary:
    """Copy the data dir's documents, objects and key into ``destination`` (a new or empty
    folder), with a manifest; audited in the data dir as ``backup.create`` by ``actor``."""
    _embedded_only(settings, "backup")
    database = _database_file(settings)
    if not database.is_file():
        raise BackupError(
            f"no embedded store at {database}: is RADPIPE_DATA_DIR (or --data-dir) the data "
            "dir radpipe up runs on?"
        )
    if destination.exists() and any(destination.iterdir()):
        raise BackupError(f"{destination} is not empty: back up into a new folder")
    destination.mkdir(mode=0o700, parents=True, exist_ok=True)
    destination.chmod(0o700)
    files: dict[str, dict[str, Any]] = {}

    def record(relative: str) -> None:
        path = destination / relative
        files[relative] = {"sha256": file_sha256(path), "size": path.stat().st_size}

    documents = f"documents/{database.name}"
    _private_file(destination / documents)
    _snapshot(database, destination / documents)
    record(documents)

    store = make_object_store(settings)
    objects = 0
    for logical, bucket in bucket_names(settings).items():
        for key in _keys(store, bucket):
            relative = f"objects/{logical}/{key}"
            path = destination / _safe(relative)
            _private_file(path)
            with path.open("wb") as handle:  # streamed: an object may be gigabytes
                store.copy_to(bucket, key, handle)
            record(relative)
            objects += 1

    secret = settings.secret_key.get_secret_value()
    key_file = settings.data_dir / LOCAL_SECRET_FILE
    from_file = secret == DEFAULT_SECRET_KEY and key_file.is_file()
    if from_file:
        _private_file(destination / LOCAL_SECRET_FILE)
        (destination / LOCAL_SECRET_FILE).write_bytes(key_file.read_bytes())
        record(LOCAL_SECRET_FILE)

    schema = _schema_of(destination / documents)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "radpipe": radpipe_version(),
        "schema_version": schema,
        "created_at": datetime.now(UTC).isoformat(),
        "database": settings.mongo_database,
        # The documents name objects by their real bucket: a restore writes into the same.
        "buckets": bucket_names(settings),
        # "environment": the master secret came from RADPIPE_SECRET_KEY and is not in here.
        "key": "secret.key" if from_file else "environment",
        "objects": objects,
        "files": files,
    }
    _private_file(destination / MANIFEST)
    (destination / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _audit(
        settings,
        actor,
        "backup.create",
        str(destination.resolve()),
        files=len(files),
        objects=objects,
        schema_version=schema,
        key=manifest["key"],
    )
    return Summary(destination, len(files), objects, schema)


def _keys(store: ObjectStore, bucket: str) -> Iterator[str]:
    try:
        yield from store.list(bucket)
    except Exception as exc:  # a bucket never created (nothing stored in it yet)
        if "NoSuchBucket" not in str(exc):
            raise


def _safe(relative: str) -> Path:
    """A manifest path as a relative path that stays inside the backup folder."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError(f"the manifest names a path outside the backup: {relative!r}")
    return Path(*path.parts)


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest of the backup in ``source``, every file checked against it (SHA-256 and
    size, none missing, none extra); raises :class:`BackupError` naming what is wrong."""
    try:
        manifest: dict[str, Any] = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{source} holds no {MANIFEST}: not a radpipe backup") from None
    except json.JSONDecodeError as exc:
        raise BackupError(
            f"{source / MANIFEST} is not JSON ({exc}): the backup is damaged"
        ) from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{source} is not a {FORMAT} version {FORMAT_VERSION} backup "
            f"(format {manifest.get('format')!r} {manifest.get('format_version')!r})"
        )
    schema = int(manifest.get("schema_version", 0))
    if schema > SCHEMA_VERSION:
        raise BackupError(
            f"the backup is at schema version {schema}, written by Radpipe "
            f"{manifest.get('radpipe')}; this release reads up to {SCHEMA_VERSION}: restore "
            "it with that release or a later one"
        )
    listed = manifest.get("files") or {}
    present = {
        path.relative_to(source).as_posix()
        for path in source.rglob("*")
        if path.is_file() and path.name != MANIFEST
    }
    missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
    if missing or extra:
        raise BackupError(
            f"the backup in {source} does not match its manifest: missing {missing[:5]}, "
            f"not listed {extra[:5]}; restore from an intact copy"
        )
    for relative, expected in listed.items():
        path = source / _safe(relative)
        if path.stat().st_size != expected["size"] or file_sha256(path) != expected["sha256"]:
            raise BackupError(
                f"{relative} in {source} does not match its SHA-256 in the manifest: the "
                "backup is damaged; restore from an intact copy"
            )
    return manifest


def restore(settings: Settings, source: Path, actor: str = "cli") -> Summary:
    """Restore the backup in ``source`` into the (fresh) data dir and object store of
    ``settings``. Everything is verified before anything is written; the store's migrations
    then run at the next start. Audited in the restored data dir as ``backup.restore``."""
    _embedded_only(settings, "restore")
    manifest = read_manifest(source)
    database = _database_file(settings)
    store = make_object_store(settings)
    buckets = bucket_names(settings)
    if manifest.get("buckets") != buckets:
        named = sorted((manifest.get("buckets") or {}).values())
        prefix = named[0].rsplit("-", 1)[0] if named else "?"
        raise BackupError(
            f"the backup's documents name the buckets {named} and this data dir would use "
            f"{sorted(buckets.values())}: set "
            f"RADPIPE_BUCKET_PREFIX={prefix} for the restore and the restored data dir"
        )
    key_file = settings.data_dir / LOCAL_SECRET_FILE
    occupied = [str(database)] if database.exists() else []
    occupied += [b for b in buckets.values() if next(iter(_keys(store, b)), None) is not None]
    brought = source / LOCAL_SECRET_FILE
    if manifest["key"] == "secret.key" and key_file.exists():
        occupied += [str(key_file)] if key_file.read_bytes() != brought.read_bytes() else []
    if occupied:
        raise BackupError(
            f"restore writes into a fresh data dir, and this one holds data ({occupied[:3]}): "
            "point RADPIPE_DATA_DIR (or --data-dir) at a new folder"
        )
    secret = settings.secret_key.get_secret_value()
    if manifest["key"] == "secret.key" and secret != DEFAULT_SECRET_KEY:
        raise BackupError(
            "the backup brings the data dir's own key (secret.key) but RADPIPE_SECRET_KEY is "
            "set, and would be used instead: unset it for the restored data dir"
        )
    if manifest["key"] == "environment" and secret == DEFAULT_SECRET_KEY:
        raise BackupError(
            "the backup holds no key (it was keyed by RADPIPE_SECRET_KEY): set the same "
            "RADPIPE_SECRET_KEY before restoring, or the vault and pseudonyms cannot be read"
        )

    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    objects = 0
    for relative in manifest["files"]:
        parts = _safe(relative).parts
        if parts[0] == "objects":
            logical, key = parts[1], "/".join(parts[2:])
            if logical not in buckets:
                raise BackupError(f"the backup names an unknown bucket {logical!r}")
            store.ensure_bucket(buckets[logical])
            path = source / _safe(relative)
            with path.open("rb") as handle:
                store.put_file(buckets[logical], key, handle, path.stat().st_size)
            objects += 1
    if manifest["key"] == "secret.key":
        _private_file(key_file)
        key_file.write_bytes((source / LOCAL_SECRET_FILE).read_bytes())
    # The documents last, written aside then renamed: a data dir with a store is a restored one.
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(database.name + ".restoring")
    partial.unlink(missing_ok=True)
    _private_file(partial)
    _snapshot(source / "documents" / f"{manifest['database']}.sqlite3", partial)
    os.replace(partial, database)
    _audit(
        settings,
        actor,
        "backup.restore",
        str(source.resolve()),
        created_at=manifest.get("created_at"),
        radpipe=manifest.get("radpipe"),
        schema_version=manifest["schema_version"],
        objects=objects,
    )
    return Summary(settings.data_dir, len(manifest["files"]), objects, manifest["schema_version"])
