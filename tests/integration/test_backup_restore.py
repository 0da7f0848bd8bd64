"""``radpipe backup`` / ``radpipe restore``: a data dir backed up, restored into a fresh one, and
the app started on the restored dir serves the same studies (over DICOMweb and the API), with
the same vault, tokens and key; a damaged or mismatched backup is refused and writes nothing.

Objects on the data dir's folder (the key then lives in ``secret.key`` and travels with the
backup) and on SeaweedFS through the S3 port (the key then comes from RADPIPE_SECRET_KEY, and
the backup says it holds none). The documents name each object's real bucket, so a restore
goes into the same bucket names: on SeaweedFS the source's objects are deleted first (the
store lost); on the folder store the new data dir has its own folder.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import SecretStr

from radpipe.backup import MANIFEST, BackupError, backup, read_manifest, restore
from radpipe.cli import main
from radpipe.common.auth import AuthService
from radpipe.common.context import Context, build_context
from radpipe.common.docstore import make_document_store
from radpipe.common.migrations import SCHEMA_ID, SCHEMA_VERSION
from radpipe.common.objectstore import bucket_names, make_object_store
from radpipe.common.settings import Settings
from radpipe.common.studies import MIGRATIONS
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable

from ..conftest import TEST_SECRET, RecordingDispatcher
from ..dicom import ct_series
from ..servers import S3Server
from ..unit.test_stages import after_quiet_time, ingest

DICOM = 'multipart/related; type="application/dicom"'


def _settings(data_dir: Path, prefix: str, s3: S3Server | None) -> Settings:
    """All-in-one settings: the folder store and the data dir's key, or SeaweedFS and an
    environment key."""
    if s3 is None:
        return Settings(data_dir=data_dir, all_in_one=True, bucket_prefix=prefix)
    return Settings(
        data_dir=data_dir,
        all_in_one=True,
        bucket_prefix=prefix,
        secret_key=TEST_SECRET,  # type: ignore[arg-type]
        s3_endpoint=s3.endpoint,  # type: ignore[arg-type]
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,  # type: ignore[arg-type]
    )


def _env(settings: Settings) -> dict[str, str]:
    """The same settings as the CLI reads them from the environment."""
    env = {"RADPIPE_BUCKET_PREFIX": settings.bucket_prefix}
    if settings.s3_endpoint is not None:
        env |= {
            "RADPIPE_SECRET_KEY": TEST_SECRET,
            "RADPIPE_S3_ENDPOINT": str(settings.s3_endpoint),
            "RADPIPE_S3_ACCESS_KEY": settings.s3_access_key or "",
            "RADPIPE_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value()  # type: ignore[union-attr]
            if settings.s3_secret_key
            else "",
        }
    return env


@pytest.fixture(params=["folder", "s3"])
def store(request: pytest.FixtureRequest) -> S3Server | None:
    return request.getfixturevalue("s3") if request.param == "s3" else None


@pytest.fixture
def source(tmp_path: Path, store: S3Server | None) -> Iterator[tuple[Context, dict[str, str]]]:
    """A data dir holding one de-identified CT study and a reader's token."""
    settings = _settings(tmp_path / "data", "b" + secrets.token_hex(4), store)
    settings.study_stable_seconds = 0.5
    ctx = build_context(settings, tasks=RecordingDispatcher())
    study_id = ingest(ctx, ct_series())
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    deidentify_study(ctx, study_id)
    deid = ctx.studies.get(study_id)["deid"]
    token = AuthService(ctx.documents).create_token("reader", "radiologist")
    yield ctx, {"study_id": study_id, "study": deid["study_uid"], "token": token}
    ctx.documents.close()


def _lose_objects(settings: Settings) -> None:
    """The object store lost (the S3 buckets emptied), as before a restore after a disaster."""
    if settings.s3_endpoint is None:
        return  # the folder lives in the data dir: a fresh data dir has none
    objects = make_object_store(settings)
    for bucket in bucket_names(settings).values():
        for key in list(objects.list(bucket)):
            objects.delete(bucket, key)


def _served(ctx: Context, facts: dict[str, str]) -> dict[str, Any]:
    """What the app started on ``ctx`` answers for the study: its QIDO-RS row, its metadata,
    the bytes of each instance (WADO-RS), and the worklist entry."""
    from radpipe.app import build_app

    auth = {"Authorization": f"Bearer {facts['token']}"}
    with TestClient(build_app(ctx, ["ingest", "portal", "notify"])) as client:
        studies = client.get("/dicom-web/studies", headers=auth)
        assert studies.status_code == 200, studies.text
        metadata = client.get(f"/dicom-web/studies/{facts['study']}/metadata", headers=auth)
        assert metadata.status_code == 200, metadata.text
        instances = []
        for item in metadata.json():
            series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
            url = f"/dicom-web/studies/{facts['study']}/series/{series}/instances/{sop}"
            got = client.get(url, headers={**auth, "Accept": DICOM})
            assert got.status_code == 200, got.text
            boundary = got.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"')
            [part] = [p for p in got.content.split(b"--" + boundary.encode()) if b"\r\n\r\n" in p]
            instances.append(hashlib.sha256(part.split(b"\r\n\r\n", 1)[1]).hexdigest())
    return {
        "studies": studies.json(),
        "metadata": sorted(json.dumps(m, sort_keys=True) for m in metadata.json()),
        "instances": sorted(instances),
    }


