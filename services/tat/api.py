"""TAT routes: the report, its CSV and Parquet exports, and the RIS CSV import.

Managers (and admins) only; every answer is ``Cache-Control: no-store`` (the app middleware)
and carries aggregates and keyed study ids only. Exports and imports are audited.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response

from radpipe.common.api import Ctx, require
from radpipe.common.auth import AuthService, Principal
from radpipe.common.bodylimit import limit_route
from radpipe.common.errors import BadRequest

from . import export, ris, service

router = APIRouter(tags=["tat"])

#: The import's whole request body: the RIS file and a MiB for the multipart envelope and the
#: mapping field. Refused (413) before the form is parsed, spooled or authenticated.
IMPORT_BODY_BYTES = ris.MAX_BYTES + 1024**2
limit_route(
    "/api/tat/import",
    IMPORT_BODY_BYTES,
    f"the RIS file is over {ris.MAX_BYTES // 1024**2} MiB; split the export by date range "
    "and import each part (repeated rows are recognised)",
)
Manager = Annotated[Principal, Depends(require("manager", "admin"))]  # DESIGN 4: TAT


def _filters(
    ctx: Ctx,
    since: Annotated[str | None, Query(alias="from")] = None,
    until: Annotated[str | None, Query(alias="to")] = None,
    modality: str | None = None,
    source: str | None = None,
    priority: str | None = None,
) -> service.Filters:
    return service.make_filters(
        ctx.settings.site_timezone, since, until, modality, source, priority
    )


Filters = Annotated[service.Filters, Depends(_filters)]


@router.get("/api/tat")
def tat(ctx: Ctx, _: Manager, filters: Filters) -> dict[str, Any]:
    """Intervals with their figures, cuts, arrivals, daily trend, stuck studies, KPIs."""
    return service.report(ctx, filters)


@router.get("/api/tat.csv")
def tat_csv(ctx: Ctx, caller: Manager, filters: Filters) -> Response:
    """One row per study, one column per stage in seconds since the study's first event."""
    chosen = service.timelines(ctx, filters)
    AuthService(ctx.documents).audit(caller, "tat.export", "csv", studies=len(chosen))
    return Response(
        export.to_csv(chosen, ctx.settings.site_timezone),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="tat.csv"'},
    )


@router.get("/api/tat.parquet")
def tat_parquet(
    ctx: Ctx, caller: Manager, filters: Filters, table: str = "fact_study_event"
) -> Response:
    """One table of the star schema (docs/tat.md) as Parquet; the fact table by default."""
    chosen = service.timelines(ctx, filters)
    data = export.one_table(chosen, ctx.settings.site_timezone, table)
    AuthService(ctx.documents).audit(caller, "tat.export", f"parquet:{table}", studies=len(chosen))
    return Response(
        data,
        media_type="application/vnd.apache.parquet",
        headers={"Content-Disposition": f'attachment; filename="{table}.parquet"'},
    )


@router.get("/api/tat/star.zip")
def tat_star(ctx: Ctx, caller: Manager, filters: Filters) -> Response:
    """Every table of the star schema, one Parquet file each, in a zip."""
    chosen = service.timelines(ctx, filters)
    data = export.star_zip(chosen, ctx.settings.site_timezone)
    AuthService(ctx.documents).audit(caller, "tat.export", "parquet:star", studies=len(chosen))
    return Response(
        data,
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="tat-star.zip"'},
    )


@router.post("/api/tat/import")
async def tat_import(
    ctx: Ctx,
    caller: Manager,
    file: Annotated[UploadFile, File()],
    mapping: Annotated[str | None, Form()] = None,
) -> Response:
    """A RIS CSV export (multipart field ``file``; optional ``mapping``: JSON field -> header).

    201 with the data-quality report; 200 with the first report when the same file was
    imported before (nothing changes); 400, with nothing stored, for a file that cannot be read.
    """
    override = _mapping(mapping)
    data = await file.read(ris.MAX_BYTES + 1)
    record, new = service.import_ris(ctx, data, caller.name, override)
    AuthService(ctx.documents).audit(
        caller, "tat.import", record["id"], rows=record["rows"], repeated=not new
    )
    body = jsonable_encoder({**record, "already_imported": not new})
    return JSONResponse(body, status_code=201 if new else 200)


def _mapping(text: str | None) -> dict[str, str] | None:
    if not text or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(
            'mapping must be a JSON object of field -> CSV header, e.g. {"accession": "Acc #"}'
        )
    return value


@router.get("/api/tat/imports/latest")
def latest_import(ctx: Ctx, _: Manager) -> dict[str, Any] | None:
    """The last RIS import's data-quality report (``null`` before the first)."""
    return service.last_import(ctx)


@router.get("/api/tat/imports/{import_id}")
def one_import(import_id: str, ctx: Ctx, _: Manager) -> dict[str, Any]:
    return service.get_import(ctx, import_id)


@router.get("/api/tat/imports/{import_id}/flagged")
def import_flagged(
    import_id: str,
    ctx: Ctx,
    _: Manager,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> dict[str, Any]:
    """Every flagged row of an import with its reasons, a page at a time."""
    return service.flagged_rows(ctx, import_id, offset, limit)
