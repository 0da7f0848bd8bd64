"""Admin screens and API: users (add, disable, change role), tokens (create with expiry, list,
revoke); admin only (403 and audited for anyone else); the page through the session."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from radpipe.common.auth import AuthService
from radpipe.common.context import Context


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_users_and_tokens(client: TestClient, ctx: Context, tokens) -> None:
    admin = bearer(tokens["admin"])
    user = {"name": "ana", "role": "resident", "password": "correct horse battery"}
    assert client.post("/api/admin/users", json=user, headers=admin).status_code == 201
    assert client.post("/api/admin/users", json=user, headers=admin).status_code == 409
    short = {**user, "name": "bo", "password": "short"}
    assert client.post("/api/admin/users", json=short, headers=admin).status_code == 400
    bad_role = {**user, "name": "cy", "role": "boss"}
    assert client.post("/api/admin/users", json=bad_role, headers=admin).status_code == 400
    assert client.post("/login", data={"username": "ana", "password": user["password"]})
    assert client.get("/api/studies").status_code == 200  # logged in as a resident

    promoted = client.post("/api/admin/users/ana/role", json={"role": "radiologist"}, headers=admin)
    assert promoted.status_code == 200
    assert client.get("/api/studies").status_code == 401  # the session ended with the change
    client.post("/login", data={"username": "ana", "password": user["password"]})
    assert client.get("/api/studies").status_code == 200
    assert client.post("/api/admin/users/ana/disable", headers=admin).status_code == 200
    assert client.get("/api/studies").status_code == 401
    again = client.post(
        "/login", data={"username": "ana", "password": user["password"]}, follow_redirects=False
    )
    assert again.headers["location"] == "/login?error=1"
    assert client.post("/api/admin/users/nobody/disable", headers=admin).status_code == 404
    listed = client.get("/api/admin/users", headers=admin).json()
    assert listed == [
        {
            "name": "ana",
            "role": "radiologist",
            "disabled": True,
            "created_at": listed[0]["created_at"],
        }
    ]

    soon = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    made = client.post(
        "/api/admin/tokens",
        json={"name": "ct-2", "role": "modality", "expires_at": soon},
        headers=admin,
    )
    assert made.status_code == 201
    token = made.json()["token"]
    assert client.get("/dicom-web/studies", headers=bearer(token)).status_code == 403  # modality
    assert (
        client.post(
            "/dicom-web/studies", headers={**bearer(token), "Content-Type": "application/dicom"}
        ).status_code
        != 401
    )
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    expired = client.post(
        "/api/admin/tokens",
        json={"name": "x", "role": "modality", "expires_at": past},
        headers=admin,
    )
    assert expired.status_code == 400
    listing = client.get("/api/admin/tokens", headers=admin).json()
    assert token not in str(listing)
    assert next(t for t in listing if t["name"] == "ct-2")["expires_at"] is not None
    assert client.post("/api/admin/tokens/ct-2/revoke", headers=admin).json() == {
        "name": "ct-2",
        "revoked": 1,
    }
    assert client.post("/api/admin/tokens/ct-2/revoke", headers=admin).status_code == 404
    assert client.get("/healthz").status_code == 200
    answer = client.post(
        "/dicom-web/studies", headers={**bearer(token), "Content-Type": "application/dicom"}
    )
    assert answer.status_code == 401

    actions = [a["action"] for a in ctx.documents.collection("audit").find({"role": "admin"})]
    for action in ("user.add", "user.role", "user.disable", "token.create", "token.revoke"):
        assert action in actions


def test_token_expiry_is_enforced(ctx: Context) -> None:
    auth = AuthService(ctx.documents)
    token = auth.create_token("old", "modality", datetime.now(UTC) - timedelta(seconds=1))
    try:
        auth.authenticate_token(token)
    except Exception as exc:
        assert "expired" in str(exc)
    else:
        raise AssertionError("an expired token was accepted")


def test_only_admins(client: TestClient, ctx: Context, tokens) -> None:
    for role in ("radiologist", "resident", "oncall", "manager", "auditor", "modality"):
        headers = bearer(tokens[role])
        assert client.get("/api/admin/users", headers=headers).status_code == 403
        assert (
            client.post(
                "/api/admin/tokens", json={"name": "t", "role": "admin"}, headers=headers
            ).status_code
            == 403
        )
        assert client.get("/admin", headers=headers).status_code == 403
    denied = list(ctx.documents.collection("audit").find({"action": "access.denied"}))
    assert len(denied) == 18


def test_admin_page_through_the_session(client: TestClient, ctx: Context) -> None:
    AuthService(ctx.documents).add_user("root", "admin", "a long admin password")
    client.post("/login", data={"username": "root", "password": "a long admin password"})
    page = client.get("/admin")
    assert page.status_code == 200 and 'id="users"' in page.text and 'id="tokens"' in page.text
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    body = {"name": "pacs", "role": "modality"}
    assert client.post("/api/admin/tokens", json=body).status_code == 403  # no CSRF token
    made = client.post("/api/admin/tokens", json=body, headers={"X-CSRF-Token": token})
    assert made.status_code == 201 and made.json()["token"].startswith("rp_")
    assert "pacs" in client.get("/admin").text
