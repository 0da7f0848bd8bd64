"""An upgrade from the previous release's own data: its code (from git history) writes a data
dir, this release starts on it (the embedded store converted, the migrations run) and serves the
same study to the same token, with the vault re-wrapped and the schema version recorded.

The previous release is the last commit of 0.1, before the package became ``radpipe``
(``services.*`` imports, the litemongo store, keys used directly, no QIDO summaries, studies
without their sender). It runs in its own interpreter from a ``git archive`` of that commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from radpipe.common.context import build_context
from radpipe.common.dicomindex import STUDY_SUMMARIES
from radpipe.common.migrations import SCHEMA_ID, SCHEMA_VERSION
from radpipe.common.settings import Settings
from radpipe.common.studies import MIGRATIONS
from radpipe.common.vault import COLLECTION as VAULT
from radpipe.common.vault import KEY_ID

from ..conftest import TEST_SECRET, RecordingDispatcher
from ..dicom import PHI
from ..servers import radpipe_env

ROOT = Path(__file__).resolve().parents[2]
#: 0.1's last commit (the parent of "A radpipe package: setuptools maps radpipe -> services/").
PREVIOUS_RELEASE = "7df55b3172813f63f11779ce7ef050b34426c5ef"

#: Run by the previous release: one CT study received from CT_ROOM_1, made stable and
#: de-identified, and a reader's token; prints what the new release must find again.
WRITE_WITH_PREVIOUS_RELEASE = """
import json, sys
from pathlib import Path
from services.common.auth import AuthService
from services.common.context import build_context
from services.common.identity import study_id_for
from services.common.settings import Settings
from services.deid.service import deidentify_study
from services.deid.stability import check_stable
from services.ingest.multipart import Part
from services.ingest.service import store_parts
from tests.dicom import ct_series, read

class Tasks:
    def send(self, *args, **kwargs): pass
    def ping(self): pass

settings = Settings(data_dir=Path(sys.argv[1]), secret_key=sys.argv[2], study_stable_seconds=0)
ctx = build_context(settings, tasks=Tasks())
series = ct_series()
parts = [Part.from_bytes("application/dicom", d) for d in series]
result = store_parts(ctx, parts, None, "CT_ROOM_1")
assert not result.failed, result
source_uid = str(read(series[0]).StudyInstanceUID)
study_id = study_id_for(sys.argv[2].encode(), source_uid)
check_stable(ctx, study_id)
deidentify_study(ctx, study_id)
study = ctx.studies.get(study_id)
token = AuthService(ctx.documents).create_token("reader", "radiologist")
print(json.dumps({"study_id": study_id, "source_uid": source_uid, "state": study["state"],
                  "study_uid": study["deid"]["study_uid"], "token": token,
                  "instances": len(series)}))
"""


@pytest.fixture
def previous_release(tmp_path: Path) -> Path:
    """The previous release's source tree (services/ and its test helpers)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git history of the repository (git archive of 0.1)")
    tree = tmp_path / "release-0.1"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "services", "tests"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"0.1 is not in this clone's history: {archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def test_this_release_starts_on_the_previous_releases_data_dir(
    tmp_path: Path, previous_release: Path
) -> None:
    data = tmp_path / "data"
    env = radpipe_env()
    env["PYTHONPATH"] = str(previous_release)
    written = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_PREVIOUS_RELEASE, str(data), TEST_SECRET],
        cwd=previous_release,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert written.returncode == 0, written.stdout + written.stderr
    old = json.loads(written.stdout.strip().splitlines()[-1])
    assert old["state"] == "deidentified"
    assert (data / "documents" / "radpipe").is_dir(), "0.1 wrote the litemongo store"

    settings = Settings(data_dir=data, secret_key=TEST_SECRET)  # type: ignore[arg-type]
    ctx = build_context(settings, tasks=RecordingDispatcher())
    try:
        docs = ctx.documents
        assert (data / "documents" / "radpipe.sqlite3").is_file()  # converted on open
        schema = docs.collection(MIGRATIONS).find_one({"_id": SCHEMA_ID})
        assert schema["version"] == SCHEMA_VERSION
        study = ctx.studies.get(old["study_id"])
        assert study["state"] == "deidentified"
        assert (study["source"], study["sources"]) == ("CT_ROOM_1", ["CT_ROOM_1"])
        assert ctx.studies.known_sources() == ["CT_ROOM_1"]
        assert docs.collection(STUDY_SUMMARIES).count_documents({}) == 1
        # The vault entry: re-wrapped under the vault key, and still the patient's identity.
        assert [e.get("key") for e in docs.collection(VAULT).find({})] == [KEY_ID]
        assert ctx.vault.get(old["study_id"])["patient_id"] == PHI["patient_id"]
        # A re-sent instance of this study joins it (its id was keyed with the master).
        assert ctx.study_key(old["source_uid"]) == settings.master_secret

        auth = {"Authorization": f"Bearer {old['token']}"}
        from radpipe.app import build_app

        with TestClient(build_app(ctx, ["ingest", "portal", "notify"])) as client:
            found = client.get("/dicom-web/studies", headers=auth)
            assert found.status_code == 200, found.text
            assert [s["0020000D"]["Value"][0] for s in found.json()] == [old["study_uid"]]
            metadata = client.get(f"/dicom-web/studies/{old['study_uid']}/metadata", headers=auth)
            assert metadata.status_code == 200 and len(metadata.json()) == old["instances"]
    finally:
        ctx.documents.close()
