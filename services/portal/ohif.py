"""The prebuilt OHIF viewer (npm ``@ohif/app``) served by the portal at ``/ohif``, against the
portal's own DICOMweb with the user's session: same origin, so the browser sends the session
cookie with OHIF's QIDO-RS/WADO-RS requests and no token reaches the page.

The npm build assumes it lives at ``/``: its ``index.html`` (``PUBLIC_URL``, the root-relative
script and style links) and its entry bundle (webpack's public path, where chunks load from)
are rewritten for ``/ohif/``, and ``app-config.js`` is written here (router base ``/ohif``, one
DICOMweb data source).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, HTMLResponse, Response

from radpipe.common.api import Ctx, require
from radpipe.common.auth import Principal
from radpipe.common.errors import NotFound

router = APIRouter(prefix="/ohif", tags=["ohif"])
Viewer = Annotated[Principal, Depends(require("radiologist", "resident", "oncall", admin=False))]
BASE = "/ohif/"
#: Hashed bundles, fonts and wasm never change under one name; the page and config do.
ASSET_CACHE = "private, max-age=86400"


def app_config(dicomweb: str) -> str:
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "radpipe",
        "configuration": {
            "friendlyName": "Radpipe",
            "name": "radpipe",
            "wadoUriRoot": dicomweb,
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/ohif",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "defaultDataSourceName": "radpipe",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


@lru_cache(maxsize=4)
def _index(dist: Path) -> str:
    html = (dist / "index.html").read_text(encoding="utf-8")
    for quote in ('"', "'"):
        html = html.replace(f"PUBLIC_URL = {quote}/{quote}", f"PUBLIC_URL = {quote}{BASE}{quote}")
        for attribute in ("src", "href"):
            html = html.replace(f"{attribute}={quote}/", f"{attribute}={quote}{BASE}")
    return html.replace(f"{BASE}{BASE[1:]}", BASE)  # links already under /ohif/


_REBASE = (
    (b'__webpack_require__.p = "/"', f'__webpack_require__.p = "{BASE}"'.encode()),
    (b"url(/", f"url({BASE}".encode()),
)


@lru_cache(maxsize=512)
def _rebased(path: Path) -> bytes | None:
    """A script or style sheet with webpack's public path (where the app and its workers load
    chunks) and root-relative ``url(/…)`` moved under ``/ohif/``; ``None`` when it has neither
    (served from disk, nothing kept in memory)."""
    code = path.read_bytes()
    if not any(old in code for old, _ in _REBASE):
        return None
    for old, new in _REBASE:
        code = code.replace(old, new)
    return code


def _dist(ctx: Ctx) -> Path:
    dist = ctx.settings.ohif_dir
    if dist is None or not (dist / "index.html").is_file():
        raise NotFound(
            "the OHIF viewer is not installed: run `make ohif` and set RADPIPE_OHIF_DIR "
            "to .cache/ohif/package/dist"
        )
    return dist.resolve()


@router.get("")
@router.get("/{path:path}")
def serve(ctx: Ctx, _: Viewer, path: str = "") -> Response:
    """A file of the build, ``app-config.js`` for this portal, or the page for any app route."""
    dist = _dist(ctx)
    if path == "app-config.js":
        config = app_config(ctx.settings.public("dicom-web").rstrip("/"))
        return Response(config, media_type="text/javascript")
    target = (dist / path).resolve()
    if path and target.is_file() and target.is_relative_to(dist) and target.name != "index.html":
        rewritten = _rebased(target) if target.suffix in (".js", ".css") else None
        if rewritten is not None:
            media_type = "text/css" if target.suffix == ".css" else "text/javascript"
            return Response(
                rewritten, media_type=media_type, headers={"Cache-Control": ASSET_CACHE}
            )
        return FileResponse(target, headers={"Cache-Control": ASSET_CACHE})
    return HTMLResponse(_index(dist))
