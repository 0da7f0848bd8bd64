"""Admin screens and API: users (add, disable, change role), tokens (create with expiry, list,
revoke); admin only (403 and audited for anyone else); the page through the session."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from radpipe.common.auth import AuthService
from radpipe.common.context import Context
from radpipe.common.routing import ROUTING_RULES
from radpipe.inference.registry import discover, route
from radpipe.notify.rules import on_call
from radpipe.notify.service import config_of


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


def test_routing_rules_shown_overridden_and_reset(client: TestClient, ctx: Context, tokens) -> None:
    admin = bearer(tokens["admin"])
    [demo] = client.get("/api/admin/routing", headers=admin).json()
    assert demo["bundle"] == "lung_nodule_demo" and demo["override"] is None
    [declared] = demo["declared"]
    assert declared["rule"]["modality"] == ["CT"] and declared["rule"]["min_instances"] == 3
    assert demo["effective"] == [declared["text"]]
    # min_instances is shown as what it counts: images, i.e. frames of multi-frame instances
    assert ">= 3 images (frames)" in declared["text"]
    page = client.get("/admin", headers=admin)
    assert page.status_code == 200 and "Min. images (frames)" in page.text
    assert "&gt;= 3 images (frames)" in page.text  # the bundle's rule, HTML-escaped

    url = "/api/admin/routing/lung_nodule_demo"
    added = {
        "mode": "add",
        "rules": [{"modality": ["MR"], "body_part": ["CHEST"]}],
        "reason": "MR trial",
    }
    answer = client.put(url, json=added, headers=admin)
    assert answer.status_code == 200, answer.text
    row = answer.json()
    assert row["override"]["mode"] == "add" and row["override"]["updated_by"] == "test-admin"
    assert row["effective"] == [
        "modality in ['MR'], body_part in ['CHEST'] [admin]",
        declared["text"],
    ]
    stored = ctx.documents.collection(ROUTING_RULES).find_one({"_id": "lung_nodule_demo"})
    assert stored["rules"] == added["rules"] and stored["reason"] == "MR trial"
    # The router sees it: an MR chest series now goes to the demo bundle.
    mr = {"modality": "MR", "body_part": "CHEST", "sop_class_uid": "1.2.3", "keys": ["k"]}
    entry, _, rule = route(discover(None, ctx.documents), [mr])
    assert entry.name == "lung_nodule_demo" and rule.origin == "admin"

    # Bad rules: 400 naming the fault, and the stored override unchanged.
    for bad, message in (
        ({"mode": "replace", "rules": [{"series_description": "[a-"}]}, "not a regular expression"),
        ({"mode": "add", "rules": [{"organ": ["lung"]}]}, "unknown routing key"),
        ({"mode": "disable", "rules": [{"modality": ["CT"]}]}, "takes no rules"),
    ):
        refused = client.put(url, json=bad, headers=admin)
        assert refused.status_code == 400 and message in refused.json()["detail"], refused.text
    assert client.put(url, json={"mode": "pause"}, headers=admin).status_code == 422
    assert ctx.documents.collection(ROUTING_RULES).find_one({"_id": "lung_nodule_demo"}) == stored
    missing = client.put("/api/admin/routing/nope", json=added, headers=admin)
    assert missing.status_code == 404 and "installed" in missing.json()["detail"]
    assert ctx.documents.collection(ROUTING_RULES).find_one({"_id": "nope"}) is None

    disabled = client.put(url, json={"mode": "disable", "reason": "recall"}, headers=admin).json()
    assert disabled["disabled"] and disabled["effective"] == []
    assert client.delete(url, headers=admin).json() == {"bundle": "lung_nodule_demo", "reset": True}
    assert client.delete(url, headers=admin).status_code == 404
    assert client.get("/api/admin/routing", headers=admin).json()[0]["override"] is None

    audit = list(
        ctx.documents.collection("audit").find(
            {"action": {"$in": ["routing.override", "routing.reset"]}}
        )
    )
    assert [(a["action"], a["target"]) for a in audit] == [
        ("routing.override", "lung_nodule_demo"),
        ("routing.override", "lung_nodule_demo"),
        ("routing.reset", "lung_nodule_demo"),
    ]
    assert audit[0]["detail"]["mode"] == "add"


def test_silences_listed_added_and_removed(client: TestClient, ctx: Context, tokens) -> None:
    admin = bearer(tokens["admin"])
    start = datetime.now(UTC) - timedelta(minutes=5)
    silence = {
        "name": "ct-2-service",
        "source": "CT_ROOM_2",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=2)).isoformat(),
        "reason": "scanner service: test images",
    }
    made = client.post("/api/alerts/silences", json=silence, headers=admin)
    assert made.status_code == 201, made.text
    assert made.json()["active"] is True and made.json()["reason"] == silence["reason"]
    assert client.post("/api/alerts/silences", json=silence, headers=admin).status_code == 409
    backwards = {**silence, "name": "b", "ends_at": (start - timedelta(hours=1)).isoformat()}
    refused = client.post("/api/alerts/silences", json=backwards, headers=admin)
    assert refused.status_code == 400 and "after starts_at" in refused.json()["detail"]
    ended = {
        **silence,
        "name": "c",
        "starts_at": (start - timedelta(days=2)).isoformat(),
        "ends_at": (start - timedelta(days=1)).isoformat(),
    }
    assert client.post("/api/alerts/silences", json=ended, headers=admin).status_code == 400
    later = {
        **silence,
        "name": "night",
        "starts_at": (start + timedelta(days=1)).isoformat(),
        "ends_at": (start + timedelta(days=1, hours=8)).isoformat(),
    }
    assert client.post("/api/alerts/silences", json=later, headers=admin).status_code == 201
    listed = client.get("/api/alerts/silences", headers=admin).json()
    assert [(s["name"], s["active"]) for s in listed] == [("ct-2-service", True), ("night", False)]
    # The notify service uses it: its configuration holds both.
    assert [s.name for s in config_of(ctx).silences] == ["ct-2-service", "night"]

    assert client.delete("/api/alerts/silences/night", headers=admin).json()["removed"]
    assert client.delete("/api/alerts/silences/night", headers=admin).status_code == 404
    assert [s.name for s in config_of(ctx).silences] == ["ct-2-service"]
    actions = [a["action"] for a in ctx.documents.collection("audit").find({"role": "admin"})]
    assert actions.count("alert.silence.add") == 2 and actions.count("alert.silence.remove") == 1


def test_schedules_and_overrides(client: TestClient, ctx: Context, tokens) -> None:
    admin = bearer(tokens["admin"])
    start = datetime.now(UTC) - timedelta(hours=1)
    rotation = {"people": ["ana", "ben"], "starts_at": start.isoformat(), "shift_hours": 12}
    made = client.put("/api/alerts/schedules/chest", json=rotation, headers=admin)
    assert made.status_code == 200, made.text
    assert made.json()["on_call_now"] == "ana" and made.json()["overrides"] == []
    swap = {
        "person": "cy",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=3)).isoformat(),
    }
    added = client.post("/api/alerts/schedules/chest/overrides", json=swap, headers=admin)
    assert added.status_code == 201 and added.json()["on_call_now"] == "cy"
    assert on_call(config_of(ctx), "chest", datetime.now(UTC)) == "cy"
    bad = {**swap, "ends_at": start.isoformat()}
    assert (
        client.post("/api/alerts/schedules/chest/overrides", json=bad, headers=admin).status_code
        == 400
    )
    nobody = client.post("/api/alerts/schedules/none/overrides", json=swap, headers=admin)
    assert nobody.status_code == 404 and "no on-call schedule" in nobody.json()["detail"]
    assert len(config_of(ctx).schedules[0].overrides) == 1  # nothing stored by the refusals
    # A new rotation keeps the overrides.
    again = client.put(
        "/api/alerts/schedules/chest", json={**rotation, "people": ["dee"]}, headers=admin
    )
    assert again.json()["rotation"]["people"] == ["dee"] and len(again.json()["overrides"]) == 1
    removed = client.delete("/api/alerts/schedules/chest/overrides/1", headers=admin)
    assert removed.json()["on_call_now"] == "dee" and removed.json()["overrides"] == []
    assert (
        client.delete("/api/alerts/schedules/chest/overrides/1", headers=admin).status_code == 404
    )
    [listed] = client.get("/api/alerts/schedules", headers=admin).json()
    assert listed["name"] == "chest" and listed["on_call_now"] == "dee"
    # A schedule the escalation chain pages cannot be removed until the chain changes.
    chain = {"escalation": [{"schedule": "chest"}]}
    assert client.put("/api/alerts/config", json=chain, headers=admin).status_code == 200
    assert client.delete("/api/alerts/schedules/chest", headers=admin).status_code == 409
    assert (
        client.put("/api/alerts/config", json={"escalation": []}, headers=admin).status_code == 200
    )
    assert client.delete("/api/alerts/schedules/chest", headers=admin).json()["removed"]
    assert client.get("/api/alerts/schedules", headers=admin).json() == []


def test_routing_silences_and_schedules_are_admin_only(
    client: TestClient, ctx: Context, tokens
) -> None:
    for role in ("radiologist", "resident", "oncall", "manager", "auditor", "modality"):
        headers = bearer(tokens[role])
        for method, url in (
            ("GET", "/api/admin/routing"),
            ("PUT", "/api/admin/routing/lung_nodule_demo"),
            ("DELETE", "/api/admin/routing/lung_nodule_demo"),
            ("GET", "/api/alerts/silences"),
            ("POST", "/api/alerts/silences"),
            ("DELETE", "/api/alerts/silences/x"),
            ("GET", "/api/alerts/schedules"),
            ("PUT", "/api/alerts/schedules/x"),
            ("POST", "/api/alerts/schedules/x/overrides"),
        ):
            body = {"mode": "disable"} if method == "PUT" else None
            answer = client.request(method, url, json=body, headers=headers)
            assert answer.status_code == 403, (role, method, url, answer.status_code)
    assert ctx.documents.collection(ROUTING_RULES).find_one({}) is None
    denied = ctx.documents.collection("audit").count_documents({"action": "access.denied"})
    assert denied == 6 * 9
