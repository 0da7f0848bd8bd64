"""Composition root: the HTTP apps of each service and of the all-in-one stack."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from radpipe.common.api import create_app
from radpipe.common.context import Context
from radpipe.common.logging import configure_logging
from radpipe.ingest.api import router as ingest_router
from radpipe.ingest.read_api import router as dicomweb_read_router
from radpipe.notify.api import link_router as notify_link_router
from radpipe.notify.api import router as notify_router
from radpipe.portal.admin import router as admin_router
from radpipe.portal.api import router as portal_router
from radpipe.portal.auditlog import router as audit_router
from radpipe.portal.monitoring_page import router as monitoring_router
from radpipe.portal.ohif import router as ohif_router
from radpipe.portal.tat_page import router as tat_page_router
from radpipe.tat.api import router as tat_router

ROUTERS: dict[str, list[APIRouter]] = {
    "ingest": [ingest_router, dicomweb_read_router],
    "portal": [
        portal_router,
        ohif_router,
        admin_router,
        audit_router,
        tat_router,
        tat_page_router,
        monitoring_router,
    ],
    "notify": [notify_router, notify_link_router],
}


def build_app(context: Context, services: list[str]) -> FastAPI:
    """An app serving ``services`` (all three in ``radpipe up``)."""
    configure_logging(context.settings.log_level)
    routers = [router for name in services for router in ROUTERS[name]]
    return create_app(context, routers, title=f"Radpipe {'+'.join(services)}")


def up_app() -> FastAPI:
    """Factory for each HTTP worker process of ``radpipe up`` (settings come from the env)."""
    from radpipe.common.context import build_context
    from radpipe.common.settings import get_settings

    return build_app(build_context(get_settings()), ["ingest", "portal", "notify"])
