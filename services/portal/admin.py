"""Admin screens and their API: users (add, disable, change role), API tokens (create with
an optional expiry, list, revoke) and the bundles' routing rules (show; add, replace or disable
them per bundle, ``radpipe.common.routing``). Admin only; no clinical data here; every change
audited. On-call schedules and silences are the notify service's API (``/api/alerts/...``),
edited from this page by ``static/admin.js``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from radpipe.common import routing
from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.context import Context
from radpipe.common.errors import BadRequest, NotFound
from radpipe.common.roles import ROLES
from radpipe.common.studies import now

router = APIRouter(tags=["admin"])
Admin = Annotated[Principal, Depends(require("admin"))]


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


class RoutingIn(BaseModel):
    """An override of a bundle's routing rules (``radpipe.common.routing``)."""

    mode: routing.Mode
    rules: list[dict[str, Any]] = []
    reason: str = Field("", max_length=500)


def routing_table(ctx: Context) -> list[dict[str, Any]]:
    """Each installed bundle with its own rules, the admin's override and the rules in use;
    then overrides of bundles no longer installed (the router ignores them)."""
    stored = routing.overrides(ctx.documents)
    table = []
    for name, (_, declared) in sorted(routing.declared_bundles(ctx.settings.models_dir).items()):
        override = stored.pop(name, None)
        try:
            effective = [r.describe() for r in routing.effective_rules(declared, override)]
        except ValueError as exc:
            effective = [f"invalid override: {exc}"]
        table.append(
            {
                "bundle": name,
                "installed": True,
                "declared": [{"rule": r.to_dict(), "text": r.describe()} for r in declared],
                "override": _override(override),
                "effective": effective,
                "disabled": (override or {}).get("mode") == "disable",
            }
        )
    for name, override in sorted(stored.items()):
        table.append(
            {
                "bundle": name,
                "installed": False,
                "declared": [],
                "override": _override(override),
                "effective": [],
                "disabled": override.get("mode") == "disable",
            }
        )
    return table


def _override(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {k: doc.get(k) for k in ("mode", "rules", "reason", "updated_by", "updated_at")}


def _bundle_row(ctx: Context, bundle: str) -> dict[str, Any]:
    row = next((r for r in routing_table(ctx) if r["bundle"] == bundle), None)
    if row is None:
        raise NotFound(f"no bundle {bundle!r} is installed (see `radpipe models list`)")
    return row


@router.get("/api/admin/routing")
def list_routing(ctx: Ctx, _: Admin) -> list[dict[str, Any]]:
    return routing_table(ctx)


@router.put("/api/admin/routing/{bundle}")
def set_routing(bundle: str, body: RoutingIn, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    """Add rules before the bundle's own, replace them, or disable the bundle; the rules pass
    the checks of a bundle's own (400 naming the fault, nothing stored, if not)."""
    if bundle not in routing.declared_bundles(ctx.settings.models_dir):
        raise NotFound(f"no bundle {bundle!r} is installed; install it first (radpipe models add)")
    try:
        routing.set_override(
            ctx.documents, bundle, body.mode, body.rules, body.reason, caller.name, now()
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    AuthService(ctx.documents).audit(
        caller, "routing.override", bundle, mode=body.mode, rules=body.rules, reason=body.reason
    )
    return _bundle_row(ctx, bundle)


@router.delete("/api/admin/routing/{bundle}")
def reset_routing(bundle: str, ctx: Ctx, caller: Admin) -> dict[str, Any]:
    """Back to the bundle's own rules."""
    if not routing.clear_override(ctx.documents, bundle):
        raise NotFound(f"bundle {bundle!r} has no routing override")
    AuthService(ctx.documents).audit(caller, "routing.reset", bundle)
    return {"bundle": bundle, "reset": True}


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
        routing=routing_table(ctx),
        modes=routing.MODES,
    )
