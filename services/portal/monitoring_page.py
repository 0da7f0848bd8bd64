"""Model monitoring in the portal: the page, its data (``GET /api/monitoring``) and scripts.

Who sees it: admins and managers. The figures are aggregates per model version (counts, rates,
input distributions) with no study id, finding or patient attribute in them, so they are not
clinical data (DESIGN 1: the admin sees none): the admin is who is paged about drift and who
manages models and routing, the manager watches service quality beside turnaround. Clinical
roles are left out so that every route stays either clinical or not (the authorization
matrix's separation of duties); radiologists see their own decisions on each study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from radpipe.common.api import Ctx, require
from radpipe.common.auth import Principal
from radpipe.common.errors import NotFound
from radpipe.common.monitoring import summaries

router = APIRouter(tags=["monitoring"])
Watcher = Annotated[Principal, Depends(require("admin", "manager"))]
STATIC = Path(__file__).parent / "static"
#: The page's files: name -> (path under static/, media type); uPlot is vendored (MIT).
ASSETS = {
    "monitoring.js": ("monitoring.js", "text/javascript"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}


@router.get("/api/monitoring")
def monitoring(ctx: Ctx, _: Watcher) -> dict[str, Any]:
    """Per model version: reader feedback, input drift against the bundle's training data, and
    the paging conditions with the thresholds in force."""
    settings = ctx.settings
    return {
        "models": summaries(ctx.documents, settings),
        "thresholds": {
            "window": settings.monitor_window,
            "min_studies": settings.monitor_min_studies,
            "drift_psi": settings.monitor_drift_psi,
            "drift_outside": settings.monitor_drift_outside,
            "ppv": settings.monitor_ppv_threshold,
            "ppv_window": settings.monitor_ppv_window,
            "min_decisions": settings.monitor_min_decisions,
        },
    }


@router.get("/monitoring", response_class=HTMLResponse)
def monitoring_page(request: Request, ctx: Ctx, caller: Watcher) -> Response:
    from .api import _page

    return _page(request, ctx, "monitoring.html", caller)


@router.get("/monitoring/assets/{name}")
def monitoring_asset(name: str, _: Watcher) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no monitoring page file {name!r}")
    path, media_type = ASSETS[name]
    return FileResponse(STATIC / path, media_type=media_type)