def test_a_restored_data_dir_serves_the_same_studies(
    tmp_path: Path, source: tuple[Context, dict[str, str]], store: S3Server | None
) -> None:
    ctx, facts = source
    before = _served(ctx, facts)
    assert len(before["instances"]) == len(ct_series())
    identity = ctx.vault.get(facts["study_id"])
    runner = CliRunner()
    folder = tmp_path / "backup"
    result = runner.invoke(
        main,
        ["backup", str(folder), "--data-dir", str(ctx.settings.data_dir)],
        env=_env(ctx.settings),
    )
    assert result.exit_code == 0, result.output
    assert f"schema version {SCHEMA_VERSION}" in result.output

    manifest = read_manifest(folder)
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["radpipe"]
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    for relative, facts_of in manifest["files"].items():
        data = (folder / relative).read_bytes()
        assert hashlib.sha256(data).hexdigest() == facts_of["sha256"], relative
        assert oct((folder / relative).stat().st_mode & 0o777) == "0o600", relative
    # The raw upload, the de-identified copy: every object, by logical bucket.
    raw = [f for f in manifest["files"] if f.startswith("objects/raw/")]
    deid = [f for f in manifest["files"] if f.startswith("objects/deid/")]
    assert len(raw) == len(deid) == len(ct_series())
    assert manifest["objects"] == len(raw) + len(deid)
    if store is None:
        assert manifest["key"] == "secret.key"
        assert (folder / "secret.key").read_bytes() == (
            ctx.settings.data_dir / "secret.key"
        ).read_bytes()
    else:
        assert manifest["key"] == "environment" and not (folder / "secret.key").exists()

    # A fresh data dir on the same kind of store, the same bucket names.
    _lose_objects(ctx.settings)
    target = _settings(tmp_path / "restored", ctx.settings.bucket_prefix, store)
    result = runner.invoke(
        main,
        ["restore", str(folder), "--data-dir", str(target.data_dir)],
        env=_env(target),
    )
    assert result.exit_code == 0, result.output
    restored = build_context(target, tasks=RecordingDispatcher())
    try:
        assert _served(restored, facts) == before  # the same token, studies and bytes
        assert restored.vault.get(facts["study_id"]) == identity
        assert restored.studies.get(facts["study_id"])["state"] == "deidentified"
        schema = restored.documents.collection(MIGRATIONS).find_one({"_id": SCHEMA_ID})
        assert schema["version"] == SCHEMA_VERSION
        # Audited on both sides (a backup holds PHI and the vault), by the OS user: the
        # backup in the source after its snapshot (so not in the copy), the restore here.
        audit = restored.documents.collection("audit")
        assert audit.count_documents({"action": "backup.create"}) == 0
        [back] = audit.find({"action": "backup.restore"})
        assert back["target"] == str(folder.resolve()) and back["actor"].startswith("cli:")
        assert back["detail"]["schema_version"] == SCHEMA_VERSION
    finally:
        restored.documents.close()
    [made] = ctx.documents.collection("audit").find({"action": "backup.create"})
    assert made["target"] == str(folder.resolve()) and made["actor"].startswith("cli:")
    assert made["detail"]["key"] == manifest["key"]


def _nothing_written(settings: Settings) -> None:
    assert not (settings.data_dir / "documents").exists()
    assert not (settings.data_dir / "secret.key").exists()
    objects = make_object_store(settings)
    for bucket in ("raw", "deid", "results"):
        try:
            assert list(objects.list(f"{settings.bucket_prefix}-{bucket}")) == []
        except Exception as exc:  # S3: a bucket never created
            assert "NoSuchBucket" in str(exc)


