"""QIDO-RS and WADO-RS routes over the de-identified store (PS3.18 10.4, 10.6)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from services.common.api import Ctx, require
from services.common.auth import AuthService, Principal
from services.common.errors import BadRequest, NotAcceptable

from . import qido, retrieve

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
_reader = require("radiologist", "resident", "oncall")


def _audited_reader(
    request: Request, ctx: Ctx, caller: Annotated[Principal, Depends(_reader)]
) -> Principal:
    """Every search and retrieval is audited by token name (paths carry de-identified UIDs)."""
    AuthService(ctx.documents).audit(caller, "dicomweb.read", request.url.path)
    return caller


Reader = Annotated[Principal, Depends(_audited_reader)]
DICOM_JSON = "application/dicom+json"


def _base(ctx: Ctx) -> str:
    return ctx.settings.public("dicom-web").rstrip("/")


def _json(payload: object) -> Response:
    return Response(json.dumps(payload), media_type=DICOM_JSON)


async def _search(
    request: Request, ctx: Ctx, level: str, study: str | None = None, series: str | None = None
) -> Response:
    query = qido.parse_query(level, request.query_params.multi_items())
    found = await run_in_threadpool(lambda: retrieve.entries(ctx, study, series))
    return _json(qido.search(found, query, _base(ctx)))


@router.get("/studies")
async def search_studies(request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "study")


@router.get("/series")
async def search_all_series(request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "series")


@router.get("/instances")
async def search_all_instances(request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "instance")


@router.get("/studies/{study}/series")
async def search_series(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "series", study=study)


@router.get("/studies/{study}/instances")
async def search_study_instances(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "instance", study=study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_instances(
    study: str, series: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return await _search(request, ctx, "instance", study=study, series=series)


def _instances_response(request: Request, ctx: Ctx, found: list[dict]) -> Response:
    accept = request.headers.get("accept", "*/*")
    single = len(found) == 1 and accept.split(";")[0].strip() == "application/dicom"
    data = [retrieve.read_bytes(ctx, entry) for entry in found]
    if single:
        return Response(data[0], media_type="application/dicom")
    if not any(t in accept for t in ("multipart/related", "application/dicom", "*/*")):
        raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')
    body, boundary = retrieve.multipart([("application/dicom", d) for d in data])
    return Response(
        body,
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _instances_response(request, ctx, retrieve.entries(ctx, study))


@router.get("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _instances_response(request, ctx, retrieve.entries(ctx, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _instances_response(request, ctx, retrieve.entries(ctx, study, series, instance))


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, ctx: Ctx, _: Reader) -> Response:
    return _json(retrieve.metadata(ctx, retrieve.entries(ctx, study), _base(ctx)))


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, ctx: Ctx, _: Reader) -> Response:
    return _json(retrieve.metadata(ctx, retrieve.entries(ctx, study, series), _base(ctx)))


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(study: str, series: str, instance: str, ctx: Ctx, _: Reader) -> Response:
    found = retrieve.entries(ctx, study, series, instance)
    return _json(retrieve.metadata(ctx, found, _base(ctx)))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{numbers}")
def instance_frames(
    study: str, series: str, instance: str, numbers: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    try:
        wanted = [int(n) for n in numbers.split(",")]
    except ValueError:
        raise BadRequest(f"frame numbers must be integers from 1, got {numbers!r}") from None
    entry = retrieve.entries(ctx, study, series, instance)[0]
    accept = request.headers.get("accept", "*/*")
    if not any(t in accept for t in ("application/octet-stream", "*/*", "multipart/related")):
        raise NotAcceptable("frames are served as multipart/related; type=application/octet-stream")
    syntax = entry["transfer_syntax"]
    parts = [
        (f"application/octet-stream; transfer-syntax={syntax}", frame)
        for frame in retrieve.frames(ctx, entry, wanted)
    ]
    body, boundary = retrieve.multipart(parts)
    return Response(
        body,
        media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}',
    )


def _render(
    request: Request, ctx: Ctx, study: str, series: str, instance: str, frame: int
) -> Response:
    accept = request.headers.get("accept", "image/jpeg")
    media = "image/png" if "image/png" in accept and "image/jpeg" not in accept else "image/jpeg"
    if not any(t in accept for t in ("image/jpeg", "image/png", "image/*", "*/*")):
        raise NotAcceptable("rendered images are image/jpeg or image/png")
    window = None
    if raw := request.query_params.get("window"):
        try:
            center, width = (float(v) for v in raw.split(",")[:2])
        except ValueError:
            raise BadRequest("window is center,width[,function], e.g. window=40,400") from None
        window = (center, width)
    quality_raw = request.query_params.get("quality", "90")
    if not quality_raw.isdigit() or not 1 <= int(quality_raw) <= 100:
        raise BadRequest("quality is an integer from 1 to 100")
    entry = retrieve.entries(ctx, study, series, instance)[0]
    data = retrieve.render(
        ctx, entry, frame=frame, media_type=media, window=window, quality=int(quality_raw)
    )
    return Response(data, media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered")
def instance_rendered(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _render(request, ctx, study, series, instance, 1)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
def frame_rendered(
    study: str, series: str, instance: str, frame: int, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _render(request, ctx, study, series, instance, frame)


def _thumbnail(request: Request, ctx: Ctx, found: list[dict]) -> Response:
    """PS3.18 10.7 thumbnail: the middle instance of the scope, rendered and shrunk."""
    accept = request.headers.get("accept", "image/jpeg")
    if not any(t in accept for t in ("image/jpeg", "image/*", "*/*")):
        raise NotAcceptable("thumbnails are image/jpeg")
    entry = found[len(found) // 2]
    size = request.query_params.get("viewport", "128,128").split(",")
    if len(size) != 2 or not all(v.isdigit() and 0 < int(v) <= 1024 for v in size):
        raise BadRequest("viewport is width,height in pixels, each 1-1024")
    data = retrieve.render(
        ctx,
        entry,
        frame=1,
        media_type="image/jpeg",
        window=None,
        quality=80,
        viewport=(int(size[0]), int(size[1])),
    )
    return Response(data, media_type="image/jpeg")


@router.get("/studies/{study}/thumbnail")
def study_thumbnail(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _thumbnail(request, ctx, retrieve.entries(ctx, study))


@router.get("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _thumbnail(request, ctx, retrieve.entries(ctx, study, series))


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _thumbnail(request, ctx, retrieve.entries(ctx, study, series, instance))
