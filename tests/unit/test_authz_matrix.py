"""The authorization matrix: every route of every app, for every role and for no credential.

The routes are read from each app (``app.routes``), so a route added without an entry in
``MATRIX`` fails here until someone decides who may call it (and docs/security.md, "Roles and
access", says so). Each principal gets one of three outcomes:

* ``401``: no credential on a route that needs one;
* ``403``: a role the route refuses, and every such answer is in the audit log as
  ``access.denied`` (actor, ``METHOD /path`` with UIDs keyed);
* anything else (200, 303, 400, 404, 422, ...): admitted; the request got past the role check.

Separation of duties (DESIGN 6): ``admin`` manages users, tokens, rules and the system and is
not a clinical role; ``auditor`` reads the audit log.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from radpipe.common.api import keyed_path
from radpipe.common.context import Context
from radpipe.common.roles import ROLES

PUBLIC = frozenset({"anonymous", *ROLES})  # no credential needed
ANY = frozenset(ROLES)  # any signed-in role
CLINICAL = frozenset({"radiologist", "resident", "oncall"})
READERS = CLINICAL  # de-identified study data and alerts: clinical roles only (DESIGN 1)
RESPONDERS = frozenset({"oncall", "radiologist"})
READING = frozenset({"resident", "radiologist"})
RADIOLOGIST = frozenset({"radiologist"})
MODALITY = frozenset({"modality"})
ADMIN = frozenset({"admin"})
AUDITOR = frozenset({"auditor"})
TAT = frozenset({"manager", "admin"})  # DESIGN 4: analytics for managers and admins

DICOMWEB_READS = [
    "/dicom-web/studies",
    "/dicom-web/series",
    "/dicom-web/instances",
    "/dicom-web/studies/{study}/series",
    "/dicom-web/studies/{study}/instances",
    "/dicom-web/studies/{study}/series/{series}/instances",
    "/dicom-web/studies/{study}",
    "/dicom-web/studies/{study}/series/{series}",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}",
    "/dicom-web/studies/{study}/metadata",
    "/dicom-web/studies/{study}/series/{series}/metadata",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}/metadata",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{numbers}",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered",
    "/dicom-web/studies/{study}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/instances/{instance}/thumbnail",
]

#: (method, path template) -> the principals admitted. Keep docs/security.md in step.
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    # every app: health and metrics
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): ANY,
    # ingest: STOW-RS, QIDO-RS, WADO-RS
    ("POST", "/dicom-web/studies"): MODALITY,
    ("POST", "/dicom-web/studies/{study}"): MODALITY,
    **{(m, p): CLINICAL for p in DICOMWEB_READS for m in ("GET", "HEAD")},
    # portal: studies, reading, sign-off
    ("GET", "/api/studies"): READERS,
    ("GET", "/api/studies/{study_id}"): READERS,
    ("GET", "/api/studies/{study_id}/reads"): READERS,
    ("POST", "/api/studies/{study_id}/reads"): READING,
    ("POST", "/api/studies/{study_id}/reads/{read_id}/score"): RADIOLOGIST,
    ("GET", "/api/studies/{study_id}/identity"): CLINICAL,
    ("POST", "/api/studies/{study_id}/findings/{number}/decision"): RADIOLOGIST,
    ("GET", "/api/studies/{study_id}/findings/{number}/mask"): READERS,
    ("GET", "/api/studies/{study_id}/geometry"): READERS,
    ("POST", "/api/studies/{study_id}/sign"): RADIOLOGIST,
    ("GET", "/api/studies/{study_id}/overlay/{sop_uid}.png"): READERS,
    ("GET", "/api/residents/{name}/agreement"): READING,
    ("GET", "/residents/{name}"): READING,
    # The root: the worklist for clinical roles; the others are sent to their own screen.
    ("GET", "/"): READERS | {"admin", "manager", "auditor"},
    ("GET", "/studies/{study_id}"): READERS,
    ("GET", "/static/{name}"): ANY,
    ("GET", "/ohif"): CLINICAL,
    ("GET", "/ohif/{path:path}"): CLINICAL,
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    # portal: administration
    ("GET", "/admin"): ADMIN,
    ("GET", "/api/admin/users"): ADMIN,
    ("POST", "/api/admin/users"): ADMIN,
    ("POST", "/api/admin/users/{name}/disable"): ADMIN,
    ("POST", "/api/admin/users/{name}/role"): ADMIN,
    ("GET", "/api/admin/tokens"): ADMIN,
    ("POST", "/api/admin/tokens"): ADMIN,
    ("POST", "/api/admin/tokens/{name}/revoke"): ADMIN,
    ("GET", "/api/admin/routing"): ADMIN,
    ("PUT", "/api/admin/routing/{bundle}"): ADMIN,
    ("DELETE", "/api/admin/routing/{bundle}"): ADMIN,
    # portal: audit log
    ("GET", "/api/audit"): AUDITOR,
    # portal: turnaround analytics
    ("GET", "/api/tat"): TAT,
    ("GET", "/api/tat.csv"): TAT,
    ("GET", "/api/tat.parquet"): TAT,
    ("GET", "/api/tat/star.zip"): TAT,
    ("POST", "/api/tat/import"): TAT,
    ("GET", "/api/tat/imports/latest"): TAT,
    ("GET", "/api/tat/imports/{import_id}"): TAT,
    ("GET", "/api/tat/imports/{import_id}/flagged"): TAT,
    ("GET", "/tat"): TAT,
    ("GET", "/tat/assets/{name}"): TAT,
    # portal: model monitoring (aggregates per model version, no study data: docs/monitoring.md)
    ("GET", "/api/monitoring"): TAT,
    ("GET", "/monitoring"): TAT,
    ("GET", "/monitoring/assets/{name}"): TAT,
    # notify: alerts
    ("GET", "/api/alerts"): READERS,
    ("GET", "/api/alerts/{alert_id}"): READERS,
    ("POST", "/api/alerts/{alert_id}/ack"): RESPONDERS,
    ("POST", "/api/alerts/{alert_id}/close"): RESPONDERS,
    ("GET", "/api/alerts/config"): ADMIN,
    ("PUT", "/api/alerts/config"): ADMIN,
    ("GET", "/api/alerts/silences"): ADMIN,
    ("POST", "/api/alerts/silences"): ADMIN,
    ("DELETE", "/api/alerts/silences/{name}"): ADMIN,
    ("GET", "/api/alerts/schedules"): ADMIN,
    ("PUT", "/api/alerts/schedules/{name}"): ADMIN,
    ("DELETE", "/api/alerts/schedules/{name}"): ADMIN,
    ("POST", "/api/alerts/schedules/{name}/overrides"): ADMIN,
    ("DELETE", "/api/alerts/schedules/{name}/overrides/{number}"): ADMIN,
    ("GET", "/alerts/ack/{token}"): PUBLIC,
    ("POST", "/alerts/ack/{token}"): PUBLIC,
}

#: Requests the route table does not show: a query that turns a listing into an identity lookup.
EXTRA: list[tuple[str, str, frozenset[str]]] = [
    ("GET", "/api/studies?source_study_uid=1.2.840.99.1", CLINICAL),
]

#: A value for each path parameter (UIDs that are UIDs, a resident's own name, ...).
SAMPLES = {
    "study": "1.2.840.99.1",
    "series": "1.2.840.99.2",
    "instance": "1.2.840.99.3",
    "numbers": "1",
    "frame": "1",
    "path": "00282000",
    "study_id": "0" * 24,
    "read_id": "r1",
    "number": "1",
    "name": "test-resident",
    "sop_uid": "1.2.840.99.3",
    "alert_id": "nothing-v1",
    "token": "not-a-link",
    "bundle": "no_such_bundle",
    "import_id": "nothing",
}
APPS = ("ingest", "portal", "notify")


def _concrete(template: str, params: Any) -> str:
    path = template
    for name in params:
        # A resident's own pages name them; nothing else may touch a test token or user.
        value = "nobody" if name == "name" and "/residents/" not in template else SAMPLES.get(name)
        assert value is not None, f"no sample value for path parameter {name!r} of {template}"
        path = path.replace(f"{{{name}:path}}", value).replace(f"{{{name}}}", value)
    return path


def _flat(routes: list[Any]) -> Any:
    """Every route as served: FastAPI 0.165 wraps included routers (``effective_candidates``
    gives their routes with the include prefix); older versions list ``APIRoute`` directly."""
    for route in routes:
        if isinstance(route, APIRoute) or hasattr(route, "param_convertors"):
            yield route
        elif hasattr(route, "effective_candidates"):
            yield from _flat(list(route.effective_candidates()))
        else:
            raise AssertionError(f"{route!r} is neither a route nor a router: add it to the test")


def _routes(ctx: Context) -> list[tuple[str, str, str, str]]:
    """(app, method, template, concrete path) for every route of every app."""
    from radpipe.app import build_app

    found = []
    for name in APPS:
        for route in _flat(build_app(ctx, [name]).routes):
            for method in sorted(route.methods):
                found.append(
                    (name, method, route.path, _concrete(route.path, route.param_convertors))
                )
    return found


def test_every_route_has_an_entry(ctx: Context) -> None:
    missing = sorted(
        f"{method} {template} ({app})"
        for app, method, template, _ in _routes(ctx)
        if (method, template) not in MATRIX
    )
    assert not missing, "routes without an entry in MATRIX (decide who may call them):\n" + (
        "\n".join(missing)
    )


def _call(client: TestClient, method: str, path: str, principal: str, tokens: dict) -> Any:
    headers = {} if principal == "anonymous" else {"Authorization": f"Bearer {tokens[principal]}"}
    return client.request(method, path, headers=headers, follow_redirects=False)


@pytest.mark.parametrize("app_name", APPS)
def test_matrix_for_every_role_and_every_403_is_audited(
    app_name: str, ctx: Context, tokens: dict[str, str]
) -> None:
    from radpipe.app import build_app

    audit = ctx.documents.collection("audit")
    requests = [
        (method, path, MATRIX[(method, template)])
        for app, method, template, path in _routes(ctx)
        if app == app_name and (method, template) in MATRIX
    ]
    if app_name == "portal":
        requests += EXTRA
    wrong: list[str] = []
    denied: Counter[tuple[str, str]] = Counter()
    with TestClient(build_app(ctx, [app_name])) as client:
        for method, path, admitted in requests:
            for principal in ("anonymous", *ROLES):
                status = _call(client, method, path, principal, tokens).status_code
                if principal in admitted:
                    expected = "admitted"
                    ok = status not in (401, 403)
                elif principal == "anonymous":
                    expected, ok = "401", status == 401
                else:
                    expected, ok = "403", status == 403
                    target = keyed_path(ctx.settings.secret, path.split("?")[0])
                    denied[(f"test-{principal}", f"{method} {target}")] += 1
                if not ok:
                    wrong.append(f"{method} {path} as {principal}: {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)
    logged = Counter(
        (entry["actor"], entry["target"]) for entry in audit.find({"action": "access.denied"})
    )
    assert logged == denied
    assert "1.2.840.99" not in str(list(audit.find({})))  # UIDs from paths: keyed, never clear


def test_admin_is_not_a_clinical_role(ctx: Context, tokens: dict[str, str]) -> None:
    """The matrix in words: every clinical act and every view of study data refuses admin."""
    clinical_or_data = {
        key
        for key, admitted in MATRIX.items()
        if admitted & (CLINICAL | MODALITY)
        and admitted is not PUBLIC
        and admitted is not ANY
        and key != ("GET", "/")  # admin is redirected to /admin from there, shown nothing
    }
    assert clinical_or_data, "the matrix lists clinical routes"
    assert all("admin" not in MATRIX[key] for key in clinical_or_data)
    assert all("auditor" not in MATRIX[key] for key in MATRIX if key[1].startswith("/api/admin"))


def test_a_refused_csrf_check_is_audited_too(client: TestClient, ctx: Context) -> None:
    from radpipe.common.auth import AuthService

    AuthService(ctx.documents).add_user("ana", "radiologist", "correct horse battery")
    client.post("/login", data={"username": "ana", "password": "correct horse battery"})
    answer = client.post("/api/studies/nothing/sign")  # the cookie, no X-CSRF-Token
    assert answer.status_code == 403 and "CSRF" in answer.json()["detail"]
    [entry] = ctx.documents.collection("audit").find({"action": "access.denied"})
    assert (entry["actor"], entry["target"]) == ("ana", "POST /api/studies/nothing/sign")


def test_non_clinical_roles_are_sent_from_the_root_to_their_own_screen(
    ctx: Context, tokens: dict[str, str]
) -> None:
    """Admin, manager and auditor see no worklist (DESIGN 1): the root redirects them."""
    from radpipe.app import build_app

    with TestClient(build_app(ctx, ["portal"])) as client:
        for role, home in (("admin", "/admin"), ("manager", "/tat"), ("auditor", "/api/audit")):
            answer = client.get(
                "/", headers={"Authorization": f"Bearer {tokens[role]}"}, follow_redirects=False
            )
            assert (answer.status_code, answer.headers["location"]) == (303, home)
            assert "worklist" not in answer.text.lower()
        refused = client.get("/", headers={"Authorization": f"Bearer {tokens['modality']}"})
        assert refused.status_code == 403
