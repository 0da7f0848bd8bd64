"""Security headers (services/common/headers.py): CSP without inline script, framing, sniffing,
referrer, HSTS only behind TLS; and the portal's templates stay within the policy."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from radpipe.common.context import Context
from radpipe.common.headers import HSTS, OHIF_CSP, PORTAL_CSP, SecurityHeaders, policy_for

TEMPLATES = Path(__file__).resolve().parents[2] / "services" / "portal" / "templates"


def _directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in csp.split("; ")}


def test_every_answer_carries_the_headers_and_no_hsts_over_plain_http(
    client: TestClient,
) -> None:
    for path, status in (("/login", 200), ("/api/studies", 401), ("/healthz", 200)):
        response = client.get(path)
        assert response.status_code == status, path
        assert response.headers["Content-Security-Policy"] == PORTAL_CSP
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert "Strict-Transport-Security" not in response.headers  # http, http public URL
    # The CSRF refusal is answered by an inner middleware: it is covered too.
    client.cookies.set("radpipe_session", "x" * 43)
    refused = client.post("/api/studies/x/sign")
    assert refused.status_code == 403 and refused.headers["X-Frame-Options"] == "DENY"


def test_portal_policy_allows_no_inline_script_eval_or_framing() -> None:
    policy = _directives(PORTAL_CSP)
    assert policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy_for("/studies/abc") == PORTAL_CSP
    assert policy_for("/ohifx") == PORTAL_CSP  # a prefix, not a path segment: not OHIF's
    ohif = _directives(policy_for("/ohif/viewer"))
    assert ohif == _directives(OHIF_CSP) and policy_for("/ohif") == OHIF_CSP
    assert ohif["frame-ancestors"] == ["'none'"] and ohif["connect-src"][0] == "'self'"
    assert "https:" not in OHIF_CSP and "*" not in OHIF_CSP  # never another origin
    assert "'unsafe-eval'" not in PORTAL_CSP  # only OHIF's bundle needs eval (its SEG/SR)


def test_templates_have_no_inline_script_or_event_handler() -> None:
    """What the portal policy forbids must not be in the pages: every script is a file of
    Radpipe's own origin or a JSON data block (not executed), and no on*= handler attribute."""
    templates = sorted(TEMPLATES.glob("*.html"))
    assert templates
    for template in templates:
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            same_origin = re.search(r'src="/[^/]', tag) is not None  # a file of Radpipe's
            assert same_origin or 'type="application/json"' in tag, (template, tag)
        assert not re.search(r"\son[a-z]+\s*=", text), template
        assert "javascript:" not in text, template


def test_hsts_when_the_request_came_over_tls_or_the_public_url_is_https(
    ctx: Context, client: TestClient
) -> None:
    https = TestClient(client.app, base_url="https://testserver")
    assert https.get("/healthz").headers["Strict-Transport-Security"] == HSTS
    ctx.settings.public_url = "https://radpipe.example.org"  # type: ignore[assignment]
    assert client.get("/healthz").headers["Strict-Transport-Security"] == HSTS


def test_middleware_alone_keeps_a_route_s_own_policy_and_answers_headers() -> None:
    async def page(request: object) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Content-Security-Policy": "default-src 'none'"})

    app = Starlette(routes=[Route("/x", page)])
    app.add_middleware(SecurityHeaders, hsts=True)
    response = TestClient(app).get("/x")
    assert response.headers["Content-Security-Policy"] == "default-src 'none'"
    assert response.headers["Strict-Transport-Security"] == HSTS
    assert response.headers["X-Content-Type-Options"] == "nosniff"
