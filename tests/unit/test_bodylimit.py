"""The body limit on JSON and form requests (common/bodylimit.py): 413 naming the limit and
the setting, declared or counted, before the application reads a byte; streamed routes exempt;
the default fits the largest legitimate mask edit (docs/masks.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from radpipe.common import masks
from radpipe.common.bodylimit import ROUTE_LIMITS, BodyLimit, RouteLimit
from radpipe.common.settings import Settings

LIMIT = 1000


def app_reading_bodies() -> tuple[Starlette, list[int]]:
    """A tiny app whose routes read the body whole; ``seen`` lists the sizes they received."""
    seen: list[int] = []

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.append(len(body))
        return JSONResponse({"bytes": len(body)})

    routes = [
        Route(path, echo, methods=["GET", "POST"])
        for path in ("/api/x", "/dicom-web/studies", "/api/upload", "/api/upload2")
    ]
    return Starlette(routes=routes, middleware=[]), seen


@pytest.fixture
def limited() -> Iterator[tuple[TestClient, list[int]]]:
    app, seen = app_reading_bodies()
    with TestClient(BodyLimit(app, limit=lambda: LIMIT)) as client:
        yield client, seen


def chunks(total: int, size: int = 100) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_a_declared_body_over_the_limit_is_refused_unread(
    limited: tuple[TestClient, list[int]],
) -> None:
    client, seen = limited
    answer = client.post("/api/x", content=b"{" + b" " * LIMIT + b"}")
    assert answer.status_code == 413
    assert answer.headers["connection"] == "close"
    assert answer.json() == {
        "error": "PayloadTooLarge",
        "detail": f"request body exceeds RADPIPE_MAX_JSON_BYTES ({LIMIT} bytes); send a smaller "
        "body (a mask: the nodule only, at most 100,000 runs and 5,000,000 voxels) or raise "
        "RADPIPE_MAX_JSON_BYTES",
    }
    assert seen == []  # the route never ran


def test_a_chunked_body_is_counted_and_refused_past_the_limit(
    limited: tuple[TestClient, list[int]],
) -> None:
    client, seen = limited
    answer = client.post("/api/x", content=chunks(LIMIT + 1))
    assert answer.status_code == 413 and "RADPIPE_MAX_JSON_BYTES (1000 bytes)" in answer.text
    assert seen == []
    # At the limit exactly, chunked or declared, the route gets the whole body.
    assert client.post("/api/x", content=chunks(LIMIT)).json() == {"bytes": LIMIT}
    assert client.post("/api/x", content=b"y" * LIMIT).json() == {"bytes": LIMIT}
    assert client.get("/api/x").json() == {"bytes": 0}
    assert seen == [LIMIT, LIMIT, 0]


def test_streamed_routes_keep_their_own_limits(limited: tuple[TestClient, list[int]]) -> None:
    client, seen = limited
    big = LIMIT * 5
    assert client.post("/dicom-web/studies", content=b"z" * big).json() == {"bytes": big}
    assert client.post("/dicom-web/studies", content=chunks(big)).json() == {"bytes": big}
    assert seen == [big, big]


@pytest.fixture
def upload_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """An upload route (exact path) with a limit of its own, 3x the JSON one."""
    monkeypatch.setitem(ROUTE_LIMITS, "/api/upload", RouteLimit(3 * LIMIT, "split the file"))
    return 3 * LIMIT


def test_an_upload_route_has_its_own_limit_declared_or_counted(
    limited: tuple[TestClient, list[int]], upload_limit: int
) -> None:
    client, seen = limited
    ok = upload_limit
    # Over the JSON limit, within the route's own: passed through, declared or chunked.
    assert client.post("/api/upload", content=b"u" * ok).json() == {"bytes": ok}
    assert client.post("/api/upload", content=chunks(ok)).json() == {"bytes": ok}
    declared = client.post("/api/upload", content=b"u" * (ok + 1))
    assert declared.status_code == 413 and declared.headers["connection"] == "close"
    assert declared.json() == {"error": "PayloadTooLarge", "detail": "split the file"}
    # Chunked past the limit: the route hears a disconnect mid-body, the client the 413.
    counted = client.post("/api/upload", content=chunks(ok + 1))
    assert counted.status_code == 413 and counted.json()["detail"] == "split the file"
    assert seen == [ok, ok]  # neither refused body reached the route whole
    # The registration is for that exact path; others keep the JSON limit.
    assert client.post("/api/upload2", content=b"u" * ok).status_code == 413


def worst_mask_edit(indent: int | None = None, compact: bool = False) -> bytes:
    """A legitimate mask edit at the caps, made as long as the wire format allows: 100,000
    runs, each starting past pixel 1,000,000 of a 1024 × 1024 slice (7 digits), 4.7 M voxels,
    a 64-character series UID and a long reason."""
    per_slice, stride, length = 1000, 48, 47
    slices = {
        str(1900 + k): [v for i in range(per_slice) for v in (1_000_000 + i * stride, length)]
        for k in range(masks.MAX_RUNS // per_slice)
    }
    uid = ("1.2.826.0.1.3680043.10.1234." + "7" * 64)[:64]
    geometry = masks.Geometry(uid, 2000, 1024, 1024, (1.0, 1.0, 1.0))
    mask = {"encoding": masks.ENCODING, "series_uid": uid, "shape": [2000, 1024, 1024]}
    mask |= {"slices": slices, "empty": False}
    decoded = masks.decode(mask, geometry)  # legitimate: the portal would store it
    assert sum(map(len, decoded.values())) == masks.MAX_RUNS * length <= masks.MAX_VOXELS
    body = {"decision": "edit", "mask": mask, "reason": "r" * 1000}
    separators = (",", ":") if compact else None
    return json.dumps(body, indent=indent, separators=separators).encode()


def test_the_default_fits_the_largest_mask_edit_with_room(settings: Settings) -> None:
    default = settings.max_json_bytes
    assert default == 4 * 1024**2
    sizes = [len(worst_mask_edit(compact=True)), len(worst_mask_edit()), len(worst_mask_edit(2))]
    assert sizes[0] < sizes[1] < sizes[2] < default  # even pretty-printed
    assert sizes[1] * 3 < default  # as the viewer and Python clients send it: 3x headroom