def test_a_damaged_backup_is_refused_and_nothing_is_restored(
    tmp_path: Path, source: tuple[Context, dict[str, str]], store: S3Server | None
) -> None:
    ctx, _ = source
    folder = tmp_path / "backup"
    backup(ctx.settings, folder)
    _lose_objects(ctx.settings)
    target = _settings(tmp_path / "restored", ctx.settings.bucket_prefix, store)

    manifest = json.loads((folder / MANIFEST).read_text())
    victim = sorted(f for f in manifest["files"] if f.startswith("objects/deid/"))[-1]
    data = bytearray((folder / victim).read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last pixel
    (folder / victim).write_bytes(bytes(data))
    with pytest.raises(BackupError, match=f"{victim}.*SHA-256.*damaged"):
        restore(target, folder)
    _nothing_written(target)

    (folder / victim).unlink()
    with pytest.raises(BackupError, match=r"does not match its manifest: missing \['objects/"):
        restore(target, folder)
    (folder / "stray.dcm").write_bytes(b"x")
    with pytest.raises(BackupError, match=r"not listed \['stray.dcm'\]"):
        restore(target, folder)
    _nothing_written(target)


def test_restore_refuses_a_data_dir_in_use_a_newer_schema_and_a_missing_key(
    tmp_path: Path, source: tuple[Context, dict[str, str]], store: S3Server | None
) -> None:
    ctx, facts = source
    folder = tmp_path / "backup"
    backup(ctx.settings, folder)
    with pytest.raises(BackupError, match="not empty: back up into a new folder"):
        backup(ctx.settings, folder)
    # Into the data dir it came from: it holds data.
    with pytest.raises(BackupError, match=r"fresh data dir.*point RADPIPE_DATA_DIR"):
        restore(ctx.settings, folder)
    assert ctx.studies.get(facts["study_id"])  # untouched
    _lose_objects(ctx.settings)

    # Other bucket names than those its documents name: refused, naming the prefix to set.
    other = _settings(tmp_path / "other", "o" + secrets.token_hex(4), store)
    prefix = ctx.settings.bucket_prefix
    with pytest.raises(BackupError, match=f"set RADPIPE_BUCKET_PREFIX={prefix} for the restore"):
        restore(other, folder)
    _nothing_written(other)

    target = _settings(tmp_path / "restored", prefix, store)
    if store is None:  # the backup brings secret.key: a RADPIPE_SECRET_KEY would win over it
        keyed = target.model_copy(update={"secret_key": SecretStr(TEST_SECRET)})
        with pytest.raises(BackupError, match="unset it for the restored data dir"):
            restore(keyed, folder)
    else:  # keyed by the environment: restoring without that key is refused
        bare = Settings(
            data_dir=target.data_dir,
            all_in_one=True,
            bucket_prefix=target.bucket_prefix,
        )
        with pytest.raises(BackupError, match="set the same RADPIPE_SECRET_KEY"):
            restore(bare, folder)
    _nothing_written(target)

    # A backup written by a later release (its schema) is refused by this one.
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["schema_version"] = SCHEMA_VERSION + 1
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=f"schema version {SCHEMA_VERSION + 1}"):
        restore(target, folder)
    _nothing_written(target)


def test_backup_refuses_mongodb_and_names_mongodump(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        mongo_url="mongodb://127.0.0.1:1/radpipe",
        secret_key=TEST_SECRET,  # type: ignore[arg-type]
    )
    with pytest.raises(BackupError, match=r"mongodump.*mc mirror.*docs/backup\.md"):
        backup(settings, tmp_path / "backup")
    assert not (tmp_path / "backup").exists()


#: A writer in its own process: one row and a counter per transaction, as fast as it can.
WRITER = """
import sys
from pathlib import Path
from radpipe.common.docstore import open_embedded
store = open_embedded(Path(sys.argv[1]), "radpipe")
writes = store.collection("writes")
n = 0
while True:
    with store.exclusive():
        writes.insert_one({"_id": f"w{n}", "n": n})
        writes.update_one({"_id": "counter"}, {"$set": {"n": n + 1}}, upsert=True)
    n += 1
    if n == 20:
        print("writing", flush=True)
"""


def test_backup_of_a_running_store_is_one_consistent_snapshot(
    tmp_path: Path, source: tuple[Context, dict[str, str]], store: S3Server | None
) -> None:
    """SQLite's online backup API while a writer holds the store open (WAL): the copy opens on
    its own, passes the integrity check, and holds what was committed."""
    ctx, facts = source
    ctx.documents.collection("studies").update_one(
        {"_id": facts["study_id"]}, {"$set": {"note": "committed before the backup"}}
    )
    # Another process keeps writing while the backup runs (each write its own transaction).
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(ctx.settings.data_dir / "documents")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        folder = tmp_path / "backup"
        backup(ctx.settings, folder)
    finally:
        writer.terminate()
        writer.wait(timeout=10)
    copy = make_document_store(
        Settings(data_dir=folder, secret_key=TEST_SECRET)  # type: ignore[arg-type]
    )
    try:
        study = copy.collection("studies").find_one({"_id": facts["study_id"]})
        assert study["note"] == "committed before the backup"
        # Whatever the writer had committed when the snapshot was taken, and all of it:
        # the counter and the rows agree (no torn write).
        counter = copy.collection("writes").find_one({"_id": "counter"})
        rows = copy.collection("writes").count_documents({"_id": {"$ne": "counter"}})
        assert counter is not None and counter["n"] == rows > 0
    finally:
        copy.close()
