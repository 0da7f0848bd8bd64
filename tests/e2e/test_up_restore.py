"""`radpipe backup` and `radpipe restore` as commands, then `radpipe up` started on the restored
data dir serves the same study to the same token over DICOMweb (issue 16.5): the key, the
documents, the vault and the objects all came back, and the store is at this release's schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from radpipe.common.auth import AuthService
from radpipe.common.context import build_context
from radpipe.common.migrations import SCHEMA_VERSION
from radpipe.common.settings import Settings
from radpipe.deid.service import deidentify_study
from radpipe.deid.stability import check_stable

from ..conftest import RecordingDispatcher
from ..dicom import ct_series
from ..servers import free_port, radpipe_env, stop, wait_for_port
from ..unit.test_stages import after_quiet_time, ingest


def _cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "radpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_radpipe_up_on_a_restored_data_dir_serves_the_same_study(tmp_path: Path) -> None:
    source = tmp_path / "data"
    settings = Settings(data_dir=source, all_in_one=True, study_stable_seconds=0.5)
    ctx = build_context(settings, tasks=RecordingDispatcher())
    study_id = ingest(ctx, ct_series())
    check_stable(ctx, study_id, clock=after_quiet_time(ctx))
    deidentify_study(ctx, study_id)
    study_uid = ctx.studies.get(study_id)["deid"]["study_uid"]
    token = AuthService(ctx.documents).create_token("reader", "radiologist")
    ctx.documents.close()

    env = radpipe_env()
    backup, restored = tmp_path / "backup", tmp_path / "restored"
    out = _cli(env, "backup", str(backup), "--data-dir", str(source))
    assert f"schema version {SCHEMA_VERSION}" in out
    out = _cli(env, "restore", str(backup), "--data-dir", str(restored))
    assert f"restored into {restored}" in out
    assert (restored / "secret.key").read_text() == (source / "secret.key").read_text()

    port = free_port()
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [
            *(sys.executable, "-m", "radpipe.cli", "up"),
            *("--port", str(port), "--http-workers", "1", "--data-dir", str(restored)),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60)
        base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
        found = httpx.get(f"{base}/dicom-web/studies", headers=auth, timeout=30)
        assert found.status_code == 200, found.text
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [study_uid]
        metadata = httpx.get(f"{base}/dicom-web/studies/{study_uid}/metadata", headers=auth)
        assert metadata.status_code == 200 and len(metadata.json()) == len(ct_series())
        first = metadata.json()[0]
        series, sop = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]
        instance = httpx.get(
            f"{base}/dicom-web/studies/{study_uid}/series/{series}/instances/{sop}",
            headers={**auth, "Accept": 'multipart/related; type="application/dicom"'},
        )
        assert instance.status_code == 200 and sop.encode() in instance.content
        # No token from before: refused, so the tokens really came from the backup.
        assert httpx.get(f"{base}/dicom-web/studies").status_code == 401
    finally:
        stop(up, grace=20)
        log.close()
