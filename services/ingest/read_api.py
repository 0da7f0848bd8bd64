"""QIDO-RS and WADO-RS routes over the de-identified store (PS3.18 10.4, 10.6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from radpipe.common import blinding, dicomjson
from radpipe.common.api import Ctx, keyed_path, require
from radpipe.common.audit import keyed, keyed_query
from radpipe.common.auth import AuthService, Principal
from radpipe.common.errors import BadRequest, NotFound
from radpipe.common.mime import BodyPart, choose, encode_multipart
from radpipe.common.roles import CLINICAL_ROLES

from . import bulkdata, media, qido, retrieve

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
_reader = require(*sorted(CLINICAL_ROLES))
#: Paths that search (QIDO-RS); their query is audited with identifying values keyed.
_SEARCHES = ("/studies", "/series", "/instances")


def _audited_reader(
    request: Request, ctx: Ctx, caller: Annotated[Principal, Depends(_reader)]
) -> Principal:
    """Clinical roles only; every search and retrieval is audited by token or user name
    (``dicomweb.read``, the path as target, a search's query with identifying values keyed).

    A path naming original UIDs (a RetrieveURL from a STOW-RS response; ``retrieve.scope``
    maps them) re-identifies: it is audited as ``identity.lookup``, the target the path with
    the de-identified UIDs, the original ones keyed. A path naming nothing in the store is
    written with its UIDs keyed (they may be originals)."""
    request.state.viewer = caller
    master = ctx.settings.secret
    path = request.url.path
    detail: dict[str, Any] = {}
    action = "dicomweb.read"
    if path.rstrip("/").endswith(_SEARCHES) and request.query_params:
        detail["query"] = keyed_query(master, request.query_params.multi_items())
    study, series = request.path_params.get("study"), request.path_params.get("series")
    instance = request.path_params.get("instance")
    if study is not None:
        try:
            found_study, found_series = retrieve.scope(ctx, study, series)
        except (NotFound, BadRequest):
            AuthService(ctx.documents).audit(
                caller, action, keyed_path(master, path), found=False, **detail
            )
            raise
        if found_study != study:
            action = "identity.lookup"
            originals = [uid for uid in (study, series, instance) if uid]
            detail["uids"] = [keyed(master, uid) for uid in originals]
            path = path.replace(f"/studies/{study}", f"/studies/{found_study}", 1)
            if series and found_series:
                path = path.replace(f"/series/{series}", f"/series/{found_series}", 1)
            if instance:
                path = path.replace(
                    f"/instances/{instance}", f"/instances/{keyed(master, instance)}", 1
                )
    AuthService(ctx.documents).audit(caller, action, path, **detail)
    return caller


Reader = Annotated[Principal, Depends(_audited_reader)]
#: PS3.18 8.7.4: rendered media types offered, the default first.
RENDERED_TYPES = ("image/jpeg", "image/png")


def _entries(request: Request, ctx: Ctx, *uids: str | None) -> list[dict[str, Any]]:
    """Index entries under the path's UIDs as the caller may see them: a resident sees no AI
    result series of a study before posting a read (``radpipe.common.blinding``)."""
    found = retrieve.entries(ctx, *uids)
    shown = blinding.visible_entries(
        ctx.documents, ctx.buckets["results"], request.state.viewer, found
    )
    if not shown and any(uids):
        raise NotFound("no such study, series or instance in the de-identified store")
    return shown


def _read(path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A search or retrieve route: ``HEAD`` is answered like ``GET``, without the body (RFC 9110
    9.3.2; the server drops the body and keeps Content-Type and Content-Length)."""
    return router.api_route(path, methods=["GET", "HEAD"])


def _base(ctx: Ctx) -> str:
    return ctx.settings.public("dicom-web").rstrip("/")


def _json_type(request: Request) -> str:
    """The DICOM JSON media type ``Accept`` admits; 406 before any work when none is."""
    return choose(request.headers.get("accept"), dicomjson.MEDIA_TYPES)


def _json(
    payload: Sequence[dicomjson.Dataset], media_type: str, location: str | None = None
) -> Response:
    headers = {"Content-Location": location} if location else None
    return Response(dicomjson.dumps(payload), media_type=media_type, headers=headers)


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
    """QIDO-RS in the store; a result cut at ``RADPIPE_QIDO_MAX_RESULTS`` is the first page,
    with a ``Warning: 299`` saying more can be requested (PS3.18 8.3.4.4, 10.6.3.3)."""
    query = qido.parse_query(level, request.query_params.multi_items())
    media_type = _json_type(request)
    viewer = request.state.viewer

    def hide_results(study_ids: set[str]) -> set[str]:
        return blinding.hidden_studies(ctx.documents, viewer, study_ids)

    def run() -> tuple[list[dict[str, Any]], bool]:
        scope = retrieve.scope(ctx, study, series)
        return qido.search(
            ctx.documents,
            query,
            _base(ctx),
            *scope,
            hide_results=hide_results,
            results_bucket=ctx.buckets["results"],
            max_results=ctx.settings.qido_max_results,
        )

    found, truncated = await run_in_threadpool(run)
    response = _json(found, media_type)
    if truncated:
        host = urlsplit(str(ctx.settings.public_url)).netloc
        response.headers["Warning"] = qido.truncated_warning(host)
    return response


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
    """Instances (PS3.18 10.4.1.1.1) as stored, or re-encoded as Explicit VR Little Endian
    where ``Accept`` asks for the default and that is lossless: multipart/related, or one
    instance as a single-part body when ``Accept`` names only ``application/dicom``; 406
    before reading.

    A multipart body is streamed: each instance is read (and re-encoded) when its part is
    sent, so a study or series costs one instance of memory, not every instance twice (and
    goes without Content-Length, chunked); ``HEAD`` reads no instance for them."""
    stored = [retrieve.transfer_syntax(ctx, entry) for entry in found]
    syntaxes, as_multipart = media.negotiate_instances(request.headers.get("accept"), stored)
    location = _location(request, ctx, found, level)

    def data(entry: dict[str, Any], kept: str, syntax: str) -> bytes:
        if syntax == kept:
            return retrieve.read_bytes(ctx, entry)
        return retrieve.as_explicit_le(ctx, entry)

    types = [media.instance_type(syntax) for syntax in syntaxes]
    headers = {"Content-Location": location}
    if not as_multipart:
        body = data(found[0], stored[0], syntaxes[0])
        return Response(body, media_type=types[0], headers=headers)
    base = _base(ctx)
    parts = (
        (data(e, kept, syntax), t, base + retrieve.resource_path([e], "instance"))
        for e, kept, syntax, t in zip(found, stored, syntaxes, types, strict=True)
    )
    stream, content_type = retrieve.multipart_stream(parts, media.DICOM)
    if level == "instance":  # one instance: sent with its Content-Length
        return Response(b"".join(stream), media_type=content_type, headers=headers)
    if request.method == "HEAD":  # the length is known only by reading every instance
        return StreamingResponse(iter(()), media_type=content_type, headers=headers)
    return StreamingResponse(stream, media_type=content_type, headers=headers)


@_read("/studies/{study}")
def retrieve_study(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _instances_response(request, ctx, _entries(request, ctx, study), "study")


@_read("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _instances_response(request, ctx, _entries(request, ctx, study, series), "series")


@_read("/studies/{study}/series/{series}/instances/{instance}")
def retrieve_instance(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    found = _entries(request, ctx, study, series, instance)
    return _instances_response(request, ctx, found, "instance")


@_read("/studies/{study}/metadata")
def study_metadata(study: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    media_type = _json_type(request)
    found = _entries(request, ctx, study)
    location = _location(request, ctx, found, "study", "/metadata")
    return _json(retrieve.metadata(ctx, found, _base(ctx)), media_type, location)


@_read("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    media_type = _json_type(request)
    found = _entries(request, ctx, study, series)
    location = _location(request, ctx, found, "series", "/metadata")
    return _json(retrieve.metadata(ctx, found, _base(ctx)), media_type, location)


@_read("/studies/{study}/series/{series}/instances/{instance}/metadata")
def instance_metadata(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    media_type = _json_type(request)
    found = _entries(request, ctx, study, series, instance)
    location = _location(request, ctx, found, "instance", "/metadata")
    return _json(retrieve.metadata(ctx, found, _base(ctx)), media_type, location)


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
        BodyPart(b.data, t, f"{instance_url}/{b.location}")
        for t, b in zip(types, binaries, strict=True)
    ]
    body, content_type = encode_multipart(parts, types[0].split(";")[0])
    return Response(body, media_type=content_type, headers={"Content-Location": location})


@_read("/studies/{study}/series/{series}/instances/{instance}/frames/{numbers}")
def instance_frames(
    study: str, series: str, instance: str, numbers: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    wanted = bulkdata.frame_numbers(numbers, max_frames=ctx.settings.wado_max_frames)
    found = _entries(request, ctx, study, series, instance)
    dataset = retrieve.read_dataset(ctx, found[0])
    binaries = bulkdata.frames(dataset, wanted, max_frame_bytes=ctx.settings.max_frame_bytes)
    return _binary_response(request, ctx, found, binaries, f"/frames/{numbers}")


@_read("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path:path}")
def instance_bulkdata(
    study: str, series: str, instance: str, path: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    """A BulkDataURI from the metadata (PS3.18 10.4.1.1.5): the element's value bytes."""
    found = _entries(request, ctx, study, series, instance)
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
    media_type = choose(request.headers.get("accept"), RENDERED_TYPES)
    window = _window(request.query_params.get("window"))
    quality_raw = request.query_params.get("quality", "90")
    if not (quality_raw.isascii() and quality_raw.isdigit()) or not 1 <= int(quality_raw) <= 100:
        raise BadRequest(f"quality is an integer from 1 to 100, got {quality_raw!r}")
    found = _entries(request, ctx, study, series, instance)
    data = retrieve.render(
        ctx, found[0], frame=frame, media_type=media_type, window=window, quality=int(quality_raw)
    )
    suffix = f"/frames/{frame}/rendered" if from_frames else "/rendered"
    location = _location(request, ctx, found, "instance", suffix)
    return Response(data, media_type=media_type, headers={"Content-Location": location})


#: PS3.18 8.3.5.1 (rendered query parameters): the VOI LUT functions ``window`` may name.
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


def _window(raw: str | None) -> tuple[float, float] | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1); 400 naming the parameter when
    malformed. Only the linear function is applied (conformance statement 8.9)."""
    if raw is None:
        return None
    values = raw.split(",")
    try:
        center, width = float(values[0]), float(values[1])
    except (ValueError, IndexError):
        center = width = float("nan")
    function = values[2].strip().lower() if len(values) > 2 else "linear"
    if not (width > 0 and center == center) or len(values) > 3 or function not in WINDOW_FUNCTIONS:
        raise BadRequest(
            f"window is center,width[,function] with width > 0 and function one of "
            f"{', '.join(WINDOW_FUNCTIONS)}, e.g. window=40,400,linear; got {raw!r}"
        )
    return center, width


@_read("/studies/{study}/series/{series}/instances/{instance}/rendered")
def instance_rendered(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    return _render(request, ctx, study, series, instance, 1)


@_read("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered")
def frame_rendered(
    study: str, series: str, instance: str, frame: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    [number] = bulkdata.frame_numbers(frame, single=True)
    return _render(request, ctx, study, series, instance, number, from_frames=True)


def _thumbnail(request: Request, ctx: Ctx, found: list[dict], level: str) -> Response:
    """PS3.18 10.7 thumbnail: the middle instance of the scope, rendered and shrunk."""
    choose(request.headers.get("accept"), ("image/jpeg",))
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
    return _thumbnail(request, ctx, _entries(request, ctx, study), "study")


@_read("/studies/{study}/series/{series}/thumbnail")
def series_thumbnail(study: str, series: str, request: Request, ctx: Ctx, _: Reader) -> Response:
    return _thumbnail(request, ctx, _entries(request, ctx, study, series), "series")


@_read("/studies/{study}/series/{series}/instances/{instance}/thumbnail")
def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, ctx: Ctx, _: Reader
) -> Response:
    found = _entries(request, ctx, study, series, instance)
    return _thumbnail(request, ctx, found, "instance")
