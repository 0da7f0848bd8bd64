"""The manager's turnaround dashboard page and its scripts (``radpipe.tat`` serves the data).

The charting library is uPlot (MIT), vendored from its npm package into ``static/vendor``: the
page loads nothing from another origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from radpipe.common.api import Ctx, require
from radpipe.common.auth import Principal
from radpipe.common.errors import NotFound

router = APIRouter(tags=["tat"])
Manager = Annotated[Principal, Depends(require("manager", "admin"))]  # DESIGN 4: TAT
STATIC = Path(__file__).parent / "static"
#: The page's files: name -> (path under static/, media type).
ASSETS = {
    "tat.js": ("tat.js", "text/javascript"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}


@router.get("/tat", response_class=HTMLResponse)
def tat_page(request: Request, ctx: Ctx, caller: Manager) -> Response:
    """Figures, charts, filters, stuck studies and the last RIS import's report."""
    from .api import _page

    return _page(request, ctx, "tat.html", caller, timezone=str(ctx.settings.site_timezone))


@router.get("/tat/assets/{name}")
def tat_asset(name: str, _: Manager) -> Response:
    if name not in ASSETS:
        raise NotFound(f"no dashboard file {name!r}")
    path, media_type = ASSETS[name]
    return FileResponse(STATIC / path, media_type=media_type)
