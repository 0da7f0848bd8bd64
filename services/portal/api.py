"""Portal routes: the JSON API and the server-rendered pages (login, worklist, study)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from radpipe.common.api import SESSION_COOKIE, Caller, Ctx, require
from radpipe.common.auth import SESSION_IDLE, AuthService, LoginLocked, Principal, csrf_token
from radpipe.common.errors import BadRequest, Forbidden, NotFound, Unauthorized
from radpipe.common.roles import CLINICAL_ROLES
from radpipe.common.studies import StudyState

from . import agreement, reading, review, service, viewer
from .service import StudyView

router = APIRouter(tags=["portal"])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATIC = Path(__file__).parent / "static"
STATIC_FILES = frozenset({"viewer.js", "session.js", "worklist.js", "admin.js"})
#: Study data, even de-identified, is clinical: managers see TAT aggregates and auditors the
#: audit log (DESIGN 1), neither reads studies.
Reader = Annotated[Principal, Depends(require("radiologist", "resident", "oncall"))]
#: Where each role starts after sign-in; the worklist for the clinical roles.
HOME = {"admin": "/admin", "manager": "/tat", "auditor": "/api/audit"}


class Filters(BaseModel):
    """Worklist filters (query parameters); empty strings, as a form sends them, mean none."""

    modality: str = ""
    source: str = ""
    risk: Literal["high", "moderate", "low", "none", "pending", ""] = ""
    since: str = ""
    until: str = ""

    def to_filter(self) -> service.WorklistFilter:
        return service.WorklistFilter(
            modality=self.modality or None,
            source=self.source or None,
            risk=self.risk or None,
            since=_moment("since", self.since),
            until=_moment("until", self.until),
        )


def _moment(name: str, text: str) -> datetime | None:
    """An ISO 8601 date or date-time; UTC when it names no zone."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(
            f"{name} is an ISO 8601 date or time, e.g. 2026-12-01; got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


Clinical = Annotated[Principal, Depends(require(*sorted(CLINICAL_ROLES)))]
Radiologist = Annotated[Principal, Depends(require("radiologist", admin=False))]
Teaching = Annotated[Principal, Depends(require("resident", "radiologist", admin=False))]
ReadingRole = Annotated[Principal, Depends(require("resident", "radiologist", admin=False))]


