"""FastAPI plumbing shared by every HTTP service: dependencies, error mapping, health.

Routes read like prose through ``Annotated`` aliases (``Ctx``, ``Caller``); tests swap
adapters with ``app.dependency_overrides``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .audit import keyed
from .auth import AuthService, LoginLocked, Principal, csrf_token
from .bodylimit import BodyLimit
from .context import Context
from .errors import Forbidden, RadpipeError, Unauthorized
from .headers import SecurityHeaders
from .logging import get_logger
from .metrics import refresh_gauges

log = get_logger("radpipe.api")
SESSION_COOKIE = "radpipe_session"
#: A UID anywhere in a path (PS3.5 9.1: digits and dots); three components at least.
_UID = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+){2,}")


def get_ctx(request: Request) -> Context:
    context: Context = request.app.state.context
    return context


Ctx = Annotated[Context, Depends(get_ctx)]


def get_principal(request: Request, ctx: Ctx) -> Principal:
    auth = AuthService(ctx.documents)
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        principal = auth.authenticate_token(header[7:].strip())
    elif session := request.cookies.get(SESSION_COOKIE):
        principal = auth.authenticate_session(session)
    else:
        raise Unauthorized(
            "authentication required: send `Authorization: Bearer <token>` "
            "(create one with `radpipe token create`) or log in at /login"
        )
    request.state.principal = principal  # for the audit of a refusal (``_radpipe_error``)
    return principal


Caller = Annotated[Principal, Depends(get_principal)]


def require(*roles: str, admin: bool = False) -> Callable[..., Principal]:
    """A dependency that admits only ``roles``. ``admin`` is admitted only where named (or with
    ``admin=True``): it manages users, tokens, rules and the system and is not a clinical role
    (separation of duties; the matrix is ``tests/unit/test_authz_matrix.py``). Every refusal
    is written to the audit log (``access.denied``, the method and path as target) by the
    error handler, as is any other 403."""
    admitted = frozenset(roles) | ({"admin"} if admin else set())
    if not admitted:
        raise ValueError("require() needs at least one role")
    needed = ", ".join(sorted(admitted))

    def check(principal: Caller) -> Principal:
        if principal.role not in admitted:
            raise Forbidden(f"role {principal.role!r} may not do this; it needs one of: {needed}")
        return principal

    return check


def keyed_path(master: bytes, path: str) -> str:
    """``path`` with every UID in it keyed (``radpipe.common.audit.keyed``): a refused
    request may name original UIDs, which the log never holds in clear."""
    return _UID.sub(lambda uid: keyed(master, uid.group()), path)


def audit_denied(request: Request, principal: Principal) -> None:
    """``access.denied`` for a refused request, the method and (UID-keyed) path as target."""
    context: Context = request.app.state.context
    path = keyed_path(context.settings.secret, request.url.path)
    AuthService(context.documents).audit(principal, "access.denied", f"{request.method} {path}")


async def _radpipe_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RadpipeError)
    principal = getattr(request.state, "principal", None)
    if exc.status == 403 and principal is not None:
        await run_in_threadpool(audit_denied, request, principal)
    if (
        exc.status == 401
        and "text/html" in request.headers.get("accept", "")
        and not request.url.path.startswith(("/api", "/dicom-web"))
    ):
        return RedirectResponse("/login", status_code=303)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, LoginLocked):
        headers = {"Retry-After": str(exc.retry_after)}
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
        if ctx.settings.all_in_one:  # radpipe up's workers, as its supervisor sees them
            from radpipe.stack import worker_problems

            problems = worker_problems(ctx.settings.data_dir)
            checks["workers"] = "; ".join(f"{n}: {p}" for n, p in problems.items()) or "ok"
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
    # Innermost: a JSON or form body over RADPIPE_MAX_JSON_BYTES is refused (413) unread.
    app.add_middleware(BodyLimit, limit=lambda: context.settings.max_json_bytes)
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


def _audit_csrf_refusal(request: Request, context: Context, session: str) -> None:
    """A refused state change is audited like any 403, when the session is still valid."""
    try:
        principal = AuthService(context.documents).authenticate_session(session)
    except Unauthorized:
        return
    audit_denied(request, principal)


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
            await run_in_threadpool(_audit_csrf_refusal, request, context, session)
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
