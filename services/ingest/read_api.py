"""QIDO-RS and WADO-RS routes over the de-identified store (PS3.18 10.4, 10.6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.errors import BadRequest, NotAcceptable

from . import bulkdata, media, qido, retrieve

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


def _read(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A search or retrieve route: ``HEAD`` is answered like ``GET``, without the body (RFC 9110
    9.3.2; the server drops the body and keeps Content-Type and Content-Length)."""
    return router.api_route(path, methods=["GET", "HEAD"])


def _base(ctx: Ctx) -> str:
    return ctx.settings.public("dicom-web").rstrip("/")


def _json(payload: object, location: str | None = None) -> Response:
    headers = {"Content-Location": location} if location else None
    return Response(json.dumps(payload), media_type=DICOM_JSON, headers=headers)


def _location(
    request: Request, ctx: Ctx, found: list[dict[str, Any]], level: str, suffix: str = ""
) -> str:
    """Content-Location (PS3.18 8.4.3): the retrieved resource's URL under RADPIPE_PUBLIC_URL,
    with its de-identified UIDs even when the request named the original ones."""
    url = _base(ctx) + retrieve.resource_path(found, level) + suffix
    return f"{url}?{request.url.query}" if request.url.query else url


async def _search(
    request: Request, ctx: Ctx, level: str, study: str | None = None, series: str | None = None
) -> Response:
    query = qido.parse_query(level, request.query_params.multi_items())
    found = await run_in_threadpool(lambda: retrieve.entries(ctx, study, series))
    return _json(qido.search(found, query, _base(ctx)))


@_read("/studies")
async def search_studies(request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "study")


@_read("/series")
async def search_all_series(request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "series")


@_read("/instances")
async def search_all_instances(request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "instance")


@_read("/studies/{study}/series")
async def search_series(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "series", study=study)


@_read("/studies/{study}/instances")
async def search_study_instances(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return await _search(request, ctx, "instance", study=study)


@_read("/studies/{study}/series/{series}/instances")
async def search_instances(
    study: str, series: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return await _search(request, ctx, "instance", study=study, series=series)


def _instances_response(request: Request, ctx: Ctx, found: list[dict], level: str) -> Response:
    accept = request.headers.get("accept", "*/*")
    single = len(found) == 1 and accept.split(";")[0].strip() == "application/dicom"
    location = _location(request, ctx, found, level)
    data = [retrieve.read_bytes(ctx, entry) for entry in found]
    if single:
        headers = {"Content-Location": location}
        return Response(data[0], media_type="application/dicom", headers=headers)
    if not any(t in accept for t in ("multipart/related", "application/dicom", "*/*")):
        raise NotAcceptable('instances are served as multipart/related; type="application/dicom"')
    base = _base(ctx)
    parts = [
        ("application/dicom", d, base + retrieve.resource_path([e], "instance"))
        for e, d in zip(found, data, strict=True)
    ]
    body, boundary = retrieve.multipart(parts)
    return Response(
        body,
        media_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
        headers={"Content-Location": location},
    )


@_read("/studies/{study}")
def retrieve_study(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _instances_response(request, ctx, retrieve.entries(ctx, study), "study")


@_read("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _instances_response(request, ctx, retrieve.entries(ctx, study, series), "series")


@_read("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    found = retrieve.entries(ctx, study, series, instance)
    return _instances_response(request, ctx, found, "instance")


@_read("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    found = retrieve.entries(ctx, study)
    location = _location(request, ctx, found, "study", "/metadata")
    return _json(retrieve.metadata(ctx, found, _base(ctx)), location)


@_read("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    found = retrieve.entries(ctx, study, series)
    location = _location(request, ctx, found, "series", "/metadata")
    return _json(retrieve.metadata(ctx, found, _base(ctx)), location)


@_read("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    found = retrieve.entries(ctx, study, series, instance)
    location = _location(request, ctx, found, "instance", "/metadata")
    return _json(retrieve.metadata(ctx, found, _base(ctx)), location)


def _binary_response(
    request: Request, ctx: Ctx, found: list[dict], binaries: list[bulkdata.Binary], suffix: str
) -> Response:
    """Frames or bulk data as multipart/related, or as one single-part body when Accept names
    only the bare media type (PS3.18 8.7.3); 406 when Accept admits no stored representation."""
    video = bool(binaries) and bulkdata.is_video(binaries[0].syntax or "")
    types, as_multipart = media.negotiate(
        request.headers.get("accept"), [b.syntax for b in binaries], video=video
    )
    location = _location(request, ctx, found, "instance", suffix)
    if not as_multipart:
        return Response(
            binaries[0].data, media_type=types[0], headers={"Content-Location": location}
        )
    instance_url = _base(ctx) + retrieve.resource_path(found, "instance")
    parts = [
        (t, b.data, f"{instance_url}/{b.location}") for t, b in zip(types, binaries, strict=True)
    ]
    body, boundary = retrieve.multipart(parts)
    root = types[0].split(";")[0]
    return Response(
        body,
        media_type=f'multipart/related; type="{root}"; boundary={boundary}',
        headers={"Content-Location": location},
    )


@_read("/studies/{study}/series/{series}/instances/{instance}/frames/{numbers}")
def instance_frames(
    study: str, series: str, instance: str, numbers: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    try:
        wanted = [int(n) for n in numbers.split(",")]
    except ValueError:
        raise BadRequest(f"frame numbers must be integers from 1, got {numbers!r}") from None
    found = retrieve.entries(ctx, study, series, instance)
    binaries = bulkdata.frames(retrieve.read_dataset(ctx, found[0]), wanted)
    return _binary_response(request, ctx, found, binaries, f"/frames/{numbers}")


@_read("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}")
def instance_bulkdata(
    study: str, series: str, instance: str, path: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    """A BulkDataURI from the metadata (PS3.18 10.4.1.1.5): the element's value bytes."""
    found = retrieve.entries(ctx, study, series, instance)
    binaries = bulkdata.bulk_value(retrieve.read_dataset(ctx, found[0]), path)
    return _binary_response(request, ctx, found, binaries, f"/bulkdata/{path}")


def _render(
    request: Request,
    ctx: Ctx,
    study: str,
    series: str,
    instance: str,
    frame: int,
    *,
    from_frames: bool = False,
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
    found = retrieve.entries(ctx, study, series, instance)
    data = retrieve.render(
        ctx, found[0], frame=frame, media_type=media, window=window, quality=int(quality_raw)
    )
    suffix = f"/frames/{frame}/rendered" if from_frames else "/rendered"
    location = _location(request, ctx, found, "instance", suffix)
    return Response(data, media_type=media, headers={"Content-Location": location})


@_read("/studies/{study}/series/{series}/instances/{instance}/rendered")
def instance_rendered(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _render(request, ctx, study, series, instance, 1)


@_read("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
def frame_rendered(
    study: str, series: str, instance: str, frame: int, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _render(request, ctx, study, series, instance, frame, from_frames=True)


def _thumbnail(request: Request, ctx: Ctx, found: list[dict], level: str) -> Response:
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
    location = _location(request, ctx, found, level, "/thumbnail")
    return Response(data, media_type="image/jpeg", headers={"Content-Location": location})


@_read("/studies/{study}/thumbnail")
def study_thumbnail(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _thumbnail(request, ctx, retrieve.entries(ctx, study), "study")


@_read("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _thumbnail(request, ctx, retrieve.entries(ctx, study, series), "series")


@_read("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    found = retrieve.entries(ctx, study, series, instance)
    return _thumbnail(request, ctx, found, "instance")