@router.get("/api/studies")
def list_studies(
    ctx: Ctx,
    caller: Reader,
    filters: Annotated[Filters, Depends()],
    state: StudyState | None = None,
    source_study_uid: str | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    if source_study_uid is not None:
        studies = service.lookup_source_study(ctx, caller, source_study_uid)
        return {"total": len(studies), "offset": 0, "limit": limit, "studies": studies}
    studies, total = service.list_studies(
        ctx,
        state=str(state) if state else None,
        offset=offset,
        limit=limit,
        viewer=caller,
        filters=filters.to_filter(),
    )
    _audit_list(ctx, caller, studies)
    return {"total": total, "offset": offset, "limit": limit, "studies": studies}


def _audit_list(ctx: Ctx, caller: Principal, studies: list[StudyView]) -> None:
    """A list shows study data too: one audit entry naming the studies shown."""
    AuthService(ctx.documents).audit(
        caller, "studies.list", f"{len(studies)} studies", ids=[s.id for s in studies]
    )


@router.get("/api/studies/{study_id}")
def get_study(study_id: str, ctx: Ctx, caller: Reader) -> StudyView:
    study = service.public_study(ctx, ctx.studies.get(study_id), caller)
    AuthService(ctx.documents).audit(caller, "study.view", study_id)
    return study


@router.post("/api/studies/{study_id}/reads", status_code=201)
def post_read(study_id: str, body: reading.ReadIn, ctx: Ctx, caller: ReadingRole) -> dict[str, Any]:
    """Commit a read (resident or radiologist); answers it with its comparison to the AI."""
    return reading.post_read(ctx, caller, study_id, body)


@router.get("/api/studies/{study_id}/reads")
def list_reads(study_id: str, ctx: Ctx, caller: Reader) -> list[dict[str, Any]]:
    AuthService(ctx.documents).audit(caller, "study.reads.view", study_id)
    return reading.list_reads(ctx, caller, study_id)


@router.post("/api/studies/{study_id}/reads/{read_id}/score")
def score_read(
    study_id: str, read_id: str, body: reading.ScoreIn, ctx: Ctx, caller: Radiologist
) -> dict[str, Any]:
    """The attending's RADPEER score (1, 2a, 2b, 3a, 3b; a comment from 2b)."""
    return reading.score_read(ctx, caller, study_id, read_id, body)


@router.get("/api/studies/{study_id}/identity")
def get_identity(study_id: str, ctx: Ctx, caller: Clinical) -> dict[str, Any]:
    """The re-identification vault: an identity lookup, clinical roles only (403 and
    ``access.denied`` for the others); every read is audited (``identity.lookup``)."""
    return service.read_identity(ctx, caller, study_id)


@router.post("/api/studies/{study_id}/findings/{number}/decision")
def decide(
    study_id: str, number: int, body: review.DecisionIn, ctx: Ctx, caller: Radiologist
) -> dict[str, Any]:
    """Accept, reject (with a reason) or edit (with a diameter, or a mask in the encoding of
    ``radpipe.common.masks``) finding ``number`` (from 1)."""
    return review.decide(ctx, caller, study_id, number, body)


@router.get("/api/studies/{study_id}/findings/{number}/mask")
def finding_mask(study_id: str, number: int, ctx: Ctx, caller: Reader) -> dict[str, Any]:
    """Finding ``number``'s mask as it stands (edited, else the AI's SEG segment), encoded
    ``rle-slices-v1``; 404 for a resident before the read."""
    mask = review.current_mask(ctx, caller, study_id, number)
    AuthService(ctx.documents).audit(caller, "study.mask.view", study_id, finding=number)
    return mask


@router.get("/api/studies/{study_id}/geometry")
def geometry(study_id: str, ctx: Ctx, caller: Reader) -> dict[str, Any]:
    """The voxel grid masks are drawn in (the analysed series: its UID, [slices, rows,
    columns], spacing in mm); it tells nothing of the AI result."""
    grid = viewer.geometry(ctx, ctx.studies.get(study_id))
    AuthService(ctx.documents).audit(caller, "study.geometry.view", study_id)
    return grid.to_dict()


@router.post("/api/studies/{study_id}/sign")
def sign(study_id: str, ctx: Ctx, caller: Radiologist) -> dict[str, Any]:
    """409 while a finding is undecided; then 200, the study ``signed``, the report stored."""
    signed = review.sign(ctx, caller, study_id)
    return {"study_id": study_id, "state": "signed", **signed}


@router.get("/api/residents/{name}/agreement")
def resident_agreement(name: str, ctx: Ctx, caller: Teaching) -> dict[str, Any]:
    """A resident's reads over time, with Cohen's kappa against the AI and the attendings."""
    return agreement.agreement(ctx, caller, name)


@router.get("/residents/{name}", response_class=HTMLResponse)
def resident_page(name: str, request: Request, ctx: Ctx, caller: Teaching) -> Response:
    return _page(request, ctx, "resident.html", caller, **agreement.agreement(ctx, caller, name))


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, error: str | None = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": error})


@router.post("/login")
def login(
    request: Request,
    ctx: Ctx,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    """Sign in (audited, failures too); 429 with ``Retry-After`` and the time to retry while
    the user name or the client address is locked (``radpipe.common.auth``)."""
    address = request.client.host if request.client else "-"
    try:
        session = AuthService(ctx.documents).login(username, password, address)
    except LoginLocked as locked:
        page = templates.TemplateResponse(
            request, "login.html", {"error": None, "locked": locked.message}, status_code=429
        )
        page.headers["Retry-After"] = str(locked.retry_after)
        return page
    except Unauthorized:
        return RedirectResponse("/login?error=1", status_code=303)
    role = AuthService(ctx.documents).authenticate_session(session).role
    # Admins, managers and auditors see no clinical data: each starts on its own screen.
    response = RedirectResponse(HOME.get(role, "/"), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        httponly=True,
        samesite="strict",
        secure=str(ctx.settings.public_url).startswith("https"),
        # No Max-Age/Expires: the cookie ends with the browser; the server ends the session
        # after SESSION_LIFETIME, or SESSION_IDLE without a request.
    )
    return response


@router.post("/logout")
def logout(request: Request, ctx: Ctx) -> Response:
    """End the session on the server (audited ``auth.logout``)."""
    if session := request.cookies.get(SESSION_COOKIE):
        AuthService(ctx.documents).logout(session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def worklist(
    request: Request,
    ctx: Ctx,
    caller: Caller,
    filters: Annotated[Filters, Depends()],
    state: StudyState | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    if caller.role not in CLINICAL_ROLES:
        if caller.role in HOME:  # a non-clinical user who opened the portal's root
            return RedirectResponse(HOME[caller.role], status_code=303)
        raise Forbidden(f"role {caller.role!r} has no portal pages; it uses the API")
    # Highest AI risk first, across all studies (the store's worklist order): reordering,
    # not just flagging, is what shortens waits.
    studies, total = service.list_studies(
        ctx,
        state=str(state) if state else None,
        offset=offset,
        limit=limit,
        viewer=caller,
        filters=filters.to_filter(),
    )
    _audit_list(ctx, caller, studies)
    shown = {k: v for k, v in request.query_params.items() if k not in ("offset", "limit")}
    return _page(
        request,
        ctx,
        "worklist.html",
        caller,
        studies=studies,
        total=total,
        offset=offset,
        limit=limit,
        params=shown,
        states=[str(s) for s in StudyState],
        sources=ctx.studies.known_sources(),
        can_ack=caller.role in ("oncall", "radiologist"),
        alerts=service.open_alerts(ctx, viewer=caller),
    )


def _page(request: Request, ctx: Ctx, name: str, caller: Principal, **context: Any) -> Response:
    """A page for a signed-in user, with the session's CSRF token for its forms and scripts."""
    session = request.cookies.get(SESSION_COOKIE)
    token = csrf_token(ctx.settings.secret, session) if session else ""
    idle = int(SESSION_IDLE.total_seconds())
    return templates.TemplateResponse(
        request, name, {"user": caller, "csrf_token": token, "idle_seconds": idle, **context}
    )


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(study_id: str, request: Request, ctx: Ctx, caller: Reader) -> Response:
    doc = ctx.studies.get(study_id)
    study = service.public_study(ctx, doc, caller)
    AuthService(ctx.documents).audit(caller, "study.view", study_id)
    if not any(e.get("type") == "opened" for e in doc.get("events", [])):
        # The first time a reader opens the study: a turnaround stage (docs/tat.md).
        ctx.studies.add_event(study_id, "opened", {"role": caller.role})
    return _page(request, ctx, "study.html", caller, **service.study_page(ctx, doc, study, caller))


@router.get("/api/studies/{study_id}/overlay/{sop_uid}.png")
def overlay(study_id: str, sop_uid: str, ctx: Ctx, caller: Reader) -> Response:
    """The AI segmentation on one slice as a transparent PNG (for the viewer)."""
    png = viewer.overlay_png(ctx, caller, study_id, sop_uid)
    AuthService(ctx.documents).audit(caller, "study.overlay", study_id, slice=sop_uid)
    return Response(png, media_type="image/png")


@router.get("/static/{name}")
def static(name: str, _: Caller) -> Response:
    """The portal's own scripts (no CDN; no clinical data, so any signed-in role, the admin
    screen's included); only the files shipped in ``static/``."""
    if name not in STATIC_FILES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(
        STATIC / name,
        media_type="text/javascript",
        headers={"Cache-Control": "private, max-age=300"},
    )
