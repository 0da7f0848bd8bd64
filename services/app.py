"""Composition root: the HTTP apps of each service and of the all-in-one stack."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from services.common.api import create_app
from services.common.context import Context
from services.common.logging import configure_logging
from services.ingest.api import router as ingest_router
from services.ingest.read_api import router as dicomweb_read_router
from services.notify.api import router as notify_router
from services.portal.api import router as portal_router

ROUTERS: dict[str, list[APIRouter]] = {
    "ingest": [ingest_router, dicomweb_read_router],
    "portal": [portal_router],
    "notify": [notify_router],
}


def build_app(context: Context, services: list[str]) -> FastAPI:
    """An app serving ``services`` (all three in ``radpipe up``)."""
    configure_logging(context.settings.log_level)
    routers = [router for name in services for router in ROUTERS[name]]
    return create_app(context, routers, title=f"Radpipe {'+'.join(services)}")


def up_app() -> FastAPI:
    """Factory for each HTTP worker process of ``radpipe up`` (settings come from the env)."""
    from services.common.context import build_context
    from services.common.settings import get_settings

    return build_app(build_context(get_settings()), ["ingest", "portal", "notify"])
