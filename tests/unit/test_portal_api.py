from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from radpipe.common.audit import keyed
from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.common.settings import DEFAULT_SECRET_KEY, Settings

from ..conftest import TEST_SECRET
from ..dicom import ct_series, read
from .test_ingest_api import stow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_is_open_everything_else_needs_auth(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["documents"] == "ok"
    for path in ("/api/studies", "/api/alerts", "/metrics", "/api/studies/abc"):
        assert client.get(path).status_code == 401, path
    page = client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"


def test_study_list_detail_and_metrics(client: TestClient, ctx: Context, tokens) -> None:
    series = ct_series()[:3]
    stow(client, tokens["modality"], series)
    listing = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()
    assert listing["total"] == 1
    study = listing["studies"][0]
    assert study["state"] == "received" and study["instance_count"] == 3
    detail = client.get(f"/api/studies/{study['id']}", headers=bearer(tokens["radiologist"])).json()
    for role in ("manager", "auditor", "admin"):  # study data is clinical (DESIGN 1)
        answer = client.get(f"/api/studies/{study['id']}", headers=bearer(tokens[role]))
        assert answer.status_code == 403, role
    assert [e["type"] for e in detail["events"]] == ["received"]
    assert detail["links"]["portal"].endswith(f"/studies/{study['id']}")
    assert "Doe" not in str(detail) and "MRN" not in str(detail)
    assert client.get("/api/studies", headers=bearer(tokens["modality"])).status_code == 403
    assert client.get("/api/studies/nope", headers=bearer(tokens["radiologist"])).status_code == 404
    metrics = client.get("/metrics", headers=bearer(tokens["manager"])).text
    assert 'radpipe_studies{state="received"} 1.0' in metrics
    assert 'radpipe_queue_length{queue="deid"} 1.0' in metrics


def test_source_uid_lookup_is_clinical_only_and_audited(
    client: TestClient, ctx: Context, tokens
) -> None:
    series = ct_series()[:1]
    stow(client, tokens["modality"], series)
    source_uid = str(read(series[0]).StudyInstanceUID)
    refused = client.get(
        "/api/studies", params={"source_study_uid": source_uid}, headers=bearer(tokens["manager"])
    )
    assert refused.status_code == 403
    found = client.get(
        "/api/studies",
        params={"source_study_uid": source_uid},
        headers=bearer(tokens["radiologist"]),
    ).json()
    assert found["total"] == 1
    audit = list(ctx.documents.collection("audit").find({"action": "identity.lookup"}))
    assert [(a["actor"], a["target"], a["detail"]["found"]) for a in audit] == [
        ("test-radiologist", found["studies"][0]["id"], True)
    ]
    assert audit[0]["detail"]["uid"] == keyed(ctx.settings.secret, source_uid)
    denied = list(ctx.documents.collection("audit").find({"action": "access.denied"}))
    assert [(a["actor"], a["target"]) for a in denied] == [("test-manager", "GET /api/studies")]
    assert source_uid not in str(list(ctx.documents.collection("audit").find({})))


def test_login_session_and_worklist_page(client: TestClient, ctx: Context) -> None:
    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    bad = client.post(
        "/login", data={"username": "ana", "password": "wrong"}, follow_redirects=False
    )
    assert bad.headers["location"] == "/login?error=1"
    ok = client.post(
        "/login",
        data={"username": "ana", "password": "correct horse battery"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and "radpipe_session" in ok.cookies
    cookie = ok.headers["set-cookie"].lower()
    assert "max-age" not in cookie and "expires" not in cookie  # ends with the browser
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = client.get("/")
    assert page.status_code == 200 and "Worklist" in page.text and "ana" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert client.get("/api/studies").headers["cache-control"] == "no-store"
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    # A cookie-authenticated state change without the session's CSRF token is refused.
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", headers={"X-CSRF-Token": "0" * 40}).status_code == 403
    assert client.get("/api/studies").status_code == 200
    done = client.post(f"/logout?csrf={token}", follow_redirects=False)
    assert done.status_code == 303
    assert client.get("/api/studies").status_code == 401


def test_idle_session_is_logged_out(client: TestClient, ctx: Context) -> None:
    from datetime import timedelta

    from radpipe.common.auth import SESSION_IDLE, SESSIONS
    from radpipe.common.studies import now

    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    client.post("/login", data={"username": "ana", "password": "correct horse battery"})
    assert client.get("/api/studies").status_code == 200
    stale = now() - SESSION_IDLE - timedelta(seconds=1)
    for session in list(ctx.documents.collection(SESSIONS).find({})):
        ctx.documents.collection(SESSIONS).update_one(
            {"_id": session["_id"]}, {"$set": {"last_seen": stale}}
        )
    answer = client.get("/api/studies")
    assert answer.status_code == 401 and "inactivity" in answer.json()["detail"]
    assert ctx.documents.collection(SESSIONS).count_documents({}) == 0


def test_tokens_and_passwords_are_stored_hashed(ctx: Context) -> None:
    auth = AuthService(ctx.documents)
    token = auth.create_token("ct-1", "modality")
    auth.add_user("bob", "manager", "a long password")
    assert token not in str(list(auth.tokens.find({})))
    assert "a long password" not in str(list(auth.users.find({})))
    assert auth.authenticate_token(token).role == "modality"


def test_default_secret_refused_outside_all_in_one() -> None:
    with pytest.raises(ValidationError, match="openssl rand -hex 32"):
        Settings(secret_key=DEFAULT_SECRET_KEY)  # type: ignore[arg-type]
    assert Settings(all_in_one=True).secret_key.get_secret_value() == DEFAULT_SECRET_KEY
    with pytest.raises(ValidationError, match="RADPIPE_S3_ACCESS_KEY"):
        Settings(secret_key=TEST_SECRET, s3_endpoint="http://127.0.0.1:9000")  # type: ignore[arg-type]


def test_identity_vault_is_clinical_only_and_every_read_is_audited(
    client: TestClient, ctx: Context, tokens
) -> None:
    from radpipe.deid.service import deidentify_study
    from radpipe.deid.stability import check_stable

    series = ct_series()[:2]
    stow(client, tokens["modality"], series)
    original = read(series[0])
    [study] = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()["studies"]
    ctx.settings.study_stable_seconds = 0
    check_stable(ctx, study["id"])
    deidentify_study(ctx, study["id"])
    path = f"/api/studies/{study['id']}/identity"
    for role in ("manager", "auditor", "admin", "modality"):
        refused = client.get(path, headers=bearer(tokens[role]))
        assert refused.status_code == 403 and "oncall, radiologist, resident" in refused.text
    identity = client.get(path, headers=bearer(tokens["oncall"])).json()
    assert identity["patient_id"] == original.PatientID
    assert identity["patient_name"] == str(original.PatientName)
    assert identity["study_instance_uid"] == original.StudyInstanceUID
    assert {i["sop_instance_uid"] for i in identity["instances"]} == {
        read(s).SOPInstanceUID for s in series
    }
    missing = client.get("/api/studies/nope/identity", headers=bearer(tokens["radiologist"]))
    assert missing.status_code == 404
    audit = list(ctx.documents.collection("audit").find({"action": "identity.lookup"}))
    assert [(a["actor"], a["target"], a["detail"]["found"]) for a in audit] == [
        ("test-oncall", study["id"], True),
        ("test-radiologist", "nope", False),
    ]
    denied = list(ctx.documents.collection("audit").find({"action": "access.denied"}))
    assert [a["actor"] for a in denied] == [
        "test-manager",
        "test-auditor",
        "test-admin",
        "test-modality",
    ]
    assert original.PatientID not in str(list(ctx.documents.collection("audit").find({})))


def test_pages_load_no_external_code(client: TestClient, ctx: Context, tokens) -> None:
    """No CDN: every script the pages load is the portal's own, behind the login."""
    from .test_stages import analyzed

    study_id = analyzed(ctx, 0.9)
    rad = bearer(tokens["radiologist"])
    for path in ("/", f"/studies/{study_id}"):
        page = client.get(path, headers=rad).text
        sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page)
        assert sources and all(src.startswith("/static/") for src in sources), sources
        assert "//" not in "".join(sources)
    script = client.get("/static/viewer.js", headers=rad)
    assert script.status_code == 200 and "text/javascript" in script.headers["content-type"]
    assert client.get("/static/viewer.js").status_code == 401
    assert client.get("/static/../api.py", headers=rad).status_code == 404
    assert client.get("/static/nothing.js", headers=rad).status_code == 404


def test_mask_routes_answer_exact_codes(client: TestClient, ctx: Context, tokens) -> None:
    stow(client, tokens["modality"], ct_series()[:3])
    [study] = client.get("/api/studies", headers=bearer(tokens["radiologist"])).json()["studies"]
    grid = f"/api/studies/{study['id']}/geometry"
    mask = f"/api/studies/{study['id']}/findings/1/mask"
    rad = bearer(tokens["radiologist"])
    assert client.get(grid).status_code == 401
    assert client.get(grid, headers=bearer(tokens["modality"])).status_code == 403
    assert client.get(mask, headers=bearer(tokens["modality"])).status_code == 403
    not_yet = client.get(grid, headers=rad)  # received, not de-identified: nothing to draw on
    assert not_yet.status_code == 409 and "no de-identified images" in not_yet.json()["detail"]
    assert client.get(mask, headers=rad).status_code == 404  # no analysis, no finding 1
    assert client.get("/api/studies/nope/geometry", headers=rad).status_code == 404
    edit = {"decision": "edit", "mask": {"encoding": "rle-slices-v1"}}
    decided = client.post(f"/api/studies/{study['id']}/findings/1/decision", json=edit, headers=rad)
    assert decided.status_code == 409  # decisions wait for the analysis
    read = {"finding_present": True, "mask": {"encoding": "rle-slices-v1"}}
    posted = client.post(
        f"/api/studies/{study['id']}/reads", json=read, headers=bearer(tokens["resident"])
    )
    assert posted.status_code == 409  # images not ready to read
    assert list(ctx.objects.list(ctx.buckets["results"], f"{study['id']}/")) == []


def test_the_first_view_of_a_study_page_is_the_opened_stage(
    client: TestClient, ctx: Context, tokens
) -> None:
    """TAT's "opened" stage: one event, at the first view by a reader; later views add none."""
    from .test_stages import analyzed

    study_id = analyzed(ctx, 0.9)
    for role in ("radiologist", "resident"):
        assert client.get(f"/studies/{study_id}", headers=bearer(tokens[role])).status_code == 200
    opened = [e for e in ctx.studies.get(study_id)["events"] if e["type"] == "opened"]
    assert [e["detail"] for e in opened] == [{"role": "radiologist"}]
