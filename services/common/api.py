"""FastAPI plumbing shared by every HTTP service: dependencies, error mapping, health.

Routes read like prose through ``Annotated`` aliases (``Ctx``, ``Caller``); tests swap
adapters with ``app.dependency_overrides``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .auth import AuthService, Principal, csrf_token
from .context import Context
from .errors import Forbidden, RadpipeError, Unauthorized
from .headers import SecurityHeaders
from .logging import get_logger
from .metrics import refresh_gauges

log = get_logger("radpipe.api")
SESSION_COOKIE = "radpipe_session"


def get_ctx(request: Request) -> Context:
    context: Context = request.app.state.context
    return context


Ctx = Annotated[Context, Depends(get_ctx)]


def get_principal(request: Request, ctx: Ctx) -> Principal:
    auth = AuthService(ctx.documents)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return auth.authenticate_token(header[7:].strip())
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        return auth.authenticate_session(session)
    raise Unauthorized(
        "authentication required: send `Authorization: Bearer <token>` "
        "(create one with `radpipe token create`) or log in at /login"
    )


Caller = Annotated[Principal, Depends(get_principal)]


def require(*roles: str, admin: bool = True) -> Callable[..., Principal]:
    """A dependency that admits only ``roles`` (and ``admin``, unless ``admin=False``: clinical
    acts such as signing are not the administrator's); every refusal is written to the audit
    log (``access.denied``, the method and path as target)."""

    def check(principal: Caller, request: Request, ctx: Ctx) -> Principal:
        if principal.role not in roles and not (admin and principal.role == "admin"):
            AuthService(ctx.documents).audit(
                principal, "access.denied", f"{request.method} {request.url.path}"
            )
            raise Forbidden(
                f"role {principal.role!r} may not do this; it needs one of: {', '.join(roles)}"
            )
        return principal

    return check


async def _radpipe_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RadpipeError)
    if (
        exc.status == 401
        and "text/html" in request.headers.get("accept", "")
        and not request.url.path.startswith(("/api", "/dicom-web"))
    ):
        return RedirectResponse("/login", status_code=303)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(
        {"error": type(exc).__name__, "detail": exc.message}, exc.status, headers=headers
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """405 answers list every method the path allows (PS3.18 8.3), not just the first route's."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != 405:
        return await http_exception_handler(request, exc)
    methods = {"OPTIONS"}
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.routes):
            methods.add(method)
    allowed = ", ".join(sorted(methods))
    return JSONResponse(
        {
            "error": "MethodNotAllowed",
            "detail": f"{request.method} is not supported here; use {allowed}",
        },
        405,
        headers={"Allow": allowed},
    )


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz(ctx: Ctx) -> Response:
        checks: dict[str, str] = {}
        for name, probe in (
            ("broker", ctx.tasks.ping),
            ("objects", ctx.objects.ping),
            ("documents", ctx.documents.ping),
        ):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # readiness reports, it does not raise
                checks[name] = f"unavailable: {type(exc).__name__}"
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)

    @router.get("/metrics")
    def metrics(ctx: Ctx, _: Caller) -> Response:
        refresh_gauges(ctx)
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def create_app(context: Context, routers: Iterable[APIRouter], title: str) -> FastAPI:
    # The interactive API docs stay off: every endpoint but health requires authentication.
    app = FastAPI(title=title, version="0.1.0", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.context = context
    app.add_exception_handler(RadpipeError, _radpipe_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Browser viewers (OHIF) on another origin send bearer tokens, never cookies, so
    # credentials stay off and the preflight answers for Authorization.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=context.settings.cors_origins,
        allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Accept"],
        expose_headers=["Warning", "Content-Type", "Content-Location"],
        allow_credentials=False,
        max_age=600,
    )
    app.middleware("http")(_csrf_and_no_store)
    app.add_middleware(SecurityHeaders)  # CSP, frame, sniffing, referrer, HSTS: headers.py
    app.include_router(health_router())
    for router in routers:
        app.include_router(router)
    return app


#: State-changing requests that carry no session to protect: the login form, and the signed
#: single-use acknowledgement links (their token is the credential).
_CSRF_EXEMPT = ("/login", "/alerts/ack/")
CSRF_HEADER = "X-CSRF-Token"


async def _csrf_and_no_store(request: Request, call_next: Callable[..., Any]) -> Response:
    """CSRF: a state-changing request authenticated by the session cookie must carry the
    session's token (header ``X-CSRF-Token``, or ``?csrf=`` on a form's action); bearer-token
    requests are not sent by browsers on their own and need none. Every answer but the static
    scripts and viewer bundles is ``Cache-Control: no-store`` (no clinical data in a browser or
    proxy cache)."""
    session = request.cookies.get(SESSION_COOKIE)
    if (
        request.method not in ("GET", "HEAD", "OPTIONS")
        and session
        and not request.headers.get("authorization", "").lower().startswith("bearer ")
        and not request.url.path.startswith(_CSRF_EXEMPT)
    ):
        context: Context = request.app.state.context
        expected = csrf_token(context.settings.secret, session)
        sent = request.headers.get(CSRF_HEADER) or request.query_params.get("csrf") or ""
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return JSONResponse(
                {
                    "error": "Forbidden",
                    "detail": f"missing or wrong CSRF token: send the page's token in "
                    f"{CSRF_HEADER} (reload the page if the session changed)",
                },
                403,
                headers={"Cache-Control": "no-store"},
            )
    response: Response = await call_next(request)
    own = request.url.path.startswith(("/static/", "/ohif/"))  # scripts set their own
    if not (own and "cache-control" in response.headers):
        response.headers["Cache-Control"] = "no-store"
    return response
