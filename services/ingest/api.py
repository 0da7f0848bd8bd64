"""STOW-RS routes (PS3.18 10.5). Thin: parsing and storing live in ``service.py``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from radpipe.common import dicomjson
from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.errors import BadRequest, PayloadTooLarge, RadpipeError
from radpipe.common.identity import study_id_for
from radpipe.common.mime import choose
from radpipe.common.studies import UID_PATTERN

from . import backpressure, service
from .multipart import MultipartReader, stow_boundary

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])
Modality = Annotated[Principal, Depends(require("modality"))]


async def _stow(request: Request, ctx: Ctx, caller: Principal, study: str | None) -> Response:
    """Parse the body as it streams in; each complete part is stored before the next is read.

    The request is checked before any part is read: 400 for a study path segment that is not
    a UID, 415 for a body that is not ``multipart/related; type="application/dicom"``, 406
    when ``Accept`` admits no DICOM JSON response (PS3.18 10.5), so nothing is stored for a
    request that cannot succeed.
    """
    if study is not None and (len(study) > 64 or not UID_PATTERN.fullmatch(study)):
        raise BadRequest(
            f"the study UID in the path, {study[:80]!r}, is not a UID: digits and dots, at most "
            "64 characters"
        )
    boundary = stow_boundary(request.headers.get("content-type", ""))
    media_type = choose(request.headers.get("accept"), dicomjson.MEDIA_TYPES)
    limit = ctx.settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request exceeds RADPIPE_MAX_REQUEST_BYTES ({limit} bytes)")
    guard = backpressure.for_context(ctx)  # 503 before a byte is stored (PS3.18 10.5.3)
    refusal = await run_in_threadpool(guard.refusal)
    if refusal is not None:
        return _busy(refusal)
    reader = MultipartReader(boundary, max_part_bytes=ctx.settings.max_instance_bytes)
    session = service.StowSession(ctx, study, source=caller.name)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"request exceeds RADPIPE_MAX_REQUEST_BYTES ({limit} bytes)")
            for part in reader.feed(chunk):
                if (refusal := guard.disk_refusal()) is not None:  # the disk filled meanwhile
                    part.close()
                    await run_in_threadpool(session.abort)
                    return _busy(refusal)
                await run_in_threadpool(session.add, part)
            if session.receiving_due():  # a long request keeps its studies from going stable
                await run_in_threadpool(session.still_receiving)
        for part in reader.close():
            await run_in_threadpool(session.add, part)
    except (RadpipeError, ClientDisconnect):
        await run_in_threadpool(session.abort)
        raise
    result = await run_in_threadpool(session.commit)
    target = study_id_for(ctx.study_key(study), study) if study else "-"
    AuthService(ctx.documents).audit(
        caller, "stow", target, stored=len(result.stored), failed=len(result.failed)
    )
    headers = {"Warning": ", ".join(service.warning_headers(result))} if result.failed else {}
    return Response(
        dicomjson.dumps(service.stow_response(ctx, result, study)),
        status_code=result.status,
        media_type=media_type,
        headers=headers,
    )


def _busy(refusal: backpressure.Refusal) -> Response:
    """503 with Retry-After: intake is paused, the sender retries (RFC 9110 15.6.4)."""
    headers = {"Retry-After": str(refusal.retry_after)}
    return JSONResponse(refusal.body(), 503, headers=headers)


@router.post("/studies")
async def store_instances(request: Request, ctx: Ctx, caller: Modality) -> Response:
    return await _stow(request, ctx, caller, None)


@router.post("/studies/{study}")
async def store_study_instances(
    study: str, request: Request, ctx: Ctx, caller: Modality
) -> Response:
    return await _stow(request, ctx, caller, study)
