"""Admin screens and their API: users (add, disable, change role) and API tokens (create with
an optional expiry, list, revoke). Admin only; no clinical data here; every change audited."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.errors import BadRequest
from radpipe.common.roles import ROLES
from radpipe.common.studies import now

router = APIRouter(tags=["admin"])
Admin = Annotated[Principal, Depends(require())]


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    role: str
    password: str


class RoleIn(BaseModel):
    role: str


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str
    expires_at: datetime | None = None


@router.get("/api/admin/users")
def list_users(ctx: Ctx, _: Admin) -> list[dict[str, Any]]:
    return AuthService(ctx.documents).list_users()


@router.post("/api/admin/users", status_code=201)
def add_user(body: UserIn, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    auth = AuthService(ctx.documents)
    auth.add_user(body.name, body.role, body.password)
    auth.audit(caller, "user.add", body.name, role=body.role)
    return {"name": body.name, "role": body.role, "disabled": False}


@router.post("/api/admin/users/{name}/disable")
def disable_user(name: str, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    auth = AuthService(ctx.documents)
    auth.disable_user(name)
    auth.audit(caller, "user.disable", name)
    return {"name": name, "disabled": True}


@router.post("/api/admin/users/{name}/role")
def set_role(name: str, body: RoleIn, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    auth = AuthService(ctx.documents)
    auth.set_role(name, body.role)
    auth.audit(caller, "user.role", name, role=body.role)
    return {"name": name, "role": body.role}


@router.get("/api/admin/tokens")
def list_tokens(ctx: Ctx, _: Admin) -> list[dict[str, Any]]:
    return AuthService(ctx.documents).list_tokens()


@router.post("/api/admin/tokens", status_code=201)
def create_token(body: TokenIn, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    """A new token, shown in this answer only (it is stored hashed)."""
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise BadRequest("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
    if body.expires_at is not None and body.expires_at <= now():
        raise BadRequest("expires_at is in the past")
    auth = AuthService(ctx.documents)
    token = auth.create_token(body.name, body.role, body.expires_at)
    auth.audit(caller, "token.create", body.name, role=body.role)
    return {"name": body.name, "role": body.role, "expires_at": body.expires_at, "token": token}


@router.post("/api/admin/tokens/{name}/revoke")
def revoke_token(name: str, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    auth = AuthService(ctx.documents)
    revoked = auth.revoke_token(name)
    auth.audit(caller, "token.revoke", name, count=revoked)
    return {"name": name, "revoked": revoked}


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, ctx: Ctx, caller: Admin) -> Response:
    from .api import _page

    auth = AuthService(ctx.documents)
    return _page(
        request,
        ctx,
        "admin.html",
        caller,
        users=auth.list_users(),
        tokens=auth.list_tokens(),
        roles=ROLES,
    )
